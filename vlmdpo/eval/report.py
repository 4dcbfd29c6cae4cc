"""Evaluation report: ``report.md`` with comparison tables, PNG plots, and the raw ``results.json``.

A result is any nested dict. Its numbers become table columns named by their path (``pope/random/f1``),
grouped into one table per parent path, one row per checkpoint; ``None`` shows as "n/a". ``settings`` (a dict
of what the numbers depend on: prompt, max_new_tokens, ...) is printed, not tabulated, and ``per_pair``
lists (from ``preference_fit``) feed the reward-margin histogram. Plots use matplotlib's object API
(``Figure``) rather than pyplot, so writing a report never changes the caller's backend or open figures.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from pathlib import Path

from matplotlib.figure import Figure

NOT_METRICS = ("settings", "settings_hash", "per_pair")
TRAINING_CURVES = ("loss", "rewards/accuracies", "rewards/margins")


def flatten_metrics(result: Mapping, prefix: str = "") -> dict[str, float | int | None]:
    """``{"a": {"b": 1.0}}`` -> ``{"a/b": 1.0}``: numbers and ``None`` only; strings, lists, bools dropped."""
    flat: dict[str, float | int | None] = {}
    for key, value in result.items():
        if key in NOT_METRICS:
            continue
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten_metrics(value, f"{name}/"))
        elif value is None or (isinstance(value, (int, float)) and not isinstance(value, bool)):
            flat[name] = value
    return flat


def _group(name: str) -> str:
    return name.rsplit("/", 1)[0] if "/" in name else "metrics"


def _grouped_columns(flat: dict[str, dict]) -> dict[str, list[str]]:
    groups: dict[str, list[str]] = {}
    for metrics in flat.values():
        for name in metrics:
            columns = groups.setdefault(_group(name), [])
            if name not in columns:
                columns.append(name)
    return groups


def _format(value) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.4g}"
    return str(value)


def comparison_tables(results: Mapping[str, Mapping]) -> str:
    """Markdown tables, one per metric group, each with one row per checkpoint."""
    flat = {name: flatten_metrics(result) for name, result in results.items()}
    blocks = []
    for group, columns in _grouped_columns(flat).items():
        short = [column[len(group) + 1:] if column.startswith(group + "/") else column for column in columns]
        lines = [f"### {group}", "", "| checkpoint | " + " | ".join(short) + " |",
                 "|---|" + "---:|" * len(columns)]
        for name, metrics in flat.items():
            cells = [_format(metrics[column]) if column in metrics else "" for column in columns]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def _settings_section(results: Mapping[str, Mapping]) -> str:
    settings = {name: r["settings"] for name, r in results.items() if isinstance(r.get("settings"), Mapping)}
    if not settings:
        return ""
    keys = list(dict.fromkeys(k for s in settings.values() for k in s))
    shared = [k for k in keys if len({json.dumps(s.get(k), sort_keys=True, default=str)
                                      for s in settings.values()}) == 1]
    lines = ["## Settings", ""]
    lines += [f"- `{k}`: `{json.dumps(next(iter(settings.values())).get(k), default=str)}`" for k in shared]
    for name, values in settings.items():
        differing = [f"`{k}`: `{json.dumps(values.get(k), default=str)}`" for k in keys if k not in shared]
        if differing:
            lines.append(f"- **{name}**: " + ", ".join(differing))
    return "\n".join(lines)


def _intervals_section(intervals: Mapping[str, Mapping[str, Mapping]]) -> str:
    lines = [f"- {label}, **{name}**: {c['change']:+.4f} (95% interval {c['low']:+.4f} to {c['high']:+.4f})"
             for label, changes in intervals.items() for name, c in changes.items()]
    return "## Change from the base\n\n" + "\n".join(lines) if lines else ""


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "metrics"


def _grid(count: int, columns: int = 3) -> tuple[Figure, list]:
    cols = min(columns, count)
    rows = math.ceil(count / cols)
    # fixed spacing: constrained layout would double the drawing time of these many small axes
    figure = Figure(figsize=(4.2 * cols, 3.4 * rows))
    figure.subplots_adjust(left=0.08, right=0.98, top=1 - 0.4 / (3.4 * rows), bottom=0.9 / (3.4 * rows),
                           wspace=0.3, hspace=0.75)
    axes = figure.subplots(rows, cols, squeeze=False).ravel().tolist()
    for extra in axes[count:]:
        extra.set_visible(False)
    return figure, axes[:count]


def plot_metric_bars(results: Mapping[str, Mapping], out_dir: Path) -> list[Path]:
    """One PNG per metric group: a bar per checkpoint for each float metric (counts are left to the table)."""
    flat = {name: flatten_metrics(result) for name, result in results.items()}
    paths = []
    for group, columns in _grouped_columns(flat).items():
        columns = [c for c in columns if any(isinstance(m.get(c), float) for m in flat.values())]
        if not columns:
            continue
        figure, axes = _grid(len(columns))
        names = list(flat)
        for ax, column in zip(axes, columns):
            values = [flat[n].get(column) for n in names]
            ax.bar(range(len(names)), [v if isinstance(v, (int, float)) else 0.0 for v in values],
                   color=[f"C{i % 10}" for i in range(len(names))])
            ax.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=8)
            ax.set_title(column, fontsize=9)
        path = out_dir / f"metrics_{_slug(group)}.png"
        figure.savefig(path, dpi=90)
        paths.append(path)
    return paths


def _find_per_pair(result: Mapping) -> list | None:
    if isinstance(result.get("per_pair"), list):
        return result["per_pair"]
    for value in result.values():
        if isinstance(value, Mapping):
            found = _find_per_pair(value)
            if found is not None:
                return found
    return None


def plot_margin_histograms(results: Mapping[str, Mapping], out_dir: Path) -> list[Path]:
    """Overlaid histograms of per-pair reward margins, one colour per checkpoint with rewards."""
    margins = {}
    for name, result in results.items():
        pairs = _find_per_pair(result) or []
        values = [p["margin"] for p in pairs if isinstance(p, Mapping) and p.get("margin") is not None]
        if values:
            margins[name] = values
    if not margins:
        return []
    figure = Figure(figsize=(6, 4), layout="constrained")
    ax = figure.subplots()
    low = min(min(v) for v in margins.values())
    high = max(max(v) for v in margins.values())
    bins = 30 if high > low else 1
    for name, values in margins.items():
        ax.hist(values, bins=bins, range=(low, high) if high > low else None, alpha=0.5, label=name)
    ax.axvline(0.0, color="black", linewidth=0.8)
    ax.set_xlabel("reward margin  beta * (chosen log-ratio - rejected log-ratio)")
    ax.set_ylabel("pairs")
    ax.legend(fontsize=8)
    path = out_dir / "reward_margins.png"
    figure.savefig(path, dpi=90)
    return [path]


def plot_intervals(intervals: Mapping[str, Mapping[str, Mapping]], out_dir: Path) -> list[Path]:
    """Each checkpoint's change of a metric from the base, its interval drawn as an error bar; one axis per metric.

    ``intervals`` is ``{metric label: {checkpoint: {"change", "low", "high"}}}`` (e.g. from
    ``vlmdpo.eval.pope.pope_f1_change``).
    """
    intervals = {label: changes for label, changes in intervals.items() if changes}
    if not intervals:
        return []
    figure = Figure(figsize=(4.6 * len(intervals), 3.6), layout="constrained")  # a few axes: room for labels
    axes = figure.subplots(1, len(intervals), squeeze=False).ravel().tolist()
    for ax, (label, changes) in zip(axes, intervals.items()):
        names = list(changes)
        middle = [changes[n]["change"] for n in names]
        below = [changes[n]["change"] - changes[n]["low"] for n in names]
        above = [changes[n]["high"] - changes[n]["change"] for n in names]
        ax.errorbar(range(len(names)), middle, yerr=[below, above], fmt="o", capsize=4)
        ax.axhline(0.0, color="black", linewidth=0.8)
        ax.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=8)
        ax.set_xlim(-0.5, len(names) - 0.5)
        ax.set_xlabel("checkpoint")
        ax.set_ylabel(f"{label}: change from base", fontsize=8)
        ax.set_title(f"{label}, 95% interval", fontsize=9)
    path = out_dir / "changes_from_base.png"
    figure.savefig(path, dpi=90)
    return [path]


def read_metrics_jsonl(path: str | Path) -> list[dict]:
    """The records of a training ``metrics.jsonl``; blank or truncated last lines are skipped."""
    from vlmdpo.eval.metrics_log import read_metrics

    return read_metrics(path)


def plot_training_curves(training_metrics: Mapping[str, str | Path], out_dir: Path) -> list[Path]:
    """Loss, reward accuracy and margin (plus any ``eval/...`` keys) against step, one line per run."""
    runs = {name: read_metrics_jsonl(path) for name, path in training_metrics.items() if Path(path).exists()}
    runs = {name: records for name, records in runs.items() if records}
    if not runs:
        return []
    keys = list(TRAINING_CURVES) + sorted({k for records in runs.values() for r in records
                                           for k in r if k.startswith("eval/")})
    keys = [k for k in keys if any(k in r for records in runs.values() for r in records)]
    figure, axes = _grid(len(keys))
    for ax, key in zip(axes, keys):
        for name, records in runs.items():
            points = [(r.get("step", i), r[key]) for i, r in enumerate(records) if r.get(key) is not None]
            if points:
                ax.plot(*zip(*points), marker="o" if len(points) < 20 else None, markersize=3, label=name)
        ax.set_title(key, fontsize=9)
        ax.set_xlabel("step")
    axes[0].legend(fontsize=8)
    path = out_dir / "training_curves.png"
    figure.savefig(path, dpi=90)
    return [path]


def write_report(
    out_dir: str | Path,
    results: Mapping[str, Mapping],
    *,
    training_metrics: Mapping[str, str | Path] | None = None,
    title: str = "vlmdpo evaluation",
    notes: str = "",
    intervals: Mapping[str, Mapping[str, Mapping]] | None = None,
) -> dict[str, Path]:
    """Write ``report.md``, ``results.json`` and PNG plots to ``out_dir``; return ``{file name: path}``.

    Args:
        results: ``{checkpoint name: result dict}``, e.g. ``{"base": ..., "dpo": preference_fit(...)}`` or
            the output of ``vlmdpo.eval.runner.evaluate``.
        training_metrics: ``{run name: path to metrics.jsonl}`` for training-curve plots.
        title, notes: the report's heading and a free-text paragraph under it.
        intervals: ``{metric label: {checkpoint: {"change", "low", "high"}}}``, changes from the base drawn with
            their intervals (:func:`plot_intervals`) and listed under the tables.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    results_path = out / "results.json"
    results_path.write_text(json.dumps(results, indent=1, default=str))
    plots = plot_metric_bars(results, out) + plot_margin_histograms(results, out)
    plots += plot_training_curves(training_metrics or {}, out)
    plots += plot_intervals(intervals or {}, out)

    sections = [f"# {title}"]
    if notes:
        sections.append(notes.strip())
    sections.append(f"Checkpoints: {', '.join(results) or 'none'}.")
    sections.append("## Results\n\n" + comparison_tables(results))
    sections.append(_intervals_section(intervals or {}))
    sections.append(_settings_section(results))
    if plots:
        sections.append("## Plots\n\n" + "\n\n".join(f"![{p.stem}]({p.name})" for p in plots))
    sections.append(f"Raw numbers, per-pair results included: [{results_path.name}]({results_path.name}).")
    report_path = out / "report.md"
    report_path.write_text("\n\n".join(s for s in sections if s) + "\n")
    return {p.name: p for p in [report_path, results_path, *plots]}
