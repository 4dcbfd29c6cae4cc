"""Video loading for preference rows: every legal video becomes the list of RGB frames its processor is given.

A video is one of: a folder of frame images (its image files in natural name order, ``frame_2`` before
``frame_10``; LLaVA-Hound's zero-padded ``c01_0001.jpeg`` sort the same either way), a video file (decoded by ``transformers``'
``load_video`` with PyAV, ``pip install vlmdpo[video]``), or a list of frames (anything an image may be). Each
frame is read as an image is (``vlmdpo.data.images.load_image``: RGB, pixel limit, paths inside the root).
``load_video`` also gives the metadata ``transformers``' video processors read (Qwen3-VL's frame timestamps):
which frames were kept, of how many, at what frame rate. ``frames`` gives exactly that many, evenly spaced from the first to the last (a shorter video repeats frames:
processors such as LLaVA-OneVision's stack a batch's videos, which then must have one length).
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from vlmdpo.data.images import ImageError, load_image, resolve_image_path

VIDEO_FILE_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpeg", ".mpg")
FRAME_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")


def frame_indices(total: int, frames: int | None) -> list[int]:
    """Indices of ``frames`` frames evenly spaced over ``total`` (first and last kept; a shorter video repeats
    frames, so every video of a batch has the same length), or all of them when ``frames`` is ``None``."""
    if frames is None:
        return list(range(total))
    return np.linspace(0, total - 1, frames).round().astype(int).tolist()


def _natural_key(path: Path) -> list:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", path.name)]


def frame_files(folder: Path) -> list[Path]:
    """The frame images of a folder, in natural name order."""
    return sorted((path for path in folder.iterdir() if path.is_file() and path.suffix.lower() in FRAME_SUFFIXES),
                  key=_natural_key)


def load_video(value, image_root: str | None = None, *, frames: int | None = None, fps: float | None = None,
               allow_outside: bool = False, max_pixels: int | None = None) -> tuple[list[Image.Image], dict]:
    """The RGB frames of ``value`` (a frame folder, a video file or a list of frames) and their metadata:
    ``total_num_frames`` of the source, ``frames_indices`` of the frames kept and ``fps`` (a file's own, else
    ``fps``: the frame rate frame folders and lists were taken at; ``None`` when unknown). Raises ``ImageError``."""
    if isinstance(value, (str, os.PathLike)):
        path = resolve_image_path(value, image_root, allow_outside, what="video", folder=True)
        if path.is_dir():
            files = frame_files(path)
            if not files:
                raise ImageError("no_frames", f"video folder {str(path)!r} holds no frame images "
                                 f"({', '.join(FRAME_SUFFIXES)})", "point the row at a folder of frame images or at a "
                                 "video file")
            indices = frame_indices(len(files), frames)
            return [load_image(files[i], max_pixels=max_pixels) for i in indices], _metadata(len(files), indices, fps)
        if path.suffix.lower() in VIDEO_FILE_SUFFIXES:
            return _decode(path, frames, max_pixels)
        raise ImageError("not_a_video", f"video path {str(path)!r} is neither a folder of frames nor a video file "
                         f"({', '.join(VIDEO_FILE_SUFFIXES)})", "point the row at a frame folder or a video file")
    if isinstance(value, Sequence) and not isinstance(value, (bytes, bytearray)):
        if not value:
            raise ImageError("no_frames", "the video is an empty list of frames", "give at least one frame")
        indices = frame_indices(len(value), frames)
        return [load_image(value[i], image_root, allow_outside=allow_outside, max_pixels=max_pixels)
                for i in indices], _metadata(len(value), indices, fps)
    raise ImageError("bad_video_value", f"unsupported video value of type {type(value).__name__}",
                     "give a folder of frames, a video file path or a list of frames")


def _metadata(total: int, indices: list[int], fps: float | None) -> dict:
    return {"total_num_frames": total, "frames_indices": list(indices), "fps": None if fps is None else float(fps)}


def _decode(path: Path, frames: int | None, max_pixels: int | None) -> tuple[list[Image.Image], dict]:
    try:
        import av  # noqa: F401  (transformers' pyav backend needs it; say so before transformers does)
    except ImportError:
        raise ImageError("video_backend", f"reading the video file {str(path)!r} needs PyAV",
                         "pip install av (or vlmdpo[video]), or give the video as a folder of frames") from None
    from transformers.video_utils import load_video as decode

    def indices(metadata, **_):  # the same frames a folder of this video's frames would give
        return np.array(frame_indices(metadata.total_num_frames, frames))

    try:
        array, metadata = decode(str(path), backend="pyav", sample_indices_fn=indices)
    except Exception as err:  # a corrupt or truncated file: PyAV raises its own errors
        raise ImageError("unreadable_video", f"the video cannot be decoded ({type(err).__name__}: {err})",
                         "replace it with a complete video file, or drop the row") from err
    kept = [load_image(Image.fromarray(np.asarray(frame)), max_pixels=max_pixels) for frame in array]
    return kept, _metadata(metadata.total_num_frames, [int(i) for i in metadata.frames_indices], metadata.fps)
