"""Dataset layouts: recognising one by its columns and reading its rows as the package's rows, lazily.

The package's own layout (``images``, ``prompt``, ``chosen``, ``rejected``: TRL's) needs no reader. Other
layouts (RLAIF-V, RLHF-V, VLFeedback, LLaMA-Factory, ms-swift, ...) are ``RowFormat`` objects: the columns that
identify the layout, and a function from one source row to one package row (or, for layouts with several pairs
per source row, a function that lists the pairs first from the text columns alone): the public ones in
``vlmdpo.data.readers``, others registered by their packages under the ``vlmdpo.formats`` entry-point group or
named as ``package.module:NAME``.

``FormattedRows`` is the lazy view a reader gives: nothing is decoded until a row is read, so an 80k-row set with
embedded images costs what ``datasets``' memory map costs.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import datasets

from vlmdpo.data.readers import FORMATS as PUBLIC_FORMATS
from vlmdpo.data.row_format import CANONICAL, TRL_FORMAT, FormatError, RowFormat
from vlmdpo.data.rows import DataError
from vlmdpo.names import resolve_name

ENTRY_POINT_GROUP = "vlmdpo.formats"
"""Where other packages register their readers (a ``RowFormat`` or a list of them)."""


def known_formats() -> dict[str, RowFormat]:
    """The canonical format, the public readers of ``vlmdpo.data.readers``, and every reader another package
    registers under the ``vlmdpo.formats`` entry points (which may replace a public one of the same name)."""
    from importlib.metadata import entry_points

    found = {CANONICAL: TRL_FORMAT, **{row_format.name: row_format for row_format in PUBLIC_FORMATS}}
    for entry in entry_points(group=ENTRY_POINT_GROUP):
        value = entry.load()
        for row_format in value if isinstance(value, (list, tuple)) else [value]:
            found[row_format.name] = row_format
    return found


def get_format(name: str) -> RowFormat:
    """A format by registered name or as ``package.module:NAME``."""
    if ":" in name:
        return resolve_name(name, "data.format", RowFormat, error=FormatError)
    formats = known_formats()
    if name not in formats:
        raise FormatError(f"unknown data.format {name!r}; known: {sorted(formats)} (or package.module:NAME)")
    return formats[name]


def detect_format(columns: Sequence[str]) -> RowFormat:
    """The format whose identifying columns are present (the most specific when several match)."""
    columns = set(columns)
    formats = known_formats()
    matching = [f for f in formats.values() if f.matches(columns)]
    if not matching:
        listing = "; ".join(f"{f.name} ({', '.join(sorted(f.required))})" for f in formats.values())
        raise FormatError(f"no known layout has the columns {sorted(columns)}. Known formats and the columns they "
                          f"need: {listing}. Rename columns with data.columns={{source: target}}, or name the "
                          "format with data.format=NAME")
    best = max(len(f.required) for f in matching)
    top = [f for f in matching if len(f.required) == best]
    if len(top) > 1:
        raise FormatError(f"the columns {sorted(columns)} fit several formats ({[f.name for f in top]}): name one "
                          "with data.format=NAME")
    return top[0]


class FormattedRows:
    """A lazy view of ``dataset`` whose rows are read through ``row_format``: ``len``, ``[i]``, ``select``,
    ``column_names`` and a ``_fingerprint`` like a ``datasets.Dataset``'s, so ``PreferenceDataset`` reads it
    the same way."""

    def __init__(self, dataset: datasets.Dataset, row_format: RowFormat, options: dict | None = None,
                 pairs: list[tuple[int, object]] | None = None):
        self.source, self.format = dataset, row_format
        self.options = {**row_format.options, **(options or {})}
        self.pairs = pairs
        key = f"{dataset._fingerprint}|{row_format.name}|{sorted(self.options.items())}|{pairs!r}"
        self._fingerprint = hashlib.sha256(key.encode()).hexdigest()[:16]
        self.column_names = ["images", "prompt", "chosen", "rejected"]

    def __len__(self) -> int:
        return len(self.source) if self.pairs is None else len(self.pairs)

    def __getitem__(self, index: int) -> dict:
        index = int(index)
        row, pair = (index, None) if self.pairs is None else self.pairs[index]
        source = self.source[int(row)]
        try:
            return self.format.convert(source if pair is None else {**source, "pair": pair}, self.options)
        except DataError as err:  # readers do not know the row's place: name it here
            raise DataError(index, err.field, err.problem + self._source_note(row), err.fix, kind=err.kind) from None
        except (KeyError, TypeError, ValueError, IndexError) as err:
            raise DataError(index, None, f"the {self.format.name} reader cannot read this row ({type(err).__name__}: "
                            f"{err}){self._source_note(row)}", f"check the row against the {self.format.name} layout "
                            "(vlmdpo data formats), or choose another data.format", kind="bad_format") from None

    def _source_note(self, row: int) -> str:
        return "" if self.pairs is None else f" (pair read from source row {row})"

    def select(self, indices) -> FormattedRows:
        indices = list(indices)
        if self.pairs is None:
            return FormattedRows(self.source.select(indices), self.format, self.options)
        return FormattedRows(self.source, self.format, self.options, [self.pairs[i] for i in indices])


def apply_format(dataset: datasets.Dataset, name: str = "auto", options: dict | None = None,
                 columns: dict[str, str] | None = None, log=print):
    """``dataset`` read through the format ``name`` (``auto``: detected from its columns, and logged), after
    renaming ``columns`` (source name -> name the format expects). The canonical format returns the dataset
    itself, unconverted."""
    if columns:
        missing = sorted(set(columns) - set(dataset.column_names))
        if missing:
            raise FormatError(f"data.columns renames {missing}, which the dataset does not have (its columns: "
                              f"{sorted(dataset.column_names)})")
        dataset = dataset.rename_columns(dict(columns))
    row_format = detect_format(dataset.column_names) if name == "auto" else get_format(name)
    if name == "auto":
        log(f"data format: {row_format.name} ({row_format.description}), detected from the columns")
    if not row_format.required <= set(dataset.column_names):
        raise FormatError(f"data.format={row_format.name} needs the columns {sorted(row_format.required)}; the "
                          f"dataset has {sorted(dataset.column_names)}")
    if row_format is TRL_FORMAT:
        return dataset
    options = {**row_format.options, **(options or {})}
    unknown = sorted(set(options) - set(row_format.options))
    if unknown:
        raise FormatError(f"data.format_options {unknown} are not options of {row_format.name} "
                          f"(its options: {row_format.options})")
    if row_format.pairs is None:
        return FormattedRows(dataset, row_format, options)
    pairs, counts = row_format.pairs(dataset, options)
    log(f"{row_format.name}: {len(pairs)} pairs from {len(dataset)} rows" +
        "".join(f"; {reason}: {count}" for reason, count in counts.items()))
    return FormattedRows(dataset, row_format, options, pairs)
