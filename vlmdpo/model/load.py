"""Loading a VLM and its processor from a hub name, a local folder or ``tiny:<family>``; the families whose own
forward is refused, and why."""

from __future__ import annotations

import torch


def resolve_model_path(name_or_path: str) -> str:
    """``tiny:<family>`` names a cached random-weight model built by ``vlmdpo.tiny.models``; anything else is
    a hub name or a local folder and is returned as it is."""
    if name_or_path.startswith("tiny:"):
        from vlmdpo.tiny.models import tiny_vlm

        return tiny_vlm(name_or_path.split(":", 1)[1])
    return name_or_path


def hf_model(model):
    """The ``transformers`` model inside DDP / accelerate and ``peft`` wrappers."""
    model = getattr(model, "module", model)
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def image_features_fn(model, kind: str = "image"):
    """The model's own ``get_image_features`` (``kind="video"``: ``get_video_features``): the wrapper's, else its
    base model's (DeepSeek-VL defines it only there); ``None`` when neither has one."""
    base, name = hf_model(model), f"get_{kind}_features"
    return getattr(base, name, None) or getattr(base.base_model, name, None)


def is_sharded(model) -> bool:
    """True when the model's parameters are split across processes (FSDP2's ``fully_shard``, DeepSpeed ZeRO-3),
    so that running one of its modules is a collective every process must enter."""
    from torch.distributed.fsdp import FSDPModule

    return any(isinstance(module, FSDPModule) or any(hasattr(p, "ds_id") for p in module.parameters(recurse=False))
               for module in hf_model(model).modules())


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


# model types whose own transformers forward cannot give DPO's per-row log-probs (a row's depend on the rest of its
# batch, or the logits are not a causal LM's over prompt and response, or not its decoder's); refused before the
# weights load. Llama 4's, Gemma 3n's and Phi-4-multimodal's were found with tiny models and are not re-checked by
# this repository's tests. (Mllama's is batch-dependent too, through the image count: vlmdpo.forward.image_groups
# runs it per image count.)
BROKEN_FAMILIES = {
    "llama4": "its forward was found batch-dependent (a row's log-probs change with the other rows of the batch)",
    "gemma3n": "with left padding, which batched prompts need, its forward was found batch-dependent (a row's "
               "log-probs differ from the row alone)",
    "phi4_multimodal": "its forward was found batch-dependent (a row's log-probs change with the other rows of the "
                       "batch)",
    # found with the tiny models of vlmdpo.tiny.encoder_variants; tests/test_new_families.py checks the refusal
    "florence2": "it is an encoder-decoder (transformers' modeling_florence2.py, Florence2Model.forward): input_ids, "
                 "prompt and response alike, go through its bidirectional BART encoder and logits come only for the "
                 "decoder_input_ids, so there are no causal per-token logits to score a response with",
    "cohere2_vision": "its forward (transformers' modeling_cohere2_vision.py, Cohere2VisionForConditionalGeneration."
                      "forward) returns lm_head(hidden_states) without its Cohere 2 text config's logit_scale, which "
                      "Cohere2ForCausalLM.forward multiplies the logits by: its log-probs are not its decoder's",
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

    An image processor that fails on a batch whose first row has no image (Mllama's torchvision one) is swapped
    for the same processor's PIL backend when that one handles it: batches mix text-only and image rows.
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
