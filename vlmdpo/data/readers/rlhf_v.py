"""RLHF-V (``openbmb/RLHF-V-Dataset``, arXiv 2312.00849; CC BY-NC 4.0): human corrections of model answers.

Columns: ``image`` (an Image feature), ``text`` (a JSON string ``{"question", "chosen", "rejected"}``), plus
``ds_name``, ``origin_dataset``, ``origin_split``, ``idx``, ``image_path``. Mapping: ``images = [image]``, the
question as the prompt, the corrected answer as chosen and the model's answer as rejected. A ``text`` that is not
such a JSON object is a ``DataError`` naming the row.
"""

from __future__ import annotations

import json

from vlmdpo.data.rows import DataError
from vlmdpo.data.row_format import RowFormat

KEYS = ("question", "chosen", "rejected")


def _rlhf_v_row(row: dict, options: dict) -> dict:
    try:
        text = json.loads(row["text"]) if isinstance(row["text"], str) else row["text"]
    except json.JSONDecodeError as err:
        raise DataError(row.get("idx"), "text", f"not a JSON object ({err.msg})",
                        "give text as a JSON string holding question, chosen and rejected") from None
    if not isinstance(text, dict) or any(key not in text for key in KEYS):
        raise DataError(row.get("idx"), "text", f"the JSON lacks {[k for k in KEYS if k not in (text or {})]}",
                        "give text as a JSON string holding question, chosen and rejected")
    return {"images": [row["image"]], "prompt": text["question"], "chosen": text["chosen"],
            "rejected": text["rejected"]}


RLHF_V = RowFormat(
    name="rlhf_v", description="RLHF-V: image, text (JSON with question, chosen, rejected)",
    required=frozenset({"image", "text"}), excluded=frozenset({"chosen", "rejected", "prompt"}), convert=_rlhf_v_row)
