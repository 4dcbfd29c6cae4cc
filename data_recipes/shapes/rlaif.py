"""AI-feedback preference pairs (RLAIF-style): sample captions from a policy, rank them with a CLIP judge.

For each image the policy samples several captions; the judge's CLIPScore ranks them; the best and the worst
become a (chosen, rejected) pair when the judge separates them by at least ``margin``. No ground truth is
used, so the recipe works on any image set (Yu et al. 2024, RLAIF-V, arXiv:2405.17220, uses an open
model as the judge in the same way).
"""

from __future__ import annotations

import datasets

from .build import assistant_message, user_prompt
from .captions import DESCRIBE_PROMPT


def rlaif_pairs(model, processor, judge, dataset_split: datasets.Dataset, *, num_samples: int = 4,
                temperature: float = 1.0, margin: float = 0.05, max_new_tokens: int = 48,
                batch_size: int = 32, seed: int = 0, prompt_text: str = DESCRIBE_PROMPT,
                progress: bool = True) -> datasets.Dataset:
    """Preference rows ``images, prompt, chosen, rejected, objects, chosen_score, rejected_score``.

    Args:
        model, processor: the policy that samples captions (usually the base model being aligned).
        judge: a ``vlmdpo.judge.ClipJudge``.
        dataset_split: rows with ``images`` (one image) and ``objects`` (kept for evaluation only).
        num_samples: captions sampled per image at ``temperature``.
        margin: smallest CLIPScore gap between best and worst for a pair to be kept.
    """
    from vlmdpo.data import normalize_row
    from vlmdpo.eval.generation import generate_responses

    prompt = user_prompt(prompt_text)
    rows = [normalize_row({"images": r["images"], "prompt": prompt}, i, responses=())
            for i, r in enumerate(dataset_split)]
    samples = generate_responses(model, processor, rows, max_new_tokens=max_new_tokens, batch_size=batch_size,
                                 do_sample=True, temperature=temperature, num_return_sequences=num_samples,
                                 seed=seed, progress=progress)
    images = [row["images"][0] for row in rows for _ in range(num_samples)]
    scores = judge.score(images, [text for group in samples for text in group]).view(len(rows), num_samples)
    out = {"images": [], "prompt": [], "chosen": [], "rejected": [], "objects": [],
           "chosen_score": [], "rejected_score": []}
    for i, (group, row_scores) in enumerate(zip(samples, scores.tolist())):
        best = max(range(num_samples), key=row_scores.__getitem__)
        worst = min(range(num_samples), key=row_scores.__getitem__)
        if row_scores[best] - row_scores[worst] < margin or group[best] == group[worst] or not group[worst]:
            continue
        out["images"].append(dataset_split[i]["images"])
        out["prompt"].append(prompt)
        out["chosen"].append(assistant_message(group[best]))
        out["rejected"].append(assistant_message(group[worst]))
        out["objects"].append(dataset_split[i]["objects"])
        out["chosen_score"].append(row_scores[best])
        out["rejected_score"].append(row_scores[worst])
    return datasets.Dataset.from_dict(out).cast_column("images", dataset_split.features["images"])
