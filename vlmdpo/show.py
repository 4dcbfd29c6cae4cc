"""Figures and tables for looking at data and results in a notebook (matplotlib; every function returns what
it shows, so the same calls work in a script that saves the figures).

- ``show_pairs``: images next to their prompt, chosen and rejected responses (and ground-truth objects).
- ``training_figure``: loss, reward margins and accuracy of a run's ``metrics.jsonl`` against step.
- ``mark_hallucinations`` / ``show_captions``: generated captions beside their images, objects the image does
  not contain marked ``[[like this]]`` and listed in red.
- ``read_eval``, ``worst_hallucinations``, ``wrong_pairs``: a ``vlmdpo eval`` output folder read back, the
  captions with the most hallucinated objects, the held-out pairs a checkpoint still ranks the wrong way.
"""

from __future__ import annotations

import json
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path

from matplotlib.figure import Figure

from vlmdpo.data.rows import response_text
from vlmdpo.eval.metrics_log import read_metrics


def _wrap(text: str, width: int = 38, lines: int = 4) -> str:
    wrapped = textwrap.wrap(" ".join(text.split()), width) or [""]
    return "\n".join(wrapped[:lines]) + (" ..." if len(wrapped) > lines else "")


def _image_axes(count: int, columns: int, height: float = 3.4) -> tuple[Figure, list]:
    rows = max(1, -(-count // columns))
    figure = Figure(figsize=(3.6 * columns, height * rows), layout="constrained")
    axes = figure.subplots(rows, columns, squeeze=False).ravel().tolist()
    for axis in axes:
        axis.axis("off")
    return figure, axes


def show_pairs(rows: Sequence[dict], count: int = 4, columns: int = 4) -> Figure:
    """The first ``count`` preference rows: image, prompt, chosen (green) and rejected (red) response, and the
    ground-truth ``objects`` when a row has them."""
    rows = list(rows)[:count]
    figure, axes = _image_axes(len(rows), min(columns, max(1, len(rows))), height=4.2)
    for axis, row in zip(axes, rows):
        if row["images"]:
            axis.imshow(row["images"][0])
        title = _wrap(response_text(row["prompt"]), lines=2)
        if row.get("objects"):
            title += "\n" + _wrap("in the image: " + ", ".join(row["objects"]), 48, 3)
        axis.set_title(title, fontsize=8)
        axis.text(0.0, -0.04, "chosen: " + _wrap(response_text(row["chosen"])), transform=axis.transAxes,
                  fontsize=8, color="darkgreen", va="top")
        axis.text(0.0, -0.42, "rejected: " + _wrap(response_text(row["rejected"])), transform=axis.transAxes,
                  fontsize=8, color="firebrick", va="top")
    return figure


def training_figure(metrics: str | Path | Sequence[dict]) -> Figure:
    """Loss, reward margin and reward accuracy against step (held-out ``eval/`` values as points)."""
    records = read_metrics(metrics) if isinstance(metrics, (str, Path)) else list(metrics)
    figure = Figure(figsize=(12, 3.2), layout="constrained")
    axes = figure.subplots(1, 3)
    for axis, key, label in zip(axes, ("loss", "rewards/margins", "rewards/accuracies"),
                                ("DPO loss", "reward margin (chosen - rejected)", "reward accuracy")):
        train = [(r["step"], r[key]) for r in records if r.get(key) is not None]
        held_out = [(r["step"], r[f"eval/{key}"]) for r in records if r.get(f"eval/{key}") is not None]
        if train:
            axis.plot(*zip(*train), label="training batches")
        if held_out:
            axis.plot(*zip(*held_out), "o--", label="held-out pairs")
        axis.set_xlabel("optimizer step")
        axis.set_ylabel(label)
        axis.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    return figure


def mark_hallucinations(caption: str, objects: Sequence[str], vocabulary) -> str:
    """``caption`` with each claimed (non-negated) mention of an object not in ``objects`` as ``[[mention]]``."""
    truth = {vocabulary.canonical(name) for name in objects}
    marked, end = [], 0
    for mention in vocabulary.find_mentions(caption):
        if mention.negated or mention.canonical in truth:
            continue
        start, stop = mention.span
        marked += [caption[end:start], f"[[{caption[start:stop]}]]"]
        end = stop
    return "".join(marked) + caption[end:]


def show_captions(records: Sequence[dict], rows: Mapping[int, dict] | Sequence[dict], vocabulary,
                  count: int = 6, columns: int = 3) -> Figure:
    """Generated captions (``vlmdpo eval``'s ``generations.jsonl`` records) beside their images, with the
    hallucinated objects marked in the text and listed in red; ``rows`` maps a record's ``index`` to its row
    (images and ``objects``)."""
    by_index = rows if isinstance(rows, Mapping) else {row["index"]: row for row in rows}
    records = list(records)[:count]
    figure, axes = _image_axes(len(records), min(columns, max(1, len(records))), height=4.0)
    for axis, record in zip(axes, records):
        row = by_index[record["index"]]
        if row["images"]:
            axis.imshow(row["images"][0])
        objects = row.get("objects") or []
        axis.set_title(_wrap(f"row {record['index']}; in the image: {', '.join(objects) or '-'}", 48, 3), fontsize=8)
        caption = mark_hallucinations(record["response"], objects, vocabulary) or "(empty caption)"
        axis.text(0.0, -0.04, _wrap(caption, lines=5), transform=axis.transAxes, fontsize=8, va="top")
        hallucinated = record.get("hallucinated") or []
        if hallucinated:
            axis.text(0.0, -0.5, "not in the image: " + ", ".join(hallucinated), transform=axis.transAxes,
                      fontsize=8, color="firebrick", va="top")
    return figure


def read_eval(output_dir: str | Path) -> dict[str, dict]:
    """A ``vlmdpo eval`` folder: per checkpoint its ``result`` and its ``generations`` records."""
    found = {}
    for folder in sorted((Path(output_dir) / "checkpoints").iterdir()):
        result_file = folder / "result.json"
        if not result_file.exists():
            continue
        generations = folder / "generations.jsonl"
        found[folder.name] = {"result": json.loads(result_file.read_text()), "generations": [
            json.loads(line) for line in generations.read_text().splitlines()] if generations.exists() else []}
    return found


def worst_hallucinations(records: Sequence[dict], count: int = 6) -> list[dict]:
    """The ``count`` captions with the most hallucinated objects (ties: the row order)."""
    scored = [r for r in records if r.get("hallucinated")]
    return sorted(scored, key=lambda r: -len(r["hallucinated"]))[:count]


def wrong_pairs(result: Mapping, rows: Mapping[int, dict] | Sequence[dict], count: int = 10) -> list[dict]:
    """Held-out pairs the checkpoint still ranks the wrong way (reward margin <= 0), most wrong first, each
    with its prompt, chosen and rejected text and its margin and log-probs."""
    by_index = rows if isinstance(rows, Mapping) else {row["index"]: row for row in rows}
    pairs = (result.get("preference") or {}).get("per_pair") or []
    wrong = sorted((p for p in pairs if p.get("margin") is not None and p["margin"] <= 0), key=lambda p: p["margin"])
    out = []
    for pair in wrong[:count]:
        row = by_index[pair["index"]]
        out.append({"index": pair["index"], "margin": round(pair["margin"], 4),
                    "prompt": response_text(row["prompt"]), "chosen": response_text(row["chosen"]),
                    "rejected": response_text(row["rejected"]),
                    "chosen_logp_change": round(pair["policy_chosen_logps"] - pair["ref_chosen_logps"], 3),
                    "rejected_logp_change": round(pair["policy_rejected_logps"] - pair["ref_rejected_logps"], 3)})
    return out


def markdown_table(records: Sequence[Mapping], columns: Sequence[str] | None = None, width: int = 60) -> str:
    """``records`` as a markdown table (text cut to ``width`` characters), for ``IPython.display.Markdown``."""
    records = list(records)
    if not records:
        return "(none)"
    columns = list(columns or records[0])

    def cell(value) -> str:
        text = " ".join(str(value).split()).replace("|", "\\|")
        return text if len(text) <= width else text[: width - 3] + "..."

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(r.get(c, "")) for c in columns) + " |" for r in records]
    return "\n".join(lines)
