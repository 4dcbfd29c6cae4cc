"""Offline, rule-based object-hallucination metrics: CHAIR (captions) and POPE (yes/no probes)."""

from vlmdpo.eval.chair import CaptionChair, ChairResult, chair, chair_caption
from vlmdpo.eval.objects import Mention, ObjectVocabulary, pluralize, tokenize
from vlmdpo.eval.pope import (
    PopeQuestion,
    build_pope_questions,
    parse_pope_answer,
    pope_metrics,
    pope_question_text,
)

__all__ = [
    "CaptionChair",
    "ChairResult",
    "Mention",
    "ObjectVocabulary",
    "PopeQuestion",
    "build_pope_questions",
    "chair",
    "chair_caption",
    "parse_pope_answer",
    "pluralize",
    "pope_metrics",
    "pope_question_text",
    "tokenize",
]
