"""Conversational messages of a row: plain strings and TRL's messages turned into one form, whose content is a list
of ``{"type": "image"}``, ``{"type": "video"}`` and ``{"type": "text", "text": ...}`` blocks, with the image and
video placeholders checked against the row's media."""

from __future__ import annotations

import re

from vlmdpo.data.errors import DataError

IMAGE_PLACEHOLDER, VIDEO_PLACEHOLDER = "<image>", "<video>"
"""The placeholders of plain-string prompts (TRL's and LLaVA's): each one stands for the next image or video."""
PLACEHOLDERS = {"image": IMAGE_PLACEHOLDER, "video": VIDEO_PLACEHOLDER}
PROMPT_ROLES, RESPONSE_ROLES = ("system", "user", "assistant"), ("assistant",)


def _placeholder_blocks(text: str, media: dict[str, int], index: int, field: str) -> list[dict]:
    """Content blocks of a plain-string prompt: each ``<image>`` / ``<video>`` in the text becomes a block in its
    place; a text without any gets the row's images, then its videos, before it (TRL's layout)."""
    found = {kind: text.count(mark) for kind, mark in PLACEHOLDERS.items()}
    if not any(found.values()):
        return [{"type": kind} for kind, count in media.items() for _ in range(count)] + [
            {"type": "text", "text": text}]
    for kind, mark in PLACEHOLDERS.items():
        if found[kind] != media.get(kind, 0):
            raise DataError(index, field, f"the text holds {found[kind]} {mark} placeholder(s) but the row has "
                            f"{media.get(kind, 0)} {kind}(s)", f"give one {mark} per {kind}, or no placeholder at "
                            "all (the images and videos then come before the text)", kind="placeholder_mismatch")
    return split_placeholders(text)


def split_placeholders(text: str) -> list[dict]:
    """Content blocks of ``text``: each ``<image>`` or ``<video>`` becomes an image or video block in its place."""
    blocks = []
    for piece in re.split(f"({re.escape(IMAGE_PLACEHOLDER)}|{re.escape(VIDEO_PLACEHOLDER)})", text):
        kind = next((kind for kind, mark in PLACEHOLDERS.items() if piece == mark), None)
        if kind:
            blocks.append({"type": kind})
        elif piece:
            blocks.append({"type": "text", "text": piece})
    return blocks


def as_messages(value, index: int, field: str, role: str, media: dict[str, int] | None = None,
                roles: tuple[str, ...] = PROMPT_ROLES) -> list[dict]:
    """``value`` (a plain string or TRL's messages) as messages whose content is a list of ``image``, ``video`` and
    ``text`` blocks; a user string gets a block per placeholder, or the row's ``media`` (``{kind: count}``) before
    its text. Raises ``DataError`` naming ``index`` and ``field``."""
    media = media or {}
    if isinstance(value, str):
        blocks = (_placeholder_blocks(value, media, index, field) if role == "user"
                  else [{"type": "text", "text": value}])
        return [{"role": role, "content": blocks}]
    if not isinstance(value, list) or not all(isinstance(m, dict) and "role" in m for m in value):
        raise DataError(index, field, f"expected a string or a list of {{'role', 'content'}} messages, "
                        f"got {type(value).__name__}", "use TRL's conversational or plain format", kind="bad_format")
    messages = [_message(message, index, field, roles) for message in value]
    string_contents = all(isinstance(message.get("content"), str) for message in value)
    if role == "user" and any(media.values()) and string_contents and not any(
            count_blocks(messages, kind) for kind in PLACEHOLDERS):
        # TRL's string-content messages without placeholders: the images and videos go before the first user text
        first_user = next((m for m in messages if m["role"] == "user"), None)
        if first_user is not None:
            first_user["content"] = [{"type": kind} for kind, count in media.items() for _ in range(count)] + \
                first_user["content"]
    return messages


def _message(message: dict, index: int, field: str, roles: tuple[str, ...]) -> dict:
    if message["role"] not in roles:
        raise DataError(index, field, f"a message has role {message['role']!r}", f"use one of {list(roles)} "
                        f"in the {field}", kind="bad_role")
    content = message.get("content")
    if isinstance(content, str):  # a string content may carry <image>/<video> placeholders (TRL, LLaVA, ms-swift)
        return {"role": message["role"], "content": split_placeholders(content)}
    if not isinstance(content, list):
        raise DataError(index, field, "a message has no 'content' list", "give each message a content",
                        kind="bad_format")
    # datasets stores blocks with every key of the union schema; keep only what each type needs
    blocks = []
    for block in content:
        if block.get("type") in PLACEHOLDERS:
            blocks.append({"type": block["type"]})
        elif block.get("type") == "text":
            text = block.get("text") or ""
            for kind, mark in PLACEHOLDERS.items():
                if mark in text:
                    raise DataError(index, field, f"a text block holds a literal {mark}, in a message that marks "
                                    f"its {kind}s with {{'type': '{kind}'}} blocks", f"remove {mark} from the text "
                                    f"(the {kind} blocks place the {kind}s)", kind="placeholder_mismatch")
            blocks.append({"type": "text", "text": text})
        else:
            raise DataError(index, field, f"unknown content block type {block.get('type')!r}",
                            "use blocks of type 'image', 'video' or 'text'", kind="bad_format")
    return {"role": message["role"], "content": blocks}


def response_text(messages: list[dict]) -> str:
    """The text of a response: the text blocks of its messages, joined."""
    return "".join(b["text"] for m in messages for b in m["content"] if b["type"] == "text")


def count_blocks(messages: list[dict], kind: str = "image") -> int:
    """How many ``{"type": kind}`` blocks (``image`` or ``video``) the messages hold."""
    return sum(b["type"] == kind for m in messages for b in m["content"])
