"""The fast path to response log-probs: each pair's image and prompt run once, logits only where scored.

    batch -> pack_pairs (one padding-free sequence, per pair [prompt; chosen; rejected])
          -> shared_image_features (the vision tower once per batch, for policy and reference alike)
          -> the model's own body with tree attention (vlmdpo.forward.tree_attention)
          -> head_logps on the scored positions only (vlmdpo.forward.lm_head)

Each model's part of it runs as that model's forward (``as_forward``), so that its forward hooks run (FSDP2's
gather a sharded model's parameters). It returns what ``vlmdpo.forward.logps.completion_logps`` (the plain path,
kept as the reference implementation) returns, equal to it up to float rounding. ``choose_forward_path`` picks the
path for a model and says why.
"""

from __future__ import annotations

import torch

from vlmdpo.forward.lm_head import head_log_sum_sq_probs, head_logps
from vlmdpo.forward.logps import (
    cast_floating, check_outputs, completion_logps, log_sum_sq_probs, model_dtype, selective_log_softmax,
)
from vlmdpo.model.load import hf_model, image_features_fn, is_sharded
from vlmdpo.model.lora import eval_mode, part_of
from vlmdpo.forward.packing import PackedPairs, pack_pairs
from vlmdpo.forward.tree_attention import LAYOUT_KWARG, SUPPORTED_ATTENTION, install_tree_attention, placeholder_mask

FORWARD_PATHS = ("auto", "fast", "plain")


def shares_image_features(model) -> bool:
    """True when nothing in the vision tower or projector trains or is adapted, so that the policy and the
    reference (adapter disabled) see the same image features."""
    return not any(part_of(name) in ("vision", "projector") and (param.requires_grad or "lora_" in name)
                   for name, param in hf_model(model).named_parameters())


# processor outputs that only place videos (Qwen2.5-VL's seconds per temporal patch feeds its rope index alone)
_VIDEO_PLACEMENT = ("second_per_grid_ts",)


def image_features(model, vision_inputs: dict) -> dict | None:
    """``mm_encoder_outputs`` for the model's forward: ``image`` from its own ``get_image_features`` and ``video``
    from its ``get_video_features`` (the inputs whose names say video); ``None`` when there are none, or videos
    and the model has no ``get_video_features`` (they then go through the forward as they are)."""
    if not vision_inputs or not any(key.startswith("pixel_values") for key in vision_inputs):
        return None
    base = hf_model(model)
    inputs = cast_floating(vision_inputs, model_dtype(base))
    videos = {key: value for key, value in inputs.items() if "video" in key}
    images = {key: value for key, value in inputs.items() if key not in videos and key not in _VIDEO_PLACEMENT}
    video_features = image_features_fn(base, "video")
    if videos and video_features is None:
        return None
    features = {}
    if any(key.startswith("pixel_values") for key in images):
        features["image"] = image_features_fn(base)(**images, return_dict=True)
    if videos:
        features["video"] = video_features(**videos, return_dict=True)
    return features


def shared_image_features(model, batch: dict) -> dict | None:
    """Image features computed once, without gradients, for both the policy and the reference; ``None`` when
    the vision side trains (each model then encodes the images itself, still once per pair) or the model is
    sharded: there every forward runs the vision tower anyway (``vlmdpo.forward.idle_vision``), and a run of it
    outside a forward would be a collective that a process without images skips."""
    if is_sharded(model) or not shares_image_features(model):
        return None
    with torch.no_grad():
        return image_features(model, batch["vision_inputs"])


def _model_inputs(packed: PackedPairs, features: dict | None) -> dict:
    inputs = {"input_ids": packed.input_ids, "position_ids": packed.position_ids, **packed.token_types,
              "attention_mask": placeholder_mask(packed.input_ids.device), LAYOUT_KWARG: packed.layout,
              "use_cache": False}
    if features is not None:
        inputs["mm_encoder_outputs"] = dict(features)  # the forward may add to the dict
    else:
        inputs.update(packed.vision_inputs)
    return inputs


def _cast_inputs(model, inputs: dict) -> dict:
    """Processor outputs in the model's dtype (the placeholder attention mask stays as the tree attention made it)."""
    cast = cast_floating({k: v for k, v in inputs.items() if k != "attention_mask"}, model_dtype(hf_model(model)))
    return {**inputs, **cast}


def packed_completion_logps(model, packed: PackedPairs, features: dict | None = None,
                            outputs=()) -> dict[str, torch.Tensor]:
    """Summed response log-probs of a packed batch; the same keys and values as ``completion_logps``.

    ``features`` are image features from ``shared_image_features``; ``None``: the model encodes the images
    itself, once per pair. ``outputs`` names more per-token outputs, as for ``completion_logps``.
    """
    check_outputs(outputs)
    base = hf_model(model)
    install_tree_attention(base)
    if isinstance(model, torch.nn.parallel.DistributedDataParallel):
        # DDP synchronizes gradients only through its own forward: let the model apply its head
        if features is None:
            features = image_features(model, packed.vision_inputs)
        logits = model(**_cast_inputs(model, _model_inputs(packed, features)),
                       logits_to_keep=packed.score_index).logits[0]
        logps = selective_log_softmax(logits, packed.labels)
        per_token = {"log_sum_sq_probs": lambda: log_sum_sq_probs(logits)}
        scored = {name: per_token[name]() for name in outputs}
    else:
        logps, scored = as_forward(base, lambda: _scored_logps(model, packed, features, outputs))
    place = (packed.score_row.to(logps.device), packed.score_col.to(logps.device))
    per_token_logps = torch.zeros(packed.shape, dtype=torch.float32, device=logps.device).index_put(place, logps)
    sums = per_token_logps.sum(dim=1)
    batch_size = packed.shape[0] // len(packed.fields)
    out = {"per_token_logps": per_token_logps}
    for name in outputs:
        out[f"per_token_{name}"] = torch.zeros_like(per_token_logps).index_put(place, scored[name])
    for i, field in enumerate(packed.fields):
        out[f"{field}_logps"] = sums[i * batch_size: (i + 1) * batch_size]
        out[f"{field}_lengths"] = packed.lengths[i * batch_size: (i + 1) * batch_size].to(logps.device)
    return out


def _scored_logps(model, packed: PackedPairs, features: dict | None, outputs) -> tuple[torch.Tensor, dict]:
    """The scored tokens' log-probs (K,), and each of ``outputs`` (K,) by name: image features (when not given),
    the model's body, then its output embeddings on the scored positions."""
    base = hf_model(model)
    if features is None:  # this model's own image features (with gradients if its vision side trains)
        features = image_features(model, packed.vision_inputs)
    inputs = _cast_inputs(model, _model_inputs(packed, features))
    hidden = base.base_model(**inputs).last_hidden_state[0][packed.score_index]
    head, transform = base.get_output_embeddings(), logit_transform(base.config.get_text_config())
    per_token = {"log_sum_sq_probs": lambda: head_log_sum_sq_probs(hidden, head, **transform)}
    scored = {name: per_token[name]() for name in outputs}
    return head_logps(hidden, head, packed.labels, **transform), scored


def as_forward(module: torch.nn.Module, compute):
    """``compute()``, run as ``module``'s forward: through ``module.__call__``, so that its forward hooks run
    as for any forward of it.

    The fast path calls parts of the model (the image features, the body, the output embeddings) rather than
    the model. Run as the model's forward, FSDP2's hooks on a sharded model (``vlmdpo.train.sharding``) gather
    the parameters no inner block holds (embeddings, projector, LM head) before it and reduce-scatter their
    gradients after the backward, as for the model's own forward; the blocks it calls gather their own. The
    blank-image rule (``vlmdpo.forward.idle_vision``) sees a forward start, too.
    """
    own = module.__dict__.get("forward")  # a wrapper's (accelerate's hooks) is put back afterwards
    module.forward = compute
    try:
        return module()
    finally:
        if own is None:
            del module.forward
        else:
            module.forward = own


def fast_completion_logps(model, batch: dict, outputs=()) -> dict[str, torch.Tensor]:
    """``completion_logps`` by the fast path, for one model (``pack_pairs`` + ``packed_completion_logps``)."""
    return packed_completion_logps(model, pack_pairs(model, batch), outputs=outputs)


ATTENTION_LAYER_TYPES = ("full_attention", "sliding_attention")


def logit_transform(text_config) -> dict:
    """What the model does to its LM head's output before the loss, as ``head_logps`` keywords: Cohere's and
    Aya Vision's ``logit_scale`` (a factor), Granite's ``logits_scaling`` (a divisor), Gemma's
    ``final_logit_softcapping``."""
    scale = getattr(text_config, "logit_scale", None) or 1.0
    divisor = getattr(text_config, "logits_scaling", None) or 1.0
    return {"logit_scale": float(scale) / float(divisor),
            "softcap": getattr(text_config, "final_logit_softcapping", None)}


def fast_path_problem(model, batch: dict) -> str | None:
    """Why the fast path cannot serve ``model`` on batches like ``batch``, or ``None`` when it can."""
    base = hf_model(model)
    problem = sharding_problem(base)
    if problem is not None:
        return problem
    config = base.config.get_text_config()
    attention = config._attn_implementation or "eager"
    if attention.startswith("vlmdpo_tree_"):
        attention = attention[len("vlmdpo_tree_"):]
    if attention not in SUPPORTED_ATTENTION:
        return f"the language model uses {attention!r} attention (packed pairs need one of {SUPPORTED_ATTENTION})"
    other_layers = sorted(set(getattr(config, "layer_types", None) or ()) - set(ATTENTION_LAYER_TYPES))
    if other_layers:
        return f"the language model has layers packed pairs do not split by pair ({', '.join(other_layers)})"
    if any(value.dim() > 2 for value in batch["prompt_token_types"].values()):
        return "a per-token input holds more than one value per token (Mllama's cross-attention mask)"
    if hasattr(type(base), "create_masks_for_generate") and attention not in ("sdpa", "eager"):
        return f"its prompt masks come from the model's own mask builder, read here from sdpa or eager masks " \
               f"(not {attention!r})"
    if getattr(config, "attn_logit_softcapping", None) is not None:
        return "the attention soft-caps its logits (attn_logit_softcapping), which tree attention does not"
    if getattr(config, "output_multiplier", None) not in (None, 1, 1.0):
        return "the model transforms its logits (output_multiplier), which the fused LM head does not"
    head = base.get_output_embeddings() if hasattr(base, "get_output_embeddings") else None
    if logit_transform(config)["logit_scale"] != 1.0 and getattr(head, "bias", None) is not None:
        return "the model scales the logits of an LM head with a bias, which the fused LM head does not"
    if image_features_fn(base) is None or not hasattr(base, "get_output_embeddings"):
        return f"{type(base).__name__} has no get_image_features / get_output_embeddings"
    return None


def sharding_problem(base) -> str | None:
    """Why the fast path cannot run on sharded ``base`` (a ``transformers`` model), or ``None``.

    It runs as the model's forward (``as_forward``): FSDP2 then gathers what the model's own unit holds, and each
    block gathers itself when called. The LM head's weight is used outside the head's forward, so it must not be
    a block's.
    """
    from torch.distributed.fsdp import FSDPModule

    if any(hasattr(param, "ds_id") for param in base.parameters()):
        return ("its parameters are partitioned by DeepSpeed ZeRO-3, and the fast path uses the LM head's weight "
                "outside the head's forward, where ZeRO-3 has not gathered it")
    if not any(isinstance(module, FSDPModule) for module in base.modules()):
        return None
    if not isinstance(base, FSDPModule):
        return ("its blocks are sharded (FSDP2) but the model itself is not an FSDP unit, and the fast path gathers "
                "the model's other parameters (embeddings, projector, LM head) by running as its forward")
    head = base.get_output_embeddings() if hasattr(base, "get_output_embeddings") else None
    block = next((name for name, module in base.named_modules() if module is not base and head is not None
                  and isinstance(module, FSDPModule) and any(p is head.weight for p in module.parameters())), None)
    if block is not None:
        return f"its LM head's weight is sharded with the block {block}, whose forward the fast path does not run"
    return None


def parity_problem(model, batch: dict, pad_token_id: int) -> str | None:
    """Run both paths on a small ``batch`` without gradients; a difference beyond float rounding (in mean
    absolute per-token log-prob) means the model does something the fast path does not reproduce."""
    with eval_mode(model), torch.no_grad():
        fast = fast_completion_logps(model, batch)["per_token_logps"]
        plain = completion_logps(model, batch, pad_token_id)["per_token_logps"]
    dtype = next(hf_model(model).parameters()).dtype
    tolerance = 1e-3 if dtype == torch.float32 else 5e-2
    scored = plain != 0
    difference = (fast - plain)[scored].abs().mean() if scored.any() else torch.zeros((), device=plain.device)
    if is_sharded(model):  # every process must take the same path: the largest difference decides for all
        torch.distributed.all_reduce(difference, op=torch.distributed.ReduceOp.MAX)
    difference = float(difference)
    if difference > tolerance:
        return f"on a probe batch its log-probs were {difference:.2g} per token away from the plain path's"
    return None


def choose_forward_path(requested: str, models: list, probe_batch: dict, pad_token_id: int, log=print) -> str:
    """``"fast"`` or ``"plain"`` for ``requested`` (one of ``FORWARD_PATHS``), logged with the reason.

    ``models`` are the models that will compute log-probs (the policy, and a frozen reference if there is
    one). ``auto`` takes the fast path when every model supports it and agrees with the plain path on
    ``probe_batch``; ``fast`` raises instead of falling back.
    """
    if requested not in FORWARD_PATHS:
        raise ValueError(f"forward path must be one of {FORWARD_PATHS}, got {requested!r}")
    if requested == "plain":
        log("forward path: plain (train.forward_path=plain)")
        return "plain"
    problem = next((p for p in (fast_path_problem(m, probe_batch) for m in models) if p), None)
    if problem is None and requested == "auto":
        problem = next((p for p in (parity_problem(m, probe_batch, pad_token_id) for m in models) if p), None)
    if problem is not None:
        if requested == "fast":
            raise ValueError(f"train.forward_path=fast, but {problem}; use forward_path=auto or plain")
        log(f"forward path: plain, because {problem}")
        return "plain"
    shared = "shared by policy and reference" if shares_image_features(models[0]) else \
        "encoded by each model (the vision side trains)"
    log(f"forward path: fast (each pair's image and prompt run once, responses as two continuations; "
        f"image features {shared}; logits only at response positions)")
    return "fast"
