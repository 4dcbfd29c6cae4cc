"""Reading a benchmark's published files: json or json-lines rows, checked for the fields each reader needs.

Every refusal is a :class:`BenchmarkFormatError` that names the file, the field that was expected and what to do,
so a user who pointed ``vlmdpo eval`` at the wrong download learns which file is wrong and why.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path


class BenchmarkFormatError(ValueError):
    """A benchmark file is missing, unreadable, or lacks a field its published layout has."""


def read_rows(path: str | Path, benchmark: str) -> list[dict]:
    """The rows of a json file holding a list of objects, or of a json-lines file (one object per line).

    POPE ships its "*.json" question files as json lines, AMBER and MMHal-Bench as one json list, so the layout
    is sniffed from the content, not the file name.
    """
    path = Path(path)
    if not path.is_file():
        raise BenchmarkFormatError(f"{benchmark}: {path} does not exist; point data.source at the "
                                   f"benchmark's downloaded file or folder")
    text = path.read_text(encoding="utf-8")
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        try:
            data = [json.loads(line) for line in text.splitlines() if line.strip()]
        except json.JSONDecodeError as error:
            raise BenchmarkFormatError(f"{benchmark}: {path} is neither a json list nor json lines "
                                       f"({error}); is this the benchmark's file?") from None
    if isinstance(data, dict):
        data = [data]
    if not isinstance(data, list) or not all(isinstance(row, dict) for row in data):
        raise BenchmarkFormatError(f"{benchmark}: {path} should hold a list of objects (one per question); "
                                   "is this the benchmark's file?")
    return data


def require_fields(rows: list[dict], fields: Iterable[str], path: str | Path, benchmark: str, fix: str) -> None:
    """Refuse ``rows`` unless each has every one of ``fields``; the message names the first row that lacks one."""
    fields = tuple(fields)
    for number, row in enumerate(rows):
        missing = [field for field in fields if field not in row]
        if missing:
            raise BenchmarkFormatError(
                f"{benchmark}: row {number} of {path} has no {', '.join(repr(m) for m in missing)} field "
                f"(fields found: {', '.join(sorted(row)) or 'none'}); {fix}")


def first_present(row: dict, names: Iterable[str]):
    """The value of the first of ``names`` that ``row`` has, else None (for fields whose name varies by release)."""
    return next((row[name] for name in names if name in row), None)
