"""Find object mentions in free text: the shared front end of the CHAIR and POPE metrics.

An :class:`ObjectVocabulary` maps surface forms ("puppy", "hot dog", "red circles") to canonical object
names ("dog", "hot dog", "red circle"). Matching is rule-based and offline:

* **Tokens** are lower-cased runs of letters and digits; a possessive "'s" is dropped ("dog's" -> "dog"),
  other apostrophes stay inside the token ("isn't"). Hyphens split words, so "hot-dog" reads as "hot dog".
* **Plurals** are generated for the last word of every surface form: regular -s / -es / -ies, a table of
  irregulars (people, mice, geese, knives, ...), and compounds of man/woman/person/child ("policemen").
* **Longest match first**, left to right: "hot dog" is one hot-dog mention and no dog, "teddy bear" is no
  bear, "dining table" is not also a table. Extra words in front still match: "a large red circle"
  contains "red circle".
* **Ignored phrases** are matched like surface forms and then dropped ("train tracks" is no train).
* **Negation** is one simple rule. A cue word (no, not, without, never, neither, nor, or any "n't" word)
  opens a scope; the scope closes at the next clause punctuation (. , ; : ! ? parentheses, newline) or a
  contrastive word (but, however, although, though, whereas, while, yet, except). Mentions inside the
  scope are flagged ``negated``: "there is no dog", "without a dog", "no cats or dogs" (both), but
  "no cat, but a dog" negates only the cat. Known misses: "nobody"/"none" are not cues, and a cue negates
  everything after it in the clause ("no one is on the bench" and "a man without a hat rides a horse"
  negate the bench and the horse), which can hide a hallucination but never invents one.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

COCO_OBJECTS_PATH = Path(__file__).resolve().parent / "vocabularies" / "coco_objects.json"

IRREGULAR_PLURALS = {
    "person": "people", "man": "men", "woman": "women", "child": "children", "human": "humans",
    "mouse": "mice", "goose": "geese", "foot": "feet", "tooth": "teeth", "ox": "oxen",
    "sheep": "sheep", "deer": "deer", "fish": "fish", "bison": "bison", "moose": "moose",
    "knife": "knives", "wife": "wives", "life": "lives", "leaf": "leaves", "loaf": "loaves",
    "shelf": "shelves", "calf": "calves", "half": "halves", "wolf": "wolves", "scarf": "scarves",
    "potato": "potatoes", "tomato": "tomatoes", "mango": "mangoes", "cactus": "cacti",
}
# Endings that carry their irregular plural into compounds: policeman -> policemen, grandchild -> ...
_IRREGULAR_SUFFIXES = ("woman", "man", "person", "child")

NEGATION_CUES = frozenset({"no", "not", "without", "never", "neither", "nor", "cannot"})
SCOPE_ENDERS = frozenset({"but", "however", "although", "though", "whereas", "while", "yet", "except"})

# A word (letters/digits, with inner apostrophes) or one clause-boundary character.
_TOKEN_RE = re.compile(r"[a-z0-9]+(?:'[a-z]+)*|[.,;:!?()\[\]\n]", re.IGNORECASE)


def pluralize(word: str) -> str:
    """English plural of one lower-case word: irregular table, then -es / -ies / -s."""
    if word in IRREGULAR_PLURALS:
        return IRREGULAR_PLURALS[word]
    for suffix in _IRREGULAR_SUFFIXES:
        if word.endswith(suffix) and word != suffix and word not in IRREGULAR_PLURALS:
            return word[: -len(suffix)] + IRREGULAR_PLURALS[suffix]
    if word.endswith(("s", "x", "z", "ch", "sh")):
        return word + "es"
    if len(word) > 1 and word.endswith("y") and word[-2] not in "aeiou":
        return word[:-1] + "ies"
    return word + "s"


def _scan(text: str) -> list[tuple[str | None, int, int]]:
    """(word, start, end) per token, word None for a clause boundary; spans index ``text``."""
    # Curly apostrophes become straight ones; same length, so spans stay valid.
    normalised = text.replace("\u2019", "'")
    tokens = []
    for match in _TOKEN_RE.finditer(normalised):
        word = match.group().lower()
        if not word[0].isalnum():
            tokens.append((None, match.start(), match.end()))
            continue
        if word.endswith("'s"):
            word = word[:-2]
        tokens.append((word, match.start(), match.end()))
    return tokens


def tokenize(text: str) -> list[str]:
    """Lower-case word tokens of ``text`` with punctuation and possessive "'s" removed."""
    return [word for word, _, _ in _scan(text) if word is not None]


def _is_negation_cue(word: str) -> bool:
    return word in NEGATION_CUES or word.endswith("n't")


@dataclass(frozen=True)
class Mention:
    """One object mention found in a text."""

    canonical: str
    """Canonical object name, e.g. "dog" for "puppies"."""
    surface: str
    """The matched text exactly as written, e.g. "Puppies"."""
    span: tuple[int, int]
    """Character offsets ``(start, end)`` of ``surface`` in the input text."""
    negated: bool
    """True inside a negation scope ("there is no dog"); such a mention is not a claim."""


class ObjectVocabulary:
    """Canonical object names, each with surface forms, matched longest-first in text.

    Build it with :meth:`from_dict`, :meth:`from_json` or :meth:`coco`. Two canonical names may not share
    a surface form (ValueError); a generated plural never overrides a form that was given explicitly.
    """

    def __init__(self, forms: Mapping[tuple[str, ...], str | None], names: Iterable[str]):
        self._forms = dict(forms)  # token tuple -> canonical name, or None for an ignored phrase
        self._names = tuple(names)
        self._max_len = max((len(key) for key in self._forms), default=0)

    @classmethod
    def from_dict(
        cls,
        objects: Mapping[str, Iterable[str]],
        *,
        ignore: Iterable[str] = (),
        pluralize_forms: bool = True,
    ) -> ObjectVocabulary:
        """Vocabulary from ``{canonical: [surface forms]}``; the canonical name is always a form itself.

        ``ignore`` lists phrases to match and drop ("train tracks"). ``pluralize_forms`` adds the plural of
        each form's last word ("red circle" -> "red circles").
        """
        explicit: dict[tuple[str, ...], str | None] = {}

        def add(key: tuple[str, ...], target: str | None, phrase: str) -> None:
            if not key:
                raise ValueError(f"surface form {phrase!r} has no words after tokenisation")
            if key in explicit and explicit[key] != target:
                raise ValueError(
                    f"surface form {phrase!r} belongs to both {explicit[key]!r} and {target!r}; "
                    "keep it under one object (ignored phrases show as None)"
                )
            explicit[key] = target

        for canonical, surfaces in objects.items():
            if isinstance(surfaces, str):
                raise TypeError(f"surface forms of {canonical!r} must be a list of strings, not a string")
            for phrase in (canonical, *surfaces):
                add(tuple(tokenize(phrase)), canonical, phrase)
        for phrase in ignore:
            add(tuple(tokenize(phrase)), None, phrase)

        forms = dict(explicit)
        if pluralize_forms:
            for key, target in explicit.items():
                forms.setdefault((*key[:-1], pluralize(key[-1])), target)
        return cls(forms, objects.keys())

    @classmethod
    def from_json(cls, path: str | Path, **kwargs) -> ObjectVocabulary:
        """Load ``{canonical: [forms]}``, or ``{"objects": {...}, "ignore": [...]}`` as in the COCO file."""
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        if isinstance(data.get("objects"), dict):
            kwargs.setdefault("ignore", data.get("ignore", ()))
            data = data["objects"]
        return cls.from_dict(data, **kwargs)

    @classmethod
    def coco(cls) -> ObjectVocabulary:
        """The 80 COCO categories with common synonyms, shipped in ``vlmdpo/eval/vocabularies/coco_objects.json``."""
        return cls.from_json(COCO_OBJECTS_PATH)

    @property
    def names(self) -> tuple[str, ...]:
        """Canonical object names in the order they were given."""
        return self._names

    def __len__(self) -> int:
        return len(self._names)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self._forms.get(tuple(tokenize(name))) is not None

    def canonical(self, name: str) -> str:
        """Canonical name for a whole phrase ("puppies" -> "dog"); ValueError if it is not an object."""
        target = self._forms.get(tuple(tokenize(name)))
        if target is None:
            raise ValueError(
                f"{name!r} is not an object of this vocabulary; add it as a surface form "
                f"(known objects: {', '.join(self._names[:10])}{', ...' if len(self._names) > 10 else ''})"
            )
        return target

    def _longest_match(self, tokens: list, start: int) -> tuple[int, str | None] | None:
        longest = min(self._max_len, len(tokens) - start)
        for length in range(longest, 0, -1):
            key = tuple(word for word, _, _ in tokens[start : start + length])
            if key in self._forms:  # a key holding None (a boundary) is never in the table
                return length, self._forms[key]
        return None

    def find_mentions(self, text: str) -> list[Mention]:
        """All object mentions in ``text``, in order, each flagged negated or not (see module docstring)."""
        tokens = _scan(text)
        mentions: list[Mention] = []
        negated = False
        i = 0
        while i < len(tokens):
            word = tokens[i][0]
            if word is None or word in SCOPE_ENDERS:
                negated = False
            elif _is_negation_cue(word):
                negated = True
            else:
                match = self._longest_match(tokens, i)
                if match is not None:
                    length, canonical = match
                    start, end = tokens[i][1], tokens[i + length - 1][2]
                    if canonical is not None:
                        mentions.append(Mention(canonical, text[start:end], (start, end), negated))
                    i += length
                    continue
            i += 1
        return mentions
