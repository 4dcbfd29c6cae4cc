"""POPE: polling a model with yes/no "Is there a ... in the image?" questions.

Li et al., "Evaluating Object Hallucination in Large Vision-Language Models", EMNLP 2023, arXiv:2305.10355,
following the reference code (AoiDragon/POPE). For each image, the first ``k`` ground-truth objects are
positives ("yes"), and each positive is paired with one absent object ("no"), so labels are balanced.
Negatives are drawn by one of three strategies:

* ``random``: uniformly from the vocabulary objects the image lacks.
* ``popular``: the objects most frequent over all ``annotations`` that the image lacks.
* ``adversarial``: the objects that co-occur most often with *that positive* across ``annotations``
  (as in the reference code, ranked per positive rather than over all of the image's objects).

``popular`` and ``adversarial`` fall back to ``random`` when their ranking has no unused absent object left,
as the reference does; ties are broken by name so the questions depend on ``seed`` only through ``random``.
"""

from __future__ import annotations

import random
import re
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

from vlmdpo.eval.bootstrap import paired_bootstrap_change

Answer = Literal["yes", "no"]


@dataclass(frozen=True)
class PopeQuestion:
    """One POPE probe."""

    image_index: int
    """Index of the image in the ``annotations`` the questions were built from."""
    object: str
    """The object asked about."""
    label: Answer
    """"yes" if the object is in the image's ground truth, else "no"."""
    question: str
    """The prompt text, e.g. "Is there a dog in the image?"."""


def pope_question_text(name: str) -> str:
    """ "Is there a/an {name} in the image?" with the article chosen by first letter, as in POPE."""
    article = "an" if name[:1].lower() in ("a", "e", "i", "o", "u") else "a"
    return f"Is there {article} {name} in the image?"


def _rank(counts: Counter) -> list[str]:
    return [name for name, _ in sorted(counts.items(), key=lambda item: (-item[1], item[0]))]


# Each strategy: (positive, ranked-by-frequency, co-occurrence table) -> candidates in preference order.
# An empty preference means "random"; the caller filters out present and already-used objects.
_Strategy = Callable[[str, list[str], dict[str, Counter]], list[str]]
NEGATIVE_STRATEGIES: dict[str, _Strategy] = {
    "random": lambda positive, popular, co_occurrence: [],
    "popular": lambda positive, popular, co_occurrence: popular,
    "adversarial": lambda positive, popular, co_occurrence: _rank(co_occurrence[positive]),
}


def build_pope_questions(
    annotations: Sequence[Iterable[str]],
    vocabulary_names: Iterable[str],
    *,
    strategy: str = "random",
    num_negatives_per_image: int = 3,
    seed: int = 0,
) -> list[PopeQuestion]:
    """Balanced yes/no POPE questions, interleaved yes, no, yes, no, ... per image.

    ``annotations[k]`` are the ground-truth objects of image ``k`` (canonical names); ``vocabulary_names``
    is the pool negatives come from. An image yields ``min(num_negatives_per_image, #objects)`` positives;
    a positive for which no absent object is left is dropped with its negative, keeping the balance.
    Images without objects yield no questions.
    """
    if strategy not in NEGATIVE_STRATEGIES:
        raise ValueError(f"unknown POPE strategy {strategy!r}; choose one of {sorted(NEGATIVE_STRATEGIES)}")
    if num_negatives_per_image < 1:
        raise ValueError(f"num_negatives_per_image must be >= 1, got {num_negatives_per_image}")
    images = [list(dict.fromkeys(objects)) for objects in annotations]
    pool = list(dict.fromkeys(vocabulary_names))
    pool_set = set(pool)
    frequency = Counter(name for objects in images for name in objects)
    co_occurrence: dict[str, Counter] = defaultdict(Counter)
    for objects in images:
        for name in objects:
            co_occurrence[name].update(other for other in objects if other != name)
    popular = [name for name in _rank(frequency) if name in pool_set]
    choose = NEGATIVE_STRATEGIES[strategy]
    rng = random.Random(seed)

    questions: list[PopeQuestion] = []
    for index, objects in enumerate(images):
        used = set(objects)
        for positive in objects[:num_negatives_per_image]:
            preferred = (n for n in choose(positive, popular, co_occurrence) if n in pool_set and n not in used)
            negative = next(preferred, None)
            if negative is None:
                remaining = [name for name in pool if name not in used]
                if not remaining:
                    break
                negative = rng.choice(remaining)
            used.add(negative)
            questions.append(PopeQuestion(index, positive, "yes", pope_question_text(positive)))
            questions.append(PopeQuestion(index, negative, "no", pope_question_text(negative)))
    return questions


def parse_pope_answer(text: str) -> Answer:
    """ "no" if the first sentence has the word "no" or "not", else "yes"; the POPE reference rule.

    The first sentence is the text before the first ".". The reference splits on spaces after removing
    commas and matches "No", "no" or "not" exactly; we also strip other punctuation and ignore case, so
    "NO!" reads as no. Like the reference, a contraction is not a negation: "I don't see one" -> "yes",
    and an answer with no negation word at all ("There is a dog.", "") -> "yes".
    """
    first_sentence = text.split(".", 1)[0]
    words = re.findall(r"[a-z0-9']+", first_sentence.lower().replace("\u2019", "'"))
    return "no" if {"no", "not"}.intersection(words) else "yes"


def _as_answer(value: str, what: str, position: int) -> bool:
    normalised = value.strip().lower()
    if normalised not in ("yes", "no"):
        raise ValueError(
            f"{what}[{position}] is {value!r}; expected 'yes' or 'no' "
            "(turn free-text answers into one with parse_pope_answer)"
        )
    return normalised == "yes"


def pope_metrics(predictions: Sequence[str], labels: Sequence[str]) -> dict[str, float]:
    """Accuracy, precision, recall, F1 and yes-ratio with "yes" as the positive class.

    Also returns the confusion counts ``tp``, ``fp``, ``tn``, ``fn``. A ratio whose denominator is zero is
    0.0 (the reference script would divide by zero).
    """
    if len(predictions) != len(labels):
        raise ValueError(f"got {len(predictions)} predictions but {len(labels)} labels")
    predicted = [_as_answer(p, "predictions", i) for i, p in enumerate(predictions)]
    actual = [_as_answer(a, "labels", i) for i, a in enumerate(labels)]
    tp = sum(p and a for p, a in zip(predicted, actual))
    fp = sum(p and not a for p, a in zip(predicted, actual))
    tn = sum(not p and not a for p, a in zip(predicted, actual))
    fn = sum(not p and a for p, a in zip(predicted, actual))

    def ratio(numerator: float, denominator: float) -> float:
        return numerator / denominator if denominator else 0.0

    precision, recall = ratio(tp, tp + fp), ratio(tp, tp + fn)
    return {
        "accuracy": ratio(tp + tn, len(actual)),
        "precision": precision,
        "recall": recall,
        "f1": ratio(2 * precision * recall, precision + recall),
        "yes_ratio": ratio(tp + fp, len(actual)),
        "tp": tp,
        "fp": fp,
        "tn": tn,
        "fn": fn,
    }


def _f1(tp, fp, fn):
    import numpy as np

    with np.errstate(divide="ignore", invalid="ignore"):
        return np.nan_to_num(2 * tp / (2 * tp + fp + fn))


def pope_f1_change(base_records: Sequence[dict], other_records: Sequence[dict], *, num_resamples: int = 2000,
                   confidence: float = 0.95, seed: int = 0) -> dict[str, float]:
    """How much POPE F1 (the mean over splits) changes from ``base_records`` to ``other_records``, with a
    paired bootstrap interval over images: ``{"change", "low", "high"}``.

    Both are ``pope_eval`` records of the same questions (``strategy``, ``index``, ``object``, ``label``,
    ``prediction``). Images are resampled with replacement, each carrying all its questions of every split
    for both models, so the interval reflects which images happened to be held out, not answer noise alone
    (Efron and Tibshirani 1993, ch. 13). F1 = 2tp / (2tp + fp + fn) per split, then averaged.
    """
    import numpy as np

    key = lambda r: (r["strategy"], r["index"], r["object"])  # noqa: E731
    base = {key(r): r for r in base_records}
    other = {key(r): r for r in other_records}
    if base.keys() != other.keys():
        raise ValueError("the two record sets ask different questions; evaluate both on the same rows and settings")
    strategies = sorted({k[0] for k in base})
    images = sorted({k[1] for k in base}, key=str)
    row_of, split_of = {im: i for i, im in enumerate(images)}, {s: j for j, s in enumerate(strategies)}
    counts = np.zeros((2, len(images), len(strategies), 3))  # model, image, split, (tp, fp, fn)
    for k, record in base.items():
        for m, r in enumerate((record, other[k])):
            yes, truth = r["prediction"] == "yes", r["label"] == "yes"
            cell = counts[m, row_of[k[1]], split_of[k[0]]]
            cell += (yes and truth, yes and not truth, truth and not yes)

    def mean_f1(totals):  # totals (..., splits, 3)
        return _f1(totals[..., 0], totals[..., 1], totals[..., 2]).mean(-1)

    return paired_bootstrap_change(counts, mean_f1, num_resamples=num_resamples, confidence=confidence, seed=seed)
