"""The model's parts (language model, projector, vision tower), LoRA on the ones asked for, and the reference.

The reference model is the policy with its adapter disabled (no second copy in memory); only full
fine-tuning keeps a frozen copy. A reference that moves during training (TR-DPO, ``vlmdpo.methods.trdpo``) is, with
LoRA, the base plus a second adapter named ``REFERENCE_ADAPTER``. Which submodules are the language model, the vision tower and the
projector is read from the model's own structure, not from its family name.
"""

from __future__ import annotations

import contextlib
import copy

import torch
from torch import nn

# Attribute names transformers uses for the parts of a VLM (LLaVA, Qwen2-VL, Idefics, PaliGemma, Gemma 3...).
_LANGUAGE_NAMES = ("language_model", "text_model")
_VISION_NAMES = ("vision_tower", "visual", "vision_model",
                 "high_res_vision_model", "high_res_vision_neck", "high_res_vision_proj", "high_res_vision_alpha")
_PROJECTOR_NAMES = ("multi_modal_projector", "merger", "connector", "mm_projector", "vision_projection",
                    "embed_vision",  # Gemma 3n / Gemma 4's multimodal embedder
                    "aligner",  # DeepSeek-VL's; its hybrid's second (SAM) encoder is the high_res_vision_* above
                    "resampler_model")  # ERNIE 4.5 VL's: merges patches (and a video's frame pairs) into text width

PART_CHOICES = ("language", "projector", "vision")
LORA_PART_CHOICES = PART_CHOICES + ("experts",)
"""What LoRA can wrap: the parts, and the language model's routed experts (``experts``, asked for on its own: the
``language`` part keeps attention, dense MLPs and shared experts, which every token runs)."""
_EXPERTS_NAME = "experts"  # transformers' attribute for a layer's routed experts (shared ones: shared_expert(s))

REFERENCE_ADAPTER = "reference"
"""Name of the frozen adapter that holds a refreshed reference; when a ``peft`` policy has one, the reference is the
base plus it rather than the base alone."""


def part_of(name: str) -> str | None:
    """Which part of a VLM the module called ``name`` belongs to, by name (projector wins over vision)."""
    pieces = name.split(".")
    if any(p in _PROJECTOR_NAMES for p in pieces):
        return "projector"
    if any(p in _VISION_NAMES for p in pieces):
        return "vision"
    if any(p in _LANGUAGE_NAMES for p in pieces):
        return "language"
    return None


def _language_prefixes(model: nn.Module) -> set[str]:
    """Names of the language model's module in ``model``, found by identity through ``get_decoder()`` (which
    every transformers VLM defines), so its attribute name does not matter."""
    get_decoder = getattr(model, "get_decoder", None)
    try:
        decoder = get_decoder() if callable(get_decoder) else None
    except (AttributeError, NotImplementedError, TypeError):
        decoder = None
    return {name for name, module in model.named_modules() if decoder is not None and module is decoder and name}


def _expert_counts(model: nn.Module) -> set[int]:
    """Numbers of experts named in the model's configs (a mixture-of-experts router maps hidden -> experts)."""
    config = getattr(model, "config", None)
    configs = [config] + [getattr(config, name, None) for name in ("text_config", "vision_config")] if config else []
    return {value for c in configs if c is not None for key in ("num_experts", "num_local_experts", "n_routed_experts")
            if isinstance(value := getattr(c, key, None), int) and value > 1}


def is_router(name: str, module: nn.Linear, expert_counts: set[int]) -> bool:
    """A mixture-of-experts router or gate: a linear layer onto the experts (or a ``*Router`` subclass of
    ``nn.Linear``, as in Llama 4). Never a LoRA target: adapting it changes which experts run."""
    return "router" in type(module).__name__.lower() or module.out_features in expert_counts


def _lora_part_finder(model: nn.Module):
    """``name -> part`` (one of ``LORA_PART_CHOICES``, or ``None``) for the modules and parameters of ``model``."""
    language = _language_prefixes(model)

    def part(name: str) -> str | None:
        by_name = part_of(name)
        if by_name in ("projector", "vision"):
            return by_name
        inside = any(name.startswith(prefix + ".") for prefix in language)
        if not (inside or (by_name == "language" and not language)):
            return None
        return "experts" if _EXPERTS_NAME in name.split(".") else "language"

    return part


def linear_module_names(model: nn.Module, parts: tuple[str, ...] = ("language",)) -> list[str]:
    """Full names of the ``nn.Linear`` layers in the given parts of the model (``LORA_PART_CHOICES``): never the
    LM head, never a mixture-of-experts router. Raises when there are none, unless ``experts`` is asked for (whose
    weights are usually fused parameters: ``expert_parameter_names``)."""
    unknown = set(parts) - set(LORA_PART_CHOICES)
    if unknown:
        raise ValueError(f"unknown model parts {sorted(unknown)}; choose from {LORA_PART_CHOICES}")
    part, experts = _lora_part_finder(model), _expert_counts(model)
    names = [name for name, module in model.named_modules()
             if isinstance(module, nn.Linear) and part(name) in parts and not is_router(name, module, experts)]
    if not names and "experts" not in parts:
        raise ValueError(f"found no linear layers in parts {parts} of {type(model).__name__}; "
                         "pass lora target_modules explicitly")
    return names


def expert_parameter_names(model: nn.Module) -> list[str]:
    """Full names of the routed experts' fused weights: the 3-D parameters (one matrix per expert, as transformers
    stores a layer's experts) of the language model's ``experts`` modules. A router's weight is 2-D: never one."""
    part, counts = _lora_part_finder(model), _expert_counts(model)
    return [name for name, param in model.named_parameters()
            if param.ndim == 3 and param.shape[0] in counts and part(name) == "experts"]


def _outside_moe_conversion(model: nn.Module, targets: list[str]) -> tuple[list[str], list[str]]:
    """``(target_modules, target_parameters)`` that peft injects as asked.

    For the mixture-of-experts families whose experts transformers 5 fused, peft converts old adapters' configs:
    a target ending in ``gate_proj``, ``up_proj`` or ``down_proj`` becomes the fused experts' parameters (with twice
    the rank), even the full name of a dense or shared-expert MLP layer (huggingface/peft#3711): GLM-4.5V's
    ``language`` LoRA would land on the routed experts instead. Those layers are named by their weight instead,
    which the conversion leaves alone; peft's conversion itself says which they are.
    """
    from peft import LoraConfig

    try:
        from peft.utils.transformers_weight_conversion import convert_peft_config_for_transformers
    except ImportError:  # a peft without the conversion: nothing is rewritten
        return targets, []
    probe = LoraConfig(target_modules=list(targets))
    convert_peft_config_for_transformers(probe, model=model, conversions=None)
    kept = set(probe.target_modules or ())
    return [t for t in targets if t in kept], [f"{t}.weight" for t in targets if t not in kept]


def apply_lora(model: nn.Module, *, r: int = 16, alpha: int = 32, dropout: float = 0.0,
               parts: tuple[str, ...] = ("language",), target_modules: list[str] | None = None):
    """Wrap ``model`` in a ``peft`` LoRA adapter; only the adapter's weights stay trainable.

    ``parts`` with ``experts`` adds the routed experts: their ``nn.Linear`` layers, or their fused 3-D weights
    through peft's ``target_parameters`` (a low-rank update per expert). ``target_modules`` replaces ``parts``.
    """
    from peft import LoraConfig, get_peft_model

    targets = list(target_modules or linear_module_names(model, parts))
    expert_weights = expert_parameter_names(model) if "experts" in parts and not target_modules else []
    if "experts" in parts and not target_modules and not expert_weights and not any(
            _EXPERTS_NAME in name.split(".") for name in targets):
        raise ValueError(f"lora parts include experts, but {type(model).__name__} has no routed experts in its "
                         "language model; drop experts from model.lora_parts")
    targets, linear_weights = _outside_moe_conversion(model, targets)
    weights = expert_weights + linear_weights
    if weights and dropout:
        raise ValueError(f"model.lora_dropout={dropout} cannot apply to {weights[0]} and the like: peft's LoRA on a "
                         "parameter (fused experts; a MoE family's MLP layers) has no dropout. Set model.lora_dropout=0"
                         + (" or drop experts from model.lora_parts" if expert_weights else ""))
    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets,
                        target_parameters=weights or None, task_type="CAUSAL_LM")
    return get_peft_model(model, config)


def freeze_parts(model: nn.Module, parts: tuple[str, ...]) -> int:
    """Stop gradients to every parameter in the given parts (``vision``: LLaVA's recipe, which trains the
    projector and language model on a pretrained vision tower); returns how many parameters were frozen."""
    unknown = set(parts) - set(PART_CHOICES)
    if unknown:
        raise ValueError(f"unknown model parts {sorted(unknown)}; choose from {PART_CHOICES}")
    frozen = 0
    for name, parameter in model.named_parameters():
        if part_of(name) in parts:
            parameter.requires_grad_(False)
            frozen += parameter.numel()
    if parts and not frozen:
        raise ValueError(f"found no parameters in parts {sorted(parts)} of {type(model).__name__} to freeze")
    return frozen


def frozen_copy(model: nn.Module) -> nn.Module:
    """A frozen, eval-mode copy, used as the reference model for full fine-tuning."""
    reference = copy.deepcopy(model).eval()
    reference.requires_grad_(False)
    return reference


@contextlib.contextmanager
def eval_mode(model: nn.Module):
    """Run the block with ``model`` in eval mode (no dropout), then put back its training flag, even on error."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


@contextlib.contextmanager
def adapter_active(model: nn.Module, name: str):
    """Run the block with the ``peft`` adapter ``name`` in place of the active one, then put that one back; which
    weights train is the same afterwards (peft's ``set_adapter`` also changes it)."""
    previous = model.active_adapter
    trainable = [(parameter, parameter.requires_grad) for parameter in model.parameters()]
    model.set_adapter(name, inference_mode=True)
    try:
        yield model
    finally:
        model.set_adapter(previous)
        for parameter, flag in trainable:
            parameter.requires_grad_(flag)


@contextlib.contextmanager
def reference_mode(policy: nn.Module, reference: nn.Module | None = None):
    """Yield the model that computes reference log-probs, with no gradients.

    For a ``peft`` policy this is the policy itself with its adapter disabled, or with its ``REFERENCE_ADAPTER``
    active when it has one; otherwise ``reference``.
    """
    if reference is not None:
        with torch.no_grad():
            yield reference
        return
    unwrapped = getattr(policy, "module", policy)  # DDP / accelerate wrapper
    if not hasattr(unwrapped, "disable_adapter"):
        raise ValueError("the policy has no adapter to disable; pass a frozen reference model")
    # the reference is the untrained (or refreshed) model: no dropout
    own_adapter = REFERENCE_ADAPTER in getattr(unwrapped, "peft_config", {})
    adapter = adapter_active(unwrapped, REFERENCE_ADAPTER) if own_adapter else unwrapped.disable_adapter()
    with eval_mode(policy), torch.no_grad(), adapter:
        yield policy
