"""Hallucination-injected preference pairs for any captioned images with object lists.

The chosen response is the true caption; the rejected one names an object that is not in the image. The
object is picked as an object detector's or a captioner's hallucination would be: one that often appears
with the image's real objects (a "fork" next to a "dining table" and a "pizza") but is absent from this
image's list, from co-occurrence counts over object sets (Rohrbach et al. 2018, arXiv:1809.02156, show
that co-occurrence drives hallucination; HA-DPO, arXiv:2311.16839, and POVID, arXiv:2402.11411, build
rejected answers by injecting such objects). It is either swapped in for an object the caption mentions
or added in a new sentence.

Objects are matched by name, simple plural and a few synonyms (``SYNONYMS``); ``COCO_OBJECTS`` is the
default vocabulary, any list of names works. Deterministic given ``seed``.
"""

from __future__ import annotations

import random
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from itertools import permutations

import datasets

from .coco import COCO_OBJECTS, COCO_STYLE_OBJECT_SETS
from .messages import DESCRIBE_PROMPT, assistant_message, row_images, to_dataset, user_prompt

MODES = ("replace", "insert", "either")

SYNONYMS: dict[str, tuple[str, ...]] = {
    "person": ("man", "woman", "boy", "girl", "child", "kid", "people", "men", "women", "children", "kids"),
    "bicycle": ("bike",), "motorcycle": ("motorbike",), "airplane": ("plane", "jet"), "couch": ("sofa",),
    "tv": ("television",), "cell phone": ("phone", "cellphone"), "dining table": ("table",),
    "cup": ("mug",), "sports ball": ("ball",), "donut": ("doughnut",), "laptop": ("computer",),
}
_IRREGULAR = {"person": "people", "mouse": "mice", "knife": "knives", "sheep": "sheep", "skis": "skis",
              "scissors": "scissors", "man": "men", "woman": "women", "child": "children",
              "people": "people", "men": "men", "women": "women", "children": "children"}
_PLURAL_WORDS = frozenset({"people", "men", "women", "children"})
_INSERT_TEMPLATES = ("There is also {a} {obj} in the image.", "{A} {obj} can be seen nearby.",
                     "In the background there is {a} {obj}.")


def plural(name: str) -> str:
    """English plural of an object name, on its last word ("wine glass" -> "wine glasses")."""
    head, _, last = name.rpartition(" ")
    if last in _IRREGULAR:
        word = _IRREGULAR[last]
    elif re.search(r"(s|x|z|ch|sh)$", last):
        word = last + "es"
    elif re.search(r"[^aeiou]y$", last):
        word = last[:-1] + "ies"
    else:
        word = last + "s"
    return f"{head} {word}" if head else word


def article(word: str) -> str:
    return "an" if word[:1].lower() in "aeiou" else "a"


def cooccurrence(object_sets: Iterable[Iterable[str]]) -> dict[str, Counter]:
    """``table[a][b]``: in how many of ``object_sets`` objects ``a`` and ``b`` (a != b) appear together."""
    table: dict[str, Counter] = {}
    for objects in object_sets:
        for a, b in permutations(sorted(set(objects)), 2):
            table.setdefault(a, Counter())[b] += 1
    return table


def mentions(caption: str, vocabulary: Sequence[str]) -> list[tuple[int, int, str, bool]]:
    """Non-overlapping object mentions in ``caption``: ``(start, end, object name, is plural)``, in order.

    Longer names match first, so "hot dog" is one mention, not a "dog".
    """
    forms = []
    for name in vocabulary:
        for word in (name, *SYNONYMS.get(name, ())):
            forms.append((word, name, word in _PLURAL_WORDS))
            if plural(word) != word:
                forms.append((plural(word), name, True))
    forms.sort(key=lambda form: -len(form[0]))
    taken = [False] * len(caption)
    found = []
    for word, name, is_plural in forms:
        for match in re.finditer(rf"\b{re.escape(word)}\b", caption, flags=re.IGNORECASE):
            start, end = match.span()
            if not any(taken[start:end]):
                taken[start:end] = [True] * (end - start)
                found.append((start, end, name, is_plural))
    return sorted(found)


def _weighted_choice(rng: random.Random, candidates: Sequence[str], weights: Sequence[float]) -> str:
    if sum(weights) <= 0:
        return rng.choice(list(candidates))
    return rng.choices(list(candidates), weights=list(weights), k=1)[0]


def _fix_article(text: str, start: int, new_word: str) -> str:
    """``text`` with an "a"/"an" right before position ``start`` made to agree with ``new_word``."""
    match = re.search(r"\b(a|an)(\s+)$", text[:start], flags=re.IGNORECASE)
    if not match:
        return text
    wanted = article(new_word)
    wanted = wanted.capitalize() if match.group(1)[0].isupper() else wanted
    return text[:match.start(1)] + wanted + text[match.end(1):]


def hallucinate_caption(caption: str, objects: Sequence[str], table: dict[str, Counter], rng: random.Random, *,
                        vocabulary: Sequence[str] = COCO_OBJECTS, mode: str = "either") -> tuple[str, str] | None:
    """``(rejected caption, hallucinated object)``, or None when every vocabulary object is present.

    ``replace`` swaps a mentioned object for an absent one drawn in proportion to how often it
    co-occurs with the mentioned object (uniformly when it never does); ``insert`` appends a sentence
    naming an absent object drawn by its co-occurrence with all the image's objects; ``either``
    replaces when the caption mentions an object, on a coin flip, and inserts otherwise.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    present = {name.lower() for name in objects}
    absent = [name for name in vocabulary if name.lower() not in present]
    if not absent:
        return None
    found = mentions(caption, vocabulary) if mode != "insert" else []
    replace = bool(found) and (mode == "replace" or (mode == "either" and rng.random() < 0.5))
    if mode == "replace" and not found:
        replace = False  # nothing to swap: fall back to inserting, so every row still gives a pair
    if replace:
        start, end, name, is_plural = rng.choice(found)
        counts = table.get(name, Counter())
        new = _weighted_choice(rng, absent, [counts[c] for c in absent])
        word = plural(new) if is_plural else new
        original = caption[start:end]
        word = word.capitalize() if original[:1].isupper() else word
        text = caption[:start] + word + caption[end:]
        return _fix_article(text, start, word), new
    new = _weighted_choice(rng, absent, [sum(table.get(o, Counter())[c] for o in present) for c in absent])
    template = rng.choice(_INSERT_TEMPLATES)
    sentence = template.format(a=article(new), A=article(new).capitalize(), obj=new)
    return f"{caption.rstrip()} {sentence}" if caption.strip() else sentence, new


def hallucination_pairs(dataset: datasets.Dataset, *, caption_column: str = "caption",
                        objects_column: str = "objects", prompt_text: str = DESCRIBE_PROMPT,
                        vocabulary: Sequence[str] = COCO_OBJECTS,
                        object_sets: Iterable[Iterable[str]] | None = None, mode: str = "either",
                        seed: int = 0, keep_columns: Sequence[str] = ()) -> datasets.Dataset:
    """TRL preference rows ``images, prompt, chosen, rejected, hallucinated_object`` (+ ``keep_columns``).

    Args:
        dataset: rows with ``images`` (a list) or ``image``, a caption and the image's object names.
        caption_column, objects_column: where the true caption and the object list are.
        prompt_text: the user turn's text after the image blocks.
        vocabulary: the object names that may be hallucinated (COCO's 80 by default).
        object_sets: object lists for the co-occurrence table; by default the shipped
            ``COCO_STYLE_OBJECT_SETS`` plus every row's own objects.
        mode: ``replace``, ``insert`` or ``either`` (see :func:`hallucinate_caption`).
        seed: row ``i`` draws from ``random.Random(f"{seed}:{i}")``, so a row's pair does not depend
            on the other rows.
    Rows whose caption is empty, or whose image holds every vocabulary object, are skipped.
    """
    if object_sets is None:
        object_sets = [*COCO_STYLE_OBJECT_SETS, *dataset[objects_column]]
    table = cooccurrence(object_sets)
    columns: dict[str, list] = {"images": [], "prompt": [], "chosen": [], "rejected": [],
                                "hallucinated_object": [], **{name: [] for name in keep_columns}}
    for index, row in enumerate(dataset):
        caption = (row[caption_column] or "").strip()
        if not caption:
            continue
        result = hallucinate_caption(caption, row[objects_column] or [], table, random.Random(f"{seed}:{index}"),
                                     vocabulary=vocabulary, mode=mode)
        if result is None:
            continue
        images = row_images(row)
        columns["images"].append(images)
        columns["prompt"].append(user_prompt(prompt_text, len(images)))
        columns["chosen"].append(assistant_message(caption))
        columns["rejected"].append(assistant_message(result[0]))
        columns["hallucinated_object"].append(result[1])
        for name in keep_columns:
            columns[name].append(row[name])
    return to_dataset(columns, dataset)
