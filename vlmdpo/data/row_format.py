"""What a dataset layout is: ``RowFormat`` (the columns that identify it and the function that reads one row),
the error a layout that cannot be read raises, and the package's own layout (TRL's), which needs no reader.

Readers (``vlmdpo.data.readers``, or another package's, registered under the ``vlmdpo.formats`` entry points)
build ``RowFormat`` objects; ``vlmdpo.data.formats`` finds and applies them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import datasets

CANONICAL = "trl"


class FormatError(ValueError):
    """A dataset whose layout cannot be read; the message lists its columns and the formats known."""


@dataclass(frozen=True)
class RowFormat:
    """How to read one published layout."""

    name: str
    description: str
    """One line: which datasets come in this layout."""
    required: frozenset[str]
    """Columns every dataset in this layout has."""
    convert: Callable[[dict, dict], dict]
    """``(source_row, options) -> {"images", "prompt", "chosen", "rejected"}`` (with ``"pair"`` in the row when
    ``pairs`` is set: the value ``pairs`` listed for it)."""
    excluded: frozenset[str] = frozenset()
    """Columns whose presence rules this layout out."""
    pairs: Callable[[datasets.Dataset, dict], tuple[list[tuple[int, object]], dict]] | None = None
    """For layouts with several pairs per row: ``(dataset, options) -> ([(row, pair), ...], counts)``, read from
    the text columns only; ``counts`` says what was left out and why (logged)."""
    options: dict = field(default_factory=dict)
    """Default options (``data.format_options`` overrides them)."""

    def matches(self, columns: set[str]) -> bool:
        return self.required <= columns and not (self.excluded & columns)


def _canonical_convert(row: dict, options: dict) -> dict:
    return row


# only "prompt" identifies it: supervised rows carry "completion" instead of chosen and rejected, and every
# other layout that has a prompt column needs more columns, so wins as the more specific match
TRL_FORMAT = RowFormat(
    name=CANONICAL, description="the package's own rows (TRL's): images, prompt, chosen, rejected, plain or "
    "conversational", required=frozenset({"prompt"}), convert=_canonical_convert)
