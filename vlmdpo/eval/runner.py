"""``vlmdpo eval``: one base model and any number of adapters or merged checkpoints, on the same rows.

Each checkpoint's result is written to ``<output_dir>/checkpoints/<name>/result.json`` as soon as it is done,
with a hash of every setting the numbers depend on (the config's data, generation, POPE, CLIP, vocabulary
and metric choices, plus the sizes and times of the checkpoint's weight files). A rerun loads results whose
hash matches instead of recomputing them, so an interrupted batch resumes where it stopped and a glob over a
growing run folder only evaluates the new checkpoints. The base model is loaded once, and only if
something is left to do; adapters are attached to it and removed again (``peft`` ``unload``).
"""

from __future__ import annotations

import contextlib
import glob
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from vlmdpo.eval.config import EvalConfig, config_dict, load_eval_config, save_eval_config
from vlmdpo.eval.report import write_report
from vlmdpo.eval.rows import load_eval_rows, load_vocabulary
from vlmdpo.eval.store import (
    WEIGHT_SUFFIXES,
    ReferenceLogps,
    eval_settings,
    fingerprint,
    load_json,
    settings_hash,
    write_json,
    write_jsonl,
)
from vlmdpo.eval.suite import check_rows, evaluate_model

REFERENCE_FILE = "reference_logps.json"


@dataclass(frozen=True)
class Checkpoint:
    """One row of the comparison: the base model, an adapter, or a merged (standalone) model."""

    name: str
    kind: str
    """``base``, ``adapter`` or ``model``."""
    path: str
    """Folder to load: the adapter folder (with adapter_config.json) or the model folder."""


def _kind(path: Path) -> tuple[str, Path]:
    for folder in (path, path / "adapter"):  # a train output_dir, or its checkpoint-N/adapter
        if (folder / "adapter_config.json").is_file():
            return "adapter", folder
    if (path / "config.json").is_file():
        return "model", path
    raise FileNotFoundError(f"{path} holds neither adapter_config.json (an adapter), adapter/ (a training "
                            "checkpoint) nor config.json (a merged model); check the checkpoints entry")


def _unique_names(paths: list[Path]) -> list[str]:
    """Each folder's shortest trailing path parts that no other folder shares: runs/a/final -> a/final."""
    names = []
    for path in paths:
        others = [q for q in paths if q != path]
        for depth in range(1, len(path.parts) + 1):
            name = "/".join(path.parts[-depth:])
            if name != "base" and all(q.parts[-depth:] != path.parts[-depth:] for q in others):
                break
        names.append(name)
    return names


def resolve_checkpoints(entries: list[str], include_base: bool = True) -> list[Checkpoint]:
    """Expand globs, classify each folder, and name it; the base (if included) comes first."""
    paths: list[Path] = []
    for entry in entries:
        if any(char in entry for char in "*?["):
            matched = sorted(Path(p) for p in glob.glob(entry) if Path(p).is_dir())
            if not matched:
                raise FileNotFoundError(f"checkpoints pattern {entry!r} matched no folder")
            paths.extend(matched)
        else:
            paths.append(Path(entry))
    paths = list(dict.fromkeys(p.resolve() for p in paths))
    kinds = [_kind(p) for p in paths]
    checkpoints = [Checkpoint(name, kind, str(folder))
                   for name, (kind, folder) in zip(_unique_names(paths), kinds)]
    return ([Checkpoint("base", "base", "")] if include_base else []) + checkpoints


def _checkpoint_dir(out: Path, checkpoint: Checkpoint) -> Path:
    return out / "checkpoints" / checkpoint.name.replace("/", "--")


class _Models:
    """The base model and processor, loaded on first use; adapters and merged models around it."""

    def __init__(self, config: EvalConfig, base_path: str):
        self.config, self.base_path = config, base_path
        device = config.device
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        self._base = None

    @property
    def base(self):
        if self._base is None:
            from vlmdpo.model.load import load_model_and_processor

            model, processor = load_model_and_processor(self.base_path, self.config.dtype)
            self._base = (model.to(self.device).eval(), processor)
        return self._base

    @contextlib.contextmanager
    def load(self, checkpoint: Checkpoint):
        """Yield ``(model, processor)`` for a checkpoint; the base is left as it was afterwards."""
        if checkpoint.kind == "base":
            yield self.base
        elif checkpoint.kind == "adapter":
            from peft import PeftModel

            model, processor = self.base
            peft_model = PeftModel.from_pretrained(model, checkpoint.path).eval()
            try:
                yield peft_model, processor
            finally:
                self._base = (peft_model.unload(), processor)  # removes the LoRA layers again
        else:
            from vlmdpo.model.load import load_model_and_processor

            model, processor = load_model_and_processor(checkpoint.path, self.config.dtype)
            yield model.to(self.device).eval(), processor
            del model


def _training_metrics(checkpoints: list[Checkpoint]) -> dict[str, Path]:
    found: dict[Path, str] = {}
    for checkpoint in checkpoints:
        if checkpoint.kind == "base":
            continue
        path = Path(checkpoint.path)
        for folder in (path, path.parent, path.parent.parent):  # run dir, or run/checkpoint-N/adapter
            if (folder / "metrics.jsonl").is_file():
                found.setdefault(folder / "metrics.jsonl", folder.name)
                break
    names = _unique_names([p.parent for p in found]) if found else []
    return dict(zip(names, found))


def evaluate(config: EvalConfig, log=tqdm.write) -> dict[str, dict]:
    """Evaluate every checkpoint of ``config`` (skipping finished ones), write the report; return results."""
    from vlmdpo.model.load import resolve_model_path

    out = Path(config.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_eval_config(config, str(out / "eval_config.yaml"))
    base_path = resolve_model_path(config.base)
    checkpoints = resolve_checkpoints(config.checkpoints, config.include_base)
    settings = eval_settings(config, base_path)
    hashes = {c.name: settings_hash([settings, c.kind, fingerprint(c.path, WEIGHT_SUFFIXES) if c.path else None])
              for c in checkpoints}
    results: dict[str, dict] = {}
    for checkpoint in checkpoints:
        cached = load_json(_checkpoint_dir(out, checkpoint) / "result.json")
        if cached is not None and cached.get("settings_hash") == hashes[checkpoint.name]:
            results[checkpoint.name] = cached
    if results:
        log(f"skipping {len(results)} checkpoint(s) already evaluated with these settings: {', '.join(results)}")
    todo = [c for c in checkpoints if c.name not in results]
    if todo:
        session = _Session(config, base_path, settings, out)
        bar = tqdm(todo, desc="checkpoints", disable=not config.progress, dynamic_ncols=True)
        for checkpoint in bar:
            bar.set_postfix_str(checkpoint.name)
            result = session.evaluate(checkpoint)
            result["settings_hash"] = hashes[checkpoint.name]
            write_json(_checkpoint_dir(out, checkpoint) / "result.json", result)  # last: marks it finished
            results[checkpoint.name] = result
    results = {c.name: results[c.name] for c in checkpoints}
    notes = ("Rewards are beta * (checkpoint - base) response log-probs on the held-out pairs; the base row is "
             "the reference itself, so its rewards are n/a. Per-row generations and POPE answers are in "
             "checkpoints/<name>/.")
    write_report(out, results, training_metrics=_training_metrics(checkpoints), title=config.title, notes=notes)
    return results


class _Session:
    """What every checkpoint of one run shares: rows, vocabulary, CLIP judge, base model, reference log-probs."""

    def __init__(self, config: EvalConfig, base_path: str, settings: dict, out: Path):
        self.config, self.out = config, out
        self.models = _Models(config, base_path)
        data = config.data
        self.rows = load_eval_rows(
            data.source, data.split, max_rows=data.max_rows, image_root=data.image_root,
            images_column=data.images_column, prompt_column=data.prompt_column,
            objects_column=data.objects_column, chosen_column=data.chosen_column,
            rejected_column=data.rejected_column, default_prompt=config.generation.prompt)
        needs_objects = "chair" in config.metrics or "pope" in config.metrics
        self.vocabulary = load_vocabulary(config.vocabulary) if needs_objects else None
        check_rows(self.rows, config.metrics, self.vocabulary)
        self.judge = _load_judge(config, self.models.device) if "clipscore" in config.metrics else None
        reference_settings = {k: settings[k] for k in ("base", "base_files", "dtype", "data", "beta")}
        self.reference = ReferenceLogps(out / REFERENCE_FILE, settings_hash(reference_settings))

    def evaluate(self, checkpoint: Checkpoint) -> dict:
        """Run the metrics on one checkpoint, save its per-row records, return its result."""
        config, is_base = self.config, checkpoint.kind == "base"
        reference_logps = None
        if "preference" in config.metrics and not is_base:
            reference_logps = self.reference.get(self._base_fit)
        with self.models.load(checkpoint) as (model, processor):
            result, records = evaluate_model(
                model, processor, self.rows, metrics=config.metrics, generation=config_dict(config)["generation"],
                pope=config_dict(config)["pope"], vocabulary=self.vocabulary, judge=self.judge, beta=config.beta,
                preference_batch_size=config.preference_batch_size,
                max_response_length=config.data.max_response_length,
                reference=model if is_base else None, reference_logps=reference_logps, progress=config.progress)
        if is_base and "preference" in result:
            self.reference.put(result["preference"])
        generation = config.generation
        result["settings"] = {"checkpoint": checkpoint.path or config.base, "kind": checkpoint.kind,
                              "prompt": generation.prompt, "max_new_tokens": generation.max_new_tokens,
                              "do_sample": generation.do_sample, "vocabulary": config.vocabulary,
                              **({"clip_model": self.judge.name} if self.judge is not None else {})}
        folder = _checkpoint_dir(self.out, checkpoint)
        write_jsonl(folder / "generations.jsonl", records["generations"])
        write_jsonl(folder / "pope.jsonl", records["pope"])
        return result

    def _base_fit(self) -> dict:
        from vlmdpo.eval.preference import preference_fit

        model, processor = self.models.base
        config = self.config
        return preference_fit(model, processor, [row for row in self.rows if "chosen" in row], beta=config.beta,
                              batch_size=config.preference_batch_size, reference=model,
                              max_response_length=config.data.max_response_length, progress=config.progress)


def _load_judge(config: EvalConfig, device: torch.device):
    from vlmdpo.eval.judge import ClipJudge

    if Path(config.clip.model).is_dir():
        return ClipJudge.load(config.clip.model, device=device)
    return ClipJudge.from_pretrained(config.clip.model, config.clip.pretrained, device=device)


def run_eval(path: str | None = None, overrides: list[str] | tuple = ()) -> Path:
    """``vlmdpo eval [CONFIG.yaml] [key=value ...]``: evaluate and return the report's path."""
    config = load_eval_config(path, overrides)
    evaluate(config)
    return Path(config.output_dir) / "report.md"
