"""TRL conversational messages and the ``datasets`` plumbing shared by the pair builders."""

from __future__ import annotations

from collections.abc import Sequence

import datasets

DESCRIBE_PROMPT = "Describe the image in detail."
_ListFeature = getattr(datasets, "List", datasets.Sequence)


def user_prompt(text: str, num_images: int = 1) -> list[dict]:
    """One user turn holding ``num_images`` image blocks, then ``text``."""
    return [{"role": "user", "content": [{"type": "image"} for _ in range(num_images)]
             + [{"type": "text", "text": text}]}]


def assistant_message(text: str) -> list[dict]:
    """One assistant turn holding ``text``."""
    return [{"role": "assistant", "content": [{"type": "text", "text": text}]}]


def row_images(row: dict) -> list:
    """A row's ``images`` (a list) or ``image`` (one image) value, as a list."""
    value = row.get("images", row.get("image"))
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]


def to_dataset(columns: dict[str, list], source: datasets.Dataset,
               image_columns: Sequence[str] = ("images",)) -> datasets.Dataset:
    """``columns`` as a ``datasets.Dataset`` whose image columns are lists of ``datasets.Image()``.

    Kept columns take their feature type from ``source`` where it has one of that name.
    """
    table = datasets.Dataset.from_dict(columns)
    for name in image_columns:
        table = table.cast_column(name, _ListFeature(datasets.Image()))
    for name, feature in source.features.items():
        if name in columns and name not in image_columns and name in table.column_names:
            try:
                table = table.cast_column(name, feature)
            except (TypeError, ValueError):  # e.g. a column the builder rewrote; keep the inferred type
                pass
    return table
