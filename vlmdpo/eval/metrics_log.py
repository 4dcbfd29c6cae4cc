"""``metrics.jsonl``: one JSON object per logged step, valid JSON always, each step once across resumes."""

from __future__ import annotations

import json
import math
from pathlib import Path


def json_safe(record: dict) -> dict:
    """``record`` with non-finite floats as ``null`` (``json`` would write bare ``NaN``, which is not JSON)."""
    return {key: None if isinstance(value, float) and not math.isfinite(value) else value
            for key, value in record.items()}


def read_metrics(path: str | Path) -> list[dict]:
    """The records of a ``metrics.jsonl`` (a line cut by a kill is left out)."""
    records = []
    for line in Path(path).read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


class MetricsLog:
    """Appends records to ``path``. Opened at ``resume_step`` it first drops the records of later steps
    (logged after that checkpoint by the run that was killed), so the resumed run logs each step once;
    opened with ``resume_step=None`` it starts the file afresh."""

    def __init__(self, path: str | Path, resume_step: int | None):
        self.path = Path(path)
        kept = [] if resume_step is None or not self.path.exists() else [
            record for record in read_metrics(self.path) if record.get("step", 0) <= resume_step]
        self.path.write_text("".join(json.dumps(record) + "\n" for record in kept))
        self._file = self.path.open("a")

    def write(self, record: dict) -> None:
        self._file.write(json.dumps(json_safe(record), allow_nan=False) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()
