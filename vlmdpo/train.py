"""The DPO training loop, on ``accelerate``.

rows -> PreferenceCollator -> policy forward -> response log-probs -> reference log-probs (adapter disabled)
-> loss registry -> backward. ``accelerate`` owns devices, mixed precision, accumulation and launching
(``accelerate launch -m vlmdpo.cli train ...`` for DDP, FSDP or DeepSpeed).
"""

from __future__ import annotations

import contextlib
import json
import math
from pathlib import Path

import torch
from accelerate.utils import send_to_device
from torch.utils.data import DataLoader, Sampler
from tqdm.auto import tqdm

from vlmdpo.checkpoints import latest_checkpoint, read_state, save_checkpoint
from vlmdpo.collator import PreferenceCollator
from vlmdpo.config import Config, save_config
from vlmdpo.data import PreferenceDataset, load_preference_dataset
from vlmdpo.fast_logps import choose_forward_path
from vlmdpo.modeling import (
    apply_lora, frozen_copy, load_model_and_processor, reference_mode, resolve_model_path,
)
from vlmdpo.reference_cache import (
    ReferenceLogps, cache_key, compute_reference_logps, default_cache_dir, load_or_compute, processor_fingerprint,
    weights_fingerprint,
)
from vlmdpo.step import dpo_step, logps_function


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


def build_dataset(config: Config, collator: PreferenceCollator, log=print) -> PreferenceDataset:
    """Load the training pairs; drop over-long prompts only if the user asked to."""
    data_cfg = config.data
    if not data_cfg.train:
        raise ValueError("data.train is empty: give a dataset path or hub name, e.g. data.train=pairs.jsonl")
    dataset = load_preference_dataset(data_cfg.train, split=data_cfg.train_split)
    if data_cfg.max_rows is not None:
        dataset = dataset.select(range(min(data_cfg.max_rows, len(dataset))))
    image_root = data_cfg.image_root
    if image_root is None and Path(data_cfg.train).is_file():
        image_root = str(Path(data_cfg.train).parent)
    responses = config.loss.responses
    pairs = PreferenceDataset(dataset, image_root=image_root, responses=responses)
    if data_cfg.skip_long_prompts:
        keep = [i for i in range(len(pairs)) if collator.prompt_length(pairs[i]) <= data_cfg.max_prompt_length]
        if len(keep) < len(pairs):
            log(f"warning: skipped {len(pairs) - len(keep)} of {len(pairs)} rows whose prompt is longer than "
                f"max_prompt_length={data_cfg.max_prompt_length}")
            pairs = PreferenceDataset(dataset.select(keep), image_root=image_root, responses=responses)
    return pairs


def load_eval_rows(config: Config) -> list[dict] | None:
    """Held-out pairs for the in-training evaluation, or ``None`` when it is off."""
    if not (config.data.eval and config.train.eval_steps):
        return None
    dataset = load_preference_dataset(config.data.eval, split=config.data.eval_split)
    if config.data.eval_max_rows is not None:
        dataset = dataset.select(range(min(config.data.eval_max_rows, len(dataset))))
    pairs = PreferenceDataset(dataset)
    rows = [pairs[i] for i in range(len(pairs))]
    if "objects" in dataset.column_names:
        for row, objects in zip(rows, dataset["objects"]):
            row["objects"] = objects
    return rows


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


def train(config: Config) -> Path:
    """Run DPO as configured; return the output folder (adapter + processor + metrics.jsonl).

    The run is seeded by ``train.seed`` alone; the caller's global RNG state is the same afterwards."""
    with _callers_rng_kept():
        return _train(config)


def _train(config: Config) -> Path:
    from accelerate import Accelerator
    from accelerate.utils import set_seed
    from transformers import get_scheduler

    cfg = config.train
    output_dir = Path(cfg.output_dir)
    accelerator = Accelerator(gradient_accumulation_steps=cfg.gradient_accumulation_steps,
                              mixed_precision=_mixed_precision(cfg.mixed_precision),
                              log_with=cfg.report_to or None, project_dir=str(output_dir))
    log = tqdm.write if accelerator.is_main_process else (lambda *_: None)
    set_seed(cfg.seed)
    policy, reference, processor = build_policy(config)
    tokenizer = getattr(processor, "tokenizer", processor)
    collator = PreferenceCollator(processor, config.data.max_prompt_length, config.data.max_response_length)
    pairs = build_dataset(config, collator, log)
    eval_rows = load_eval_rows(config)
    sampler = EpochShuffleSampler(len(pairs), cfg.seed)
    loader = DataLoader(pairs, batch_size=cfg.batch_size, sampler=sampler, collate_fn=collator,
                        num_workers=cfg.num_workers)
    steps_per_epoch = max(1, math.ceil(len(loader) / accelerator.num_processes / cfg.gradient_accumulation_steps))
    max_steps = cfg.max_steps or max(1, math.ceil(cfg.num_epochs * steps_per_epoch))
    trainable = [p for p in policy.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    scheduler = get_scheduler(cfg.lr_scheduler, optimizer, num_warmup_steps=int(cfg.warmup_ratio * max_steps),
                              num_training_steps=max_steps)
    policy, optimizer, loader, scheduler = accelerator.prepare(policy, optimizer, loader, scheduler)
    if reference is not None:
        reference = reference.to(accelerator.device)
    probe = None if cfg.forward_path == "plain" else send_to_device(  # two pairs to check the fast path on
        collator([pairs[i] for i in range(min(2, len(pairs)))]), accelerator.device)
    forward_path = choose_forward_path(cfg.forward_path, [policy] + ([reference] if reference is not None else []),
                                       probe, tokenizer.pad_token_id, log)
    ref_logps = None
    if cfg.precompute_ref_logps and config.loss.needs_reference:
        ref_logps = precomputed_reference_logps(policy, reference, processor, pairs, collator, config,
                                                forward_path, accelerator, log)

    state = {"step": 0, "micro_batches": 0, "bco_delta": 0.0, "reward_count": 0}
    checkpoint = latest_checkpoint(output_dir) if cfg.resume else None
    if checkpoint is not None:
        accelerator.load_state(str(checkpoint))
        state = read_state(checkpoint)
        log(f"resuming from {checkpoint} at step {state['step']}")
    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
        save_config(config, str(output_dir / "config.yaml"))
    accelerator.init_trackers("vlmdpo", config={"beta": config.loss.beta, "lr": cfg.learning_rate})
    metrics_file = open(output_dir / "metrics.jsonl", "a") if accelerator.is_main_process else None
    progress = tqdm(total=max_steps, initial=state["step"], desc=_progress_label(config), disable=not (
        cfg.progress and accelerator.is_main_process), dynamic_ncols=True)

    policy.train()
    sums: dict[str, float] = {}
    micro_per_epoch = len(loader)
    while state["step"] < max_steps:
        epoch, done = divmod(state["micro_batches"], micro_per_epoch)
        epoch_loader = accelerator.skip_first_batches(loader, done) if done else loader
        # accelerate's loader sets its sampler's epoch from its own counter, which restarts at 0 in a
        # resumed process: name the epoch on the loader itself
        epoch_loader.set_epoch(epoch)
        for batch in epoch_loader:
            with accelerator.accumulate(policy):
                loss, metrics = dpo_step(policy, reference, batch, config.loss, pad_token_id=tokenizer.pad_token_id,
                                         forward_path=forward_path, bco_delta=state["bco_delta"],
                                         ref_logps=ref_logps)
                accelerator.backward(loss)
                if accelerator.sync_gradients and cfg.max_grad_norm > 0:
                    accelerator.clip_grad_norm_(trainable, cfg.max_grad_norm)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad()
            state["micro_batches"] += 1
            if "rewards/chosen" in metrics:  # running mean of all rewards: BCO's shift (arXiv:2404.04656)
                mean_reward = float((metrics["rewards/chosen"] + metrics["rewards/rejected"]) / 2)
                state["reward_count"] += 1
                state["bco_delta"] += (mean_reward - state["bco_delta"]) / state["reward_count"]
            for name, value in metrics.items():
                sums[name] = sums.get(name, 0.0) + float(accelerator.reduce(value.detach(), "mean"))
            sums["_count"] = sums.get("_count", 0) + 1
            if not accelerator.sync_gradients:
                continue
            state["step"] += 1
            progress.update(1)
            is_eval_step = eval_rows is not None and (state["step"] % cfg.eval_steps == 0
                                                      or state["step"] == max_steps)
            if is_eval_step:  # main process only; the others wait at the barrier below
                if accelerator.is_main_process:
                    eval_record = evaluate(policy, reference, processor, eval_rows, config)
                    eval_record["step"] = state["step"]
                    accelerator.log(eval_record, step=state["step"])
                    if metrics_file:
                        metrics_file.write(json.dumps(eval_record) + "\n")
                accelerator.wait_for_everyone()
            if state["step"] % cfg.logging_steps == 0 or state["step"] == max_steps:
                count = sums.pop("_count")
                record = {name: value / count for name, value in sums.items()}
                record.update(step=state["step"], epoch=state["micro_batches"] / micro_per_epoch,
                              learning_rate=scheduler.get_last_lr()[0])
                progress.set_postfix({k.split("/")[-1]: f"{record[k]:.3f}" for k in ("loss", "rewards/accuracies")
                                      if k in record})
                accelerator.log(record, step=state["step"])
                if metrics_file:
                    metrics_file.write(json.dumps(record) + "\n")
                    metrics_file.flush()
                sums = {}
            if cfg.save_steps and state["step"] % cfg.save_steps == 0 and state["step"] < max_steps:
                save_checkpoint(accelerator, policy, processor, output_dir, state["step"], state,
                                cfg.save_total_limit)
            if state["step"] >= max_steps:
                break
    progress.close()
    if metrics_file:
        metrics_file.close()
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        accelerator.unwrap_model(policy).save_pretrained(output_dir)
        processor.save_pretrained(output_dir)
    save_checkpoint(accelerator, policy, processor, output_dir, state["step"], state, cfg.save_total_limit)
    accelerator.end_training()
    return output_dir
