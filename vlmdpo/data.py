"""Preference rows: loading with ``datasets``, and lazy but strict validation.

A row has ``images`` (a list of PIL images, paths or bytes, or the ``datasets`` Image feature), ``prompt``,
``chosen`` and ``rejected``, in TRL's conversational format (lists of ``{"role", "content"}`` messages whose
content holds ``{"type": "image"}`` and ``{"type": "text"}`` blocks) or as plain strings. Every row is turned
into the conversational form here, so the collator sees one format only.
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from pathlib import Path

import datasets
from PIL import Image

RESPONSE_FIELDS = ("chosen", "rejected")


class DataError(ValueError):
    """A preference row that cannot be used; the message names the row, the field and the fix."""

    def __init__(self, index: int | None, field: str, problem: str, fix: str):
        where = f"row {index} (counted from 0)" if index is not None else "a row"
        super().__init__(f"{where}, field {field!r}: {problem}. Fix: {fix}")
        self.index, self.field = index, field


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
        return datasets.load_dataset(builders[suffix], data_files=str(source), split="train", **load_kwargs)
    if path.is_dir():
        return datasets.load_dataset("imagefolder", data_dir=str(path), split=split, **load_kwargs)
    return datasets.load_dataset(source, split=split, **load_kwargs)


def _open_image(image, index: int, position: int, image_root: str | None) -> Image.Image:
    field = f"images[{position}]"
    try:
        if isinstance(image, Image.Image):
            return image.convert("RGB")
        if isinstance(image, dict):  # the undecoded datasets Image feature: {"bytes", "path"}
            image = image.get("bytes") or image.get("path")
        if isinstance(image, (bytes, bytearray)):
            return Image.open(io.BytesIO(image)).convert("RGB")
        if isinstance(image, (str, os.PathLike)):
            path = Path(image)
            if not path.is_absolute() and image_root is not None:
                path = Path(image_root) / path
            if not path.exists():
                raise DataError(index, field, f"image file {str(path)!r} does not exist",
                                "correct the path, or pass image_root= for paths relative to a folder")
            return Image.open(path).convert("RGB")
    except DataError:
        raise
    except Exception as err:  # PIL raises several types for unreadable data
        raise DataError(index, field, f"the image cannot be read ({type(err).__name__}: {err})",
                        "replace it with a valid PNG/JPEG file, bytes or PIL image, or drop the row") from err
    raise DataError(index, field, f"unsupported image value of type {type(image).__name__}",
                    "give a PIL image, a file path, encoded bytes or a datasets Image feature")


def _as_messages(value, index: int, field: str, role: str, num_images: int = 0) -> list[dict]:
    if isinstance(value, str):
        content = [{"type": "image"} for _ in range(num_images)] + [{"type": "text", "text": value}]
        return [{"role": role, "content": content}]
    if not isinstance(value, list) or not all(isinstance(m, dict) and "role" in m for m in value):
        raise DataError(index, field, f"expected a string or a list of {{'role', 'content'}} messages, "
                        f"got {type(value).__name__}", "use TRL's conversational or plain format")
    messages = []
    for message in value:
        content = message.get("content")
        if isinstance(content, str):
            content = [{"type": "text", "text": content}]
        if not isinstance(content, list):
            raise DataError(index, field, "a message has no 'content' list", "give each message a content")
        # datasets stores blocks with every key of the union schema; keep only what each type needs
        blocks = []
        for block in content:
            if block.get("type") == "image":
                blocks.append({"type": "image"})
            elif block.get("type") == "text":
                blocks.append({"type": "text", "text": block.get("text") or ""})
            else:
                raise DataError(index, field, f"unknown content block type {block.get('type')!r}",
                                "use blocks of type 'image' or 'text'")
        messages.append({"role": message["role"], "content": blocks})
    return messages


def response_text(messages: list[dict]) -> str:
    """The text of a response: the text blocks of its messages, joined."""
    return "".join(b["text"] for m in messages for b in m["content"] if b["type"] == "text")


def count_image_blocks(messages: list[dict]) -> int:
    return sum(b["type"] == "image" for m in messages for b in m["content"])


def normalize_row(row: dict, index: int, image_root: str | None = None,
                  responses: Sequence[str] = RESPONSE_FIELDS) -> dict:
    """Validate one preference row and return it as ``{images, prompt, chosen, rejected}``.

    Images are decoded to RGB PIL images; plain-string prompts get one image block per image before the
    text; plain-string responses become one assistant message. Raises ``DataError`` on a missing field,
    an unreadable image, an empty response, or image blocks that do not match the number of images.
    ``responses=("chosen",)`` reads supervised rows, where a ``completion`` column may stand for ``chosen``;
    ``responses=()`` reads prompt-only rows (for generation), returning ``{images, prompt}``.
    """
    if tuple(responses) == ("chosen",) and row.get("chosen") is None and row.get("completion") is not None:
        row = {**row, "chosen": row["completion"]}
    for field in ("prompt", *responses):
        if field not in row and not (field == "chosen" and "completion" in row):
            raise DataError(index, field, f"the dataset has no {field!r} column (its columns: {sorted(row)})",
                            f"add a {field!r} column, or rename the column that holds it")
        if row.get(field) is None:
            raise DataError(index, field, "the value is missing (null) in this row",
                            "give the row a value, or drop the row")
    images = row.get("images")
    if images is None and row.get("image") is not None:
        images = [row["image"]]
    images = [] if images is None else images
    if not isinstance(images, Sequence) or isinstance(images, (str, bytes)):
        images = [images]
    images = [_open_image(image, index, i, image_root) for i, image in enumerate(images)]

    prompt = _as_messages(row["prompt"], index, "prompt", "user", num_images=len(images))
    num_blocks = count_image_blocks(prompt)
    if num_blocks != len(images):
        raise DataError(index, "prompt", f"the prompt has {num_blocks} image placeholder(s) but the row has "
                        f"{len(images)} image(s)", "add or remove {'type': 'image'} blocks so they match")
    normalized = {"images": images, "prompt": prompt}
    for field in responses:
        messages = _as_messages(row[field], index, field, "assistant")
        if count_image_blocks(messages):
            raise DataError(index, field, "a response contains an image block", "put images in the prompt")
        if not response_text(messages).strip():
            raise DataError(index, field, "the response is empty", "drop the row or give it a response")
        normalized[field] = messages
    return normalized


class PreferenceDataset:
    """Map-style view over a ``datasets.Dataset`` that validates each row when it is read.

    Validation is lazy (nothing is decoded up front), strict (the first bad row stops the run with a
    ``DataError``) and names the row's index in the underlying dataset.
    """

    def __init__(self, dataset: datasets.Dataset, image_root: str | None = None,
                 responses: Sequence[str] = RESPONSE_FIELDS):
        self.dataset = dataset
        self.image_root = image_root
        self.responses = tuple(responses)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict:
        row = normalize_row(self.dataset[int(index)], int(index), self.image_root, self.responses)
        row["index"] = int(index)
        return row

    def validate(self) -> None:
        """Read every row once (decoding images) so that a bad row fails now rather than mid-run."""
        for index in range(len(self)):
            self[index]
