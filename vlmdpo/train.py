"""The DPO training loop, on ``accelerate``.

rows -> PreferenceCollator -> policy forward -> response log-probs -> reference log-probs (adapter disabled)
-> loss registry -> backward. ``accelerate`` owns devices, mixed precision, accumulation and launching
(``accelerate launch -m vlmdpo.cli train ...`` for DDP, FSDP or DeepSpeed).
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import shutil
import warnings
from pathlib import Path

import torch
from accelerate.utils import send_to_device
from torch.utils.data import DataLoader, Sampler
from tqdm.auto import tqdm

from vlmdpo.checkpoints import (
    latest_checkpoint, remove_partial_checkpoints, resume, save_checkpoint, step_checkpoints,
)
from vlmdpo.collator import PreferenceCollator
from vlmdpo.config import Config, save_config
from vlmdpo.data import PreferenceDataset
from vlmdpo.method_batches import MethodBatches
from vlmdpo.metrics_log import MetricsLog
from vlmdpo.probes import causality_problem
from vlmdpo.fast_logps import choose_forward_path
from vlmdpo.modeling import (
    apply_lora, frozen_copy, load_model_and_processor, reference_mode, resolve_model_path,
)
from vlmdpo.reference_cache import (
    ReferenceLogps, cache_key, compute_reference_logps, default_cache_dir, load_or_compute, processor_fingerprint,
    weights_fingerprint,
)
from vlmdpo.run_data import check_paths, checked_pairs, data_fingerprint, load_eval_rows, load_pairs, run_record
from vlmdpo.step import dpo_step, logps_function


class NonFiniteError(RuntimeError):
    """A non-finite loss or gradient stopped the run (``train.on_nonfinite=error``)."""


class EpochShuffleSampler(Sampler):
    """A fresh permutation per epoch, fixed by ``seed + epoch``, so a resumed run sees the same order."""

    def __init__(self, size: int, seed: int):
        self.size, self.seed, self.epoch = size, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.size

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        return iter(torch.randperm(self.size, generator=generator).tolist())


def build_policy(config: Config):
    """Load the model and processor; return ``(policy, reference_or_None, processor)``."""
    model_cfg = config.model
    model, processor = load_model_and_processor(
        resolve_model_path(model_cfg.name_or_path), model_cfg.dtype, model_cfg.attn_implementation)
    if model_cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    if model_cfg.finetune == "full":
        return model, frozen_copy(model) if config.loss.needs_reference else None, processor
    model.requires_grad_(False)
    policy = apply_lora(model, r=model_cfg.lora_r, alpha=model_cfg.lora_alpha, dropout=model_cfg.lora_dropout,
                        parts=tuple(model_cfg.lora_parts), target_modules=model_cfg.lora_target_modules)
    return policy, None, processor


def evaluate(policy, reference, processor, rows: list[dict], config: Config) -> dict[str, float]:
    """Preference fit (and CHAIR with a vocabulary) on held-out rows, named ``eval/...``."""
    from vlmdpo.eval.during_training import evaluate_during_training

    return evaluate_during_training(
        policy, processor, rows, beta=config.loss.beta, reference=reference,
        batch_size=config.train.batch_size, max_response_length=config.data.max_response_length,
        vocabulary=config.train.eval_vocabulary, max_new_tokens=config.train.eval_max_new_tokens)


def precomputed_reference_logps(policy, reference, processor, pairs: PreferenceDataset, collator, config: Config,
                                forward_path: str, accelerator, log=print) -> ReferenceLogps:
    """Reference log-probs of every training pair, from the cache or computed now (main process) in order."""
    settings = {"max_prompt_length": config.data.max_prompt_length, "dtype": config.model.dtype,
                "max_response_length": config.data.max_response_length, "responses": pairs.responses,
                "image_root": pairs.image_root,
                "rows": None if pairs.indices is None else hashlib.sha256(str(pairs.indices).encode()).hexdigest(),
                "mixed_precision": _mixed_precision(config.train.mixed_precision)}
    ref_model = reference if reference is not None else accelerator.unwrap_model(policy)
    key = cache_key(pairs.dataset._fingerprint, weights_fingerprint(ref_model), processor_fingerprint(processor),
                    settings)
    folder = Path(config.train.ref_cache_dir) if config.train.ref_cache_dir else default_cache_dir()

    def compute():
        loader = DataLoader(pairs, batch_size=config.train.batch_size, collate_fn=collator,
                            num_workers=config.train.num_workers)
        pad = getattr(processor, "tokenizer", processor).pad_token_id

        def reference_logps(batch):
            batch = send_to_device(batch, accelerator.device)
            with accelerator.autocast(), reference_mode(policy, reference) as ref_model:
                return logps_function(policy, batch, pad, forward_path)(ref_model)

        return compute_reference_logps(reference_logps, loader, progress=config.train.progress)

    if accelerator.is_main_process:
        result = load_or_compute(folder, key, compute, log)
    accelerator.wait_for_everyone()
    return result if accelerator.is_main_process else load_or_compute(folder, key, compute, log)


def _mixed_precision(choice: str) -> str:
    if choice != "auto":
        return choice
    return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"


def _progress_label(config: Config) -> str:
    """``SFT`` for a supervised run (every loss reads only the chosen response), else the loss spec."""
    return "SFT" if config.loss.responses == ("chosen",) else f"DPO ({config.loss.losses})"


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


PROBE_RESPONSE_TOKENS = 32
"""Response tokens per row of the two-pair probe batch that checks causality and the fast path before step 1."""


def _checked_forward_path(policy, reference, processor, pairs: PreferenceDataset, config: Config, device,
                          log) -> str:
    """The forward path for the run, after checking the model on two pairs: responses scored causally
    (``causality_problem``, raised as an error), and the fast path against the plain one (``choose_forward_path``).
    The probe batch lives only here, not through training."""
    pad_token_id = getattr(processor, "tokenizer", processor).pad_token_id
    # responses cut short: the probes' plain-path pass keeps full-vocabulary logits of every response token,
    # which for long responses and a large vocabulary would be the run's peak memory
    probe_length = min(PROBE_RESPONSE_TOKENS, config.data.max_response_length or PROBE_RESPONSE_TOKENS)
    probe_collator = PreferenceCollator(processor, config.data.max_prompt_length, probe_length)
    probe = send_to_device(probe_collator([pairs[i] for i in range(min(2, len(pairs)))]), device)
    problem = causality_problem(policy, probe, pad_token_id)
    if problem is not None:
        raise ValueError(f"{config.model.name_or_path}: {problem}")
    models = [policy] + ([reference] if reference is not None else [])
    return choose_forward_path(config.train.forward_path, models, probe, pad_token_id, log)


def train(config: Config) -> Path:
    """Run DPO as configured; return the output folder (adapter + processor + metrics.jsonl).

    The run is seeded by ``train.seed`` alone; the caller's global RNG state is the same afterwards."""
    with _callers_rng_kept():
        return _train(config)


def _train(config: Config) -> Path:
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs, set_seed
    from transformers import get_scheduler

    check_paths(config)
    cfg = config.train
    output_dir = Path(cfg.output_dir)
    # parts a batch may leave unused (the vision tower on text-only rows) must not stall DDP's gradient sync
    only_language = config.model.finetune == "lora" and not config.model.lora_target_modules and set(
        config.model.lora_parts) == {"language"}
    accelerator = Accelerator(gradient_accumulation_steps=cfg.gradient_accumulation_steps,
                              mixed_precision=_mixed_precision(cfg.mixed_precision),
                              log_with=cfg.report_to or None, project_dir=str(output_dir),
                              kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=not only_language)])
    log = tqdm.write if accelerator.is_main_process else (lambda *_: None)
    pairs = load_pairs(config, log)  # before the model: a dataset of an unknown layout stops the run here
    set_seed(cfg.seed)
    policy, reference, processor = build_policy(config)
    tokenizer = getattr(processor, "tokenizer", processor)
    collator = PreferenceCollator(processor, config.data.max_prompt_length, config.data.max_response_length)
    fingerprint = data_fingerprint(pairs, config)
    run = run_record(config, fingerprint, accelerator.num_processes)
    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
        _start_folder(output_dir, cfg.resume, log)
    accelerator.wait_for_everyone()
    batches = MethodBatches(collator, config.loss, cfg.seed)  # dense weights, corrupted images
    pairs = checked_pairs(pairs, batches, policy.config, config, fingerprint, accelerator, log)
    eval_rows = load_eval_rows(config)

    sampler = EpochShuffleSampler(len(pairs), cfg.seed)
    # the loader draws its workers' base seed from its own generator, not the global RNG: a resumed run
    # restores the global RNG (dropout's) from the checkpoint, and a new iterator must not move it
    loader = DataLoader(pairs, batch_size=cfg.batch_size, sampler=sampler, collate_fn=batches,
                        num_workers=cfg.num_workers, generator=torch.Generator().manual_seed(cfg.seed))
    steps_per_epoch = max(1, math.ceil(len(loader) / accelerator.num_processes / cfg.gradient_accumulation_steps))
    max_steps = cfg.max_steps or max(1, math.ceil(cfg.num_epochs * steps_per_epoch))
    trainable = [p for p in policy.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    scheduler = get_scheduler(cfg.lr_scheduler, optimizer, num_warmup_steps=int(cfg.warmup_ratio * max_steps),
                              num_training_steps=max_steps)
    # the scheduler is stepped here once per optimizer step; accelerate's wrapper would step it once per
    # process (N times too fast with N processes), so it is only registered for checkpointing
    policy, optimizer, loader = accelerator.prepare(policy, optimizer, loader)
    accelerator.register_for_checkpointing(scheduler)
    if reference is not None:
        reference = reference.to(accelerator.device)
    forward_path = _checked_forward_path(policy, reference, processor, pairs, config, accelerator.device, log)
    ref_logps = None
    if cfg.precompute_ref_logps and config.loss.needs_reference:
        ref_logps = precomputed_reference_logps(policy, reference, processor, pairs, collator, config,
                                                forward_path, accelerator, log)

    state = {"step": 0, "micro_batches": 0, "bco_delta": 0.0, "reward_count": 0, "nonfinite_skipped": 0}
    resumed = resume(accelerator, output_dir, run, cfg.resume_with_changes, log) if cfg.resume else None
    if resumed is not None:
        checkpoint, saved_state = resumed
        state.update(saved_state)
        log(f"resuming from {checkpoint} at step {state['step']}")
    if accelerator.is_main_process:
        save_config(config, str(output_dir / "config.yaml"))
    accelerator.init_trackers("vlmdpo", config={"beta": config.loss.beta, "lr": cfg.learning_rate})
    metrics_log = (MetricsLog(output_dir / "metrics.jsonl", state["step"] if resumed else None)
                   if accelerator.is_main_process else None)
    progress = tqdm(total=max_steps, initial=state["step"], desc=_progress_label(config), disable=not (
        cfg.progress and accelerator.is_main_process), dynamic_ncols=True)

    def save(step):
        save_checkpoint(accelerator, policy, processor, output_dir, step, state, cfg.save_total_limit, run)

    policy.train()
    sums: dict[str, float] = {}
    window_rows: list[int] = []  # the rows of the optimizer step being accumulated
    nonfinite_loss = torch.zeros((), device=accelerator.device)
    micro_per_epoch = len(loader)
    while state["step"] < max_steps:
        epoch, done = divmod(state["micro_batches"], micro_per_epoch)
        epoch_loader = accelerator.skip_first_batches(loader, done) if done else loader
        # accelerate's loader sets its sampler's epoch from its own counter, which restarts at 0 in a
        # resumed process: name the epoch on the loader itself
        epoch_loader.set_epoch(epoch)
        for batch in epoch_loader:
            window_rows += batch["index"]
            with accelerator.accumulate(policy):
                loss, metrics = dpo_step(policy, reference, batch, config.loss, pad_token_id=tokenizer.pad_token_id,
                                         forward_path=forward_path, bco_delta=state["bco_delta"],
                                         ref_logps=ref_logps)
                nonfinite_loss += ~torch.isfinite(loss.detach())
                accelerator.backward(loss)
                if accelerator.sync_gradients:
                    grad_norm = accelerator.clip_grad_norm_(
                        trainable, cfg.max_grad_norm if cfg.max_grad_norm > 0 else float("inf"))
                    problem = _nonfinite_problem(accelerator, nonfinite_loss, grad_norm)
                    if problem and cfg.on_nonfinite == "error":
                        _stop_on_nonfinite(accelerator, problem, state["step"] + 1, window_rows, output_dir)
                    if problem:
                        state["nonfinite_skipped"] += 1
                        log(f"warning: step {state['step'] + 1}: {problem}; the step is skipped "
                            "(train.on_nonfinite=skip)")
                    else:
                        optimizer.step()
                    step_learning_rate = scheduler.get_last_lr()[0]  # the rate this step used
                    with warnings.catch_warnings():  # a skipped step still advances the schedule
                        warnings.filterwarnings("ignore", "Detected call of `lr_scheduler.step()`")
                        scheduler.step()
                    optimizer.zero_grad()
                    nonfinite_loss.zero_()
                    window_rows = []
            state["micro_batches"] += 1
            if "rewards/chosen" in metrics:  # running mean of all rewards: BCO's shift (arXiv:2404.04656)
                mean_reward = float((metrics["rewards/chosen"] + metrics["rewards/rejected"]) / 2)
                if math.isfinite(mean_reward):
                    state["reward_count"] += 1
                    state["bco_delta"] += (mean_reward - state["bco_delta"]) / state["reward_count"]
            for name, value in metrics.items():
                sums[name] = sums.get(name, 0.0) + float(accelerator.reduce(value.detach(), "mean"))
            sums["_count"] = sums.get("_count", 0) + 1
            if not accelerator.sync_gradients:
                continue
            state["step"] += 1
            progress.update(1)
            if eval_rows is not None and (state["step"] % cfg.eval_steps == 0 or state["step"] == max_steps):
                if accelerator.is_main_process:  # the other processes wait at the barrier below
                    eval_record = evaluate(policy, reference, processor, eval_rows, config)
                    eval_record["step"] = state["step"]
                    accelerator.log(eval_record, step=state["step"])
                    metrics_log.write(eval_record)
                accelerator.wait_for_everyone()
            if state["step"] % cfg.logging_steps == 0 or state["step"] == max_steps:
                count = sums.pop("_count")
                record = {name: value / count for name, value in sums.items()}
                record.update(step=state["step"], epoch=state["micro_batches"] / micro_per_epoch,
                              learning_rate=step_learning_rate)
                if state["nonfinite_skipped"]:
                    record["nonfinite_skipped"] = state["nonfinite_skipped"]
                progress.set_postfix({k.split("/")[-1]: f"{record[k]:.3f}" for k in (
                    "loss", "rewards/margins", "rewards/accuracies") if record.get(k) is not None})
                accelerator.log(record, step=state["step"])
                if metrics_log:
                    metrics_log.write(record)
                sums = {}
            if cfg.save_steps and state["step"] % cfg.save_steps == 0 and state["step"] < max_steps:
                save(state["step"])
            if state["step"] >= max_steps:
                break
    progress.close()
    if metrics_log:
        metrics_log.close()
    accelerator.wait_for_everyone()
    weights = accelerator.get_state_dict(policy)  # every process: FSDP and ZeRO-3 gather their shards here
    if accelerator.is_main_process:
        accelerator.unwrap_model(policy).save_pretrained(output_dir, state_dict=weights)
        processor.save_pretrained(output_dir)
    save(state["step"])
    accelerator.end_training()
    return output_dir


def _start_folder(output_dir: Path, resuming: bool, log) -> None:
    """Clear what a killed save left; with ``train.resume=false`` also the earlier run's checkpoints."""
    for path in remove_partial_checkpoints(output_dir):
        log(f"removed {path}, an unfinished checkpoint of a run that was stopped while saving")
    if not resuming:
        old = step_checkpoints(output_dir)
        if old:
            log(f"train.resume=false: starting over in {output_dir}; removing its {len(old)} earlier checkpoint(s)")
        for path in old:
            shutil.rmtree(path)


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
