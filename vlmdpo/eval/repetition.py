"""Object repetition: how often a caption names an object it has already named.

Small captioning models loop ("a large yellow square and a large yellow square"). CHAIR counts each object
once per caption (see :mod:`vlmdpo.eval.chair`), so such a loop changes none of its numbers. Here every
claimed mention counts. A mention is what :meth:`ObjectVocabulary.find_mentions` returns, so "two red
circles" is one mention, and negated mentions ("no dog") are not claims and are left out, as in CHAIR.
A mention *repeats* when an earlier mention in the same caption has the same canonical name, whatever its
surface form: "a puppy and a dog" repeats dog, and so does "a dog and two dogs", which is not always a
mistake, so compare checkpoints by this number rather than reading it as an error rate. Over N captions:

    repetition   = sum_c repeats_c / sum_c mentions_c    (share of claimed mentions that are repeats)
    repetition_s = #{c : repeats_c > 0} / N              (share of captions with at least one repeat)

where ``repeats_c`` = caption c's claimed mentions minus its distinct claimed objects. A ratio whose denominator
is zero is 0.0: a caption without objects (or an empty one) repeats nothing, and it still counts among the N
captions of ``repetition_s``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from vlmdpo.eval.objects import ObjectVocabulary


@dataclass(frozen=True)
class CaptionRepetition:
    """Repetition details of one caption; every field holds canonical object names."""

    mentions: tuple[str, ...]
    """Canonical name of every claimed (non-negated) mention, in order, repeats included."""
    repeated: tuple[str, ...]
    """Canonical name of every mention that repeats an earlier one, in order: three dogs give two entries."""


@dataclass(frozen=True)
class RepetitionResult:
    """Dataset-level repetition numbers and the per-caption details behind them."""

    repetition: float
    """Repeating mentions / all claimed mentions (0.0 when nothing is claimed)."""
    repetition_s: float
    """Captions with at least one repeat / all captions (0.0 when there are none)."""
    captions: tuple[CaptionRepetition, ...]
    """One entry per input caption, in input order."""

    def as_dict(self) -> dict[str, float]:
        """The two dataset-level numbers, ready for a logger."""
        return {"repetition": self.repetition, "repetition_s": self.repetition_s}


def caption_repetition(caption: str, vocabulary: ObjectVocabulary) -> CaptionRepetition:
    """Claimed mentions of one caption and those among them that name an object a second time."""
    mentions = tuple(m.canonical for m in vocabulary.find_mentions(caption) if not m.negated)
    return CaptionRepetition(
        mentions=mentions,
        repeated=tuple(name for k, name in enumerate(mentions) if name in mentions[:k]),
    )


def object_repetition(captions: Sequence[str], vocabulary: ObjectVocabulary) -> RepetitionResult:
    """``repetition`` and ``repetition_s`` of ``captions`` (formulas in the module docstring)."""
    details = tuple(caption_repetition(caption, vocabulary) for caption in captions)
    num_mentions = sum(len(d.mentions) for d in details)
    num_repeats = sum(len(d.repeated) for d in details)
    return RepetitionResult(
        repetition=num_repeats / num_mentions if num_mentions else 0.0,
        repetition_s=sum(bool(d.repeated) for d in details) / len(details) if details else 0.0,
        captions=details,
    )
