"""Typed run configuration: dataclasses, a YAML file, and ``key=value`` overrides (via OmegaConf).

A YAML file mirrors the dataclasses::

    model: {name_or_path: Qwen/Qwen2-VL-2B-Instruct, dtype: bfloat16}
    data: {train: openbmb/RLAIF-V-Dataset}
    train: {output_dir: runs/qwen2vl-dpo, learning_rate: 5e-6}
    loss: {losses: "sigmoid:0.8+bco_pair:0.2+sft:1.0", beta: 0.1}

and any field can be overridden on the command line as ``train.learning_rate=1e-5``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from omegaconf import OmegaConf

from vlmdpo.methods.settings import LossConfig


@dataclass
class ModelConfig:
    name_or_path: str = "tiny:llava"
    """Hub name or local folder of an ``AutoModelForImageTextToText`` model; ``tiny:<family>`` builds a
    random-weight tiny model of a real ``transformers`` class (``vlmdpo.tiny``; ``vlmdpo tiny-model --help`` lists
    the families: llava, qwen2_vl, gemma3, ...) for offline runs."""
    dtype: str = "float32"
    """Weights dtype: float32, bfloat16 or float16."""
    finetune: str = "lora"
    """``lora`` (reference = adapter disabled) or ``full`` (reference = frozen copy)."""
    lora_r: int = 16
    """LoRA rank."""
    lora_alpha: int = 32
    """LoRA scaling numerator (scale = alpha / r)."""
    lora_dropout: float = 0.0
    """Dropout on the LoRA branch."""
    lora_parts: list[str] = field(default_factory=lambda: ["language"])
    """Parts whose linear layers get LoRA: any of language, projector, vision, and experts (off by default: a
    mixture-of-experts model's routed experts, which ``language`` leaves out; its attention, dense MLPs and shared
    experts are ``language``). Fused experts take LoRA through peft's ``target_parameters``, without dropout
    (``lora_dropout`` must be 0). A router is never wrapped."""
    lora_target_modules: list[str] | None = None
    """Explicit module names for LoRA (overrides ``lora_parts``)."""
    frozen_parts: list[str] = field(default_factory=list)
    """``finetune=full`` only: parts whose weights stay fixed, any of language, projector, vision (``[vision]``
    is LLaVA's recipe: projector and language model trained on a pretrained vision tower)."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass to save memory."""
    attn_implementation: str | None = None
    """Passed to ``from_pretrained`` (e.g. sdpa, flash_attention_2)."""
    router_aux_loss_coef: float | None = None
    """Mixture-of-experts models under ``finetune=full``: the weight of the routers' load-balancing term in the
    training loss (the model's own Switch Transformer loss, logged as ``loss/router_load_balancing``). Setting it
    turns the model's router logits on; null keeps the checkpoint's settings (off on the hub checkpoints)."""

    def __post_init__(self):
        if self.router_aux_loss_coef is not None:
            if self.router_aux_loss_coef < 0:
                raise ValueError(f"model.router_aux_loss_coef must be >= 0, got {self.router_aux_loss_coef}")
            if self.finetune != "full":
                raise ValueError("model.router_aux_loss_coef applies when the routers train (model.finetune=full); "
                                 "LoRA never wraps a router, so the term would have nothing to train: unset it")
        if self.finetune not in ("lora", "full"):
            raise ValueError(f"model.finetune must be 'lora' or 'full', got {self.finetune!r}")
        if self.dtype not in ("float32", "bfloat16", "float16"):
            raise ValueError(f"model.dtype must be float32, bfloat16 or float16, got {self.dtype!r}")
        bad = set(self.lora_parts) - {"language", "projector", "vision", "experts"}
        if bad:
            raise ValueError(f"model.lora_parts has unknown parts {sorted(bad)}; use language/projector/vision/experts")
        bad = set(self.frozen_parts) - {"language", "projector", "vision"}
        if bad:
            raise ValueError(f"model.frozen_parts has unknown parts {sorted(bad)}; use language/projector/vision")
        if self.frozen_parts and self.finetune != "full":
            raise ValueError("model.frozen_parts applies to model.finetune=full (LoRA already trains only the "
                             "parts in model.lora_parts); drop it or set model.finetune=full")


@dataclass
class DataConfig:
    train: str = ""
    """Training pairs: a save_to_disk folder, json/jsonl/parquet file, imagefolder or hub dataset name."""
    train_split: str = "train"
    """Split of ``train`` to use."""
    format: str = "auto"
    """Layout of the rows: ``auto`` (recognised by the columns, and logged), ``trl`` (``images``, ``prompt``,
    ``chosen``, ``rejected``), a reader's name (``vlmdpo data formats`` lists them: rlaif_v, rlhf_v, vlfeedback,
    llamafactory, swift, ...) or ``package.module:NAME``."""
    format_options: dict[str, Any] = field(default_factory=dict)
    """Options of the reader, e.g. ``{aspect: Helpfulness, margin: 2}`` for vlfeedback."""
    columns: dict[str, str] = field(default_factory=dict)
    """Columns renamed before the format is chosen, source name -> expected name, e.g. ``{question: prompt}``."""
    image_root: str | None = None
    """Folder that relative image paths in the data are resolved against."""
    max_rows: int | None = None
    """Use only the first N rows (quick experiments)."""
    max_prompt_length: int | None = None
    """Longest prompt in tokens, image tokens included; longer prompts are an error unless skipped."""
    max_response_length: int | None = 256
    """Responses are truncated to this many tokens."""
    skip_long_prompts: bool = False
    """Skip rows whose prompt exceeds ``max_prompt_length`` (counted in the log, listed in
    ``skipped_rows.jsonl``), whatever ``on_bad_row`` says."""
    validate: str = "full"
    """Check rows before training as ``vlmdpo validate`` does (images decoded, chat template applied, token counts
    against ``max_prompt_length`` and the model's position limit): ``full`` (every row), ``sample``
    (``validate_sample`` rows drawn with ``train.seed``) or ``off`` (rows are checked only when read)."""
    validate_sample: int = 1000
    """Rows checked by ``validate=sample``."""
    validate_workers: int = 0
    """Processes for the check (0: one per CPU core, at most 8, for 512 rows or more; else 1)."""
    on_bad_row: str = "error"
    """``error``: the first bad row stops the run before training, naming the row, field, problem and fix.
    ``skip``: bad rows are left out, counted in the log and listed in ``output_dir/skipped_rows.jsonl``
    (needs ``validate=full``, so every row has been checked)."""
    allow_outside_images: bool = False
    """Open image paths that lead outside the dataset's folder (``../x.png``, absolute paths)."""
    max_image_pixels: int | None = 40_000_000
    """Refuse images with more pixels than this, checked before they are decoded (null: no limit)."""
    video_frames: int | None = None
    """Frames given for each video in a ``videos`` column, evenly spaced from the first to the last (a shorter
    video repeats frames); null: every frame its folder, file or list holds. Each frame costs image tokens
    (Qwen2-VL merges two frames into one grid step; LLaVA-OneVision pools each frame's patches), and processors
    that stack a batch's videos (LLaVA-OneVision, LLaVA-NeXT-Video) need one length: set it for those."""
    video_fps: float | None = None
    """Frame rate of videos given as frame folders or frame lists (LLaVA-Hound's frames: 2); a video file carries its
    own. Qwen3-VL writes each frame pair's time into the prompt from it; unset, ``transformers`` assumes 24 fps."""
    special_tokens_in_text: str = "error"
    """A special token written as text in a row (``</s>``, ``<|im_end|>``, ``<end_of_turn>``, an image token; the
    tokenizer's and processor's own, whatever the family): ``error`` names the row, field and token in the
    up-front check (a bad row, as ``on_bad_row`` says); ``literal`` trains on it in a response as plain text (a
    prompt's stays an error). Either way the model never learns a control token in the middle of an answer."""
    eval: str = ""
    """Held-out pairs evaluated every ``train.eval_steps`` (same formats as ``train``); empty for none."""
    eval_split: str = "test"
    """Split of ``eval`` to use."""
    eval_max_rows: int | None = 64
    """Evaluate on at most this many held-out pairs."""

    def __post_init__(self):
        if self.skip_long_prompts and self.max_prompt_length is None:
            raise ValueError("data.skip_long_prompts needs data.max_prompt_length")
        if self.validate not in ("full", "sample", "off"):
            raise ValueError(f"data.validate must be full, sample or off, got {self.validate!r}")
        if self.on_bad_row not in ("error", "skip"):
            raise ValueError(f"data.on_bad_row must be error or skip, got {self.on_bad_row!r}")
        if self.special_tokens_in_text not in ("error", "literal"):
            raise ValueError("data.special_tokens_in_text must be error or literal, got "
                             f"{self.special_tokens_in_text!r}")
        if self.skip_long_prompts and self.validate != "full":
            raise ValueError("data.skip_long_prompts needs data.validate=full (over-long rows are found by the check)")
        if self.on_bad_row == "skip" and self.validate != "full":
            raise ValueError("data.on_bad_row=skip needs data.validate=full: rows are skipped only after every "
                             "row has been checked, so none is dropped unseen mid-run")
        for name in ("max_rows", "max_prompt_length", "max_response_length", "max_image_pixels", "video_frames",
                     "video_fps"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"data.{name} must be >= 1 (or null), got {value}")
        if self.validate_sample < 1 or self.validate_workers < 0:
            raise ValueError("data.validate_sample must be >= 1 and data.validate_workers >= 0")

@dataclass
class TrainConfig:
    output_dir: str = "runs/vlmdpo"
    """Where the adapter, processor, checkpoints and metrics.jsonl are written."""
    seed: int = 0
    """Seed for weights of new modules, shuffling and dropout."""
    batch_size: int = 4
    """Pairs per device per micro-batch."""
    gradient_accumulation_steps: int = 1
    """Micro-batches per optimizer step."""
    learning_rate: float = 5e-5
    """Peak learning rate."""
    part_learning_rates: dict[str, float] = field(default_factory=dict)
    """Peak learning rate per part of the VLM (``language``, ``projector``, ``vision``), e.g.
    ``train.part_learning_rates.vision=1e-5``; the trainable weights of parts not named (and those outside the
    three, such as the LM head) use ``learning_rate``. The schedule scales every rate alike."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    num_epochs: float = 1.0
    """Passes over the data (ignored when ``max_steps`` is set)."""
    max_steps: int | None = None
    """Optimizer steps to run (null: ``num_epochs`` passes over the data)."""
    warmup_ratio: float = 0.1
    """Fraction of steps with a linear warmup."""
    lr_scheduler: str = "cosine"
    """Any ``transformers.get_scheduler`` name."""
    max_grad_norm: float = 1.0
    """Gradient clipping norm (0 disables)."""
    mixed_precision: str = "auto"
    """auto (bf16 on a GPU that supports it, else none), no, bf16 or fp16."""
    logging_steps: int = 1
    """Write metrics every N optimizer steps."""
    save_steps: int = 0
    """Save a resumable checkpoint every N steps (0: only the final save)."""
    save_total_limit: int = 2
    """Keep at most this many checkpoints."""
    resume: bool = True
    """Continue from the newest checkpoint in ``output_dir`` that loads (damaged ones are skipped, and named).
    A checkpoint of different data or training settings is refused unless ``resume_with_changes``."""
    resume_with_changes: bool = False
    """Resume even if the data or the training settings differ from the checkpoint's (the log lists them)."""
    on_nonfinite: str = "error"
    """A non-finite loss or gradient: ``error`` stops the run naming the step, the batch's rows and the last
    good checkpoint; ``skip`` skips that optimizer step (counted as ``nonfinite_skipped`` in the metrics)."""
    eval_steps: int = 0
    """Evaluate on ``data.eval`` every N steps and at the end (0: never)."""
    eval_vocabulary: str | None = None
    """With an object vocabulary (coco, a json file or ``package.module:NAME``) the evaluation also generates captions and
    scores CHAIR; the held-out rows then need an ``objects`` column."""
    eval_max_new_tokens: int = 32
    """Caption length limit of the in-training evaluation."""
    report_to: list[str] = field(default_factory=list)
    """``accelerate`` trackers (tensorboard, wandb, ...) to log to, besides metrics.jsonl."""
    num_workers: int = 0
    """DataLoader worker processes."""
    progress: bool = True
    """Show a progress bar."""
    forward_path: str = "auto"
    """How response log-probs are computed. ``fast``: each pair packed as ``[prompt; chosen; rejected]``, so the
    image and prompt run once per pair, image features are shared by policy and reference, and the LM head runs
    only at response positions (``vlmdpo.forward.fast``). ``plain``: ``[prompt; response]`` run twice per pair
    (``vlmdpo.forward.logps``, the reference implementation). ``auto``: fast when the model supports it and a probe batch
    agrees with plain, else plain; the log says which and why."""
    sharding: str = "none"
    """``fsdp2``: shard the policy with FSDP2 (``fully_shard`` on each decoder and vision-encoder block, then the
    model; ``vlmdpo.train.sharding``) when more than one process runs; the vision tower then runs on every
    micro-batch, the forward path is plain, and checkpoints hold each process's shards. Not yet with
    ``data.eval`` or ``train.precompute_ref_logps``. ``none``: the model is whole on every process (DDP)."""
    precompute_ref_logps: bool = False
    """Compute the reference log-probs of every training pair once before training, in inference mode, and read
    them from a cache instead of running the reference in every step (``vlmdpo.train.reference_cache``)."""
    ref_cache_dir: str | None = None
    """Folder of the precomputed reference log-probs, one file per dataset / reference weights / processor /
    settings combination; default ``$VLMDPO_CACHE/reference_logps`` (``~/.cache/vlmdpo``)."""

    def __post_init__(self):
        if self.batch_size < 1 or self.gradient_accumulation_steps < 1:
            raise ValueError("train.batch_size and train.gradient_accumulation_steps must be >= 1")
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError(f"train.max_steps must be >= 1, or null to train num_epochs, got {self.max_steps}")
        if self.num_epochs <= 0:
            raise ValueError(f"train.num_epochs must be > 0, got {self.num_epochs}")
        if not 0 <= self.warmup_ratio < 1:
            raise ValueError(f"train.warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        if self.logging_steps < 1 or self.save_steps < 0 or self.save_total_limit < 0:
            raise ValueError("train.logging_steps must be >= 1, train.save_steps and train.save_total_limit >= 0")
        if self.on_nonfinite not in ("error", "skip"):
            raise ValueError(f"train.on_nonfinite must be error or skip, got {self.on_nonfinite!r}")
        if self.eval_steps < 0:
            raise ValueError("train.eval_steps must be >= 0")
        bad = {part: rate for part, rate in self.part_learning_rates.items()
               if part not in ("language", "projector", "vision") or not rate > 0}
        if bad:
            raise ValueError(f"train.part_learning_rates must map language/projector/vision to rates > 0, got {bad}")
        self.mixed_precision = mixed_precision_choice(self.mixed_precision, "train.mixed_precision")
        if self.forward_path not in ("auto", "fast", "plain"):
            raise ValueError(f"train.forward_path must be auto, fast or plain, got {self.forward_path!r}")
        if self.sharding not in ("none", "fsdp2"):
            raise ValueError(f"train.sharding must be none or fsdp2, got {self.sharding!r}")


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self):
        if self.loss.dense_gamma != 1.0 and self.train.precompute_ref_logps:
            raise ValueError("loss.dense_gamma weights each token of the reference's log-probs too, and "
                             "train.precompute_ref_logps keeps only their sums: set one of them back "
                             "(loss.dense_gamma=1 or train.precompute_ref_logps=false)")
        if self.loss.ld_alpha is not None and self.train.precompute_ref_logps:
            raise ValueError("loss.ld_alpha desensitises the reference's per-token log-probs too, and "
                             "train.precompute_ref_logps keeps only their sums: set loss.ld_alpha=null or "
                             "train.precompute_ref_logps=false")
        if self.loss.sync_ref_model and self.train.precompute_ref_logps:
            raise ValueError("loss.sync_ref_model refreshes the reference during training, and "
                             "train.precompute_ref_logps computes its log-probs once: set loss.sync_ref_model=false "
                             "or train.precompute_ref_logps=false")


def mixed_precision_choice(value: str, name: str = "mixed_precision") -> str:
    """``value`` checked against auto/no/bf16/fp16. YAML (and so ``key=no`` on the command line) reads a bare
    ``no`` as false, which a string field receives as "False": that is taken to mean "no"."""
    value = "no" if value in ("False", "false") else value
    if value not in ("auto", "no", "bf16", "fp16"):
        raise ValueError(f"{name} must be auto, no, bf16 or fp16, got {value!r}")
    return value


class ConfigError(ValueError):
    """A config the run cannot start with: an unknown key, a value of the wrong type, a failed check."""


def _check_keys(items: dict, schema, known: set[str], reference: str, prefix: str = "") -> None:
    from vlmdpo.config_reference import config_keys, unknown_key_message

    free_form = {key for key, kind, *_ in config_keys(schema) if str(kind).startswith("dict")}  # any keys inside

    for key, value in items.items():
        name = f"{prefix}{key}"
        if name in known or any(name.startswith(f"{free}.") for free in free_form):
            continue
        if isinstance(value, dict) and any(k.startswith(name + ".") for k in known):
            _check_keys(value, schema, known, reference, name + ".")
            continue
        raise ConfigError(f"{unknown_key_message(name, schema)} (`{reference}` lists every key)")


def load_structured(schema, path: str | None = None, overrides: list[str] | tuple = (),
                    reference: str = "vlmdpo config"):
    """``schema`` (a dataclass) updated by the YAML file at ``path``, then by ``key=value`` overrides;
    returned as the dataclass, so its ``__post_init__`` validation runs.

    Unknown keys (with the closest known one), values of the wrong type and failed checks raise
    ``ConfigError`` with one line that names the key; ``reference`` is the command that lists the keys.
    """
    from omegaconf.errors import OmegaConfBaseException

    from vlmdpo.config_reference import config_keys

    known = {key for key, *_ in config_keys(schema)}
    bad = [item for item in overrides if "=" not in item]
    if bad:
        raise ConfigError(f"overrides must look like key=value or section.key=value, got {bad}")
    try:
        merged = OmegaConf.structured(schema)
        if path:
            loaded = OmegaConf.load(path)
            _check_keys(OmegaConf.to_container(loaded), schema, known, reference)
            merged = OmegaConf.merge(merged, loaded)
        if overrides:
            _check_keys({item.split("=", 1)[0]: None for item in overrides}, schema, known, reference)
            merged = OmegaConf.merge(merged, OmegaConf.from_dotlist(list(overrides)))
        return OmegaConf.to_object(merged)
    except OmegaConfBaseException as error:
        key = getattr(error, "full_key", None)
        problem = str(error).splitlines()[0]
        raise ConfigError(f"{key}: {problem}" if key else problem) from None
    except ConfigError:
        raise
    except ValueError as error:  # a dataclass's __post_init__ check
        raise ConfigError(str(error)) from None


def load_config(path: str | None = None, overrides: list[str] | tuple = ()) -> Config:
    """Defaults, then the YAML file at ``path``, then ``key=value`` overrides; validated."""
    return load_structured(Config, path, overrides)


def save_config(config: Config, path: str) -> None:
    """Write ``config`` as YAML (what a run used, next to its outputs)."""
    OmegaConf.save(OmegaConf.structured(config), path)
