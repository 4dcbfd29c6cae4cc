"""Question-style rows: one image, a question, a chosen and a rejected answer (strings).

- **RLAIF-V** (``openbmb/RLAIF-V-Dataset``, arXiv 2405.17220; CC BY-NC 4.0): columns ``image`` (an Image
  feature), ``question``, ``chosen``, ``rejected``, plus ``ds_name``, ``origin_dataset``, ``origin_split``,
  ``idx``, ``image_path``. **MMPR** (``OpenGVLab/MMPR``, arXiv 2411.10442; MIT) has the same four columns, with
  ``image`` a path relative to its image folder (``data.image_root``) and often ``<image>`` in the question.
- **HA-DPO** (arXiv 2311.16839, opendatalab/HA-DPO; Apache-2.0 code, Visual Genome images CC BY 4.0): the same
  answers keyed by ``image_id``; the image is ``<image_id>.jpg`` under ``data.image_root`` (option ``image_pattern``).

Mapping: ``images = [image]``, ``prompt = question`` (a plain string: the image goes before the text, or where
``<image>`` stands), ``chosen``, ``rejected`` as plain strings. TRL's formatted copy of RLAIF-V
(``images``, ``prompt``/``chosen``/``rejected`` as messages) is the package's own layout and needs no reader.
Layouts as published on the dataset cards; the test fixtures are written from those, not from a download.
"""

from __future__ import annotations

from vlmdpo.data.row_format import RowFormat


def _question_row(row: dict, options: dict) -> dict:
    return {"images": [row["image"]] if row.get("image") is not None else [], "prompt": row["question"],
            "chosen": row["chosen"], "rejected": row["rejected"]}


def _image_id_row(row: dict, options: dict) -> dict:
    image = options["image_pattern"].format(image_id=row["image_id"])
    return {"images": [image], "prompt": row["question"], "chosen": row["chosen"], "rejected": row["rejected"]}


RLAIF_V = RowFormat(
    name="rlaif_v", description="RLAIF-V / MMPR: image, question, chosen, rejected",
    required=frozenset({"image", "question", "chosen", "rejected"}), excluded=frozenset({"prompt", "images"}),
    convert=_question_row)

HA_DPO = RowFormat(
    name="ha_dpo", description="HA-DPO: image_id, question, chosen, rejected",
    required=frozenset({"image_id", "question", "chosen", "rejected"}), excluded=frozenset({"image", "images"}),
    convert=_image_id_row, options={"image_pattern": "{image_id}.jpg"})
