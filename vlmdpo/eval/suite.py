"""One model's evaluation: preference fit, generation, CHAIR with object repetition, POPE, CLIPScore, lengths.

Each metric is a small function of the responses (or of the model, for POPE, which asks its own questions);
:func:`evaluate_model` runs the ones asked for and returns the numbers plus per-row records to save.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence

from vlmdpo.eval.chair import chair
from vlmdpo.eval.config import GENERATION_METRICS
from vlmdpo.eval.generation import generate_responses, with_prompt
from vlmdpo.eval.objects import ObjectVocabulary
from vlmdpo.eval.pope import build_pope_questions, parse_pope_answer, pope_metrics
from vlmdpo.eval.preference import preference_fit
from vlmdpo.eval.repetition import object_repetition


def _require_objects(rows: Sequence[dict], metric: str) -> list[list[str]]:
    missing = [row["index"] for row in rows if row.get("objects") is None]
    if missing:
        raise ValueError(f"{metric} needs ground-truth objects, but rows {missing[:5]} have none; set "
                         f"data.objects_column to the column with object names, or drop {metric} from metrics")
    return [row["objects"] for row in rows]


def check_rows(rows: Sequence[dict], metrics: Sequence[str], vocabulary: ObjectVocabulary | None = None) -> None:
    """Raise now, before any model runs, if ``rows`` lack what one of the ``metrics`` needs: pairs for the
    preference fit, ground-truth objects for CHAIR and POPE, and (given ``vocabulary``) objects it knows."""
    if not rows:
        raise ValueError("there are no evaluation rows")
    if "preference" in metrics and not any("chosen" in row for row in rows):
        raise ValueError("preference needs chosen/rejected columns; set data.chosen_column and "
                         "data.rejected_column, or drop preference from metrics")
    for metric in ("chair", "pope"):
        if metric in metrics:
            _require_objects(rows, metric)
    if vocabulary is not None and ("chair" in metrics or "pope" in metrics):
        _require_known_objects(rows, vocabulary)


def _require_known_objects(rows: Sequence[dict], vocabulary: ObjectVocabulary) -> None:
    unknown = {}
    for row in rows:
        for name in row["objects"]:
            if name not in vocabulary:
                unknown.setdefault(name, row["index"])
    if unknown:
        listed = ", ".join(f"{name!r} (row {index})" for name, index in list(unknown.items())[:5])
        raise ValueError(f"{len(unknown)} ground-truth object name(s) are not in the object vocabulary: {listed}"
                         f"{', ...' if len(unknown) > 5 else ''} (rows counted from 0). CHAIR and POPE can only "
                         "score objects the vocabulary names: give vocabulary=<file.json> holding "
                         '{"name": ["surface form", ...]} for your objects, or rename them to its names')


def caption_metrics(responses: Sequence[str], rows: Sequence[dict], vocabulary: ObjectVocabulary):
    """CHAIR_i, CHAIR_s, recall (against ``rows[k]["objects"]``) and object repetition of ``responses``.

    Returns the dataset numbers ``{chair_i, chair_s, recall, repetition, repetition_s}`` and per row the
    mentioned, hallucinated, missed and repeated objects.
    """
    result = chair(responses, _require_objects(rows, "chair"), vocabulary)
    repeats = object_repetition(responses, vocabulary)
    details = [{"mentioned": list(c.mentioned), "hallucinated": list(c.hallucinated), "missed": list(c.missed),
                "repeated": list(r.repeated)} for c, r in zip(result.captions, repeats.captions)]
    return {**result.as_dict(), **repeats.as_dict()}, details


def length_stats(responses: Sequence[str], tokenizer) -> dict[str, float]:
    """Mean / median / max response length in words and in tokens (re-tokenized), and the empty share."""
    words = [len(text.split()) for text in responses]
    tokens = [len(ids) for ids in tokenizer(list(responses), add_special_tokens=False)["input_ids"]]
    return {
        "mean_words": statistics.fmean(words), "median_words": float(statistics.median(words)),
        "max_words": max(words), "mean_tokens": statistics.fmean(tokens), "max_tokens": max(tokens),
        "empty_fraction": sum(w == 0 for w in words) / len(words),
    }


def clip_scores(judge, rows: Sequence[dict], responses: Sequence[str]) -> tuple[dict, list[float]]:
    """Mean CLIPScore (2.5 * max(cos, 0), arXiv:2104.08718) of each response with its row's first image."""
    scores = judge.score([row["images"][0] for row in rows], list(responses)).tolist()
    return {"mean": statistics.fmean(scores), "median": float(statistics.median(scores))}, scores


def pope_eval(model, processor, rows: Sequence[dict], vocabulary: ObjectVocabulary, *,
              strategies: Sequence[str] = ("random", "popular", "adversarial"), questions_per_image: int = 3,
              prompt_suffix: str = "", max_new_tokens: int = 8, batch_size: int = 16, seed: int = 0,
              progress: bool = True, **speed) -> tuple[dict[str, dict], list[dict]]:
    """POPE (arXiv:2305.10355) on ``rows``' images: ``{strategy: metrics}`` and one record per question.

    Questions come from the rows' ground-truth objects (canonicalised by ``vocabulary``), negatives from the
    vocabulary; the model answers with greedy generation, read by ``parse_pope_answer``. A question that
    several splits share (all positives are shared) is generated once. ``speed``: ``generate_responses``'s
    ``sort_by_length``, ``cache_implementation`` and ``compile``.
    """
    annotations = [[vocabulary.canonical(name) for name in objects]
                   for objects in _require_objects(rows, "pope")]
    questions = {strategy: build_pope_questions(annotations, vocabulary.names, strategy=strategy,
                                                num_negatives_per_image=questions_per_image, seed=seed)
                 for strategy in strategies}
    unique = list(dict.fromkeys((q.image_index, q.question) for qs in questions.values() for q in qs))
    prompts = [with_prompt(rows[image], text + prompt_suffix) for image, text in unique]
    answers = dict(zip(unique, generate_responses(model, processor, prompts, max_new_tokens=max_new_tokens,
                                                   batch_size=batch_size, progress=progress, **speed)))
    metrics, records = {}, []
    for strategy, qs in questions.items():
        predictions = [parse_pope_answer(answers[q.image_index, q.question]) for q in qs]
        metrics[strategy] = pope_metrics(predictions, [q.label for q in qs])
        records += [{"strategy": strategy, "index": rows[q.image_index]["index"], "object": q.object,
                     "label": q.label, "question": q.question + prompt_suffix,
                     "answer": answers[q.image_index, q.question], "prediction": p}
                    for q, p in zip(qs, predictions)]
    return metrics, records


def evaluate_model(model, processor, rows: Sequence[dict], *, metrics: Sequence[str], generation: dict,
                   pope: dict | None = None, vocabulary: ObjectVocabulary | None = None, judge=None,
                   beta: float = 0.1, preference_batch_size: int = 8, max_response_length: int | None = None,
                   reference=None, reference_logps: dict | None = None,
                   progress: bool = True) -> tuple[dict, dict]:
    """Run the ``metrics`` on one model; return ``(result, records)``.

    Args:
        rows: evaluation rows (``vlmdpo.eval.rows``); the preference fit uses those with chosen/rejected.
        generation: ``generate_responses`` keyword arguments (prompt, max_new_tokens, batch_size, ...).
        pope: ``pope_eval`` keyword arguments (strategies, questions_per_image, ...).
        reference, reference_logps: the preference fit's reference (see ``preference_fit``): ``None`` and
            ``None`` for the model's disabled adapter, a model (``model`` itself for a base model: log-probs
            only), or precomputed per-pair ``{"chosen_logps", "rejected_logps"}``.

    Returns:
        ``result``: ``{"preference": {...}, "chair": {...}, "pope": {split: {...}}, "clipscore": {...},
        "length": {...}}`` for the metrics run; ``records``: ``{"generations": [...], "pope": [...]}``, one
        dict per row or question with its row id.
    """
    check_rows(rows, metrics, vocabulary)
    result: dict = {}
    records: dict[str, list] = {"generations": [], "pope": []}
    if "preference" in metrics:
        pairs = [row for row in rows if "chosen" in row]
        result["preference"] = preference_fit(
            model, processor, pairs, beta=beta, batch_size=preference_batch_size, reference=reference,
            reference_logps=reference_logps, max_response_length=max_response_length, progress=progress)
    if any(metric in metrics for metric in GENERATION_METRICS):
        responses = generate_responses(model, processor, rows, progress=progress, **generation)
        records["generations"] = [{"index": row["index"], "response": text} for row, text in zip(rows, responses)]
        if "chair" in metrics:
            result["chair"], details = caption_metrics(responses, rows, vocabulary)
            for record, detail in zip(records["generations"], details):
                record.update(detail)
        if "clipscore" in metrics:
            result["clipscore"], scores = clip_scores(judge, rows, responses)
            for record, score in zip(records["generations"], scores):
                record["clipscore"] = score
        if "length" in metrics:
            result["length"] = length_stats(responses, getattr(processor, "tokenizer", processor))
    if "pope" in metrics:
        speed = {key: generation[key] for key in ("sort_by_length", "cache_implementation", "compile")
                 if key in generation}
        result["pope"], records["pope"] = pope_eval(
            model, processor, rows, vocabulary, batch_size=generation.get("batch_size", 16),
            progress=progress, **speed, **(pope or {}))
    return result, records
