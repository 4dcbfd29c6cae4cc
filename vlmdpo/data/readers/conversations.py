"""LLaVA-style ``conversations`` rows (``{"from": "human" | "gpt", "value": ...}`` turns, ``<image>`` in the text).

- **POVID** (``YiyangZhou/POVID_preference_data_for_VLLMs``, arXiv 2402.11411; CC BY 4.0) and other LLaVA-style
  preference data: ``image`` (a path under ``data.image_root``), ``conversations`` ending with the chosen answer and
  ``rejected_conversations`` ending with the rejected one. The turns before the last are the prompt.
- **LLaVA-RLHF** human preference (``zhiqings/LLaVA-Human-Preference-10K``, arXiv 2309.14525; CC BY-NC 4.0):
  ``image``, ``conversations`` (the prompt turns, a trailing answer turn is dropped), ``output_1``, ``output_2``
  (``{"from", "value"}``) and ``preference`` (1 or 2: which output the annotator preferred).

Mapping: ``images = [image]``, turns as messages (human -> user, gpt -> assistant, system -> system) whose string
contents keep ``<image>``: the package reads it as the image's place.
"""

from __future__ import annotations

from vlmdpo.data.rows import DataError
from vlmdpo.data.row_format import RowFormat

ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}


def llava_messages(turns: list[dict], field: str) -> list[dict]:
    """``{"from", "value"}`` turns as ``{"role", "content"}`` messages."""
    messages = []
    for turn in turns:
        speaker = turn.get("from")
        if speaker not in ROLES:
            raise DataError(None, field, f"a turn is from {speaker!r}", f"use turns from {sorted(ROLES)}",
                            kind="bad_role")
        messages.append({"role": ROLES[speaker], "content": turn.get("value") or ""})
    return messages


def _split_last_answer(turns: list[dict], field: str) -> tuple[list[dict], str]:
    messages = llava_messages(turns, field)
    if not messages or messages[-1]["role"] != "assistant":
        raise DataError(None, field, "the conversation does not end with an answer (a gpt turn)",
                        "end each conversation with the answer to compare", kind="bad_format")
    return messages[:-1], messages[-1]["content"]


def _images(row: dict) -> list:
    image = row.get("image")
    return [] if image in (None, "") else [image]


def _povid_row(row: dict, options: dict) -> dict:
    prompt, chosen = _split_last_answer(row["conversations"], "conversations")
    rejected_prompt, rejected = _split_last_answer(row["rejected_conversations"], "rejected_conversations")
    if rejected_prompt != prompt:
        raise DataError(None, "rejected_conversations", "its turns before the answer differ from those of "
                        "conversations", "give both conversations the same prompt turns", kind="bad_format")
    return {"images": _images(row), "prompt": prompt, "chosen": chosen, "rejected": rejected}


def _llava_rlhf_row(row: dict, options: dict) -> dict:
    prompt = llava_messages(row["conversations"], "conversations")
    if prompt and prompt[-1]["role"] == "assistant":
        prompt = prompt[:-1]
    preference = row["preference"]
    if preference not in (1, 2, "1", "2"):
        raise DataError(None, "preference", f"expected 1 or 2, got {preference!r}", "give the preferred output's "
                        "number", kind="bad_format")
    chosen, rejected = ("output_1", "output_2") if int(preference) == 1 else ("output_2", "output_1")
    return {"images": _images(row), "prompt": prompt, "chosen": row[chosen]["value"],
            "rejected": row[rejected]["value"]}


POVID = RowFormat(
    name="povid", description="POVID / LLaVA-style: image, conversations, rejected_conversations",
    required=frozenset({"conversations", "rejected_conversations"}), convert=_povid_row)

LLAVA_RLHF = RowFormat(
    name="llava_rlhf", description="LLaVA-RLHF human preference: image, conversations, output_1, output_2, preference",
    required=frozenset({"conversations", "output_1", "output_2", "preference"}), convert=_llava_rlhf_row)
