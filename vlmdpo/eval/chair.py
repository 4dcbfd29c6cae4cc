"""CHAIR: how many objects a caption claims that the image does not contain.

Rohrbach et al., "Object Hallucination in Image Captioning", EMNLP 2018, arXiv:1809.02156. Per caption, the
*claimed* objects are the canonical names of its non-negated mentions (see :mod:`vlmdpo.eval.objects`),
each counted once however often it is repeated. Over a dataset of N captions:

    CHAIR_i = sum_c |claimed_c - gt_c| / sum_c |claimed_c|      (hallucinated share of claimed objects)
    CHAIR_s = #{c : claimed_c - gt_c is not empty} / N           (share of captions with a hallucination)
    recall  = sum_c |claimed_c & gt_c| / sum_c |gt_c|            (share of ground-truth objects mentioned)

A ratio whose denominator is zero (no claims, no captions, no ground truth) is defined as 0.0, so an empty
caption hallucinates nothing and recalls nothing.

Differences from the reference script (LisaAnne/Hallucination ``utils/chair.py``): it counts every
repetition of an object in CHAIR_i where we count each object once per caption, matching the paper's
set notation; it has no negation rule; and it lemmatises with NLTK/pattern where we use the plural rules
of :mod:`vlmdpo.eval.objects`. Numbers are therefore close to, not identical with, published ones.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from vlmdpo.eval.bootstrap import paired_bootstrap_change
from vlmdpo.eval.objects import ObjectVocabulary


@dataclass(frozen=True)
class CaptionChair:
    """CHAIR details of one caption; every field holds canonical object names."""

    mentioned: tuple[str, ...]
    """Objects the caption claims (non-negated mentions), in order of first mention."""
    hallucinated: tuple[str, ...]
    """Claimed objects absent from the ground truth, in order of first mention."""
    missed: tuple[str, ...]
    """Ground-truth objects the caption does not claim, sorted."""
    ground_truth: tuple[str, ...]
    """The image's ground-truth objects after mapping synonyms, sorted."""


@dataclass(frozen=True)
class ChairResult:
    """Dataset-level CHAIR numbers and the per-caption details behind them."""

    chair_i: float
    """Hallucinated claimed objects / all claimed objects (0.0 when nothing is claimed)."""
    chair_s: float
    """Captions with at least one hallucinated object / all captions (0.0 when there are none)."""
    recall: float
    """Ground-truth objects claimed / all ground-truth objects (0.0 when there is no ground truth)."""
    captions: tuple[CaptionChair, ...]
    """One entry per input caption, in input order."""

    def as_dict(self) -> dict[str, float]:
        """The three dataset-level numbers, ready for a logger."""
        return {"chair_i": self.chair_i, "chair_s": self.chair_s, "recall": self.recall}


def _ratio(numerator: int, denominator: int) -> float:
    return numerator / denominator if denominator else 0.0


def chair_caption(caption: str, ground_truth: Iterable[str], vocabulary: ObjectVocabulary) -> CaptionChair:
    """Claimed, hallucinated and missed objects of one caption.

    ``ground_truth`` may use any surface form of the vocabulary ("puppy" counts as "dog"); a name the
    vocabulary does not know raises ValueError rather than silently counting as never mentioned.
    """
    truth = {vocabulary.canonical(name) for name in ground_truth}
    claimed = dict.fromkeys(m.canonical for m in vocabulary.find_mentions(caption) if not m.negated)
    return CaptionChair(
        mentioned=tuple(claimed),
        hallucinated=tuple(name for name in claimed if name not in truth),
        missed=tuple(sorted(truth.difference(claimed))),
        ground_truth=tuple(sorted(truth)),
    )


def chair(
    captions: Sequence[str],
    ground_truth: Sequence[Iterable[str]],
    vocabulary: ObjectVocabulary,
) -> ChairResult:
    """CHAIR_i, CHAIR_s and object recall of ``captions`` against per-image ``ground_truth`` objects.

    ``captions[k]`` describes the image whose objects are ``ground_truth[k]``. Formulas in the module
    docstring; arXiv:1809.02156.
    """
    if len(captions) != len(ground_truth):
        raise ValueError(
            f"got {len(captions)} captions but {len(ground_truth)} ground-truth object lists; "
            "pass one list of objects per caption"
        )
    details = tuple(chair_caption(c, truth, vocabulary) for c, truth in zip(captions, ground_truth))
    num_claimed = sum(len(d.mentioned) for d in details)
    num_hallucinated = sum(len(d.hallucinated) for d in details)
    num_truth = sum(len(d.ground_truth) for d in details)
    num_recalled = num_truth - sum(len(d.missed) for d in details)
    return ChairResult(
        chair_i=_ratio(num_hallucinated, num_claimed),
        chair_s=_ratio(sum(bool(d.hallucinated) for d in details), len(details)),
        recall=_ratio(num_recalled, num_truth),
        captions=details,
    )


def chair_i_change(base_records: Sequence[dict], other_records: Sequence[dict], *, num_resamples: int = 2000,
                   confidence: float = 0.95, seed: int = 0) -> dict[str, float]:
    """How much CHAIR_i changes from ``base_records`` to ``other_records``, with a paired bootstrap interval
    over images: ``{"change", "low", "high"}`` (negative: fewer hallucinated objects).

    Both are per-caption records of the same images (``index``, ``mentioned``, ``hallucinated``: what
    ``vlmdpo.eval.suite.evaluate_model`` keeps under ``records["generations"]``). Images are resampled with
    replacement, each carrying its caption from both models; CHAIR_i is recomputed as a ratio of sums on each
    resample (Efron and Tibshirani 1993, ch. 13), as ``pope_f1_change`` does for POPE.
    """
    import numpy as np

    base = {r["index"]: r for r in base_records}
    other = {r["index"]: r for r in other_records}
    if base.keys() != other.keys():
        raise ValueError("the two record sets caption different images; evaluate both on the same rows")
    images = sorted(base, key=str)
    counts = np.array([[[len(r[i]["hallucinated"]), len(r[i]["mentioned"])] for i in images] for r in (base, other)],
                      dtype=float)  # model, image, (hallucinated, mentioned)

    def chair_i(totals):  # totals (..., 2)
        return np.divide(totals[..., 0], totals[..., 1], out=np.zeros_like(totals[..., 0]), where=totals[..., 1] > 0)

    return paired_bootstrap_change(counts, chair_i, num_resamples=num_resamples, confidence=confidence, seed=seed)
