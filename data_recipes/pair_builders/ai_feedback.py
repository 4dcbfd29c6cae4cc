"""AI-feedback preference pairs for any model and images: sample N responses, let a judge rank them.

For each row the policy samples ``num_samples`` responses (``vlmdpo.eval.generation.generate_responses``);
a judge scores each against the row's image; the best and the worst become (chosen, rejected) when the
judge separates them by at least ``margin``. No ground truth is needed (RLAIF-V, Yu et al. 2024,
arXiv:2405.17220, ranks a policy's own samples with an open model the same way).

A policy's worst sample is often its longest (it goes on naming things after the true ones), so best against
worst also teaches "shorter is better", a shortcut DPO takes at the cost of recall (Park et al. 2024,
arXiv:2403.19159). ``max_length_gap`` keeps only pairs whose responses differ by at most that many words: the
best-separated such pair of samples, so that length cannot be what separates chosen from rejected.

A judge is either an object with a batched ``score(images, texts)`` returning one score per pair, such
as ``vlmdpo.eval.judge.ClipJudge`` (CLIPScore), or any callable ``judge(image, text) -> float``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import datasets

from .messages import DESCRIBE_PROMPT, assistant_message, row_images, to_dataset, user_prompt


def judge_scores(judge, images: Sequence, texts: Sequence[str]) -> list[float]:
    """One score per ``(images[i], texts[i])``: ``judge.score`` batched if it has one, else ``judge(image, text)``."""
    if len(images) != len(texts):
        raise ValueError(f"judge_scores needs one text per image, got {len(images)} and {len(texts)}")
    score = getattr(judge, "score", None)
    if callable(score):
        return [float(s) for s in score(list(images), list(texts))]
    if not callable(judge):
        raise TypeError(f"a judge is an object with score(images, texts) or a callable judge(image, text), "
                        f"got {type(judge).__name__}")
    return [float(judge(image, text)) for image, text in zip(images, texts)]


def _ranked_pair(texts: Sequence[str], scores: Sequence[float], max_length_gap: int | None) -> tuple[int, int]:
    """``(chosen, rejected)`` sample indices: best against worst, or with ``max_length_gap`` the largest score gap
    between two different, non-empty samples within that many words of each other (``(0, 0)`` when none is)."""
    if max_length_gap is None:
        return max(range(len(scores)), key=scores.__getitem__), min(range(len(scores)), key=scores.__getitem__)
    words = [len(text.split()) for text in texts]
    candidates = [(scores[i] - scores[j], i, j) for i in range(len(texts)) for j in range(len(texts))
                  if scores[i] > scores[j] and abs(words[i] - words[j]) <= max_length_gap
                  and texts[i] != texts[j] and texts[i] and texts[j]]
    if not candidates:
        return 0, 0
    _, best, worst = max(candidates)
    return best, worst


def _prompt_rows(dataset: datasets.Dataset, prompt_text: str, prompt_column: str | None,
                 image_root: str | None) -> list[dict]:
    from vlmdpo.data.rows import normalize_row

    rows = []
    for i, row in enumerate(dataset):
        images = row_images(row)
        prompt = row[prompt_column] if prompt_column else user_prompt(prompt_text, len(images))
        rows.append(normalize_row({"images": images, "prompt": prompt}, i, image_root, responses=()))
    return rows


def ai_feedback_pairs(model, processor, dataset: datasets.Dataset, judge: Callable | object, *,
                      prompt_text: str = DESCRIBE_PROMPT, prompt_column: str | None = None,
                      num_samples: int = 4, temperature: float = 1.0, top_p: float = 1.0, margin: float = 0.05,
                      max_new_tokens: int = 64, batch_size: int = 16, seed: int = 0,
                      image_root: str | None = None, keep_columns: Sequence[str] = (),
                      max_length_gap: int | None = None, progress: bool = True) -> datasets.Dataset:
    """TRL preference rows ``images, prompt, chosen, rejected, chosen_score, rejected_score`` (+ ``keep_columns``).

    Args:
        model, processor: the policy that samples (usually the base model being aligned).
        dataset: rows with ``images`` (a list) or ``image``.
        judge: see the module docstring; it scores each response against the row's first image.
        prompt_text: the user turn after the image blocks; or ``prompt_column``, a column of prompts
            (messages or strings with ``<image>``) used instead.
        num_samples: responses sampled per row at ``temperature`` / ``top_p``, at least 2.
        margin: smallest score gap between the best and the worst for the row to give a pair; rows whose
            best and worst responses are the same text, or either is empty, give none.
        max_length_gap: ``None``: best against worst. A number: the pair of samples with the largest score gap
            among those whose word counts differ by at most this much (0: the same number of words).
        seed: seeds the sampling (the caller's RNG state is left as it was).
    """
    if num_samples < 2:
        raise ValueError(f"num_samples must be >= 2 to rank responses, got {num_samples}")
    if max_length_gap is not None and max_length_gap < 0:
        raise ValueError(f"max_length_gap must be None or a number of words >= 0, got {max_length_gap}")
    from vlmdpo.eval.generation import generate_responses

    rows = _prompt_rows(dataset, prompt_text, prompt_column, image_root)
    samples = generate_responses(model, processor, rows, max_new_tokens=max_new_tokens, batch_size=batch_size,
                                 do_sample=True, temperature=temperature, top_p=top_p,
                                 num_return_sequences=num_samples, seed=seed, progress=progress)
    kept = {name: dataset[name] for name in keep_columns}  # read once, not row by row (rows decode images)
    flat_images = [row["images"][0] if row["images"] else None for row in rows for _ in range(num_samples)]
    flat_scores = judge_scores(judge, flat_images, [text for group in samples for text in group])
    columns: dict[str, list] = {"images": [], "prompt": [], "chosen": [], "rejected": [], "chosen_score": [],
                                "rejected_score": [], **{name: [] for name in keep_columns}}
    for i, (row, group) in enumerate(zip(rows, samples)):
        scores = flat_scores[i * num_samples: (i + 1) * num_samples]
        best, worst = _ranked_pair(group, scores, max_length_gap)
        if scores[best] - scores[worst] < margin or group[best] == group[worst] or not (group[best] and group[worst]):
            continue
        columns["images"].append(row["images"])
        columns["prompt"].append(row["prompt"])
        columns["chosen"].append(assistant_message(group[best]))
        columns["rejected"].append(assistant_message(group[worst]))
        columns["chosen_score"].append(scores[best])
        columns["rejected_score"].append(scores[worst])
        for name in keep_columns:
            columns[name].append(kept[name][i])
    return to_dataset(columns, dataset)
