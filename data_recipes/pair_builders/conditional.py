"""mDPO conditional pairs (Wang et al. 2024, arXiv:2406.11839): one response, the real image vs a corrupted one.

Each preference row gains a ``corrupted_images`` column: its images corrupted by ``vlmdpo.methods.corrupt`` (a
random crop resized back by default, so the image-token count is unchanged). The conditional loss
``vlmdpo.methods.losses.mdpo_conditional`` then prefers the chosen response given ``images`` over the same chosen
response given ``corrupted_images``. Building the column ahead of training fixes the corruption per row
and lets it be inspected; training reads it when it is there (``vlmdpo.methods.mdpo.CorruptedImages``) and otherwise
corrupts on the fly by ``loss.corruption``.
"""

from __future__ import annotations

from collections.abc import Sequence

import datasets

from vlmdpo.methods.corrupt import CORRUPTIONS, corrupt_image
from vlmdpo.data.images import load_image

from .messages import row_images, to_dataset


def conditional_pairs(dataset: datasets.Dataset, *, method: str = "crop_resize", seed: int = 0,
                      options: dict | None = None, image_root: str | None = None,
                      keep_columns: Sequence[str] | None = None) -> datasets.Dataset:
    """``dataset``'s rows with ``images`` (the real ones) and ``corrupted_images``, other columns kept.

    Args:
        dataset: rows with ``images`` (a list) or ``image``, plus whatever else (prompt, chosen, ...).
        method: a name in ``vlmdpo.methods.corrupt.CORRUPTIONS`` (``crop_resize``, ``noise``, ``mask_patches``).
        seed: image ``j`` of row ``i`` is corrupted with seed ``f"{seed}:{i}:{j}"``.
        options: keyword options of the corruption, e.g. ``{"keep": (0.0, 0.2)}`` for ``crop_resize``.
        image_root: folder that relative image paths are read from.
        keep_columns: the columns to carry over; all but ``image`` by default.
    """
    if method not in CORRUPTIONS:
        raise ValueError(f"unknown corruption {method!r}; known: {sorted(CORRUPTIONS)}")
    options = options or {}
    keep = [c for c in dataset.column_names if c not in ("image", "images")] if keep_columns is None \
        else list(keep_columns)
    columns: dict[str, list] = {"images": [], "corrupted_images": [], **{name: [] for name in keep}}
    for i, row in enumerate(dataset):
        images = [load_image(value, image_root) for value in row_images(row)]
        if not images:
            continue  # a text-only row has no image to corrupt, so no conditional pair
        columns["images"].append(images)
        columns["corrupted_images"].append([corrupt_image(image, method, f"{seed}:{i}:{j}", **options)
                                            for j, image in enumerate(images)])
        for name in keep:
            columns[name].append(row[name])
    return to_dataset(columns, dataset, image_columns=("images", "corrupted_images"))
