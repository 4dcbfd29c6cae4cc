"""The checkpoints one evaluation compares, and loading each in turn onto one base model.

Shared by ``vlmdpo eval`` on the package's own rows (:mod:`vlmdpo.eval.runner`) and on a published benchmark
(:mod:`vlmdpo.eval.benchmark_run`): globs are expanded, each folder is classified (adapter, training checkpoint,
merged model) and given the shortest name no other folder shares; the base model is loaded once, on first use,
and adapters are attached to it and removed again.
"""

from __future__ import annotations

import contextlib
import glob
from dataclasses import dataclass
from pathlib import Path

import torch


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


def unique_names(paths: list[Path]) -> list[str]:
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
                   for name, (kind, folder) in zip(unique_names(paths), kinds)]
    return ([Checkpoint("base", "base", "")] if include_base else []) + checkpoints


def checkpoint_dir(out: Path, checkpoint: Checkpoint) -> Path:
    """``<out>/checkpoints/<name>``, where one checkpoint's result and per-question records go."""
    return out / "checkpoints" / checkpoint.name.replace("/", "--")


def finished_checkpoints(out: Path, checkpoints: list[Checkpoint], settings: dict, log,
                         load_extra=None) -> tuple[dict[str, str], dict[str, dict], dict[str, object]]:
    """``(hashes, results, extras)``: each checkpoint's settings hash (the run's ``settings``, its kind and its
    weight files), and the results already written under ``out`` with that hash, which a rerun skips (logged).
    ``load_extra(folder)`` reads what else a finished checkpoint must have saved (``None``: it is not finished)."""
    from vlmdpo.eval.store import WEIGHT_SUFFIXES, fingerprint, load_json, settings_hash

    hashes = {c.name: settings_hash([settings, c.kind, fingerprint(c.path, WEIGHT_SUFFIXES) if c.path else None])
              for c in checkpoints}
    results, extras = {}, {}
    for checkpoint in checkpoints:
        folder = checkpoint_dir(out, checkpoint)
        cached = load_json(folder / "result.json")
        extra = load_extra(folder) if load_extra is not None else True
        if cached is not None and extra is not None and cached.get("settings_hash") == hashes[checkpoint.name]:
            results[checkpoint.name], extras[checkpoint.name] = cached, extra
    if results:
        log(f"skipping {len(results)} checkpoint(s) already evaluated with these settings: {', '.join(results)}")
    return hashes, results, extras


def training_metrics_files(checkpoints: list[Checkpoint]) -> dict[str, Path]:
    """``{run name: metrics.jsonl}`` of the training runs the checkpoints come from (for training curves)."""
    found: dict[Path, str] = {}
    for checkpoint in checkpoints:
        if checkpoint.kind == "base":
            continue
        path = Path(checkpoint.path)
        for folder in (path, path.parent, path.parent.parent):  # run dir, or run/checkpoint-N/adapter
            if (folder / "metrics.jsonl").is_file():
                found.setdefault(folder / "metrics.jsonl", folder.name)
                break
    names = unique_names([p.parent for p in found]) if found else []
    return dict(zip(names, found))


class CheckpointModels:
    """The base model and processor, loaded on first use; adapters and merged models around it."""

    def __init__(self, base_path: str, dtype: str = "float32", device: str = "auto"):
        self.base_path, self.dtype = base_path, dtype
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        self._base = None

    @property
    def base(self):
        """``(model, processor)`` of the base, in eval mode on ``device``."""
        if self._base is None:
            from vlmdpo.model.load import load_model_and_processor

            model, processor = load_model_and_processor(self.base_path, self.dtype)
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

            model, processor = load_model_and_processor(checkpoint.path, self.dtype)
            yield model.to(self.device).eval(), processor
            del model
