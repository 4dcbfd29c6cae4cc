"""The free-text benchmarks of ``vlmdpo eval benchmark=...``: CHAIR / Object HalBench captions and MMHal-Bench
answers. Same three steps as :mod:`.tasks` (score, write the answers in the official layout, change from the
base); see there.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from vlmdpo.eval.benchmarks._files import BenchmarkFormatError, read_rows
from vlmdpo.eval.benchmarks.chair import (
    ChairQuestion,
    ChairWords,
    coco_file_names,
    read_chair_questions,
    read_coco_ground_truth,
    score_chair,
)
from vlmdpo.eval.benchmarks.mmhal import read_mmhal, score_mmhal
from vlmdpo.eval.benchmarks.tasks import BenchmarkQuestion, _write_json, image_path
from vlmdpo.eval.bootstrap import paired_bootstrap_change
from vlmdpo.eval.chair import chair_i_change


def _chair_image(question: ChairQuestion, root: Path, file_names: Mapping[int, str]) -> Path | bytes:
    value = question.image
    if value and len(value) > 256 and not (root / value).is_file():  # Object HalBench embeds base64 images
        try:
            return base64.b64decode(value, validate=True)
        except binascii.Error:
            pass
    if not value:
        if question.image_id not in file_names:
            raise BenchmarkFormatError(f"CHAIR: image_id {question.image_id} has no 'image' in the question file "
                                       "and is not among the images of the COCO instances files; give "
                                       "bench.annotations the instances file of its split")
        value = file_names[question.image_id]
    return image_path(root, value, "CHAIR", f"image_id {question.image_id}")


class ChairTask:
    """CHAIR over an image list (Object HalBench's question file, or every image of the COCO instances files):
    CHAIR_s, CHAIR_i and recall with the CHAIR paper's rules; headline CHAIR_i."""

    headline = "chair_i"

    def __init__(self, source: str, image_root: Path, *, annotations: str = "", words: ChairWords | None = None,
                 prompt: str | None = None, default_prompt: str | None = "Describe the image.",
                 max_rows: int | None = None):
        annotations = annotations or source
        self.words = words or ChairWords.coco()
        file_names = coco_file_names(annotations)
        if Path(source).is_dir():
            questions = [ChairQuestion(image_id, None, None) for image_id in file_names]
        else:
            questions = read_chair_questions(source)
        self.items = questions[:max_rows]
        seen = [q.image_id for q in self.items]
        if len(set(seen)) != len(seen):
            raise BenchmarkFormatError(f"CHAIR: {source} lists an image_id twice; CHAIR scores one caption per image")
        self.ground_truth = read_coco_ground_truth(annotations, words=self.words)
        self.questions = []
        for item in self.items:
            text = prompt or item.prompt or default_prompt
            if not text:
                raise BenchmarkFormatError(f"CHAIR: image_id {item.image_id} has no prompt; set bench.prompt or "
                                           "generation.prompt")
            self.questions.append(BenchmarkQuestion(str(item.image_id), _chair_image(item, image_root, file_names),
                                                    text, False))

    def score(self, answers: Mapping[str, str]) -> tuple[dict, list[dict]]:
        """:func:`.chair.score_chair`; per caption its mentions and hallucinated mentions, repeats kept."""
        captions = {item.image_id: answers[str(item.image_id)] for item in self.items}
        scored = score_chair(captions, self.ground_truth, words=self.words)
        records = [{"index": d["image_id"], "image_id": d["image_id"], "caption": captions[d["image_id"]],
                    "mentioned": [list(m) for m in d["mentions"]], "hallucinated": [list(h) for h in d["hallucinated"]]}
                   for d in scored.captions]
        return {"chair": scored.as_dict()}, records

    def write_answers(self, folder: Path, answers: Mapping[str, str]) -> list[Path]:
        """``chair_captions.json``: a json list of ``{"image_id", "caption"}`` (COCO's results format, what the
        CHAIR script's caption loaders read)."""
        rows = [{"image_id": item.image_id, "caption": answers[str(item.image_id)]} for item in self.items]
        return [_write_json(folder / "chair_captions.json", rows)]

    def change(self, base_records: Sequence[dict], other_records: Sequence[dict], num_resamples: int = 2000):
        """CHAIR_i change over images; every mention counts, as in the benchmark's CHAIR_i."""
        return chair_i_change(base_records, other_records, num_resamples=num_resamples)


class MMHalTask:
    """MMHal-Bench: answers rated 0-6 by ``judge``; score and hallucination rate overall and per question type.
    Without a judge the answers are written but not scored."""

    headline = "mmhal_score"

    def __init__(self, source: str, image_root: Path, *, judge: Callable[[str, str, str], int] | None = None,
                 max_rows: int | None = None):
        self.items = read_mmhal(source)[:max_rows]
        self.template = read_rows(source, "MMHal-Bench")[:max_rows]
        self.judge = judge
        self.questions = [BenchmarkQuestion(str(i), image_path(image_root, item.image, "MMHal-Bench", str(i)),
                                            item.question, False) for i, item in enumerate(self.items)]

    def score(self, answers: Mapping[str, str]) -> tuple[dict, list[dict]]:
        """:func:`.mmhal.score_mmhal` with the judge, else only the count of answers."""
        texts = [answers[str(i)] for i in range(len(self.items))]
        records = [{"index": i, "question_type": item.question_type, "model_answer": text}
                   for i, (item, text) in enumerate(zip(self.items, texts))]
        if self.judge is None:
            return {"mmhal": {"answered": len(texts)}}, records
        scored = score_mmhal(self.items, texts, self.judge)
        for record, rating in zip(records, scored.pop("ratings")):
            record["rating"] = rating
        return {"mmhal": scored}, records

    def write_answers(self, folder: Path, answers: Mapping[str, str]) -> list[Path]:
        """``mmhal_responses.json``: the benchmark's ``response_template.json`` with ``model_answer`` filled in,
        what LLaVA-RLHF's ``eval_gpt_mmhal.py`` reads as ``--response``."""
        rows = [{**row, "model_answer": answers[str(i)]} for i, row in enumerate(self.template)]
        return [_write_json(folder / "mmhal_responses.json", rows)]

    def change(self, base_records: Sequence[dict], other_records: Sequence[dict], num_resamples: int = 2000):
        """Average-rating change with questions resampled; ``None`` when there is no judge."""
        import numpy as np

        if not all("rating" in r for r in (*base_records, *other_records)):
            return None
        counts = np.array([[[r["rating"], 1.0] for r in records] for records in (base_records, other_records)])
        return paired_bootstrap_change(counts, lambda totals: totals[..., 0] / totals[..., 1],
                                       num_resamples=num_resamples)
