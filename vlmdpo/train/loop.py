"""The DPO training loop, on ``accelerate``.

rows -> MethodCollator -> policy forward -> response log-probs -> reference log-probs (adapter disabled)
-> loss registry -> backward. ``accelerate`` owns devices, mixed precision, accumulation and launching
(``accelerate launch -m vlmdpo.cli train ...`` for DDP, FSDP or DeepSpeed); everything built before step 1 is
``vlmdpo.train.setup``'s.
"""

from __future__ import annotations

import contextlib
import warnings
from pathlib import Path

import torch

from vlmdpo.config import Config
from vlmdpo.model.load import is_sharded
from vlmdpo.train.checkpoints import latest_checkpoint, save_checkpoint
from vlmdpo.train.metric_window import MetricWindow
from vlmdpo.train.setup import Run, set_up
from vlmdpo.train.sharding import drop_blank_image_gradients, full_state_dict, is_fsdp2
from vlmdpo.train.step import dpo_step


class NonFiniteError(RuntimeError):
    """A non-finite loss or gradient stopped the run (``train.on_nonfinite=error``)."""


def train(config: Config) -> Path:
    """Run DPO as configured; return the output folder (adapter + processor + metrics.jsonl).

    The run is seeded by ``train.seed`` alone; the caller's global RNG state is the same afterwards."""
    with _callers_rng_kept():
        run = set_up(config)
        _loop(run)
        return _finish(run)


def _loop(run: Run) -> None:
    """Micro-batches until ``max_steps`` optimizer steps: step, optimizer step with its guards, then what is due
    at a step's end (evaluation, a log line, a checkpoint)."""
    accelerator, state, cfg = run.accelerator, run.state, run.config.train
    window, window_rows = MetricWindow(), []  # window_rows: the rows of the optimizer step being accumulated
    nonfinite_loss = torch.zeros((), device=accelerator.device)
    run.policy.train()
    while state["step"] < run.max_steps:
        for batch in _epoch_batches(run):
            window_rows += batch["index"]
            with accelerator.accumulate(run.policy):
                loss, metrics = dpo_step(run.policy, run.reference, batch, run.config.loss,
                                         pad_token_id=run.pad_token_id, forward_path=run.forward_path,
                                         methods=run.methods, ref_logps=run.ref_logps)
                nonfinite_loss += ~torch.isfinite(loss.detach())
                accelerator.backward(loss)
                if accelerator.sync_gradients:
                    learning_rate = _optimizer_step(run, nonfinite_loss, window_rows)
                    nonfinite_loss.zero_()
                    window_rows = []
            state["micro_batches"] += 1
            for method in run.methods:
                method.observe(metrics)
            window.add(metrics)
            if not accelerator.sync_gradients:
                continue
            state["step"] += 1
            run.progress.update(1)
            for method in run.methods:  # before this step's log line and checkpoint (TR-DPO's reference refresh)
                if note := method.after_optimizer_step(state["step"], run.policy, run.reference):
                    run.log(note)
            last = state["step"] == run.max_steps
            if run.eval_rows is not None and (state["step"] % cfg.eval_steps == 0 or last):
                _evaluate_held_out(run)
            if state["step"] % cfg.logging_steps == 0 or last:
                _log(run, window.mean(accelerator), learning_rate)
            if cfg.save_steps and state["step"] % cfg.save_steps == 0 and not last:
                _save(run)
            if state["step"] >= run.max_steps:
                break


def _epoch_batches(run: Run):
    """The loader for the epoch ``micro_batches`` is in, past the micro-batches of it already trained."""
    micro_per_epoch = len(run.loader)
    epoch, done = divmod(run.state["micro_batches"], micro_per_epoch)
    loader = run.accelerator.skip_first_batches(run.loader, done) if done else run.loader
    # accelerate's loader sets its sampler's epoch from its own counter, which restarts at 0 in a resumed
    # process: name the epoch on the loader itself
    loader.set_epoch(epoch)
    return loader


def _optimizer_step(run: Run, nonfinite_loss: torch.Tensor, rows: list[int]) -> float:
    """Clip, check for non-finite values (stop or skip, ``train.on_nonfinite``), step the optimizer and the
    schedule; return the learning rate the step used."""
    cfg, state = run.config.train, run.state
    if is_sharded(run.policy):
        drop_blank_image_gradients(run.policy)
    grad_norm = run.accelerator.clip_grad_norm_(run.trainable, cfg.max_grad_norm if cfg.max_grad_norm > 0 else
                                                float("inf"))
    if hasattr(grad_norm, "full_tensor"):  # the norm of sharded gradients (FSDP2) is itself a DTensor
        grad_norm = grad_norm.full_tensor()
    problem = _nonfinite_problem(run.accelerator, nonfinite_loss, grad_norm)
    if problem and cfg.on_nonfinite == "error":
        _stop_on_nonfinite(run.accelerator, problem, state["step"] + 1, rows, run.output_dir)
    if problem:
        state["nonfinite_skipped"] += 1
        run.log(f"warning: step {state['step'] + 1}: {problem}; the step is skipped (train.on_nonfinite=skip)")
    else:
        run.optimizer.step()
    learning_rate = run.scheduler.get_last_lr()[0]
    with warnings.catch_warnings():  # a skipped step still advances the schedule
        warnings.filterwarnings("ignore", "Detected call of `lr_scheduler.step()`")
        run.scheduler.step()
    run.optimizer.zero_grad()
    return learning_rate


def _evaluate_held_out(run: Run) -> None:
    """Preference fit (and CHAIR with a vocabulary) on ``data.eval``, logged as ``eval/...`` by the main process
    while the others wait."""
    from vlmdpo.eval.during_training import evaluate_during_training

    config, accelerator = run.config, run.accelerator
    if accelerator.is_main_process:
        record = evaluate_during_training(
            run.policy, run.processor, run.eval_rows, beta=config.loss.beta, reference=run.reference,
            batch_size=config.train.batch_size, max_response_length=config.data.max_response_length,
            vocabulary=config.train.eval_vocabulary, max_new_tokens=config.train.eval_max_new_tokens)
        record["step"] = run.state["step"]
        accelerator.log(record, step=run.state["step"])
        run.metrics_log.write(record)
    accelerator.wait_for_everyone()


def _log(run: Run, means: dict[str, float], learning_rate: float) -> None:
    """One ``metrics.jsonl`` line, tracker record and progress-bar postfix for the window that just ended."""
    state = run.state
    record = dict(means, step=state["step"], epoch=state["micro_batches"] / len(run.loader),
                  learning_rate=learning_rate)
    if state["nonfinite_skipped"]:
        record["nonfinite_skipped"] = state["nonfinite_skipped"]
    run.progress.set_postfix({key.split("/")[-1]: f"{record[key]:.3f}" for key in (
        "loss", "rewards/margins", "rewards/accuracies") if record.get(key) is not None})
    run.accelerator.log(record, step=state["step"])
    if run.metrics_log:
        run.metrics_log.write(record)


def _save(run: Run) -> None:
    """A checkpoint of this step, with the loop's counters and every method's state."""
    state = dict(run.state)
    for method in run.methods:
        state.update(method.state_dict())
    save_checkpoint(run.accelerator, run.policy, run.processor, run.output_dir, run.state["step"], state,
                    run.config.train.save_total_limit, run.record,
                    sharded_optimizer=run.optimizer if is_fsdp2(run.policy) else None)


def _finish(run: Run) -> Path:
    """The adapter (or model) and processor in ``output_dir``, and a last checkpoint."""
    accelerator = run.accelerator
    run.progress.close()
    if run.metrics_log:
        run.metrics_log.close()
    accelerator.wait_for_everyone()
    sharded = is_sharded(run.policy)
    # every process: FSDP and ZeRO-3 gather their shards here
    weights = full_state_dict(run.policy) if sharded else accelerator.get_state_dict(run.policy)
    if accelerator.is_main_process:
        accelerator.unwrap_model(run.policy).save_pretrained(run.output_dir, state_dict=weights)
        run.processor.save_pretrained(run.output_dir)
    _save(run)
    accelerator.end_training()
    return run.output_dir


@contextlib.contextmanager
def _callers_rng_kept():
    """The run seeds Python's, NumPy's and torch's global RNGs from ``train.seed`` (and a resumed run restores
    them from its checkpoint); the caller's streams are put back afterwards."""
    import random

    import numpy as np

    python_state, numpy_state = random.getstate(), np.random.get_state()
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        try:
            yield
        finally:
            random.setstate(python_state)
            np.random.set_state(numpy_state)


def _nonfinite_problem(accelerator, nonfinite_loss: torch.Tensor, grad_norm) -> str | None:
    """What is not finite in this optimizer step on any process (all processes get the same answer)."""
    # DeepSpeed clips inside its own step, and accelerate then returns no norm: only the loss is checked
    grad_norm = torch.as_tensor(0.0 if grad_norm is None else grad_norm, dtype=torch.float32,
                                device=accelerator.device)
    flags = torch.stack([nonfinite_loss.float().clamp(max=1), (~torch.isfinite(grad_norm)).float()])
    flags = accelerator.reduce(flags, "sum")
    if flags[0] > 0:
        return "the loss is not finite"
    if flags[1] > 0:
        return f"the gradient norm is not finite ({float(grad_norm)})"
    return None


def _stop_on_nonfinite(accelerator, problem: str, step: int, rows: list[int], output_dir: Path) -> None:
    from accelerate.utils import gather_object

    rows = sorted(gather_object(list(rows))) if accelerator.num_processes > 1 else sorted(rows)
    last = latest_checkpoint(output_dir)
    where = (f"the last good checkpoint is {last} (a rerun resumes from it)" if last is not None
             else "no checkpoint was saved before it")
    raise NonFiniteError(f"step {step}: {problem}, on the batch of rows {rows}; the run stopped, {where}. Lower "
                         "train.learning_rate or raise loss.beta, check those rows, or set train.on_nonfinite=skip "
                         "to skip such steps")
