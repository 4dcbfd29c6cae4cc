"""Other toolkits' preference files, read unchanged.

- **LLaMA-Factory** (sharegpt layout of its ``dataset_info.json``, ``ranking: true``): ``conversations`` (``{"from",
  "value"}`` turns) or ``messages`` (``{"role", "content"}``), with ``chosen`` and ``rejected`` each one answer
  turn, ``images`` a list of paths, ``<image>`` in the text where each goes, an optional ``system`` column.
- **ms-swift** (RLHF/DPO layout): ``messages`` (``{"role", "content"}``, ending with the chosen assistant turn),
  ``rejected_response`` (a string) and ``images``; ``<image>`` in the text.

Mapping: turns as messages (LLaVA speakers as in ``conversations.py``), string contents kept so that ``<image>``
marks each image's place; image paths are relative to the file's folder or ``data.image_root``.
"""

from __future__ import annotations

from vlmdpo.data.readers.conversations import llava_messages
from vlmdpo.data.rows import DataError
from vlmdpo.data.row_format import RowFormat


def _turns(value, field: str) -> list[dict]:
    turns = value if isinstance(value, list) else [value]
    if turns and all(isinstance(t, dict) and "from" in t for t in turns):
        return llava_messages(turns, field)
    if all(isinstance(t, dict) and "role" in t for t in turns):
        return [{"role": t["role"], "content": t.get("content") or ""} for t in turns]
    raise DataError(None, field, "expected {from, value} or {role, content} turns",
                    "write turns as LLaMA-Factory's sharegpt layout does", kind="bad_format")


def _answer(value, field: str) -> str:
    if isinstance(value, str):
        return value
    messages = _turns(value, field)
    if len(messages) != 1 or messages[0]["role"] != "assistant":
        raise DataError(None, field, "expected one answer turn (from gpt / role assistant)",
                        "give chosen and rejected as one answer turn each", kind="bad_format")
    return messages[0]["content"]


def _llamafactory_row(row: dict, options: dict) -> dict:
    field = "conversations" if row.get("conversations") is not None else "messages"
    prompt = _turns(row[field], field)
    if row.get("system"):
        prompt.insert(0, {"role": "system", "content": row["system"]})
    return {"images": row.get("images") or [], "prompt": prompt, "chosen": _answer(row["chosen"], "chosen"),
            "rejected": _answer(row["rejected"], "rejected")}


def _swift_row(row: dict, options: dict) -> dict:
    messages = _turns(row["messages"], "messages")
    if not messages or messages[-1]["role"] != "assistant":
        raise DataError(None, "messages", "the messages do not end with the chosen assistant answer",
                        "end messages with the chosen answer, as ms-swift's DPO layout does", kind="bad_format")
    return {"images": row.get("images") or [], "prompt": messages[:-1], "chosen": messages[-1]["content"],
            "rejected": row["rejected_response"]}


LLAMAFACTORY = RowFormat(
    name="llamafactory", description="LLaMA-Factory sharegpt preference: conversations, chosen, rejected, images",
    required=frozenset({"conversations", "chosen", "rejected"}), convert=_llamafactory_row)

LLAMAFACTORY_MESSAGES = RowFormat(
    name="llamafactory_messages", description="LLaMA-Factory sharegpt preference with messages: messages, chosen, "
    "rejected, images", required=frozenset({"messages", "chosen", "rejected"}), convert=_llamafactory_row)

SWIFT = RowFormat(
    name="swift", description="ms-swift DPO: messages, rejected_response, images",
    required=frozenset({"messages", "rejected_response"}), convert=_swift_row)
