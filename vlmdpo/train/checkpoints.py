"""Resumable checkpoints of a training run: writing them atomically, resuming from the newest one that loads.

A checkpoint is ``output_dir/checkpoint-<step>/`` holding ``accelerate``'s state (model, optimizer, scheduler,
RNG of every process), the adapter with its processor under ``adapter/`` (loadable with
``PeftModel.from_pretrained``), ``run.json`` (the data fingerprint and the settings that shape the run) and
``trainer_state.json`` (the loop's counters). It is written under ``.checkpoint-<step>.partial/`` and renamed
when complete, so a run killed mid-save leaves no half-written ``checkpoint-<step>``. A sharded run
(``train.sharding=fsdp2``) keeps its trainable weights and optimizer state as each process's shards under
``sharded/`` (``torch.distributed.checkpoint``), and the adapter gathered from them.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

from vlmdpo.train.sharding import full_state_dict, load_sharded_state, save_sharded_state

STATE_FILE = "trainer_state.json"
RUN_FILE = "run.json"
SHARDED_DIR = "sharded"
STATE_KEYS = ("step", "micro_batches")
_CHECKPOINT_NAME = re.compile(r"checkpoint-(\d+)")


class ResumeError(RuntimeError):
    """The run cannot continue from what ``output_dir`` holds; the message says why and what to do."""


def checkpoint_step(path: Path) -> int | None:
    """The step of a ``checkpoint-<step>`` folder, or ``None`` for any other name (``checkpoint-best``...)."""
    match = _CHECKPOINT_NAME.fullmatch(path.name)
    return int(match.group(1)) if match else None


def step_checkpoints(output_dir: Path) -> list[Path]:
    """``checkpoint-<step>`` folders in ``output_dir``, oldest first."""
    found = [p for p in Path(output_dir).glob("checkpoint-*") if p.is_dir() and checkpoint_step(p) is not None]
    return sorted(found, key=checkpoint_step)


def latest_checkpoint(output_dir: Path) -> Path | None:
    """The newest checkpoint whose ``trainer_state.json`` was written, or ``None`` (it may still be damaged:
    ``resume`` is what checks that it loads)."""
    complete = [p for p in step_checkpoints(output_dir) if (p / STATE_FILE).exists()]
    return complete[-1] if complete else None


def read_state(checkpoint: Path) -> dict:
    """The loop's counters saved with ``checkpoint``; ``ValueError`` if the file is empty or damaged."""
    text = (Path(checkpoint) / STATE_FILE).read_text()
    try:
        state = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"{STATE_FILE} is not valid JSON ({err})") from None
    missing = [key for key in STATE_KEYS if not isinstance(state, dict) or not isinstance(state.get(key), int)]
    if missing:
        raise ValueError(f"{STATE_FILE} lacks {missing}")
    return state


def read_run(checkpoint: Path) -> dict | None:
    """The ``run.json`` of a checkpoint (``None`` for checkpoints written before it existed)."""
    path = Path(checkpoint) / RUN_FILE
    return json.loads(path.read_text()) if path.exists() else None


def run_differences(saved: dict, current: dict) -> list[str]:
    """``key: saved -> current`` for every setting (and the data fingerprint) that differs."""
    keys = sorted(set(saved) | set(current))
    return [f"{key}: {saved.get(key)!r} -> {current.get(key)!r}" for key in keys if saved.get(key) != current.get(key)]


def save_checkpoint(accelerator, policy, processor, output_dir: Path, step: int, state: dict, limit: int,
                    run: dict | None = None, sharded_optimizer=None) -> Path:
    """Write ``checkpoint-<step>`` atomically (every process takes part), then keep the newest ``limit``
    (0: all). ``sharded_optimizer``: the optimizer of an FSDP2-sharded ``policy``, which ``accelerate`` does not
    hold; its state and the policy's go to ``sharded/``."""
    output_dir = Path(output_dir)
    final, partial = output_dir / f"checkpoint-{step}", output_dir / f".checkpoint-{step}.partial"
    if accelerator.is_main_process and partial.exists():
        shutil.rmtree(partial)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(partial))
    if sharded_optimizer is not None:
        save_sharded_state(policy, sharded_optimizer, partial / SHARDED_DIR)
        weights = full_state_dict(policy)
    else:
        weights = accelerator.get_state_dict(policy)  # every process: FSDP and ZeRO-3 gather their shards here
    if accelerator.is_main_process:
        accelerator.unwrap_model(policy).save_pretrained(partial / "adapter", state_dict=weights)
        processor.save_pretrained(partial / "adapter")
        if run is not None:
            (partial / RUN_FILE).write_text(json.dumps(run, indent=1))
        (partial / STATE_FILE).write_text(json.dumps(state))
        if final.exists():  # the same step saved again (a finished run restarted): swap, then drop the old
            old = output_dir / f".checkpoint-{step}.old"
            shutil.rmtree(old, ignore_errors=True)
            final.rename(old)
            partial.rename(final)
            shutil.rmtree(old)
        else:
            partial.rename(final)
        for stale in step_checkpoints(output_dir)[:-limit] if limit > 0 else []:
            shutil.rmtree(stale, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def remove_partial_checkpoints(output_dir: Path) -> list[Path]:
    """Delete what a killed save left (``.checkpoint-*.partial``); return what was removed."""
    found = sorted(Path(output_dir).glob(".checkpoint-*.partial")) + sorted(Path(output_dir).glob(".checkpoint-*.old"))
    for path in found:
        shutil.rmtree(path, ignore_errors=True)
    return found


def resume(accelerator, output_dir: Path, run: dict, allow_changes: bool, log=print,
           sharded: tuple | None = None) -> tuple[Path, dict] | None:
    """Load the newest checkpoint of ``output_dir`` that loads; return ``(checkpoint, state)`` or ``None``.
    ``sharded``: ``(policy, optimizer)`` of an FSDP2-sharded run, loaded from the checkpoint's ``sharded/``.

    Damaged checkpoints (an empty or cut ``trainer_state.json``, a truncated or missing model or optimizer
    file) are skipped with a log line saying why. A checkpoint of other data or settings than ``run`` raises
    ``ResumeError`` unless ``allow_changes``. All processes agree on the checkpoint.
    """
    candidates = [p for p in step_checkpoints(output_dir) if (p / STATE_FILE).exists()]
    if not candidates:
        return None
    newest = read_run_safely(candidates[-1])
    if newest is not None:
        changed = run_differences(_compared(newest), _compared(run))
        if changed and not allow_changes:
            raise ResumeError(f"{output_dir} holds a run with other data or settings ({'; '.join(changed)}). "
                              "Use another train.output_dir, or set train.resume_with_changes=true to continue "
                              "it with the new ones")
        if changed:
            log("warning: resuming with changed settings: " + "; ".join(changed))
    for checkpoint in reversed(candidates):
        try:
            state = read_state(checkpoint)
            accelerator.load_state(str(checkpoint))
            if sharded is not None:
                load_sharded_state(*sharded, checkpoint / SHARDED_DIR)
            problem = None
        except Exception as err:  # any damage: fall back to the previous checkpoint
            problem = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
        problems = [problem]
        if accelerator.num_processes > 1:  # a file unreadable on one process must send every process back
            problems = [None] * accelerator.num_processes
            problems[accelerator.process_index] = problem
            problems = _gathered(problems)
        failed = [p for p in problems if p]
        if not failed:
            return checkpoint, state
        log(f"warning: skipping damaged checkpoint {checkpoint} ({failed[0]})")
    raise ResumeError(f"no checkpoint in {output_dir} loads (see the warnings above); delete the damaged ones, "
                      "or use another train.output_dir")


# ``max_steps`` and ``num_epochs`` may change on resume: a run is extended (the log says so)
_MAY_CHANGE = {"train.max_steps", "train.num_epochs"}


def _compared(run: dict) -> dict:
    settings = dict(run.get("settings", {}))
    compared = {key: value for key, value in settings.items() if key not in _MAY_CHANGE}
    compared["data fingerprint"] = run.get("data")
    return compared


def read_run_safely(checkpoint: Path) -> dict | None:
    try:
        return read_run(checkpoint)
    except (OSError, json.JSONDecodeError):
        return None


def _gathered(values: list) -> list:
    """Element-wise first non-empty value across processes."""
    import torch.distributed as dist

    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, values)
    return [next((g[i] for g in gathered if g[i]), None) for i in range(len(values))]
