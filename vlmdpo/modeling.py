"""Loading the policy, adapting it with LoRA, and running the reference model.

The reference model is the policy with its adapter disabled (no second copy in memory); only full
fine-tuning keeps a frozen copy. Which submodules are the language model, the vision tower and the
projector is read from the model's own structure, not from its family name.
"""

from __future__ import annotations

import contextlib
import copy

import torch
from torch import nn

# Attribute names transformers uses for the parts of a VLM (LLaVA, Qwen2-VL, Idefics, PaliGemma, Gemma 3...).
_LANGUAGE_NAMES = ("language_model", "text_model")
_VISION_NAMES = ("vision_tower", "visual", "vision_model")
_PROJECTOR_NAMES = ("multi_modal_projector", "merger", "connector", "mm_projector", "vision_projection",
                    "embed_vision")  # Gemma 3n / Gemma 4's multimodal embedder

PART_CHOICES = ("language", "projector", "vision")


def resolve_model_path(name_or_path: str) -> str:
    """``tiny:<family>`` names a cached random-weight model built by ``vlmdpo.tiny_models``; anything else is
    a hub name or a local folder and is returned as it is."""
    if name_or_path.startswith("tiny:"):
        from vlmdpo.tiny_models import tiny_vlm

        return tiny_vlm(name_or_path.split(":", 1)[1])
    return name_or_path


def hf_model(model):
    """The ``transformers`` model inside DDP / accelerate and ``peft`` wrappers."""
    model = getattr(model, "module", model)
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def load_model_and_processor(name_or_path: str, dtype: str | torch.dtype = "float32",
                             attn_implementation: str | None = None, revision: str | None = None):
    """``AutoModelForImageTextToText`` and ``AutoProcessor`` from a hub name or a local folder."""
    from transformers import AutoModelForImageTextToText

    dtype = getattr(torch, dtype) if isinstance(dtype, str) and dtype != "auto" else dtype
    kwargs = {"dtype": dtype, "revision": revision}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    refuse_broken_family(name_or_path, revision)
    model = AutoModelForImageTextToText.from_pretrained(name_or_path, **kwargs)
    return model, load_processor(name_or_path, revision)


# model types whose own transformers forward was found unusable for DPO, refused before the weights load: Llama 4,
# Gemma 3n and Phi-4-multimodal when families were tried with tiny models (5.24, not re-measured in this
# repository's tests); Mllama on tiny:mllama (5.25, measured by tests/test_families.py)
BROKEN_FAMILIES = {
    "llama4": "its forward was found batch-dependent (a row's log-probs change with the other rows of the batch)",
    "gemma3n": "with left padding, which batched prompts need, its forward was found batch-dependent (a row's "
               "log-probs differ from the row alone)",
    "phi4_multimodal": "its forward was found batch-dependent (a row's log-probs change with the other rows of the "
                       "batch)",
    "mllama": "its forward is batch-dependent: tokens that see no image (a text-only row, the prompt before the "
              "image) cross-attend evenly to all of the batch's vision tokens, padding included, so a row's log-probs "
              "change with the images of the other rows",
}


def refuse_broken_family(name_or_path: str, revision: str | None = None) -> None:
    """``ValueError`` for a model whose family is in ``BROKEN_FAMILIES``, saying what is wrong (only the config is
    read)."""
    from transformers import AutoConfig

    model_type = getattr(AutoConfig.from_pretrained(name_or_path, revision=revision), "model_type", None)
    if model_type in BROKEN_FAMILIES:
        raise ValueError(f"{name_or_path} is a {model_type} model, which vlmdpo refuses: {BROKEN_FAMILIES[model_type]}. "
                         "Choose another family (the README's support matrix lists the tested ones)")


def load_processor(name_or_path: str, revision: str | None = None):
    """The model's ``AutoProcessor``, with the EOS token as pad token where it has none.

    An image processor that fails on a batch whose first row has no image (Mllama's torchvision one, 5.25) is
    swapped for the same processor's PIL backend when that one handles it: batches mix text-only and image rows.
    """
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(name_or_path, revision=revision)
    if not handles_rows_without_images(processor):
        try:
            fallback = AutoProcessor.from_pretrained(name_or_path, revision=revision, backend="pil")
        except Exception:  # noqa: BLE001 - no PIL backend: keep the processor as it is
            fallback = None
        processor = fallback if fallback is not None and handles_rows_without_images(fallback) else processor
    tokenizer = getattr(processor, "tokenizer", processor)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return processor


def handles_rows_without_images(processor) -> bool:
    """Whether the processor's image processor takes images per row with an empty row first (``[[], [image]]``);
    True for a processor without an image processor."""
    from PIL import Image

    image_processor = getattr(processor, "image_processor", None)
    if image_processor is None:
        return True
    try:
        image_processor([[], [Image.new("RGB", (32, 32))]], return_tensors="pt")
    except Exception:  # noqa: BLE001 - any failure means the batch layout is not handled
        return False
    return True


def _part_of(name: str) -> str | None:
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


def linear_module_names(model: nn.Module, parts: tuple[str, ...] = ("language",)) -> list[str]:
    """Full names of the ``nn.Linear`` layers in the given parts of the model: never the LM head, never a
    mixture-of-experts router."""
    unknown = set(parts) - set(PART_CHOICES)
    if unknown:
        raise ValueError(f"unknown model parts {sorted(unknown)}; choose from {PART_CHOICES}")
    language = _language_prefixes(model)
    experts = _expert_counts(model)

    def part(name: str) -> str | None:
        by_name = _part_of(name)
        if by_name in ("projector", "vision"):
            return by_name
        inside = any(name.startswith(prefix + ".") for prefix in language)
        return "language" if inside or (by_name == "language" and not language) else None

    names = [name for name, module in model.named_modules()
             if isinstance(module, nn.Linear) and part(name) in parts and not is_router(name, module, experts)]
    if not names:
        raise ValueError(f"found no linear layers in parts {parts} of {type(model).__name__}; "
                         "pass lora target_modules explicitly")
    return names


def apply_lora(model: nn.Module, *, r: int = 16, alpha: int = 32, dropout: float = 0.0,
               parts: tuple[str, ...] = ("language",), target_modules: list[str] | None = None):
    """Wrap ``model`` in a ``peft`` LoRA adapter; only the adapter's weights stay trainable."""
    from peft import LoraConfig, get_peft_model

    targets = target_modules or linear_module_names(model, parts)
    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets,
                        task_type="CAUSAL_LM")
    return get_peft_model(model, config)


def frozen_copy(model: nn.Module) -> nn.Module:
    """A frozen, eval-mode copy, used as the reference model for full fine-tuning."""
    reference = copy.deepcopy(model).eval()
    reference.requires_grad_(False)
    return reference


@contextlib.contextmanager
def reference_mode(policy: nn.Module, reference: nn.Module | None = None):
    """Yield the model that computes reference log-probs, with no gradients.

    For a ``peft`` policy this is the policy itself with its adapter disabled; otherwise ``reference``.
    """
    if reference is not None:
        with torch.no_grad():
            yield reference
        return
    unwrapped = getattr(policy, "module", policy)  # DDP / accelerate wrapper
    if not hasattr(unwrapped, "disable_adapter"):
        raise ValueError("the policy has no adapter to disable; pass a frozen reference model")
    was_training = policy.training
    policy.eval()  # the reference is the untrained model: no dropout
    try:
        with torch.no_grad(), unwrapped.disable_adapter():
            yield policy
    finally:
        policy.train(was_training)
