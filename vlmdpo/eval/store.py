"""Finished results on disk: settings hashes, file fingerprints, atomic json writes, cached reference log-probs.

A result counts as finished when its ``result.json`` exists with the hash of the settings it was computed
with; anything that changes the numbers (config values, the checkpoint's or data's files) changes the hash.
Files are fingerprinted by size and modification time, not content, so hashing a large checkpoint is free;
copying a checkpoint therefore counts as changing it (a re-evaluation, never a stale number).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from vlmdpo.eval.config import EvalConfig, config_dict

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")


def fingerprint(path: str | os.PathLike, suffixes: tuple[str, ...] | None = None) -> list:
    """``(relative path, size, mtime_ns)`` of the files under ``path`` (only ``suffixes`` if given)."""
    root = Path(path)
    if root.is_file():
        stat = root.stat()
        return [[root.name, stat.st_size, stat.st_mtime_ns]]
    if not root.is_dir():
        return [str(path)]  # a hub name: the name is all we know
    files = sorted(p for p in root.rglob("*") if p.is_file() and (suffixes is None or p.suffix in suffixes))
    return [[str(p.relative_to(root)), p.stat().st_size, p.stat().st_mtime_ns] for p in files]


def settings_hash(data) -> str:
    """A short, stable hash of json-able ``data`` (key order does not matter)."""
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]


METRICS_VERSION = 2
"""Bumped when metric code changes what a result holds, so results saved by older code are recomputed rather
than reused without the new numbers (2: object repetition beside CHAIR)."""


def eval_settings(config: EvalConfig, base_path: str) -> dict:
    """Everything a checkpoint's numbers depend on, except the checkpoint itself."""
    cfg = config_dict(config)
    settings = {key: cfg[key] for key in ("dtype", "metrics", "beta", "vocabulary", "generation")}
    settings["metrics_version"] = METRICS_VERSION
    settings.update(base=config.base, base_files=fingerprint(base_path, WEIGHT_SUFFIXES),
                    data={**cfg["data"], "files": fingerprint(config.data.source)})
    if "pope" in config.metrics:
        settings["pope"] = cfg["pope"]
    if "clipscore" in config.metrics:
        settings["clip"] = cfg["clip"]
    if Path(config.vocabulary).is_file():
        settings["vocabulary_sha"] = hashlib.sha256(Path(config.vocabulary).read_bytes()).hexdigest()[:16]
    return settings


def write_json(path: Path, data) -> None:
    """Write ``data`` as json atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1, default=str))
    tmp.replace(path)  # atomic: a killed run never leaves a half-written result that looks finished


def write_jsonl(path: Path, records: list[dict]) -> None:
    """One json object per line."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(record) + "\n" for record in records))


def load_json(path: Path) -> dict | None:
    """The json in ``path``, or ``None`` if it is missing or unreadable."""
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


class ReferenceLogps:
    """The base model's per-pair log-probs, computed once per settings and kept in a json file."""

    def __init__(self, path: Path, key: str):
        self.path, self.key, self._value = path, key, None

    def put(self, fit: dict) -> None:
        """Keep the policy log-probs of a ``preference_fit`` of the base model (in memory and on disk)."""
        pairs = fit["per_pair"]
        self._value = {"chosen_logps": [p["policy_chosen_logps"] for p in pairs],
                       "rejected_logps": [p["policy_rejected_logps"] for p in pairs]}
        write_json(self.path, {"settings_hash": self.key, **self._value})

    def get(self, compute) -> dict:
        """``{"chosen_logps", "rejected_logps"}``: kept, stored with the same key, or ``put(compute())``."""
        if self._value is None:
            stored = load_json(self.path)
            if stored is not None and stored.get("settings_hash") == self.key:
                self._value = {key: stored[key] for key in ("chosen_logps", "rejected_logps")}
            else:
                self.put(compute())
        return self._value
