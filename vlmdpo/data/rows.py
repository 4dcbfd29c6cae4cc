"""Preference rows: loading with ``datasets``, and lazy but strict validation.

A row has ``images`` (a list of PIL images, paths or bytes, or the ``datasets`` Image feature), optionally
``videos`` (each a folder of frames, a video file or a list of frames: ``vlmdpo.data.videos``), ``prompt``,
``chosen`` and ``rejected``, in TRL's conversational format (lists of ``{"role", "content"}`` messages whose
content holds ``{"type": "image"}``, ``{"type": "video"}`` and ``{"type": "text"}`` blocks) or as plain strings.
Every row is turned into the conversational form (``vlmdpo.data.messages``), so the collator sees one format only.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import datasets
from PIL import Image

from vlmdpo.data.errors import DataError
from vlmdpo.data.images import DEFAULT_MAX_PIXELS, ImageError, load_image
from vlmdpo.data.messages import (  # the message names are imported from here too (re-exported)
    IMAGE_PLACEHOLDER, PLACEHOLDERS, PROMPT_ROLES, RESPONSE_ROLES, VIDEO_PLACEHOLDER, as_messages, count_blocks,
    response_text, split_placeholders,
)
from vlmdpo.data.videos import load_video

__all__ = [
    "IMAGE_PLACEHOLDER",
    "PLACEHOLDERS",
    "PROMPT_ROLES",
    "RESPONSE_FIELDS",
    "RESPONSE_ROLES",
    "SCORE_COLUMNS",
    "VIDEO_PLACEHOLDER",
    "DataError",
    "PreferenceDataset",
    "count_blocks",
    "default_image_root",
    "load_preference_dataset",
    "normalize_row",
    "response_text",
    "split_placeholders",
]

RESPONSE_FIELDS = ("chosen", "rejected")


SCORE_COLUMNS = ("reward_margin", "chosen_score", "rejected_score", "clip_score_gap", "chosen_clip_score",
                 "rejected_clip_score")
"""A pair's scores from a reward model, a judge or CLIP, kept on the row when the dataset has them (MM-DPO's
margin-scaled beta reads the first three, ``vlmdpo.methods.margin_beta``; DAMA the CLIP ones, ``vlmdpo.methods.dama``)."""

def load_preference_dataset(source: str, split: str = "train", **load_kwargs) -> datasets.Dataset:
    """Load preference rows with ``datasets``.

    ``source`` may be a folder written by ``Dataset.save_to_disk``/``DatasetDict.save_to_disk``, a local
    ``.json``/``.jsonl``/``.parquet``/``.csv`` file (or a glob of them), an ``imagefolder`` directory, or a
    dataset name on the hub (``load_dataset(source, split=split)``); ``split`` is ignored for plain data files,
    which have one. Images given as relative paths in json
    files are resolved against the file's folder by ``PreferenceDataset(image_root=...)``.
    """
    path = Path(source)
    if path.is_dir() and ((path / "dataset_info.json").exists() or (path / "dataset_dict.json").exists()):
        loaded = datasets.load_from_disk(str(path))
        return loaded[split] if isinstance(loaded, datasets.DatasetDict) else loaded
    suffix = path.suffix.lower()
    builders = {".json": "json", ".jsonl": "json", ".parquet": "parquet", ".csv": "csv"}
    if suffix in builders:  # a plain data file has one split, which datasets calls "train"
        is_json = suffix in (".json", ".jsonl") and path.is_file()
        try:
            loaded = datasets.load_dataset(builders[suffix], data_files=str(source), split="train", **load_kwargs)
        except Exception:
            if is_json:
                _raise_bad_json_line(path)  # datasets' error names neither the line nor the problem
            raise
        if is_json and not _is_utf8(path):  # pyarrow loads bad bytes; reading that row would crash mid-run
            _raise_bad_json_line(path)
        return loaded
    if path.is_dir():
        return datasets.load_dataset("imagefolder", data_dir=str(path), split=split, **load_kwargs)
    return datasets.load_dataset(source, split=split, **load_kwargs)


def _is_utf8(path: Path) -> bool:
    import codecs

    decoder = codecs.getincrementaldecoder("utf-8")()
    try:
        with path.open("rb") as file:
            while chunk := file.read(1 << 24):
                decoder.decode(chunk)
            decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        return False
    return True


def default_image_root(source: str, image_root: str | None = None) -> str | None:
    """``image_root`` if given, else the folder of a data file, or a ``save_to_disk`` folder itself: where
    relative image paths in ``source`` are looked up."""
    if image_root:
        return image_root
    path = Path(source)
    return str(path.parent) if path.is_file() else str(path) if path.is_dir() else None


def _raise_bad_json_line(path: Path) -> None:
    """``DataError`` naming the first line of a JSON-lines file that is not UTF-8 or not JSON (a file that is one
    JSON document is left to ``datasets``' own error)."""
    import json

    lines = path.read_bytes().splitlines()
    one_document = lines[0].lstrip()[:1] == b"[" if lines else False
    for number, raw in enumerate(lines, start=1):
        where = f"{path}, line {number} (counted from 1)"
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as err:
            raise DataError(None, None, f"byte {err.start} is not UTF-8 ({raw[err.start:err.start + 4]!r})",
                            "re-encode the file as UTF-8 (e.g. iconv -f latin1 -t utf-8), or drop the line",
                            kind="bad_encoding", where=where) from None
        if one_document or not text.strip():
            continue
        try:
            value = json.loads(text)
        except json.JSONDecodeError as err:
            raise DataError(None, None, f"the line is not JSON ({err.msg} at column {err.colno})",
                            "write one JSON object per line, or drop the line", kind="bad_json", where=where) from None
        if not isinstance(value, dict):
            raise DataError(None, None, f"the line is a JSON {type(value).__name__}, not an object",
                            "write one JSON object per line (a row)", kind="bad_json", where=where)


def _open_image(image, index: int, position: int, image_root: str | None, allow_outside: bool,
                max_pixels: int | None) -> Image.Image:
    try:
        return load_image(image, image_root, allow_outside=allow_outside, max_pixels=max_pixels)
    except ImageError as err:
        raise DataError(index, f"images[{position}]", err.problem, err.fix, kind=err.kind) from err


def _media_values(row: dict, plural: str, singular: str) -> list:
    """A row's ``images`` (or ``videos``) as a list; a single ``image`` (``video``) column counts as one."""
    values = row.get(plural)
    if values is None and row.get(singular) is not None:
        values = [row[singular]]
    values = [] if values is None else values
    if not isinstance(values, Sequence) or isinstance(values, (str, bytes)):
        values = [values]
    return list(values)


def _open_video(video, index: int, position: int, image_root: str | None, allow_outside: bool,
                max_pixels: int | None, frames: int | None, fps: float | None) -> tuple[list[Image.Image], dict]:
    try:
        return load_video(video, image_root, frames=frames, fps=fps, allow_outside=allow_outside,
                          max_pixels=max_pixels)
    except ImageError as err:
        raise DataError(index, f"videos[{position}]", err.problem, err.fix, kind=err.kind) from err


def normalize_row(row: dict, index: int, image_root: str | None = None,
                  responses: Sequence[str] = RESPONSE_FIELDS, *, allow_outside_images: bool = False,
                  max_image_pixels: int | None = DEFAULT_MAX_PIXELS, decode_images: bool = True,
                  video_frames: int | None = None, video_fps: float | None = None) -> dict:
    """Validate one preference row and return it as ``{images, videos, video_metadata, prompt, chosen, rejected}``.

    Images are decoded to RGB PIL images (``vlmdpo.data.images.load_image``; with an ``image_root``, paths must lie
    inside it unless ``allow_outside_images``), videos to lists of them (``vlmdpo.data.videos.load_video``: a frame
    folder, a video file or a list of frames; ``video_frames`` keeps that many, evenly spaced; ``video_metadata``
    says which, with the frame rate: a file's own, else ``video_fps``); a plain-string
    prompt gets a block for each ``<image>`` / ``<video>`` in its text, or the images and videos before the text;
    plain-string responses become one assistant message.
    Raises ``DataError`` on a missing field, an unreadable image or video, an unknown role, an empty response, a
    pair whose two responses are the same text, or placeholders that do not match the number of images or videos.
    ``responses=("chosen",)`` reads supervised rows, where a ``completion`` column may stand for ``chosen``;
    ``responses=()`` reads prompt-only rows (for generation), returning ``{images, videos, video_metadata, prompt}``.
    ``decode_images=False`` checks the text only and returns the image and video values as given (for inspecting).
    """
    if tuple(responses) == ("chosen",) and row.get("chosen") is None and row.get("completion") is not None:
        row = {**row, "chosen": row["completion"]}
    for field in ("prompt", *responses):
        if field not in row and not (field == "chosen" and "completion" in row):
            raise DataError(index, field, f"the dataset has no {field!r} column (its columns: {sorted(row)})",
                            f"add a {field!r} column, or rename the column that holds it", kind="missing_column")
        if row.get(field) is None:
            raise DataError(index, field, "the value is missing (null) in this row",
                            "give the row a value, or drop the row", kind="null_value")
    images, videos = _media_values(row, "images", "image"), _media_values(row, "videos", "video")
    if decode_images:
        images = [_open_image(image, index, i, image_root, allow_outside_images, max_image_pixels)
                  for i, image in enumerate(images)]
        opened = [_open_video(video, index, i, image_root, allow_outside_images, max_image_pixels, video_frames,
                              video_fps) for i, video in enumerate(videos)]
        videos, metadata = [frames for frames, _ in opened], [meta for _, meta in opened]
    else:
        metadata = [None] * len(videos)

    media = {"image": len(images), "video": len(videos)}
    prompt = as_messages(row["prompt"], index, "prompt", "user", media)
    for kind, count in media.items():
        blocks = count_blocks(prompt, kind)
        if blocks != count:
            raise DataError(index, "prompt", f"the prompt has {blocks} {kind} placeholder(s) but the row has "
                            f"{count} {kind}(s)", f"add or remove {{'type': '{kind}'}} blocks so they match",
                            kind="placeholder_mismatch")
    normalized = {"images": images, "videos": videos, "video_metadata": metadata, "prompt": prompt}
    for field in responses:
        messages = as_messages(row[field], index, field, "assistant", roles=RESPONSE_ROLES)
        kind = next((kind for kind in PLACEHOLDERS if count_blocks(messages, kind)), None)
        if kind:
            raise DataError(index, field, f"a response contains an {kind} block" if kind == "image" else
                            f"a response contains a {kind} block", f"put {kind}s in the prompt",
                            kind=f"{kind}_in_response")
        if not response_text(messages).strip():
            raise DataError(index, field, "the response is empty", "drop the row or give it a response",
                            kind="empty_response")
        normalized[field] = messages
    if "rejected" in normalized and (response_text(normalized["chosen"]).strip()
                                     == response_text(normalized["rejected"]).strip()):
        raise DataError(index, "rejected", "the rejected response is the same text as the chosen one, so the pair "
                        "states no preference (its DPO gradient is zero)", "drop the row, or give it a different "
                        "rejected response", kind="identical_responses")
    return normalized


class PreferenceDataset:
    """Map-style view over a ``datasets.Dataset`` that validates each row when it is read.

    Validation is lazy (nothing is decoded up front) and strict (a bad row raises ``DataError`` naming its
    index in the underlying dataset). ``indices`` restricts the view to those rows of ``dataset`` (the rows a
    validation kept); errors and ``row["index"]`` still name the row's place in ``dataset``.
    """

    def __init__(self, dataset: datasets.Dataset, image_root: str | None = None,
                 responses: Sequence[str] = RESPONSE_FIELDS, *, indices: Sequence[int] | None = None,
                 allow_outside_images: bool = False, max_image_pixels: int | None = DEFAULT_MAX_PIXELS,
                 video_frames: int | None = None, video_fps: float | None = None):
        self.dataset = dataset
        self.video_frames, self.video_fps = video_frames, video_fps
        self.image_root = image_root
        self.responses = tuple(responses)
        self.indices = None if indices is None else [int(i) for i in indices]
        self.allow_outside_images, self.max_image_pixels = allow_outside_images, max_image_pixels

    def __len__(self) -> int:
        return len(self.dataset) if self.indices is None else len(self.indices)

    def source_index(self, position: int) -> int:
        """The row's index in the underlying dataset."""
        return int(position) if self.indices is None else self.indices[int(position)]

    def subset(self, indices: Sequence[int]) -> PreferenceDataset:
        """The same view restricted to ``indices`` (indices of the underlying dataset)."""
        return PreferenceDataset(self.dataset, self.image_root, self.responses, indices=indices,
                                 allow_outside_images=self.allow_outside_images,
                                 max_image_pixels=self.max_image_pixels, video_frames=self.video_frames,
                                 video_fps=self.video_fps)

    def __getitem__(self, position: int) -> dict:
        index = self.source_index(position)
        source = self.dataset[index]
        row = normalize_row(source, index, self.image_root, self.responses,
                            allow_outside_images=self.allow_outside_images, max_image_pixels=self.max_image_pixels,
                            video_frames=self.video_frames, video_fps=self.video_fps)
        if source.get("corrupted_images") is not None:  # mDPO's conditional pairs, built ahead of training
            row["corrupted_images"] = self._corrupted_images(source, row, index)
        row.update({column: source[column] for column in SCORE_COLUMNS if source.get(column) is not None})
        row["index"] = index
        return row

    def _corrupted_images(self, source: dict, row: dict, index: int) -> list:
        # decoded and checked as a row's images are (the stand-in prompt only carries them)
        corrupted = normalize_row({"images": source["corrupted_images"], "prompt": "-"}, index,
                                  self.image_root, (), allow_outside_images=self.allow_outside_images,
                                  max_image_pixels=self.max_image_pixels)["images"]
        if len(corrupted) != len(row["images"]):
            raise DataError(index, "corrupted_images", f"{len(corrupted)} corrupted images for {len(row['images'])} "
                            "images", "give one corrupted image per image, in the same order", kind="bad_corruption")
        return corrupted

    def validate(self) -> None:
        """Read every row once (decoding images) so that a bad row fails now rather than mid-run."""
        for position in range(len(self)):
            self[position]
