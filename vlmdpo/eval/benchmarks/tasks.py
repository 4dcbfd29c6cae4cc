"""What ``vlmdpo eval benchmark=...`` asks a model on each benchmark, how it scores the answers, and how it saves
them in the layout the benchmark's own script reads.

A task holds the benchmark's :class:`BenchmarkQuestion` list (every image checked to exist before a model loads)
and offers three things, one per step of :mod:`vlmdpo.eval.benchmark_run`:

* ``score(answers)``: ``{key: answer text}`` -> ``(result, records)``, the numbers in the benchmark's own columns
  and one record per question (what the paired bootstrap resamples);
* ``write_answers(folder, answers)``: the raw answers with their benchmark ids, in the official layout;
* ``change(base_records, other_records, num_resamples)``: the headline number's change from the base with a
  paired bootstrap interval over images (MMHal-Bench: over questions), or ``None`` where it is not defined.

POPE and AMBER live here; CHAIR and MMHal-Bench, whose answers are free text, in :mod:`.open_tasks`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from vlmdpo.eval.benchmarks._files import BenchmarkFormatError
from vlmdpo.eval.benchmarks.amber import Amber, amber_answer_official, read_amber, score_amber
from vlmdpo.eval.benchmarks.amber_nouns import score_generative
from vlmdpo.eval.benchmarks.pope import PopeItem, parse_pope_answer_official, read_pope, score_pope
from vlmdpo.eval.bootstrap import paired_bootstrap_change
from vlmdpo.eval.pope import pope_f1_change


@dataclass(frozen=True)
class BenchmarkQuestion:
    """One prompt to answer."""

    key: str
    """Unique within the benchmark: "coco_random/3" (POPE: split/question_id), else the benchmark's id."""
    image: Path | bytes
    """The image file, or its encoded bytes where the benchmark file embeds the image (Object HalBench)."""
    text: str
    """The text after the image, suffix included."""
    yes_no: bool
    """A yes/no question (``pope.max_new_tokens``, greedy) rather than an open one (``generation``)."""


def image_path(root: Path, name: str, benchmark: str, key: str) -> Path:
    """``root / name``, refused unless the file exists (named by question, path and fix)."""
    path = root / name
    if not path.is_file():
        raise BenchmarkFormatError(f"{benchmark}: the image of question {key} is not at {path}; set "
                                   f"data.image_root to the folder holding the benchmark's images (now {root})")
    return path


def _write_json(path: Path, data) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1))
    return path


class PopeTask:
    """POPE's question files: accuracy, precision, recall, F1 and yes-ratio per split; headline mean F1."""

    headline = "pope_f1"

    def __init__(self, source: str, image_root: Path, *, suffix: str = "", max_rows: int | None = None):
        self.splits: dict[str, list[PopeItem]] = {split: items[:max_rows]
                                                  for split, items in read_pope(source).items()}
        self.suffix = suffix
        self.questions = [BenchmarkQuestion(f"{split}/{item.question_id}",
                                            image_path(image_root, item.image, "POPE", f"{split}/{item.question_id}"),
                                            item.text + suffix, True)
                          for split, items in self.splits.items() for item in items]

    def score(self, answers: Mapping[str, str]) -> tuple[dict, list[dict]]:
        """Per split the official metrics, plus their mean over splits; a record per question."""
        given = {split: {item.question_id: answers[f"{split}/{item.question_id}"] for item in items}
                 for split, items in self.splits.items()}
        per_split = score_pope(self.splits, given)
        mean = {key: sum(m[key] for m in per_split.values()) / len(per_split) for key in ("accuracy", "f1")}
        records = [{"strategy": split, "index": item.image, "object": item.question_id,
                    "question_id": item.question_id, "label": item.label, "answer": given[split][item.question_id],
                    "prediction": parse_pope_answer_official(given[split][item.question_id])}
                   for split, items in self.splits.items() for item in items]
        return {"pope": {**per_split, "mean": mean}}, records

    def write_answers(self, folder: Path, answers: Mapping[str, str]) -> list[Path]:
        """One json-lines file per split, ``question_id`` + ``text`` per line in the question file's order
        (LLaVA's ``model_vqa_loader`` layout, read by its ``eval_pope.py`` and by ``read_pope_answers``)."""
        paths = []
        for split, items in self.splits.items():
            path = folder / "pope_answers" / f"{split}.jsonl"
            path.parent.mkdir(parents=True, exist_ok=True)
            lines = [json.dumps({"question_id": item.question_id, "prompt": item.text + self.suffix,
                                 "text": answers[f"{split}/{item.question_id}"], "model_id": folder.name})
                     for item in items]
            path.write_text("".join(line + "\n" for line in lines))
            paths.append(path)
        return paths

    def change(self, base_records: Sequence[dict], other_records: Sequence[dict], num_resamples: int = 2000):
        """Mean-over-splits F1 change, images resampled (:func:`vlmdpo.eval.pope.pope_f1_change`)."""
        return pope_f1_change(base_records, other_records, num_resamples=num_resamples)


class AmberTask:
    """AMBER's queries: generative CHAIR, Cover, Hal, Cog; yes/no metrics per dimension; the AMBER score."""

    headline = "amber_score"

    def __init__(self, source: str, image_root: Path, *, query_file: str | None = None, suffix: str = "",
                 prompt: str | None = None, max_rows: int | None = None):
        self.amber: Amber = read_amber(source, query_file or None)
        self.queries = self.amber.queries[:max_rows]
        self.questions = []
        for query in self.queries:
            generative = query.dimension == "generative"
            text = (prompt or query.query) if generative else query.query + suffix
            self.questions.append(BenchmarkQuestion(str(query.id), image_path(image_root, query.image, "AMBER",
                                                                              str(query.id)), text, not generative))
        described = any(not q.yes_no for q in self.questions)
        asked_yes_no = any(q.yes_no for q in self.questions)
        self.headline = ("amber_score" if described and asked_yes_no else "amber_chair" if described else "amber_f1")

    def score(self, answers: Mapping[str, str]) -> tuple[dict, list[dict]]:
        """:func:`.amber.score_amber` of the answers; per query its object-word counts or yes/no reading."""
        responses = {query.id: answers[str(query.id)] for query in self.queries}
        result = score_amber(self.amber, responses)
        amber = self.amber
        descriptions = {i: text for i, text in responses.items() if i in self._generative_ids}
        per_id = (score_generative(descriptions, amber.annotations, amber.association, amber.safe_words)["per_id"]
                  if descriptions else {})
        records = []
        for query in self.queries:
            record = {"id": query.id, "index": query.image, "dimension": query.dimension,
                      "response": responses[query.id]}
            if query.id in per_id:
                record.update(words=len(per_id[query.id]["words"]), hallucinated=len(per_id[query.id]["hallucinated"]))
            else:
                record.update(answer=amber_answer_official(responses[query.id]),
                              truth=str(amber.annotations[query.id]["truth"]))
            records.append(record)
        return {"amber": result}, records

    @property
    def _generative_ids(self) -> set[int]:
        return {query.id for query in self.queries if query.dimension == "generative"}

    def write_answers(self, folder: Path, answers: Mapping[str, str]) -> list[Path]:
        """``amber_responses.json``: a json list of ``{"id", "response"}``, what AMBER's ``inference.py`` reads
        as ``--inference_data``."""
        rows = [{"id": query.id, "response": answers[str(query.id)]} for query in self.queries]
        return [_write_json(folder / "amber_responses.json", rows)]

    def change(self, base_records: Sequence[dict], other_records: Sequence[dict], num_resamples: int = 2000):
        """The headline's change with images resampled: AMBER score = (1 - CHAIR + F1) / 2, or CHAIR or F1
        alone when only one kind of query was asked. F1 = 2 hits / ("No" answers + truly-no questions)."""
        import numpy as np

        images = sorted({r["index"] for r in base_records})
        row_of = {image: i for i, image in enumerate(images)}
        counts = np.zeros((2, len(images), 5))  # hallucinated words, words, correct "No"s, "No" answers, truly no
        for m, records in enumerate((base_records, other_records)):
            for r in records:
                if "words" in r:
                    counts[m, row_of[r["index"]], :2] += (r["hallucinated"], r["words"])
                else:
                    no, truly_no = r["answer"] == "no", r["truth"] == "no"
                    counts[m, row_of[r["index"]], 2:] += (no and truly_no, no, truly_no)

        def ratio(numerator, denominator):
            return np.divide(numerator, denominator, out=np.zeros_like(numerator), where=denominator > 0)

        def statistic(totals):
            chair = ratio(totals[..., 0], totals[..., 1])
            f1 = ratio(2 * totals[..., 2], totals[..., 3] + totals[..., 4])
            return {"amber_score": (1 - chair + f1) / 2, "amber_chair": chair, "amber_f1": f1}[self.headline]

        return paired_bootstrap_change(counts, statistic, num_resamples=num_resamples)
