"""The ``DONE`` marker: the file a piece of work writes into its folder last, so a folder that holds one is
finished and is loaded, and one without it (a killed run's) is done again. Iterative DPO's rounds and cached
recipe stages use it."""

from __future__ import annotations

import time
from pathlib import Path

MARKER = "DONE"
"""The marker's file name; the file holds the local time the work finished (``YYYY-MM-DD HH:MM:SS``)."""


def is_done(folder: str | Path) -> bool:
    """Whether ``folder`` holds a ``DONE`` marker."""
    return (Path(folder) / MARKER).exists()


def mark_done(folder: str | Path) -> None:
    """Write ``folder``'s ``DONE`` marker; call it after the folder's last other write."""
    (Path(folder) / MARKER).write_text(time.strftime("%Y-%m-%d %H:%M:%S"))
