"""The paired bootstrap over images that compares two models' evaluations (Efron and Tibshirani 1993, ch. 13)."""

from __future__ import annotations

from collections.abc import Callable


def paired_bootstrap_change(counts, statistic: Callable, *, num_resamples: int = 2000, confidence: float = 0.95,
                            seed: int = 0) -> dict[str, float]:
    """``{"change", "low", "high"}`` of ``statistic(other) - statistic(base)``, resampling images.

    ``counts`` is a numpy array (2, images, ...) of per-image counts, base first; ``statistic`` maps counts
    summed over images (shape ``...``, or ``(resamples, ...)``) to the metric, so ratios are recomputed on each
    resample rather than averaged per image. Each resample draws images with replacement, the same draw for
    both models.
    """
    import numpy as np

    images = counts.shape[1]
    change = float(statistic(counts[1].sum(0)) - statistic(counts[0].sum(0)))
    rng = np.random.default_rng(seed)
    weights = rng.multinomial(images, np.full(images, 1 / images), size=num_resamples)
    resampled = np.einsum("rn,mn...->mr...", weights, counts)
    changes = statistic(resampled[1]) - statistic(resampled[0])
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(changes, [tail, 100 - tail])
    return {"change": change, "low": float(low), "high": float(high)}
