"""The rows of a training run: paths checked before any model loads, pairs loaded, checked up front, bad rows
stopped on or skipped and listed, and a fingerprint of what the run trains on."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from vlmdpo.config import Config, ConfigError
from vlmdpo.data.formats import apply_format
from vlmdpo.data.rows import PreferenceDataset, default_image_root, load_preference_dataset
from vlmdpo.data.validate import ValidationReport, position_limit, validate_rows

VALIDATION_FILE, BAD_ROWS_FILE, SKIPPED_ROWS_FILE = "validation.json", "bad_rows.jsonl", "skipped_rows.jsonl"
_DATA_SUFFIXES = (".json", ".jsonl", ".parquet", ".csv")


def _looks_local(source: str) -> bool:
    return source.startswith(("/", "./", "../", "~")) or Path(source).suffix.lower() in _DATA_SUFFIXES


def check_paths(config: Config) -> None:
    """Fail fast (``ConfigError``, before the model loads) on paths that cannot work."""
    data = config.data
    if not data.train:
        raise ConfigError("data.train is empty: give a dataset path or hub name, e.g. data.train=pairs.jsonl")
    for key, source in (("data.train", data.train), ("data.eval", data.eval)):
        if source and _looks_local(source) and not Path(source).expanduser().exists():
            raise ConfigError(f"{key}={source!r} does not exist (a local path: a hub name looks like owner/name)")
    if data.image_root and not Path(data.image_root).is_dir():
        raise ConfigError(f"data.image_root={data.image_root!r} is not a folder")
    output_dir = Path(config.train.output_dir)
    if output_dir.exists() and not output_dir.is_dir():
        raise ConfigError(f"train.output_dir={str(output_dir)!r} is a file, not a folder: choose another path")
    blocking = next((parent for parent in output_dir.parents if parent.exists() and not parent.is_dir()), None)
    if blocking is not None:
        raise ConfigError(f"train.output_dir={str(output_dir)!r} cannot be created: {str(blocking)!r} is a file")


def load_pairs(config: Config, log=print) -> PreferenceDataset:
    """The training pairs in the package's row layout (``data.format``), read lazily (``data.max_rows``
    applied)."""
    data = config.data
    dataset = apply_format(load_preference_dataset(data.train, split=data.train_split), data.format,
                           data.format_options, data.columns, log)
    if data.max_rows is not None:
        dataset = dataset.select(range(min(data.max_rows, len(dataset))))
    return PreferenceDataset(dataset, image_root=default_image_root(data.train, data.image_root),
                             responses=config.loss.responses, allow_outside_images=data.allow_outside_images,
                             max_image_pixels=data.max_image_pixels, video_frames=data.video_frames,
                             video_fps=data.video_fps)


def data_fingerprint(pairs: PreferenceDataset, config: Config) -> str:
    """A hash of the rows (``datasets``' fingerprint) and of every setting that decides which rows train and how
    they are tokenized: equal fingerprints, equal training data."""
    data = config.data
    settings = {key: getattr(data, key) for key in (
        "train", "train_split", "format", "format_options", "columns", "max_rows", "max_prompt_length", "max_response_length", "skip_long_prompts",
        "on_bad_row", "allow_outside_images", "max_image_pixels")}
    settings["train"] = None  # the path may move; the rows' fingerprint is what counts
    if data.special_tokens_in_text != "error":  # only where set, so runs from before it keep their fingerprint
        settings["special_tokens_in_text"] = data.special_tokens_in_text
    for key in ("video_frames", "video_fps"):  # only where set, as above
        if getattr(data, key) is not None:
            settings[key] = getattr(data, key)
    payload = {"dataset": pairs.dataset._fingerprint, "rows": len(pairs.dataset), "image_root": pairs.image_root,
               "responses": pairs.responses, **settings}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


def checked_pairs(pairs: PreferenceDataset, collator, model_config, config: Config, fingerprint: str,
                  accelerator, log=print) -> PreferenceDataset:
    """Run ``data.validate`` on the main process (reusing the output folder's earlier check of the same data),
    then stop on bad rows or skip them (``data.on_bad_row``); every process gets the same rows."""
    from accelerate.utils import broadcast_object_list

    data, output_dir = config.data, Path(config.train.output_dir)
    if data.validate == "off":
        return pairs
    found = [None]
    if accelerator.is_main_process:
        found = [_main_process_check(pairs, collator, model_config, config, fingerprint, log)]
    if accelerator.num_processes > 1:
        broadcast_object_list(found)
    bad = found[0]
    skip_kinds = {"prompt_too_long"} if data.skip_long_prompts else set()
    stopping = [entry for entry in bad if data.on_bad_row == "error" and entry["kind"] not in skip_kinds]
    if stopping:
        report = ValidationReport(total=len(pairs), checked=len(pairs), bad=stopping)
        report.raise_if_bad(output_dir / BAD_ROWS_FILE)
    if not bad:
        return pairs
    skipped = {entry["row"] for entry in bad}
    kept = [pairs.source_index(p) for p in range(len(pairs)) if pairs.source_index(p) not in skipped]
    if accelerator.is_main_process:
        report = ValidationReport(total=len(pairs), bad=bad)
        report.write_bad_rows(output_dir / SKIPPED_ROWS_FILE)
        kinds = report.by_kind()
        log(f"warning: skipped {len(skipped)} of {len(pairs)} rows ({', '.join(f'{k}: {n}' for k, n in kinds.items())}); "
            f"each is listed with its problem in {output_dir / SKIPPED_ROWS_FILE}")
    if not kept:
        raise ValueError(f"every one of the {len(pairs)} rows is bad; see {output_dir / SKIPPED_ROWS_FILE}")
    return pairs.subset(kept)


def _main_process_check(pairs, collator, model_config, config: Config, fingerprint: str, log) -> list[dict]:
    data, cfg = config.data, config.train
    output_dir = Path(cfg.output_dir)
    settings = {"fingerprint": fingerprint, "validate": data.validate, "sample": data.validate_sample,
                "seed": cfg.seed}
    saved = output_dir / VALIDATION_FILE
    if saved.exists():
        try:
            earlier = json.loads(saved.read_text())
            if earlier.get("settings") == settings:
                log(f"rows checked before ({saved}): {earlier['summary']['ok']} ok, {earlier['summary']['bad']} bad")
                return earlier["bad_rows"]
        except (json.JSONDecodeError, KeyError):
            pass
    report = validate_rows(pairs, collator, limit=position_limit(model_config),
                           sample=data.validate_sample if data.validate == "sample" else None, seed=cfg.seed,
                           workers=data.validate_workers, progress=cfg.progress)
    log(report.summary())
    output_dir.mkdir(parents=True, exist_ok=True)
    if report.bad:
        report.write_bad_rows(output_dir / BAD_ROWS_FILE)
    saved.write_text(json.dumps({"settings": settings, "summary": report.to_dict(), "bad_rows": report.bad}, indent=1))
    return report.bad


def validate_training_data(config: Config, out: str | Path | None = None) -> tuple[ValidationReport, Path | None]:
    """``vlmdpo validate``: check ``config.data.train`` with the config's processor and model limits (only
    the processor and the model's config are loaded, not its weights). Bad rows are listed in ``out``
    (default ``<train.output_dir>/bad_rows.jsonl``); returns the report and that path (``None`` if none)."""
    from transformers import AutoConfig

    from vlmdpo.data.collator import PreferenceCollator
    from vlmdpo.model.load import load_processor, resolve_model_path

    check_paths(config)
    name = resolve_model_path(config.model.name_or_path)
    processor = load_processor(name)
    collator = PreferenceCollator(processor, config.data.max_prompt_length, config.data.max_response_length,
                                  special_tokens_in_text=config.data.special_tokens_in_text)
    pairs = load_pairs(config)
    sample = config.data.validate_sample if config.data.validate == "sample" else None
    report = validate_rows(pairs, collator, limit=position_limit(AutoConfig.from_pretrained(name)), sample=sample,
                           seed=config.train.seed, workers=config.data.validate_workers, progress=config.train.progress)
    if not report.bad:
        return report, None
    return report, report.write_bad_rows(out or Path(config.train.output_dir) / "bad_rows.jsonl")


def held_out_pairs(config: Config) -> list[dict] | None:
    """Held-out pairs for the in-training evaluation, read through ``data.format`` as the training pairs are (all
    read now, so a bad one fails before training), or ``None`` when it is off. An ``objects`` column (for CHAIR)
    is kept for rows of the package's own layout."""
    if not (config.data.eval and config.train.eval_steps):
        return None
    data = config.data
    source = load_preference_dataset(data.eval, split=data.eval_split)
    dataset = apply_format(source, data.format, data.format_options, data.columns, log=lambda *_: None)
    if data.eval_max_rows is not None:
        dataset = dataset.select(range(min(data.eval_max_rows, len(dataset))))
    pairs = PreferenceDataset(dataset, image_root=default_image_root(data.eval, data.image_root),
                              allow_outside_images=data.allow_outside_images, max_image_pixels=data.max_image_pixels,
                              video_frames=data.video_frames, video_fps=data.video_fps)
    rows = [pairs[i] for i in range(len(pairs))]
    if "objects" in dataset.column_names:  # a FormattedRows view lists only the four row columns
        for row, objects in zip(rows, dataset["objects"]):
            row["objects"] = objects
    return rows


# settings that do not change what the run computes: free to change between a run and its resume
_FREE_TO_CHANGE = {
    "data.train", "data.validate", "data.validate_sample", "data.validate_workers", "data.eval", "data.eval_split",
    "data.eval_max_rows", "train.output_dir", "train.logging_steps", "train.save_steps", "train.save_total_limit",
    "train.resume", "train.resume_with_changes", "train.report_to", "train.num_workers", "train.progress",
    "train.eval_steps", "train.eval_vocabulary", "train.eval_max_new_tokens", "train.ref_cache_dir",
    "train.on_nonfinite"}


def run_record(config: Config, fingerprint: str, num_processes: int) -> dict:
    """What a checkpoint must match to be resumed: the data fingerprint and the settings that shape the run."""
    from dataclasses import asdict

    settings = {f"{section}.{key}": value for section, values in asdict(config).items()
                for key, value in values.items() if f"{section}.{key}" not in _FREE_TO_CHANGE}
    settings["processes"] = num_processes
    return {"data": fingerprint, "settings": json.loads(json.dumps(settings, default=str))}
