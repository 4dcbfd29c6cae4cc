"""The error a bad preference row raises, shared by every module that reads rows."""

from __future__ import annotations


class DataError(ValueError):
    """A preference row that cannot be used; the message names the row, the field and the fix.

    ``kind`` is a short name for the problem (``missing_image``, ``empty_response``...), used to count bad
    rows by kind; ``problem`` and ``fix`` are the two halves of the message."""

    def __init__(self, index: int | None, field: str | None, problem: str, fix: str, kind: str = "invalid_row",
                 where: str | None = None):
        where = where or (f"row {index} (counted from 0)" if index is not None else "a row")
        where += f", field {field!r}" if field else ""
        super().__init__(f"{where}: {problem}. Fix: {fix}")
        self.index, self.field, self.problem, self.fix, self.kind = index, field, problem, fix, kind
