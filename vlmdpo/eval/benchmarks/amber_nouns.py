"""AMBER's generative scoring: which annotated objects a description mentions, and which it invents.

Re-implements the generative half of AMBER's ``inference.py`` (junyangwang0410/AMBER; Wang et al.,
arXiv:2311.07397). Per description, the object words are its nouns that appear in AMBER's vocabulary
(``relation.json``: every object and its associated words). Each such word, repeats included:

* is safe if it is one of the ``safe_words.txt`` words ("orange", "light", "sign", ...: too ambiguous to judge);
* else covers a truth object if it equals that object or one of its associated words (the first such, in the
  file's order: associated words of every truth object first, then the objects), and is not a hallucination;
* else covers a hallucination-target object the same way (that is AMBER's "Cog"), and is a hallucination;
* anything else left is a hallucination too.

CHAIR = hallucinated words / object words; Cover = covered truth objects / truth objects; Hal = share of
descriptions with at least one hallucinated word; Cog = covered hallucination targets / targets. Objects are
counted per list slot, so a truth list with "ship" twice has two slots and one mention covers the first.

**Where this differs from the official pipeline, and why.** The official script tags parts of speech with
NLTK's perceptron tagger, lemmatises with WordNet, and also counts a word as the same object as an annotated
one when spaCy's ``en_core_web_lg`` vectors give a similarity above 0.8. Those three need data that is not on
the package index (NLTK data and spaCy models are downloaded from their hubs), so by default here:

* nouns: every token is a candidate (no tagger), case kept as the script keeps it ("Dog" at a sentence start is
  not "dog" there either); a vocabulary word used as a verb or adjective ("they watch the sea") counts here but
  not there;
* lemmas: a WordNet-style noun rule (-s, -es, -ies, -men and the common irregular plurals) whose shortest
  result inside the AMBER vocabulary wins, as WordNet's shortest valid lemma does;
* near-synonyms: none beyond AMBER's own association lists, unless ``similar`` is given.

Pass ``nouns=`` (e.g. an NLTK tagger pipeline) and ``similar=`` (e.g. spaCy similarity > 0.8) to
:func:`score_generative` to run the official pipeline exactly. ``tests/test_benchmark_amber.py`` measures the
default against the official rules with hand-tagged nouns on the fixture.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence

_IRREGULAR_NOUNS = {
    "children": "child", "men": "man", "women": "woman", "feet": "foot", "teeth": "tooth", "geese": "goose",
    "mice": "mouse", "knives": "knife", "leaves": "leaf", "wolves": "wolf", "shelves": "shelf", "calves": "calf",
    "halves": "half", "loaves": "loaf", "scarves": "scarf", "oxen": "ox", "lives": "life", "wives": "wife",
}
# WordNet's noun detachment rules: (plural ending, singular ending).
_NOUN_ENDINGS = (("s", ""), ("ses", "s"), ("xes", "x"), ("zes", "z"), ("ches", "ch"), ("shes", "sh"),
                 ("men", "man"), ("ies", "y"))
_WORD = re.compile(r"[A-Za-z0-9]+(?:-[A-Za-z0-9]+)*")


def lemma_in(word: str, vocabulary: Iterable[str] | set[str]) -> str:
    """The shortest noun lemma of ``word`` that is in ``vocabulary``, else ``word`` itself."""
    candidates = [word, _IRREGULAR_NOUNS.get(word, word)]
    candidates += [word[: -len(end)] + base for end, base in _NOUN_ENDINGS if word.endswith(end)]
    known = [c for c in candidates if c in vocabulary]
    return min(known, key=len) if known else word


def vocabulary_nouns(text: str, vocabulary: set[str]) -> list[str]:
    """The default noun extraction (module docstring): words of ``text`` whose lemma is in ``vocabulary``."""
    lemmas = (lemma_in(word, vocabulary) for word in _WORD.findall(text))
    return [lemma for lemma in lemmas if lemma in vocabulary]


def _slots(objects: Sequence[str], association: Mapping[str, Sequence[str]]) -> list[tuple[str, int]]:
    """(word, which object it stands for): every object's associated words first, then the objects."""
    words = [(word, k) for k, name in enumerate(objects) for word in association[name]]
    return words + [(name, k) for k, name in enumerate(objects)]


def _first(word: str, slots: list[tuple[str, int]], same: Callable[[str, str], bool]) -> int | None:
    return next((k for candidate, k in slots if same(word, candidate)), None)


def score_description(words: Sequence[str], truth: Sequence[str], hallu: Sequence[str],
                      association: Mapping[str, Sequence[str]], safe_words: Iterable[str],
                      similar: Callable[[str, str], bool] | None = None) -> dict:
    """Counts for one description's object ``words`` (AMBER's rules, module docstring).

    Returns ``words`` (object words), ``hallucinated`` (those flagged), ``covered`` (truth slots mentioned,
    a list of bools), ``cognition`` (hallucination-target slots mentioned).
    """
    safe_words = set(safe_words)
    truth_slots, hallu_slots = _slots(truth, association), _slots(hallu, association)
    covered, cognition = [False] * len(truth), [False] * len(hallu)
    hallucinated = []
    exact = str.__eq__
    for word in words:
        if word in safe_words:
            continue
        k = _first(word, truth_slots, exact)
        if k is not None:
            covered[k] = True
            continue
        for same in (exact, similar) if similar else (exact,):
            k = _first(word, hallu_slots, same)
            if k is not None:
                cognition[k] = True
        if similar is not None:
            k = _first(word, truth_slots, similar)
            if k is not None:
                covered[k] = True
                continue
        hallucinated.append(word)
    return {"words": list(words), "hallucinated": hallucinated, "covered": covered, "cognition": cognition}


def score_generative(descriptions: Mapping[int, str], annotations: Mapping[int, dict],
                     association: Mapping[str, Sequence[str]], safe_words: Iterable[str], *,
                     nouns: Callable[[str], list[str]] | None = None,
                     similar: Callable[[str, str], bool] | None = None) -> dict:
    """AMBER's CHAIR, Cover, Hal and Cog (fractions, not percent) over ``{id: description}``.

    ``nouns(text)`` gives a description's lemmatised nouns (default :func:`vocabulary_nouns`); words outside
    AMBER's vocabulary are dropped either way, as the script does. Also returns ``per_id`` details.
    """
    vocabulary = set(association) | {word for words in association.values() for word in words}
    nouns = nouns or (lambda text: vocabulary_nouns(text, vocabulary))
    per_id = {}
    for item_id, text in descriptions.items():
        words = [word for word in nouns(text) if word in vocabulary]
        annotation = annotations[item_id]
        per_id[item_id] = score_description(words, annotation["truth"], annotation["hallu"], association,
                                            safe_words, similar)
    details = list(per_id.values())

    def ratio(numerator: int, denominator: int) -> float:
        return numerator / denominator if denominator else 0.0

    return {
        "chair": ratio(sum(len(d["hallucinated"]) for d in details), sum(len(d["words"]) for d in details)),
        "cover": ratio(sum(sum(d["covered"]) for d in details), sum(len(d["covered"]) for d in details)),
        "hal": ratio(sum(bool(d["hallucinated"]) for d in details), len(details)),
        "cog": ratio(sum(sum(d["cognition"]) for d in details), sum(len(d["cognition"]) for d in details)),
        "per_id": per_id,
    }
