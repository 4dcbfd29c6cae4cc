"""Preference-pair builders for any model and any captioned or prompted images.

- `hallucination`: the true caption vs one with an injected, co-occurring but absent object.
- `ai_feedback`: a policy's own samples ranked by a judge (CLIPScore or any `judge(image, text)`).
- `conditional`: mDPO's real vs corrupted image for the same response (`corrupted_images` column).

Each returns a `datasets.Dataset` of TRL-format rows (`images`, `prompt`, `chosen`, `rejected`, as
conversational messages) that `vlmdpo train` reads as they are.
"""

from .ai_feedback import ai_feedback_pairs, judge_scores
from .coco import COCO_OBJECTS, COCO_STYLE_OBJECT_SETS
from .conditional import conditional_pairs
from .hallucination import cooccurrence, hallucinate_caption, hallucination_pairs, mentions, plural

__all__ = [
    "COCO_OBJECTS", "COCO_STYLE_OBJECT_SETS", "ai_feedback_pairs", "conditional_pairs", "cooccurrence",
    "hallucinate_caption", "hallucination_pairs", "judge_scores", "mentions", "plural",
]
