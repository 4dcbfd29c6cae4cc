"""The shapes world's held-out rows written in two published benchmarks' layouts, so that ``vlmdpo eval
benchmark=pope`` and ``benchmark=chair`` can be checked against ``vlmdpo eval`` on the same rows.

* :func:`write_pope_files`: ``images/`` plus one ``shapes_pope_{strategy}.json`` per strategy, json lines of
  ``question_id``, ``image``, ``image_id``, ``text``, ``label`` as in POPE's ``coco_pope_random.json``. The
  questions are the ones ``vlmdpo eval`` asks (``build_pope_questions`` with the same settings), in its order.
* :func:`write_coco_files`: ``images/``, ``instances_shapes.json`` (COCO's instances layout: images, one
  annotation per object, the vocabulary as categories) and ``chair_questions.jsonl`` (``image_id``,
  ``question``, as Object HalBench's question file). No captions file: COCO's reference captions would add the
  objects they mention to the ground truth, and here the ground truth is the ``objects`` column alone.

Rows are read with :func:`vlmdpo.eval.rows.load_eval_rows`, the reader ``vlmdpo eval`` uses, so the images
written are the pixels it evaluates. ``python -m data_recipes.shapes.benchmark_files HELDOUT OUT`` writes both.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

from vlmdpo.eval.objects import ObjectVocabulary
from vlmdpo.eval.pope import build_pope_questions
from vlmdpo.eval.rows import load_eval_rows

from .vocabulary import SHAPES_VOCABULARY


def load_heldout(source: str, max_rows: int | None = None) -> list[dict]:
    """The held-out rows as ``vlmdpo eval`` reads them (``index``, ``images``, ``objects``)."""
    return load_eval_rows(source, max_rows=max_rows, default_prompt="Describe the image.")


def _image_name(row: dict) -> str:
    return f"shapes_{row['index']:06d}.png"


def write_images(rows: Sequence[dict], out: str | Path) -> Path:
    """Each row's first image as ``out/images/shapes_<index>.png`` (PNG: lossless, the same pixels)."""
    folder = Path(out) / "images"
    folder.mkdir(parents=True, exist_ok=True)
    for row in rows:
        row["images"][0].save(folder / _image_name(row))
    return folder


def write_pope_files(rows: Sequence[dict], out: str | Path, *, strategies: Sequence[str] = ("random",),
                     questions_per_image: int = 3, seed: int = 0,
                     vocabulary: Mapping[str, list[str]] = SHAPES_VOCABULARY) -> list[Path]:
    """POPE question files for ``rows`` (module docstring); the settings are ``vlmdpo eval``'s ``pope.*``."""
    objects = ObjectVocabulary.from_dict(vocabulary)
    write_images(rows, out)
    annotations = [[objects.canonical(name) for name in row["objects"]] for row in rows]
    paths = []
    for strategy in strategies:
        questions = build_pope_questions(annotations, objects.names, strategy=strategy,
                                         num_negatives_per_image=questions_per_image, seed=seed)
        lines = [{"question_id": number, "image": _image_name(rows[q.image_index]),
                  "image_id": rows[q.image_index]["index"], "text": q.question, "label": q.label}
                 for number, q in enumerate(questions, start=1)]
        path = Path(out) / f"shapes_pope_{strategy}.json"
        path.write_text("".join(json.dumps(line) + "\n" for line in lines))
        paths.append(path)
    return paths


def write_coco_files(rows: Sequence[dict], out: str | Path, *, prompt: str = "Describe the image.",
                     vocabulary: Mapping[str, list[str]] = SHAPES_VOCABULARY) -> tuple[Path, Path]:
    """COCO instances and a CHAIR question file for ``rows`` (module docstring); returns both paths."""
    objects = ObjectVocabulary.from_dict(vocabulary)
    write_images(rows, out)
    category_id = {name: number for number, name in enumerate(objects.names, start=1)}
    annotations = [{"image_id": row["index"], "category_id": category_id[objects.canonical(name)]}
                   for row in rows for name in row["objects"]]
    instances = {
        "images": [{"id": row["index"], "file_name": _image_name(row)} for row in rows],
        "annotations": [{"id": number, **annotation} for number, annotation in enumerate(annotations, start=1)],
        "categories": [{"id": number, "name": name, "supercategory": "shape"} for name, number in category_id.items()],
    }
    instances_path = Path(out) / "instances_shapes.json"
    instances_path.write_text(json.dumps(instances))
    questions_path = Path(out) / "chair_questions.jsonl"
    questions_path.write_text("".join(json.dumps({"image_id": row["index"], "question": prompt}) + "\n"
                                      for row in rows))
    return instances_path, questions_path


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("heldout", help="held-out rows (a save_to_disk folder or json/jsonl file)")
    parser.add_argument("out", help="folder to write pope/ and coco/ into")
    parser.add_argument("--strategies", nargs="+", default=["random", "popular", "adversarial"])
    parser.add_argument("--questions-per-image", type=int, default=3)
    args = parser.parse_args()
    heldout = load_heldout(args.heldout)
    write_pope_files(heldout, Path(args.out) / "pope", strategies=args.strategies,
                     questions_per_image=args.questions_per_image)
    write_coco_files(heldout, Path(args.out) / "coco")
    print(f"wrote {args.out}/pope and {args.out}/coco")
