"""Forwards split by image count, for models whose own forward makes a row depend on its batch's image count.

Mllama reads images through cross-attention, with a per-token ``cross_attention_mask`` (B, T, images, tiles)
and per-row vision inputs (B, images, ...) padded to the batch's most images. A token that sees no image (a
text-only row, a prompt's tokens before its image) is not masked out of cross-attention: it attends evenly to
every image slot of its row, the padding slots included, and a text-only row alone skips cross-attention
altogether (huggingface/transformers#39379). Rows with the same number of images, run without the other rows'
padding slots, get exactly what they get alone; so a batch whose rows differ in image count runs one forward
per image count. A batch of one image count (a lone row) runs as it always did.
"""

from __future__ import annotations

import torch


def has_image_slots(per_token_inputs: dict) -> bool:
    """True when a per-token input has an image axis (Mllama's (B, T, images, tiles) ``cross_attention_mask``):
    the vision inputs are then per row, padded to the batch's most images."""
    return any(isinstance(value, torch.Tensor) and value.dim() == 4 for value in per_token_inputs.values())


def image_counts(batch: dict) -> list[int]:
    """Images per row of a collated batch whose per-token inputs have an image axis: the image slots some token
    of the row sees (a row's images come first, padding after)."""
    mask = next(value for value in batch["prompt_token_types"].values() if value.dim() == 4)
    return mask.bool().any(dim=3).any(dim=1).sum(dim=1).tolist()


def rows_with_images(batch: dict, rows: list[int], images: int) -> dict:
    """The collated ``batch`` cut to ``rows``, each with ``images`` image slots: what the processor gives for
    these rows alone, up to padding (no vision inputs and no image axis when ``images`` is 0)."""
    index, size = torch.tensor(rows, dtype=torch.long), batch["prompt_input_ids"].shape[0]
    sub = {key: value[index] if isinstance(value, torch.Tensor) and value.shape[:1] == (size,) else value
           for key, value in batch.items()}
    if "index" in batch:
        sub["index"] = [batch["index"][i] for i in rows]
    sub["prompt_token_types"] = {key: value[index][:, :, :images] if value.dim() == 4 else value[index]
                                 for key, value in batch["prompt_token_types"].items()
                                 if images or value.dim() != 4}
    sub["vision_inputs"] = {key: value[index][:, :images] for key, value in batch["vision_inputs"].items()} \
        if images else {}
    return sub


def by_image_count(forward, batch: dict, copies: int) -> dict[str, torch.Tensor]:
    """``forward(batch)`` (a dict of per-row tensors) run once per image count and put back in row order.

    Outputs with ``copies`` x B rows (per-token log-probs of the chosen rows then the rejected ones) are
    stacked per copy; outputs with B rows per row.
    """
    counts = image_counts(batch)
    groups: dict[int, list[int]] = {}
    for row, count in enumerate(counts):
        groups.setdefault(count, []).append(row)
    if len(groups) == 1:
        return forward(batch)
    size = len(counts)
    parts = [(rows, forward(rows_with_images(batch, rows, images))) for images, rows in groups.items()]
    out = {}
    for key, first in parts[0][1].items():
        stacked = first.shape[0] == copies * len(parts[0][0]) and copies > 1
        full = first.new_zeros((copies * size if stacked else size, *first.shape[1:]))
        for rows, part in parts:
            targets = [copy * size + row for copy in range(copies if stacked else 1) for row in rows]
            full[torch.tensor(targets, dtype=torch.long, device=full.device)] = part[key]
        out[key] = full
    return out


def batches_by_image_count(collator, rows: list[dict], batches: list[list[int]]) -> list[list[int]]:
    """``batches`` (lists of indices into ``rows``) each split by the rows' image counts when the processor pads
    images per row, as for ``by_image_count``; as they are otherwise. For generation, which encodes rows itself."""
    with_image = next((row for row in rows if row["images"]), None)
    if with_image is None:
        return batches
    encoded = collator.encode_prompts([with_image])
    shape = tuple(encoded["input_ids"].shape)
    if not has_image_slots({key: value for key, value in encoded.items() if tuple(value.shape[:2]) == shape}):
        return batches
    split = []
    for batch in batches:
        counts = sorted({len(rows[i]["images"]) for i in batch})
        split += [[i for i in batch if len(rows[i]["images"]) == count] for count in counts]
    return split
