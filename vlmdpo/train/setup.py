"""Everything a training run builds before step 1, in the order that keeps runs reproducible: the rows (checked
before the model loads), the policy and its reference, the methods and their collator, the loader, optimizer and
schedule on ``accelerate``, the forward path (probed), precomputed reference log-probs, and the state of a
checkpoint to resume from."""

from __future__ import annotations

import hashlib
import math
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate.utils import DistributedType, send_to_device
from torch.utils.data import DataLoader, Sampler
from tqdm.auto import tqdm

from vlmdpo.config import Config, save_config
from vlmdpo.data.collator import PreferenceCollator
from vlmdpo.data.rows import PreferenceDataset
from vlmdpo.eval.metrics_log import MetricsLog
from vlmdpo.forward.fast import choose_forward_path
from vlmdpo.forward.probes import causality_problem
from vlmdpo.methods.base import Method
from vlmdpo.methods.collate import MethodCollator
from vlmdpo.methods.registry import build_methods
from vlmdpo.model.load import load_model_and_processor, resolve_model_path
from vlmdpo.model.lora import apply_lora, freeze_parts, frozen_copy, reference_mode
from vlmdpo.model.routers import turn_on_load_balancing
from vlmdpo.train.checkpoints import remove_partial_checkpoints, resume, step_checkpoints
from vlmdpo.train.optimizer import build_optimizer
from vlmdpo.train.reference_cache import (
    ReferenceLogps, cache_key, compute_reference_logps, default_cache_dir, load_or_compute, processor_fingerprint,
    weights_fingerprint,
)
from vlmdpo.train.run_data import check_paths, checked_pairs, data_fingerprint, held_out_pairs, load_pairs, run_record
from vlmdpo.train.sharding import (
    block_classes, shard_policy, shard_reference, sharding_active, vision_every_forward_under_deepspeed,
)
from vlmdpo.train.step import logps_function

PROBE_RESPONSE_TOKENS = 32
"""Response tokens per row of the two-pair probe batch that checks causality and the fast path before step 1."""


@dataclass
class Run:
    """What the training loop works with, built by :func:`set_up`."""

    config: Config
    accelerator: object
    log: Callable[[str], None]
    policy: torch.nn.Module
    reference: torch.nn.Module | None
    processor: object
    methods: list[Method]
    loader: DataLoader
    optimizer: torch.optim.Optimizer
    scheduler: object
    trainable: list[torch.nn.Parameter]
    forward_path: str
    ref_logps: ReferenceLogps | None
    eval_rows: list[dict] | None
    max_steps: int
    record: dict
    """What a checkpoint records of the run (data fingerprint and settings), checked on resume."""
    state: dict
    """The loop's counters (``step``, ``micro_batches``, ``nonfinite_skipped``), saved with each checkpoint."""
    metrics_log: MetricsLog | None
    progress: tqdm

    @property
    def output_dir(self) -> Path:
        return Path(self.config.train.output_dir)

    @property
    def pad_token_id(self) -> int:
        return getattr(self.processor, "tokenizer", self.processor).pad_token_id


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


def mixed_precision(choice: str) -> str:
    """``train.mixed_precision`` resolved: ``auto`` is bf16 on a GPU that supports it, else none."""
    if choice != "auto":
        return choice
    return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"


def build_policy(config: Config):
    """Load the model and processor; return ``(policy, reference_or_None, processor)``."""
    model_cfg = config.model
    model, processor = load_model_and_processor(
        resolve_model_path(model_cfg.name_or_path), model_cfg.dtype, model_cfg.attn_implementation)
    if model_cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    if model_cfg.finetune == "full":
        if model_cfg.router_aux_loss_coef is not None:
            turn_on_load_balancing(model, model_cfg.router_aux_loss_coef)
        freeze_parts(model, tuple(model_cfg.frozen_parts))
        return model, frozen_copy(model) if config.loss.needs_reference else None, processor
    model.requires_grad_(False)
    policy = apply_lora(model, r=model_cfg.lora_r, alpha=model_cfg.lora_alpha, dropout=model_cfg.lora_dropout,
                        parts=tuple(model_cfg.lora_parts), target_modules=model_cfg.lora_target_modules)
    return policy, None, processor


def _accelerator(config: Config):
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs

    cfg = config.train
    # parts a batch may leave unused (the vision tower on text-only rows) must not stall DDP's gradient sync
    only_language = config.model.finetune == "lora" and not config.model.lora_target_modules and set(
        config.model.lora_parts) == {"language"}
    return Accelerator(gradient_accumulation_steps=cfg.gradient_accumulation_steps,
                       mixed_precision=mixed_precision(cfg.mixed_precision),
                       log_with=cfg.report_to or None, project_dir=str(Path(cfg.output_dir)),
                       kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=not only_language)])


def set_up(config: Config) -> Run:
    """Build the run, resuming the newest checkpoint of ``train.output_dir`` when ``train.resume`` allows."""
    from accelerate.utils import set_seed
    from transformers import get_scheduler

    check_paths(config)
    cfg = config.train
    output_dir = Path(cfg.output_dir)
    accelerator = _accelerator(config)
    log = tqdm.write if accelerator.is_main_process else (lambda *_: None)
    methods = build_methods(config.loss, cfg.seed)
    _check_reference_cache(config, methods)
    pairs = load_pairs(config, log)  # before the model: a dataset of an unknown layout stops the run here
    set_seed(cfg.seed)
    policy, reference, processor = build_policy(config)
    collator = PreferenceCollator(processor, config.data.max_prompt_length, config.data.max_response_length,
                                  special_tokens_in_text=config.data.special_tokens_in_text)
    fingerprint = data_fingerprint(pairs, config)
    record = run_record(config, fingerprint, accelerator.num_processes)
    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
        _start_folder(output_dir, cfg.resume, log)
    accelerator.wait_for_everyone()
    # before the optimizer gathers the trainable weights: a method may add modules (TR-DPO's reference adapter)
    checkpointed = [item for method in methods for item in method.prepare_models(policy, reference)]
    sharded = sharding_active(cfg.sharding)
    deepspeed = accelerator.distributed_type == DistributedType.DEEPSPEED and accelerator.num_processes > 1
    # one blank image's inputs, for forwards without an image when every process must run the vision tower
    blank = collator.blank_image_inputs() if (sharded or deepspeed) and getattr(
        processor, "image_processor", None) is not None else None
    if sharded:  # before the optimizer: its parameters become shards
        _check_sharding(config)
        if blank is not None and collator.pads_images_per_row():
            raise ValueError("train.sharding=fsdp2 does not yet run a model whose processor pads images per row "
                             "(Mllama): its batches run one forward per image count, which differs between "
                             "processes; set train.sharding=none")
        shard_policy(policy, blank)
        if reference is not None:  # full fine-tuning's frozen copy (_check_sharding refuses refreshing it)
            shard_reference(reference, blank)
        log(f"sharding: FSDP2 over {accelerator.num_processes} processes, per block of {sorted(block_classes(policy))}"
            + (", the frozen reference too" if reference is not None else ""))
    elif cfg.sharding != "none":
        log(f"sharding: none (train.sharding={cfg.sharding} needs more than one process)")
    if deepspeed and not sharded and vision_every_forward_under_deepspeed(
            [m for m in (policy, reference) if m is not None], blank, blank is not None and collator.pads_images_per_row()):
        log("DeepSpeed: every forward runs the vision tower (a blank image on text-only micro-batches)")
    optimizer = build_optimizer(policy, learning_rate=cfg.learning_rate, weight_decay=cfg.weight_decay,
                                part_learning_rates=cfg.part_learning_rates)
    trainable = [p for group in optimizer.param_groups for p in group["params"]]
    collate = MethodCollator(collator, methods)
    pairs = checked_pairs(pairs, collate, policy.config, config, fingerprint, accelerator, log)
    eval_rows = held_out_pairs(config)

    # the loader draws its workers' base seed from its own generator, not the global RNG: a resumed run
    # restores the global RNG (dropout's) from the checkpoint, and a new iterator must not move it
    loader = DataLoader(pairs, batch_size=cfg.batch_size, sampler=EpochShuffleSampler(len(pairs), cfg.seed),
                        collate_fn=collate, num_workers=cfg.num_workers,
                        generator=torch.Generator().manual_seed(cfg.seed))
    steps_per_epoch = max(1, math.ceil(len(loader) / accelerator.num_processes / cfg.gradient_accumulation_steps))
    max_steps = cfg.max_steps or max(1, math.ceil(cfg.num_epochs * steps_per_epoch))
    scheduler = get_scheduler(cfg.lr_scheduler, optimizer, num_warmup_steps=int(cfg.warmup_ratio * max_steps),
                              num_training_steps=max_steps)
    # the scheduler is stepped by the loop once per optimizer step; accelerate's wrapper would step it once per
    # process (N times too fast with N processes), so it is only registered for checkpointing
    if sharded:
        # the sharded policy reduces its own gradients (DDP around it would reduce them again), and its optimizer
        # state is sharded too: vlmdpo checkpoints both itself (torch.distributed.checkpoint), so accelerate,
        # which would save the optimizer from the main process alone, holds neither
        if accelerator.scaler is not None:
            raise ValueError(f"train.sharding={cfg.sharding} does not run with fp16 mixed precision (its loss "
                             "scaler steps only an optimizer accelerate holds, and a sharded run keeps its own): "
                             "set train.mixed_precision=bf16 or no")
        loader = accelerator.prepare(loader)
    else:
        policy, optimizer, loader = accelerator.prepare(policy, optimizer, loader)
    accelerator.register_for_checkpointing(scheduler, *checkpointed)
    if reference is not None and not sharded:  # fully_shard placed a sharded one
        reference = reference.to(accelerator.device)
    forward_path = _checked_forward_path(policy, reference, processor, pairs, config, accelerator.device, log)
    ref_logps = None
    if cfg.precompute_ref_logps and config.loss.needs_reference:
        ref_logps = precomputed_reference_logps(policy, reference, processor, pairs, collator, config,
                                                forward_path, accelerator, log)

    state = {"step": 0, "micro_batches": 0, "nonfinite_skipped": 0}
    resumed = resume(accelerator, output_dir, record, cfg.resume_with_changes, log,
                     sharded=(policy, optimizer) if sharded else None) if cfg.resume else None
    if resumed is not None:
        checkpoint, saved_state = resumed
        state.update({key: saved_state.get(key, 0) for key in state})
        for method in methods:
            method.load_state_dict(saved_state)
        log(f"resuming from {checkpoint} at step {state['step']}")
    if accelerator.is_main_process:
        save_config(config, str(output_dir / "config.yaml"))
    accelerator.init_trackers("vlmdpo", config={"beta": config.loss.beta, "lr": cfg.learning_rate})
    metrics_log = (MetricsLog(output_dir / "metrics.jsonl", state["step"] if resumed else None)
                   if accelerator.is_main_process else None)
    label = "SFT" if config.loss.responses == ("chosen",) else f"DPO ({config.loss.losses})"
    progress = tqdm(total=max_steps, initial=state["step"], desc=label, dynamic_ncols=True,
                    disable=not (cfg.progress and accelerator.is_main_process))
    return Run(config, accelerator, log, policy, reference, processor, methods, loader, optimizer, scheduler,
               trainable, forward_path, ref_logps, eval_rows, max_steps, record, state, metrics_log, progress)


def _check_reference_cache(config: Config, methods: list[Method]) -> None:
    """Refuses precomputed reference log-probs with a method that moves the reference during training."""
    moving = [method.name for method in methods if method.moves_reference]
    if moving and config.train.precompute_ref_logps:
        raise ValueError(f"train.precompute_ref_logps computes the reference log-probs once, and {moving} move the "
                         "reference during training (loss.sync_ref_model), which would leave them stale: set "
                         "train.precompute_ref_logps=false or loss.sync_ref_model=false")


def _check_sharding(config: Config) -> None:
    """Refuses what a sharded run cannot do yet: work one process does while the others wait (the held-out
    evaluation, precomputing reference log-probs) would be a collective the others skip, and ``accelerate`` would
    checkpoint a refreshed frozen reference (TR-DPO under full fine-tuning) from the main process's shards alone."""
    moving_copy = config.loss.sync_ref_model and config.model.finetune == "full"
    wanted = [name for name, on in (("data.eval", config.data.eval),
                                    ("train.precompute_ref_logps", config.train.precompute_ref_logps),
                                    ("loss.sync_ref_model with model.finetune=full", moving_copy)) if on]
    if wanted:
        raise ValueError(f"train.sharding={config.train.sharding} does not yet run with {', '.join(wanted)}: unset "
                         "them, or set train.sharding=none")


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


def _checked_forward_path(policy, reference, processor, pairs: PreferenceDataset, config: Config, device,
                          log) -> str:
    """The forward path for the run, after checking the model on two pairs: responses scored causally
    (``causality_problem``, raised as an error), and the fast path against the plain one (``choose_forward_path``).
    The probe batch lives only here, not through training."""
    pad_token_id = getattr(processor, "tokenizer", processor).pad_token_id
    # responses cut short: the probes' plain-path pass keeps full-vocabulary logits of every response token,
    # which for long responses and a large vocabulary would be the run's peak memory
    probe_length = min(PROBE_RESPONSE_TOKENS, config.data.max_response_length or PROBE_RESPONSE_TOKENS)
    probe_collator = PreferenceCollator(processor, config.data.max_prompt_length, probe_length,
                                        special_tokens_in_text=config.data.special_tokens_in_text)
    probe = send_to_device(probe_collator([pairs[i] for i in range(min(2, len(pairs)))]), device)
    problem = causality_problem(policy, probe, pad_token_id)
    if problem is not None:
        raise ValueError(f"{config.model.name_or_path}: {problem}")
    models = [policy] + ([reference] if reference is not None else [])
    return choose_forward_path(config.train.forward_path, models, probe, pad_token_id, log)


def precomputed_reference_logps(policy, reference, processor, pairs: PreferenceDataset, collator, config: Config,
                                forward_path: str, accelerator, log=print) -> ReferenceLogps:
    """Reference log-probs of every training pair, from the cache or computed now (main process) in order."""
    settings = {"max_prompt_length": config.data.max_prompt_length, "dtype": config.model.dtype,
                "max_response_length": config.data.max_response_length, "responses": pairs.responses,
                "image_root": pairs.image_root,
                "rows": None if pairs.indices is None else hashlib.sha256(str(pairs.indices).encode()).hexdigest(),
                "mixed_precision": mixed_precision(config.train.mixed_precision)}
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
