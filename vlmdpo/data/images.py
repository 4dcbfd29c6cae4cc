"""Image loading for preference rows: every legal image becomes the RGB picture a viewer would show.

Accepted: PIL images, file paths, encoded bytes and the ``datasets`` Image feature (decoded or not), in any
mode PIL reads: alpha and transparent palettes are composited on white (as ``transformers``' ``convert_to_rgb``
does), 16-bit and 32-bit greyscale are scaled to 8 bits rather than clipped, CMYK is converted, the EXIF
orientation is applied, and an animated image gives its first frame. Refused by name: missing files, paths
outside the dataset's folder (unless allowed), files that are not images or are truncated, and images with
more pixels than a limit checked before the pixels are decoded.
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

DEFAULT_MAX_PIXELS = 40_000_000
"""About 6300 x 6300: far above what any VLM processor keeps, far below what would exhaust memory."""


class ImageError(ValueError):
    """An image that cannot be used; ``kind`` names the problem, ``fix`` says what to do."""

    def __init__(self, kind: str, problem: str, fix: str):
        super().__init__(problem)
        self.kind, self.problem, self.fix = kind, problem, fix


def resolve_image_path(value: str | os.PathLike, image_root: str | None, allow_outside: bool, *,
                       what: str = "image", folder: bool = False) -> Path:
    """``value`` as a path: relative ones against ``image_root``; with a root, the resolved file must lie
    inside it unless ``allow_outside`` (so ``../x`` or ``/etc/...`` in scraped data is never opened).
    ``folder``: a folder is accepted too (a video given as its frames); ``what`` names the thing in errors."""
    path = Path(value)
    if not path.is_absolute() and image_root is not None:
        path = Path(image_root) / path
    if image_root is not None and not allow_outside:
        root = Path(image_root).resolve()
        if not path.resolve().is_relative_to(root):
            raise ImageError(f"{what}_outside_root", f"{what} path {str(value)!r} leads outside the dataset's "
                             f"folder {str(root)!r}", f"move the {what} into that folder, set data.image_root to a "
                             "folder that holds it, or set data.allow_outside_images=true if you trust the data")
    if not path.exists():
        raise ImageError(f"missing_{what}", f"{what} file {str(path)!r} does not exist",
                         "correct the path, or set data.image_root (image_root=) to the folder paths are relative to")
    if not (path.is_file() or (folder and path.is_dir())):
        article = "an" if what[0] in "aeiou" else "a"
        kind = f"not_{article}_{what}"
        fix = f"point the row at {article} {what} file" + (" or a folder of its frames" if folder else "")
        raise ImageError(kind, f"{what} path {str(path)!r} is not a regular file", fix)
    return path


def load_image(value, image_root: str | None = None, *, allow_outside: bool = False,
               max_pixels: int | None = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Open ``value`` (PIL image, path, bytes or ``{"bytes", "path"}``) as an RGB image; raises ``ImageError``."""
    if isinstance(value, dict):  # the undecoded datasets Image feature
        value = value.get("bytes") or value.get("path")
    if isinstance(value, Image.Image):
        return _checked_rgb(value, max_pixels)
    if isinstance(value, (bytes, bytearray)):
        source = io.BytesIO(value)
    elif isinstance(value, (str, os.PathLike)):
        source = resolve_image_path(value, image_root, allow_outside)
    else:
        raise ImageError("bad_image_value", f"unsupported image value of type {type(value).__name__}",
                         "give a PIL image, a file path, encoded bytes or a datasets Image feature")
    try:
        with warnings.catch_warnings():  # our own pixel limit below replaces PIL's bomb warning
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(source) as image:  # reads the header only
                _check_pixels(image, max_pixels)
                image.load()
                return _checked_rgb(image, max_pixels)
    except ImageError:
        raise
    except Image.DecompressionBombError as err:
        raise ImageError("image_too_large", str(err), "resize the image, or drop the row") from err
    except Image.UnidentifiedImageError as err:
        raise ImageError("not_an_image", "the data is not an image PIL can read",
                         "replace it with a PNG/JPEG/WebP image, or drop the row") from err
    except Exception as err:  # truncated or corrupt data: PIL raises OSError, SyntaxError, ValueError...
        raise ImageError("unreadable_image", f"the image cannot be decoded ({type(err).__name__}: {err})",
                         "replace it with a complete image file, or drop the row") from err


def _check_pixels(image: Image.Image, max_pixels: int | None) -> None:
    width, height = image.size
    if max_pixels is not None and width * height > max_pixels:
        raise ImageError("image_too_large", f"the image is {width}x{height} = {width * height:,} pixels, more "
                         f"than data.max_image_pixels={max_pixels:,}",
                         "resize it (no VLM processor keeps that many pixels), or raise data.max_image_pixels")


def _checked_rgb(image: Image.Image, max_pixels: int | None) -> Image.Image:
    _check_pixels(image, max_pixels)
    return to_rgb(image)


def to_rgb(image: Image.Image) -> Image.Image:
    """The RGB picture of ``image``: first frame, EXIF orientation applied, alpha on white, deep greys scaled."""
    if getattr(image, "n_frames", 1) > 1:
        image.seek(0)
    image = ImageOps.exif_transpose(image)  # a no-op (a copy) without an orientation tag
    mode = image.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        array = np.asarray(image, dtype=np.float64)
        peak = 65535.0 if mode.startswith("I;16") or array.max(initial=0) <= 65535 else 2.0 ** 31 - 1
        image = Image.fromarray(np.clip(np.rint(array / peak * 255.0), 0, 255).astype(np.uint8), "L")
    elif mode == "F":
        array = np.asarray(image, dtype=np.float64)
        scale = 255.0 if array.max(initial=0) <= 1.0 else 1.0
        image = Image.fromarray(np.clip(np.rint(array * scale), 0, 255).astype(np.uint8), "L")
    if mode in ("RGBA", "LA", "PA", "La", "RGBa") or (mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image if image.mode == "RGB" else image.convert("RGB")


def image_size(value, image_root: str | None = None, *, allow_outside: bool = False) -> tuple[int, int]:
    """``(width, height)`` of an image value, reading only its header (``ImageError`` when it cannot)."""
    if isinstance(value, dict):
        value = value.get("bytes") or value.get("path")
    if isinstance(value, Image.Image):
        return value.size
    source = io.BytesIO(value) if isinstance(value, (bytes, bytearray)) else (
        resolve_image_path(value, image_root, allow_outside) if isinstance(value, (str, os.PathLike)) else None)
    if source is None:
        raise ImageError("bad_image_value", f"unsupported image value of type {type(value).__name__}",
                         "give a PIL image, a file path, encoded bytes or a datasets Image feature")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(source) as image:
                return image.size
    except Exception as err:
        raise ImageError("not_an_image", f"the image header cannot be read ({type(err).__name__})",
                         "replace it with a PNG/JPEG/WebP image, or drop the row") from err
