"""AI-feedback preference pairs (RLAIF-style): sample captions from a policy, rank them with a CLIP judge.

For each image the policy samples several captions; the judge's CLIPScore ranks them; the best and the worst
become a (chosen, rejected) pair when the judge separates them by at least ``margin``. No ground truth is
used, so the recipe works on any image set (Yu et al. 2024, RLAIF-V, arXiv:2405.17220, uses an open
model as the judge in the same way). The shapes world's use of the general
``data_recipes.pair_builders.ai_feedback_pairs``, keeping each scene's ``objects`` for evaluation.
"""

from __future__ import annotations

import datasets

from data_recipes.pair_builders import ai_feedback_pairs

from .captions import DESCRIBE_PROMPT


def rlaif_pairs(model, processor, judge, dataset_split: datasets.Dataset, *, num_samples: int = 4,
                temperature: float = 1.0, margin: float = 0.05, max_new_tokens: int = 48,
                batch_size: int = 32, seed: int = 0, prompt_text: str = DESCRIBE_PROMPT,
                max_length_gap: int | None = None, progress: bool = True) -> datasets.Dataset:
    """Preference rows ``images, prompt, chosen, rejected, chosen_score, rejected_score, objects``.

    Args:
        model, processor: the policy that samples captions (usually the base model being aligned).
        judge: a ``vlmdpo.eval.judge.ClipJudge``.
        dataset_split: rows with ``images`` (one image) and ``objects`` (kept for evaluation only).
        num_samples: captions sampled per image at ``temperature``.
        margin: smallest CLIPScore gap between best and worst for a pair to be kept.
        max_length_gap: largest word-count difference between chosen and rejected (``None``: best against worst).
    """
    return ai_feedback_pairs(model, processor, dataset_split, judge, prompt_text=prompt_text,
                             num_samples=num_samples, temperature=temperature, margin=margin,
                             max_new_tokens=max_new_tokens, batch_size=batch_size, seed=seed,
                             keep_columns=("objects",), max_length_gap=max_length_gap, progress=progress)
