"""Image corruptions for mDPO's conditional preference pairs (Wang et al. 2024, arXiv:2406.11839).

mDPO's conditional term prefers the chosen response given the real image over the same response given a
corrupted image that holds less information. Every corruption here keeps the image's size, so a
dynamic-resolution processor (Qwen2-VL's) gives the corrupted image the same number of image tokens and
the same ``image_grid_thw``, and the two forwards differ only in what the image shows.

Each corruption is deterministic given ``seed`` (an int or a string, e.g. ``f"{seed}:{row_index}"``): it
draws from a local ``random.Random`` / ``torch.Generator``, never from the global RNGs.
"""

from __future__ import annotations

import random
from collections.abc import Callable

import numpy as np
import torch
from PIL import Image

__all__ = ["CORRUPTIONS", "add_noise", "corrupt_image", "corrupt_row_images", "crop_resize", "mask_patches"]

Seed = int | str


def _rng(seed: Seed) -> random.Random:
    # str seeds are hashed by random.Random deterministically (not by PYTHONHASHSEED)
    return random.Random(seed)


def _check_fraction(name: str, value: float, low_open: bool = False) -> None:
    if not (0.0 < value <= 1.0 if low_open else 0.0 <= value <= 1.0):
        raise ValueError(f"{name} must be in {'(0, 1]' if low_open else '[0, 1]'}, got {value}")


def crop_resize(image: Image.Image, keep: tuple[float, float] = (0.2, 0.6), seed: Seed = 0) -> Image.Image:
    """A random crop holding a fraction of ``image``'s area drawn from ``keep``, resized back to its size.

    The fraction is uniform in ``keep = (low, high)`` and the crop keeps the image's aspect ratio, so
    the area kept is that fraction up to rounding (at least one pixel a side). mDPO's paper found
    keeping 0-20% of the image best among the corruptions it compared: pass ``keep=(0.0, 0.2)`` for that.
    """
    low, high = keep
    if not 0.0 <= low <= high <= 1.0:
        raise ValueError(f"keep must be (low, high) with 0 <= low <= high <= 1, got {keep}")
    rng = _rng(seed)
    width, height = image.size
    side = rng.uniform(low, high) ** 0.5  # the same scale on both sides keeps the aspect ratio
    crop_w, crop_h = max(1, round(width * side)), max(1, round(height * side))
    left, top = rng.randint(0, width - crop_w), rng.randint(0, height - crop_h)
    crop = image.crop((left, top, left + crop_w, top + crop_h))
    return crop.resize((width, height), Image.Resampling.BICUBIC)


def add_noise(image: Image.Image, strength: float = 0.5, seed: Seed = 0) -> Image.Image:
    """``image`` blended with Gaussian noise: ``(1 - strength) * x + strength * noise``, clipped to [0, 255].

    ``noise`` is N(127.5, 64^2) per pixel and channel; ``strength`` 1 leaves only noise.
    """
    _check_fraction("strength", strength)
    generator = torch.Generator().manual_seed(_rng(seed).getrandbits(63))
    pixels = torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.float32))
    noise = torch.randn(pixels.shape, generator=generator) * 64.0 + 127.5
    mixed = ((1 - strength) * pixels + strength * noise).clamp(0, 255).round().to(torch.uint8)
    return Image.fromarray(mixed.numpy())


def mask_patches(image: Image.Image, fraction: float = 0.5, seed: Seed = 0, patch_size: int = 14,
                 fill: tuple[int, int, int] = (0, 0, 0)) -> Image.Image:
    """``image`` with a random ``fraction`` of its ``patch_size`` x ``patch_size`` cells painted ``fill``.

    The grid covers the whole image (edge cells may be smaller); at least one cell is masked when
    ``fraction`` > 0. 14 pixels is the ViT patch of SigLIP and Qwen2-VL's vision tower.
    """
    _check_fraction("fraction", fraction)
    if patch_size < 1:
        raise ValueError(f"patch_size must be >= 1, got {patch_size}")
    rng = _rng(seed)
    width, height = image.size
    cells = [(x, y) for y in range(0, height, patch_size) for x in range(0, width, patch_size)]
    count = min(len(cells), max(1, round(fraction * len(cells)))) if fraction > 0 else 0
    out = image.convert("RGB").copy()
    for x, y in rng.sample(cells, count):
        out.paste(fill, (x, y, min(x + patch_size, width), min(y + patch_size, height)))
    return out


CORRUPTIONS: dict[str, Callable[..., Image.Image]] = {
    "crop_resize": crop_resize,
    "noise": add_noise,
    "mask_patches": mask_patches,
}


def corrupt_image(image: Image.Image, method: str = "crop_resize", seed: Seed = 0, **options) -> Image.Image:
    """``CORRUPTIONS[method](image, seed=seed, **options)``, with an error naming the known methods."""
    if method not in CORRUPTIONS:
        raise ValueError(f"unknown corruption {method!r}; known: {sorted(CORRUPTIONS)}")
    return CORRUPTIONS[method](image, seed=seed, **options)


def corrupt_row_images(row: dict, method: str = "crop_resize", seed: Seed = 0, **options) -> dict:
    """A copy of a normalized row (``vlmdpo.data.rows.normalize_row``) whose ``images`` are corrupted.

    Image ``i`` of the row is corrupted with seed ``f"{seed}:{i}"``, so each image of a row gets its own
    draw and the same ``seed`` gives the same row back; the text fields are shared, unchanged.
    """
    images = [corrupt_image(image, method, f"{seed}:{i}", **options) for i, image in enumerate(row["images"])]
    return {**row, "images": images}
