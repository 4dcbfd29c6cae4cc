"""Held-out evaluation rows and the object vocabulary, read once per run and shared by every checkpoint.

An evaluation row is a normalized row (``vlmdpo.data.rows.normalize_row``: RGB ``images`` and a conversational
``prompt``) plus ``index`` (its row id in the source), ``objects`` (ground-truth names or ``None``) and, when
the data has pairs, ``chosen`` and ``rejected``.
"""

from __future__ import annotations

from pathlib import Path

from vlmdpo.data.rows import load_preference_dataset, normalize_row
from vlmdpo.eval.objects import ObjectVocabulary
from vlmdpo.names import resolve_name


def load_vocabulary(choice: str) -> ObjectVocabulary:
    """An object vocabulary by name: ``coco`` (the 80 COCO objects with synonyms), a json file of
    ``{canonical name: [surface forms]}``, or ``package.module:NAME`` naming such a dict (or an
    ``ObjectVocabulary``) in importable code, e.g. ``data_recipes.shapes:SHAPES_VOCABULARY``."""
    if choice == "coco":
        return ObjectVocabulary.coco()
    if Path(choice).is_file():
        return ObjectVocabulary.from_json(choice)
    if ":" in choice:
        value = resolve_name(choice, "vocabulary", (dict, ObjectVocabulary))
        return value if isinstance(value, ObjectVocabulary) else ObjectVocabulary.from_dict(value)
    raise ValueError(f"vocabulary {choice!r} is neither coco, an existing json file of "
                     "{canonical name: [surface forms]}, nor package.module:NAME (e.g. "
                     "data_recipes.shapes:SHAPES_VOCABULARY)")


def eval_row(row: dict, index: int, *, images_column: str = "images", prompt_column: str | None = "prompt",
             objects_column: str = "objects", chosen_column: str = "chosen", rejected_column: str = "rejected",
             default_prompt: str | None = None, image_root: str | None = None) -> dict:
    """One source row as an evaluation row; validation and image decoding are ``normalize_row``'s."""
    prompt = row.get(prompt_column) if prompt_column else None
    if prompt is None:
        if default_prompt is None:
            raise ValueError(f"row {index} has no {prompt_column!r} prompt and generation.prompt is null; "
                             "set generation.prompt or data.prompt_column")
        prompt = default_prompt
    images = row.get(images_column)
    if images is None and row.get("image") is not None:
        images = [row["image"]]
    has_pair = row.get(chosen_column) is not None and row.get(rejected_column) is not None
    source = {"images": images, "prompt": prompt, "chosen": row.get(chosen_column),
              "rejected": row.get(rejected_column)}
    normalized = normalize_row(source, index, image_root, responses=("chosen", "rejected") if has_pair else ())
    objects = row.get(objects_column)
    normalized.update(index=index, objects=list(objects) if objects is not None else None)
    return normalized


def load_eval_rows(source: str, split: str = "test", *, max_rows: int | None = None,
                   image_root: str | None = None, **columns) -> list[dict]:
    """Read ``source`` (see ``vlmdpo.data.rows.load_preference_dataset``) as a list of evaluation rows.

    ``columns`` are :func:`eval_row`'s column names and ``default_prompt``. Images in json files with
    relative paths resolve against the file's folder unless ``image_root`` is given.
    """
    if not source:
        raise ValueError("data.source is empty: give held-out rows, e.g. data.source=heldout.jsonl")
    if Path(source).suffix.lower() in (".json", ".jsonl", ".parquet", ".csv"):
        split = "train"  # datasets names the only split of plain data files "train"
    dataset = load_preference_dataset(source, split=split)
    if max_rows is not None:
        dataset = dataset.select(range(min(max_rows, len(dataset))))
    if image_root is None and Path(source).is_file():
        image_root = str(Path(source).parent)
    return [eval_row(dataset[i], i, image_root=image_root, **columns) for i in range(len(dataset))]
