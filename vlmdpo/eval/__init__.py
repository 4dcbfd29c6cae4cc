"""Evaluation of aligned VLMs: offline object-hallucination metrics and the ``vlmdpo eval`` pipeline.

The rule-based metrics (CHAIR, object repetition, POPE, object matching) import eagerly: they need only the
standard library. Everything that pulls in torch, transformers, datasets or matplotlib (the suite, runner,
report, ...) is imported on first access, so ``import vlmdpo.eval`` stays fast.
"""

from importlib import import_module

from vlmdpo.eval.chair import CaptionChair, ChairResult, chair, chair_caption, chair_i_change
from vlmdpo.eval.objects import Mention, ObjectVocabulary, pluralize, tokenize
from vlmdpo.eval.pope import (
    PopeQuestion,
    build_pope_questions,
    parse_pope_answer,
    pope_f1_change,
    pope_metrics,
    pope_question_text,
)
from vlmdpo.eval.repetition import CaptionRepetition, RepetitionResult, caption_repetition, object_repetition

# public name -> submodule that defines it, imported on first access
_LAZY = {
    "ClipConfig": "config",
    "EvalConfig": "config",
    "EvalDataConfig": "config",
    "GenerationConfig": "config",
    "PopeConfig": "config",
    "load_eval_config": "config",
    "save_eval_config": "config",
    "evaluate_during_training": "during_training",
    "generate_responses": "generation",
    "with_prompt": "generation",
    "preference_fit": "preference",
    "comparison_tables": "report",
    "flatten_metrics": "report",
    "read_metrics_jsonl": "report",
    "write_report": "report",
    "eval_row": "rows",
    "load_eval_rows": "rows",
    "load_vocabulary": "rows",
    "Checkpoint": "runner",
    "evaluate": "runner",
    "resolve_checkpoints": "runner",
    "run_eval": "runner",
    "caption_metrics": "suite",
    "check_rows": "suite",
    "clip_scores": "suite",
    "evaluate_model": "suite",
    "length_stats": "suite",
    "pope_eval": "suite",
}


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(f"{__name__}.{_LAZY[name]}"), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})


__all__ = [
    "CaptionChair",
    "CaptionRepetition",
    "ChairResult",
    "Checkpoint",
    "ClipConfig",
    "EvalConfig",
    "EvalDataConfig",
    "GenerationConfig",
    "Mention",
    "ObjectVocabulary",
    "PopeConfig",
    "PopeQuestion",
    "RepetitionResult",
    "build_pope_questions",
    "caption_metrics",
    "caption_repetition",
    "chair",
    "chair_caption",
    "chair_i_change",
    "check_rows",
    "clip_scores",
    "comparison_tables",
    "eval_row",
    "evaluate",
    "evaluate_during_training",
    "evaluate_model",
    "flatten_metrics",
    "generate_responses",
    "length_stats",
    "load_eval_config",
    "load_eval_rows",
    "load_vocabulary",
    "object_repetition",
    "parse_pope_answer",
    "pluralize",
    "pope_eval",
    "pope_f1_change",
    "pope_metrics",
    "pope_question_text",
    "preference_fit",
    "read_metrics_jsonl",
    "resolve_checkpoints",
    "run_eval",
    "save_eval_config",
    "tokenize",
    "with_prompt",
]
