"""``vlmdpo data``: look at a preference dataset in any known layout, and write it in the package's own.

``inspect_dataset`` reads a sample of rows without decoding images (sizes come from the image headers) and
reports the layout detected, counts, response lengths (percentiles; a histogram PNG only where asked for), image
sizes and bad rows in the sample. ``convert_dataset`` writes every row as a conversational TRL-layout row, to a
``save_to_disk`` folder or to a jsonl file with its images beside it.
"""

from __future__ import annotations

import collections
import json
from dataclasses import dataclass, field
from pathlib import Path

import datasets
import numpy as np
from tqdm.auto import tqdm

from vlmdpo.data.rows import (
    DataError, PreferenceDataset, default_image_root, load_preference_dataset, normalize_row, response_text,
)
from vlmdpo.data.formats import TRL_FORMAT, FormattedRows, apply_format
from vlmdpo.data.images import ImageError, image_size


def _undecoded(dataset: datasets.Dataset) -> datasets.Dataset:
    """``dataset`` with its image columns left as bytes/paths: sizes can then be read from the headers."""
    for name, feature in dataset.features.items():
        inner = getattr(feature, "feature", None)
        if isinstance(feature, datasets.Image):
            dataset = dataset.cast_column(name, datasets.Image(decode=False))
        elif isinstance(inner, datasets.Image):
            dataset = dataset.cast_column(name, datasets.List(datasets.Image(decode=False)))
    return dataset


def load_rows(source: str, split: str = "train", format: str = "auto", options: dict | None = None,
              columns: dict | None = None, decode: bool = True, log=print):
    """The rows of ``source`` read through its format: a ``datasets.Dataset`` or a ``FormattedRows`` view, and
    the format's name."""
    dataset = load_preference_dataset(source, split=split)
    if not decode:
        dataset = _undecoded(dataset)
    rows = apply_format(dataset, format, options, columns, log=lambda *_: None)
    return rows, rows.format.name if isinstance(rows, FormattedRows) else TRL_FORMAT.name


@dataclass
class Inspection:
    """What ``inspect_dataset`` found in a sample of rows: word counts per part, images and videos per row, image
    sizes, bad rows by kind, and a few example rows."""

    source: str
    format: str
    rows: int
    sampled: int
    columns: list[str]
    examples: list[dict] = field(default_factory=list)
    words: dict[str, list[int]] = field(default_factory=lambda: collections.defaultdict(list))
    images_per_row: list[int] = field(default_factory=list)
    videos_per_row: list[int] = field(default_factory=list)
    sizes: list[tuple[int, int]] = field(default_factory=list)
    bad: dict[str, int] = field(default_factory=dict)

    def summary(self) -> str:
        """The report as text: word-count percentiles, image counts and sizes, bad rows, examples."""
        lines = [f"{self.source}: format {self.format}, {self.rows} rows (sampled {self.sampled}); source columns: "
                 f"{', '.join(self.columns)}"]
        for part, values in self.words.items():
            if values:
                p50, p90, p99 = np.percentile(values, [50, 90, 99]).astype(int)
                lines.append(f"  {part} words: p50 {p50}, p90 {p90}, p99 {p99}, max {max(values)}")
        if self.images_per_row:
            counts = collections.Counter(self.images_per_row)
            lines.append("  images per row: " + ", ".join(f"{k}: {v}" for k, v in sorted(counts.items())))
        if any(self.videos_per_row):
            counts = collections.Counter(self.videos_per_row)
            lines.append("  videos per row: " + ", ".join(f"{k}: {v}" for k, v in sorted(counts.items())))
        if self.sizes:
            widths, heights = zip(*self.sizes)
            lines.append(f"  image sizes: width {min(widths)}-{int(np.median(widths))}-{max(widths)}, height "
                         f"{min(heights)}-{int(np.median(heights))}-{max(heights)} (min-median-max)")
        if self.bad:
            lines.append("  bad rows in the sample: " + ", ".join(f"{k}: {v}" for k, v in self.bad.items())
                         + " (vlmdpo validate lists them)")
        for example in self.examples:
            lines.append(f"  row {example['row']}: prompt {example['prompt']!r}")
            lines.append(f"      chosen {example['chosen']!r}  rejected {example['rejected']!r}")
        return "\n".join(lines)


def _short(text: str, width: int = 90) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 3] + "..."


def inspect_dataset(source: str, split: str = "train", format: str = "auto", options: dict | None = None,
                    columns: dict | None = None, image_root: str | None = None, sample: int = 2000,
                    examples: int = 2, plot: str | Path | None = None) -> Inspection:
    """Read up to ``sample`` rows spread over ``source`` (images not decoded) and describe them; with ``plot``,
    write a histogram of chosen and rejected response lengths there."""
    rows, name = load_rows(source, split, format, options, columns, decode=False)
    base = rows.source if isinstance(rows, FormattedRows) else rows
    root = default_image_root(source, image_root)
    positions = np.unique(np.linspace(0, len(rows) - 1, num=min(sample, len(rows))).astype(int)).tolist() if len(
        rows) else []
    report = Inspection(source, name, len(rows), len(positions), list(base.column_names))
    bad = collections.Counter()
    for position in positions:
        try:
            row = normalize_row(rows[position], position, decode_images=False)
            report.sizes += [image_size(value, root) for value in row["images"]]
        except (DataError, ImageError) as err:
            bad[err.kind] += 1
            continue
        report.images_per_row.append(len(row["images"]))
        report.videos_per_row.append(len(row["videos"]))
        texts = {"prompt": response_text(row["prompt"]), "chosen": response_text(row["chosen"]),
                 "rejected": response_text(row["rejected"])}
        for part, text in texts.items():
            report.words[part].append(len(text.split()))
        if len(report.examples) < examples:
            report.examples.append({"row": position, **{k: _short(v) for k, v in texts.items()}})
    report.bad = dict(bad.most_common())
    if plot is not None and report.words.get("chosen"):
        _plot_lengths(report, Path(plot))
    return report


def _plot_lengths(report: Inspection, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 4))
    values = report.words["chosen"] + report.words["rejected"]
    low, high = min(values), max(values)
    # one bin per word count while that stays readable, else 40 equal bins
    bins = np.arange(low, high + 2) - 0.5 if high - low <= 60 else np.linspace(low, high, 41)
    for part in ("chosen", "rejected"):
        axis.hist(report.words[part], bins=bins, histtype="step", linewidth=2, label=part)
    axis.set_xlabel("response length (words)")
    axis.set_ylabel(f"rows (of {report.sampled} sampled)")
    axis.set_title(f"{Path(report.source).name}: response lengths ({report.format})")
    axis.legend()
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    plt.close(figure)


_MESSAGES = datasets.List({"role": datasets.Value("string"), "content": datasets.List(
    {"type": datasets.Value("string"), "text": datasets.Value("string")})})
FEATURES = datasets.Features({"images": datasets.List(datasets.Image()), "prompt": _MESSAGES, "chosen": _MESSAGES,
                              "rejected": _MESSAGES})


def convert_dataset(source: str, out: str | Path, split: str = "train", format: str = "auto",
                    options: dict | None = None, columns: dict | None = None, image_root: str | None = None,
                    skip_bad: bool = False, progress: bool = True) -> tuple[Path, list[dict]]:
    """Write every row of ``source`` in the package's conversational layout: ``out`` ending in ``.jsonl`` gives a
    jsonl file with the images as PNG files in ``images/`` beside it, anything else a ``save_to_disk`` folder.
    A bad row stops the conversion naming it, unless ``skip_bad`` (then it is left out and returned)."""
    rows, _ = load_rows(source, split, format, options, columns)
    root = default_image_root(source, image_root)
    pairs = PreferenceDataset(rows, image_root=root)
    out, skipped = Path(out), []

    def good_rows(key):  # ``key`` makes datasets' generator cache specific to this source and reading
        for position in tqdm(range(len(pairs)), desc="converting", unit="row", disable=not progress):
            try:
                row = pairs[position]
            except DataError as err:
                if not skip_bad:
                    raise
                skipped.append({"row": position, "kind": err.kind, "message": str(err)})
                continue
            if row["videos"] and key is not None:
                raise DataError(row.get("index"), "videos", "a save_to_disk folder is written with image columns "
                                "only", f"convert to a .jsonl file instead ({out.with_suffix('.jsonl')}): its "
                                "videos are written as folders of frames beside it", kind="video_unsupported")
            columns = ("images", "prompt", "chosen", "rejected") if key is not None else (
                "images", "videos", "prompt", "chosen", "rejected")
            yield {column: row[column] for column in columns}

    if out.suffix == ".jsonl":
        out.parent.mkdir(parents=True, exist_ok=True)
        (out.parent / "images").mkdir(exist_ok=True)
        with out.open("w") as file:
            for number, row in enumerate(good_rows(None)):
                names, folders = [], []
                for k, image in enumerate(row["images"]):
                    names.append(f"images/{number}-{k}.png")
                    image.save(out.parent / names[-1])
                for k, frames in enumerate(row.pop("videos")):
                    folders.append(f"videos/{number}-{k}")
                    (out.parent / folders[-1]).mkdir(parents=True, exist_ok=True)
                    for f, frame in enumerate(frames):
                        frame.save(out.parent / folders[-1] / f"frame_{f:05d}.png")
                file.write(json.dumps({**row, "images": names, **({"videos": folders} if folders else {})}) + "\n")
    else:
        key = f"{rows._fingerprint}|{root}|{skip_bad}"
        try:
            written = datasets.Dataset.from_generator(good_rows, features=FEATURES, gen_kwargs={"key": key})
        except datasets.exceptions.DatasetGenerationError as err:  # a bad row's own message, not datasets' wrapper
            if isinstance(err.__cause__, DataError):
                raise err.__cause__ from None
            raise
        written.save_to_disk(str(out))
    return out, skipped
