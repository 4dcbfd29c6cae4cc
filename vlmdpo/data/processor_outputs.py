"""What a processor's outputs are, asked of the processor itself once, on a tiny input: the value its per-token
outputs give response tokens, and the axis each per-image output stacks a batch's images along."""

from __future__ import annotations

import torch

# Processor outputs with one value per prompt token (the rest are per image: pixel_values, image_grid_thw...).
TEXT_KEYS = ("input_ids", "attention_mask")
# Processor outputs that are not model inputs here: a processor's own training labels (PaliGemma's, with a
# suffix) would reach the forward and clash with the loss computed from the completion mask.
NOT_MODEL_INPUTS = ("labels",)


def response_token_types(processor, tokenizer) -> dict[str, int]:
    """The value each per-token processor output gives response tokens, asked of the processor itself: one that
    takes a ``suffix`` (PaliGemma's) marks it, and that mark (1: causal suffix, not bidirectional prefix) is
    what responses get. Processors without one give responses the default, 0 (text)."""
    from PIL import Image

    try:
        out = processor(text=[" x"], images=[[Image.new("RGB", (32, 32))]], suffix=[" y"], return_tensors="pt")
    except Exception:  # no suffix argument, or a processor that wants placeholders: the default holds
        return {}
    length = out["input_ids"].shape[1]
    return {key: int(value[0, -1]) for key, value in out.items()
            if key not in TEXT_KEYS and key not in NOT_MODEL_INPUTS and isinstance(value, torch.Tensor)
            and value.dim() == 2 and value.shape[1] == length and not value.is_floating_point()
            and int(value[0, -1]) != 0}


def image_axes(processor) -> dict[str, int]:
    """The axis each per-image output of the image processor stacks a batch's images along, where it is not the
    first, asked of the image processor itself (one row of one image, then two): MiniCPM-V packs every patch of
    a batch into one row of ``pixel_values`` (1, C, patch, patches), so its images grow the last axis."""
    from PIL import Image

    image_processor = getattr(processor, "image_processor", None)
    if image_processor is None:
        return {}
    image = Image.new("RGB", (32, 32))
    try:
        one, two = (image_processor([[image]] * rows, return_tensors="pt") for rows in (1, 2))
    except Exception:  # an image processor that cannot say: images stack along the first axis
        return {}
    axes = {}
    for key, value in one.items():
        other = two.get(key)
        if isinstance(value, torch.Tensor) and isinstance(other, torch.Tensor) and value.dim() == other.dim():
            grown = [axis for axis in range(value.dim()) if value.shape[axis] != other.shape[axis]]
            if grown and grown[0] != 0:
                axes[key] = grown[0]
    return axes
