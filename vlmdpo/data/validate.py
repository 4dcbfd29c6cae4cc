"""Checking a preference dataset before training: every row read the way training reads it.

Each row is normalized (images decoded, placeholders and roles checked), rendered by the chat template and
tokenized by the model's processor; its prompt (image tokens included) is checked against
``max_prompt_length`` and, with its longest response, against the model's position limit. The result is a
``ValidationReport``: rows ok, bad rows by kind (each with row, field, problem and fix) and token-length
percentiles. ``vlmdpo validate`` prints it; ``train()`` runs it first (``data.validate``) and stops or skips
(``data.on_bad_row``).
"""

from __future__ import annotations

import collections
import json
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from vlmdpo.data.rows import DataError, PreferenceDataset

PARALLEL_FROM_ROWS = 512
"""Below this many rows a worker pool costs more to start than it saves."""


class BadRowsError(ValueError):
    """The dataset has bad rows and the run was told to stop on them; the message names the first and the
    file that lists them all."""


@dataclass
class ValidationReport:
    """What a check of ``checked`` of ``total`` rows found."""

    total: int
    checked: int = 0
    bad: list[dict] = field(default_factory=list)
    """One ``{"row", "field", "kind", "problem", "fix", "message"}`` per bad row, in row order."""
    lengths: dict[str, list[int]] = field(default_factory=lambda: collections.defaultdict(list))
    """Token counts of the good rows: ``prompt`` (with image tokens), ``chosen``, ``rejected``."""
    truncated: int = 0
    """Good rows with a response longer than ``max_response_length`` (trained on its first tokens)."""

    @property
    def bad_rows(self) -> set[int]:
        return {entry["row"] for entry in self.bad}

    def by_kind(self) -> dict[str, int]:
        return dict(collections.Counter(entry["kind"] for entry in self.bad).most_common())

    def percentiles(self) -> dict[str, dict[str, int]]:
        """p50 / p90 / p99 / max token counts per part."""
        return {part: {name: int(np.percentile(values, q)) if q < 100 else int(max(values))
                       for name, q in (("p50", 50), ("p90", 90), ("p99", 99), ("max", 100))}
                for part, values in self.lengths.items() if values}

    def summary(self) -> str:
        """A few lines for the terminal."""
        ok = self.checked - len(self.bad)
        lines = [f"checked {self.checked} of {self.total} rows: {ok} ok, {len(self.bad)} bad"]
        lines += [f"  {kind}: {count}" for kind, count in self.by_kind().items()]
        for part, stats in self.percentiles().items():
            lines.append(f"  {part} tokens: " + ", ".join(f"{name} {value}" for name, value in stats.items()))
        if self.truncated:
            lines.append(f"  {self.truncated} row(s) have a response longer than max_response_length "
                         "(trained on its first tokens)")
        return "\n".join(lines)

    def write_bad_rows(self, path: str | Path) -> Path:
        """One JSON line per bad row (row, field, kind, problem, fix)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(json.dumps(entry) + "\n" for entry in self.bad))
        return path

    def to_dict(self) -> dict:
        return {"total": self.total, "checked": self.checked, "ok": self.checked - len(self.bad),
                "bad": len(self.bad), "bad_by_kind": self.by_kind(), "token_percentiles": self.percentiles(),
                "truncated_responses": self.truncated}

    def raise_if_bad(self, listed_in: Path | None) -> None:
        """``BadRowsError`` naming the first bad row, when there is one."""
        if not self.bad:
            return
        kinds = ", ".join(f"{kind}: {count}" for kind, count in self.by_kind().items())
        where = f"; every bad row is listed in {listed_in}" if listed_in else ""
        raise BadRowsError(f"{len(self.bad)} of {self.checked} checked rows are bad ({kinds}). First: "
                           f"{self.bad[0]['message']}{where}. Fix those rows, or set data.on_bad_row=skip "
                           "to train without them")


def position_limit(model_config) -> int | None:
    """The longest sequence the language model's positions cover, from its config (``None`` if unstated)."""
    text_config = model_config.get_text_config() if hasattr(model_config, "get_text_config") else model_config
    return getattr(text_config, "max_position_embeddings", None)


def check_row(pairs: PreferenceDataset, collator, position: int, limit: int | None) -> dict:
    """``{"row", "lengths"}`` for a good row, ``{"row", "field", "kind", ...}`` for a bad one."""
    index = pairs.source_index(position)
    try:
        row = pairs[position]
        counts = collator.measure(row)
    except DataError as err:
        return _bad(index, err)
    except Exception as err:  # the processor or template failing on this row: still name the row
        return _bad(index, DataError(index, "prompt", f"the processor failed on this row ({type(err).__name__}: "
                                     f"{err})", "check the row's images and text", kind="processor_error"))
    responses = [counts[name] for name in ("chosen", "rejected") if name in counts]
    cap = collator.max_response_length
    longest = max([min(n, cap) if cap else n for n in responses], default=0)
    if limit is not None and counts["prompt"] + longest > limit:
        return _bad(index, DataError(index, "prompt", f"the prompt ({counts['prompt']} tokens with its image "
                                     f"tokens) and its longest response ({longest}) exceed the model's position "
                                     f"limit of {limit}", "set data.max_prompt_length and data.max_response_length "
                                     "to fit, or shrink the images", kind="too_long_for_model"))
    truncated = bool(cap) and any(n > cap for n in responses)
    return {"row": index, "lengths": counts, "truncated": truncated}


def _bad(index: int, err: DataError) -> dict:
    return {"row": index, "field": err.field, "kind": err.kind, "problem": err.problem, "fix": err.fix,
            "message": str(err)}


_WORKER: dict = {}


def _check_chunk(positions: list[int]) -> list[dict]:
    return [check_row(_WORKER["pairs"], _WORKER["collator"], p, _WORKER["limit"]) for p in positions]


def _set_worker(pairs, collator, limit) -> None:
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    import torch

    torch.set_num_threads(1)
    _WORKER.update(pairs=pairs, collator=collator, limit=limit)


def validate_rows(pairs: PreferenceDataset, collator, *, limit: int | None = None, sample: int | None = None,
                  seed: int = 0, workers: int = 0, progress: bool = True) -> ValidationReport:
    """Check every row of ``pairs`` (or ``sample`` of them, drawn with ``seed``) as training reads it.

    ``limit`` is the model's position limit (``position_limit(model.config)``); ``workers`` processes share
    the rows (0: one per core, at most 8, from ``PARALLEL_FROM_ROWS`` rows)."""
    positions = list(range(len(pairs)))
    if sample is not None and sample < len(positions):
        positions = sorted(np.random.default_rng(seed).choice(len(positions), size=sample, replace=False).tolist())
    if workers == 0:
        workers = min(8, os.cpu_count() or 1) if len(positions) >= PARALLEL_FROM_ROWS else 1
    report = ValidationReport(total=len(pairs))
    bar = tqdm(total=len(positions), desc="checking rows", unit="row", disable=not progress, dynamic_ncols=True)
    chunk = max(1, min(256, len(positions) // (workers * 8) or 1))
    chunks = [positions[i:i + chunk] for i in range(0, len(positions), chunk)]
    if workers > 1 and "fork" in multiprocessing.get_all_start_methods():
        # fork: the workers inherit the dataset and processor instead of pickling them
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork"), initializer=_set_worker,
                                 initargs=(pairs, collator, limit)) as pool:
            for results in pool.map(_check_chunk, chunks):
                _add(report, results, bar)
    else:
        for part in chunks:
            _add(report, [check_row(pairs, collator, p, limit) for p in part], bar)
    bar.close()
    return report


def _add(report: ValidationReport, results: list[dict], bar) -> None:
    for result in results:
        report.checked += 1
        if "kind" in result:
            report.bad.append(result)
        else:
            for part, count in result["lengths"].items():
                report.lengths[part].append(count)
            report.truncated += result["truncated"]
    bar.update(len(results))

