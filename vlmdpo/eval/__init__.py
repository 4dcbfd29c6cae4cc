"""Offline, rule-based object-hallucination metrics: CHAIR and repetition (captions), POPE (yes/no probes)."""

from vlmdpo.eval.chair import CaptionChair, ChairResult, chair, chair_caption
from vlmdpo.eval.objects import Mention, ObjectVocabulary, pluralize, tokenize
from vlmdpo.eval.pope import (
    PopeQuestion,
    build_pope_questions,
    parse_pope_answer,
    pope_metrics,
    pope_question_text,
)
from vlmdpo.eval.repetition import CaptionRepetition, RepetitionResult, caption_repetition, object_repetition

__all__ = [
    "CaptionChair",
    "CaptionRepetition",
    "ChairResult",
    "Mention",
    "ObjectVocabulary",
    "PopeQuestion",
    "RepetitionResult",
    "build_pope_questions",
    "caption_repetition",
    "chair",
    "chair_caption",
    "object_repetition",
    "parse_pope_answer",
    "pluralize",
    "pope_metrics",
    "pope_question_text",
    "tokenize",
]
