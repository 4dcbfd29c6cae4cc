"""Resumable checkpoints of a training run: writing them, finding the newest, pruning old ones.

A checkpoint is ``output_dir/checkpoint-<step>/`` holding ``accelerate``'s state (model, optimizer, scheduler,
RNG), the adapter with its processor under ``adapter/`` (loadable with ``PeftModel.from_pretrained``) and
``trainer_state.json`` (the loop's counters), written last: a folder without it is incomplete and ignored.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

STATE_FILE = "trainer_state.json"
_CHECKPOINT_NAME = re.compile(r"checkpoint-(\d+)")


def checkpoint_step(path: Path) -> int | None:
    """The step of a ``checkpoint-<step>`` folder, or ``None`` for any other name (``checkpoint-best``...)."""
    match = _CHECKPOINT_NAME.fullmatch(path.name)
    return int(match.group(1)) if match else None


def step_checkpoints(output_dir: Path) -> list[Path]:
    """``checkpoint-<step>`` folders in ``output_dir``, oldest first."""
    found = [p for p in Path(output_dir).glob("checkpoint-*") if p.is_dir() and checkpoint_step(p) is not None]
    return sorted(found, key=checkpoint_step)


def latest_checkpoint(output_dir: Path) -> Path | None:
    """The newest complete checkpoint (one whose ``trainer_state.json`` was written), or ``None``."""
    complete = [p for p in step_checkpoints(output_dir) if (p / STATE_FILE).exists()]
    return complete[-1] if complete else None


def read_state(checkpoint: Path) -> dict:
    """The loop's counters saved with ``checkpoint``."""
    return json.loads((Path(checkpoint) / STATE_FILE).read_text())


def save_checkpoint(accelerator, policy, processor, output_dir: Path, step: int, state: dict, limit: int) -> Path:
    """Write ``checkpoint-<step>`` (every process takes part), then keep only the newest ``limit`` (0: all)."""
    path = Path(output_dir) / f"checkpoint-{step}"
    accelerator.save_state(str(path))
    if accelerator.is_main_process:
        accelerator.unwrap_model(policy).save_pretrained(path / "adapter")
        processor.save_pretrained(path / "adapter")
        (path / STATE_FILE).write_text(json.dumps(state))
        old = step_checkpoints(output_dir)
        for stale in old[:-limit] if limit > 0 else []:
            shutil.rmtree(stale, ignore_errors=True)
    accelerator.wait_for_everyone()
    return path
