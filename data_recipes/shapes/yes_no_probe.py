"""Yes/no answers broken down by how the asked object relates to the scene.

POPE's F1 mixes different failures into one number. Asked "Is there a red square?" about an image that holds
a red circle, a model that checks only the colour answers yes; asked about a green triangle in the same
image, it answers no. This probe asks about every (colour, shape) pair of the world for each image and
reports the share of "yes" answers per kind of question:

- ``present``: the object is in the image (a perfect model: 1.0);
- ``same colour``: another object has the colour, none has the shape;
- ``same shape``: another object has the shape, none has the colour;
- ``colour and shape apart``: one object has the colour and a different one has the shape;
- ``unrelated``: neither the colour nor the shape is in the image.

On every absent kind a perfect model says yes 0.0 of the time. A model that answers from colour alone shows
about 1.0 on ``same colour`` and ``colour and shape apart``, and 0.0 on the rest.
"""

from __future__ import annotations

from collections import Counter

import datasets

from .world import COLOURS, SHAPES, Scene

KINDS = ("present", "same colour", "same shape", "colour and shape apart", "unrelated")


def question_kind(scene: Scene, colour: str, shape: str) -> str:
    """Which of ``KINDS`` a question about a ``colour`` ``shape`` is for ``scene``."""
    if scene.has(colour, shape):
        return "present"
    has_colour = any(o.colour == colour for o in scene.objects)
    has_shape = any(o.shape == shape for o in scene.objects)
    if has_colour and has_shape:
        return "colour and shape apart"
    return "same colour" if has_colour else "same shape" if has_shape else "unrelated"


def probe_rows(split: datasets.Dataset, max_images: int | None = None) -> tuple[list[dict], list[str]]:
    """One prompt-only row per (image, colour, shape), worded as POPE words it, and each row's kind."""
    from vlmdpo.data.rows import normalize_row
    from vlmdpo.eval.pope import pope_question_text

    if max_images is not None:
        split = split.select(range(min(max_images, len(split))))
    rows, kinds = [], []
    for image, scene_json in zip(split["images"], split["scene"]):
        scene = Scene.from_json(scene_json)
        for colour in COLOURS:
            for shape in SHAPES:
                row = {"images": image, "prompt": pope_question_text(f"{colour} {shape}")}
                rows.append(normalize_row(row, len(rows), responses=()))
                kinds.append(question_kind(scene, colour, shape))
    return rows, kinds


def yes_rate_by_kind(model, processor, split: datasets.Dataset, *, max_images: int | None = 100,
                     batch_size: int = 128, progress: bool = True) -> dict[str, float | None]:
    """Share of "yes" answers (greedy, read like POPE's) per question kind; ``None`` for a kind never asked."""
    from vlmdpo.eval.generation import generate_responses
    from vlmdpo.eval.pope import parse_pope_answer

    rows, kinds = probe_rows(split, max_images)
    answers = generate_responses(model, processor, rows, max_new_tokens=4, batch_size=batch_size,
                                 progress=progress)
    asked = Counter(kinds)
    yes = Counter(kind for kind, answer in zip(kinds, answers) if parse_pope_answer(answer) == "yes")
    return {kind: (yes[kind] / asked[kind] if asked[kind] else None) for kind in KINDS}
