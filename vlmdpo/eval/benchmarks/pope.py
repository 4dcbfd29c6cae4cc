"""POPE as published: its fixed question files, answers read the way its evaluation script reads them.

Li et al., "Evaluating Object Hallucination in Large Vision-Language Models", EMNLP 2023, arXiv:2305.10355;
files and script in AoiDragon/POPE (``output/coco/coco_pope_{random,popular,adversarial}.json`` and
``evaluate.py``), the same rules in LLaVA's ``llava/eval/eval_pope.py``.

A question file is json lines, one question per line: ``question_id``, ``image`` (file name), ``text`` ("Is
there a dog in the image?") and ``label`` ("yes"/"no"); COCO's also has ``image_id``. Files are named
``{source}_pope_{strategy}.json`` (source coco, aokvqa, gqa, ...; strategy random, popular, adversarial) and
each file is one split, here named ``{source}_{strategy}`` ("coco_random"). LLaVA's merged question file
(one file, a ``category`` field per row) is read as one split per category.

Scoring (:func:`parse_pope_answer_official`): keep the text before the first ".", drop commas, split on single
spaces; the answer is "no" when one of the pieces is exactly "No", "no" or "not", else "yes". So "NO", "No!"
and "I don't think so" count as "yes", exactly as in the published numbers. The per-split metrics are
:func:`vlmdpo.eval.pope.pope_metrics` ("yes" is the positive class), which returns 0.0 where the script would
divide by zero.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from vlmdpo.eval.benchmarks._files import (
    BenchmarkFormatError,
    read_rows,
    require_fields,
)
from vlmdpo.eval.pope import pope_metrics

POPE_FIELDS = ("question_id", "image", "text", "label")
_FILE_NAME = re.compile(r"^(?P<source>.+)_pope_(?P<strategy>[a-z]+)$")
_FIX = ("POPE question files are json lines with question_id, image, text and label per line, "
        "as in AoiDragon/POPE output/coco/coco_pope_random.json")


@dataclass(frozen=True)
class PopeItem:
    """One published POPE question."""

    split: str
    """Which file it came from, e.g. "coco_random"."""
    question_id: int | str
    """The file's ``question_id``; unique within a split only (every file starts again at 1)."""
    image: str
    """The image file name, e.g. "COCO_val2014_000000548882.jpg"."""
    text: str
    """The question, e.g. "Is there a dining table in the image?"."""
    label: str
    """The truth: "yes" or "no"."""


def parse_pope_answer_official(text: str) -> str:
    """ "yes" or "no", read from a free-text answer by the POPE script's rule (module docstring).

    >>> parse_pope_answer_official("No, there is no dog.")
    'no'
    >>> parse_pope_answer_official("NO")  # case matters in the published script
    'yes'
    """
    pieces = text.split(".", 1)[0].replace(",", "").split(" ")
    return "no" if {"No", "no", "not"}.intersection(pieces) else "yes"


def _split_name(path: Path) -> str:
    stem = path.name.split(".", 1)[0]
    match = _FILE_NAME.match(stem)
    return f"{match['source']}_{match['strategy']}" if match else stem


def _read_file(path: Path) -> dict[str, list[PopeItem]]:
    rows = read_rows(path, "POPE")
    require_fields(rows, POPE_FIELDS, path, "POPE", _FIX)
    by_category = all("category" in row for row in rows)
    splits: dict[str, list[PopeItem]] = {}
    for number, row in enumerate(rows):
        label = str(row["label"]).strip().lower()
        if label not in ("yes", "no"):
            raise BenchmarkFormatError(f"POPE: row {number} of {path} has label {row['label']!r}; expected "
                                       "'yes' or 'no'. Is this a question file rather than an answer file?")
        split = str(row["category"]) if by_category else _split_name(path)
        splits.setdefault(split, []).append(
            PopeItem(split, row["question_id"], str(row["image"]), str(row["text"]), label))
    for split, items in splits.items():
        ids = [item.question_id for item in items]
        if len(set(ids)) != len(ids):
            raise BenchmarkFormatError(f"POPE: {path} repeats a question_id within split {split!r}; answers "
                                       "are matched by question_id, so each must be unique per split")
    return splits


def read_pope(source: str | Path) -> dict[str, list[PopeItem]]:
    """Questions per split from one POPE question file, or from every ``*_pope_*.json[l]`` file in a folder."""
    source = Path(source)
    if source.is_dir():
        files = sorted(p for p in source.iterdir() if _FILE_NAME.match(p.name.split(".", 1)[0])
                       and p.suffix in (".json", ".jsonl"))
        if not files:
            raise BenchmarkFormatError(f"POPE: {source} holds no question file named {{source}}_pope_{{strategy}}"
                                       ".json (e.g. coco_pope_random.json); point data.source at the folder "
                                       "POPE's files were downloaded to, or at one file")
    else:
        files = [source]
    splits: dict[str, list[PopeItem]] = {}
    for path in files:
        for split, items in _read_file(path).items():
            if split in splits:
                raise BenchmarkFormatError(f"POPE: split {split!r} appears in two files of {source}; keep one")
            splits[split] = items
    return splits


def read_pope_answers(path: str | Path, questions: Sequence[PopeItem] | None = None) -> dict:
    """``{question_id: answer text}`` from an answer file.

    LLaVA's layout (``question_id`` and ``text`` per line) is matched by id. POPE's own layout (``answer`` per
    line, no id) is matched by order, as its script does, which needs that split's ``questions``.
    """
    rows = read_rows(path, "POPE")
    if rows and all("question_id" in row for row in rows):
        require_fields(rows, ("text",), path, "POPE", "LLaVA's POPE answer files have question_id and text")
        return {row["question_id"]: str(row["text"]) for row in rows}
    require_fields(rows, ("answer",), path, "POPE", "POPE's answer files have one 'answer' per line, in the "
                   "question file's order; LLaVA's have question_id and text")
    if questions is None or len(questions) != len(rows):
        raise BenchmarkFormatError(f"POPE: {path} has no question_id, so its {len(rows)} answers are matched "
                                   "by order; pass that split's questions (same count, same order)")
    return {item.question_id: str(row["answer"]) for item, row in zip(questions, rows)}


def score_pope(questions: Mapping[str, Sequence[PopeItem]], answers: Mapping[str, Mapping],
               parse: Callable[[str], str] = parse_pope_answer_official) -> dict[str, dict[str, float]]:
    """Accuracy, precision, recall, F1, yes-ratio (and tp/fp/tn/fn) per split.

    ``answers[split][question_id]`` is the model's free-text answer; ``parse`` turns it into "yes"/"no"
    (default: the official rule; :func:`vlmdpo.eval.pope.parse_pope_answer` is the case-insensitive variant
    ``vlmdpo eval`` uses on its own questions). Every question must have an answer.
    """
    results = {}
    for split, items in questions.items():
        given = answers.get(split, {})
        missing = [item.question_id for item in items if item.question_id not in given]
        if missing:
            raise ValueError(f"POPE split {split!r}: no answer for {len(missing)} of {len(items)} questions "
                             f"(first question_id {missing[0]!r}); answer every question of the file")
        predictions = [parse(given[item.question_id]) for item in items]
        results[split] = pope_metrics(predictions, [item.label for item in items])
    return results
