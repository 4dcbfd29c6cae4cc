"""Shapes world: an offline, ground-truthed image world for measuring VLM hallucination.

`world` samples and draws scenes, `captions` writes true and hallucinated text about them,
`vocabulary` names the objects for CHAIR-style metrics, `build` makes `datasets` tables.
"""

from .build import (
    SHAPES_FEATURES,
    assistant_message,
    build_shapes_dataset,
    caption_sft_rows,
    povid_pairs,
    user_prompt,
)
from .captions import (
    DESCRIBE_PROMPT,
    HALLUCINATIONS,
    add_object,
    applicable_hallucinations,
    attribute_question,
    caption,
    describe,
    hallucinate,
    noisy_web_caption,
    question,
    swap_colour,
    swap_shape,
    yes_no_questions,
)
from .vocabulary import SHAPES_VOCABULARY, mentioned_objects, objects_in_scene
from .world import (
    BACKGROUND_RGB,
    COLOURS,
    NOISE_AMPLITUDE,
    POSITIONS,
    SHAPES,
    SIZES,
    Scene,
    ShapeObject,
    cell_box,
    draw_scene,
    sample_scene,
)

__all__ = [
    "BACKGROUND_RGB",
    "COLOURS",
    "DESCRIBE_PROMPT",
    "HALLUCINATIONS",
    "NOISE_AMPLITUDE",
    "POSITIONS",
    "SHAPES",
    "SHAPES_FEATURES",
    "SHAPES_VOCABULARY",
    "SIZES",
    "Scene",
    "ShapeObject",
    "add_object",
    "applicable_hallucinations",
    "attribute_question",
    "assistant_message",
    "build_shapes_dataset",
    "caption",
    "caption_sft_rows",
    "cell_box",
    "describe",
    "draw_scene",
    "hallucinate",
    "mentioned_objects",
    "noisy_web_caption",
    "objects_in_scene",
    "povid_pairs",
    "question",
    "sample_scene",
    "swap_colour",
    "swap_shape",
    "user_prompt",
    "yes_no_questions",
]
