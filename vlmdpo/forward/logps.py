"""Per-token log-probs of the responses, gathered only at response positions, in float32.

This is the plain (reference) path: the prompt is repeated for the chosen and the rejected response and the
model runs once on the 2B concatenated sequences. Only the last ``C + 1`` positions reach the LM head
(``logits_to_keep``), so no logits exist for image or prompt tokens, and float32 is used only for the rows
of the response tokens, in chunks, never for the whole sequence.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from vlmdpo.forward.image_groups import by_image_count, has_image_slots

_LOGSOFTMAX_CHUNK = 1024

PER_TOKEN_OUTPUTS = ("log_sum_sq_probs",)
"""Per-token outputs a caller may ask of a forward beyond the log-probs: ``log_sum_sq_probs``, ``log sum_v p_v ** 2``
of the model's next-token distribution at each response token, without gradients (WPO's weights,
``vlmdpo.methods.wpo``), returned as ``per_token_log_sum_sq_probs`` (2B, C)."""


def selective_log_softmax(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``log_softmax(logits.float())[i, labels[i]]`` for ``logits`` (N, V) and ``labels`` (N,), in float32.

    Upcasts ``_LOGSOFTMAX_CHUNK`` rows at a time, so peak float32 memory is chunk x V, not N x V.
    """
    out = []
    for start in range(0, logits.shape[0], _LOGSOFTMAX_CHUNK):
        chunk = logits[start: start + _LOGSOFTMAX_CHUNK].float()
        index = labels[start: start + _LOGSOFTMAX_CHUNK].unsqueeze(-1)
        out.append((chunk.gather(-1, index) - torch.logsumexp(chunk, dim=-1, keepdim=True)).squeeze(-1))
    return torch.cat(out) if out else logits.new_zeros(0, dtype=torch.float32)


def log_sum_sq_probs(logits: torch.Tensor) -> torch.Tensor:
    """``log(sum_v softmax(logits.float())_v ** 2)`` (N,) float32 for ``logits`` (N, V), without gradients,
    ``_LOGSOFTMAX_CHUNK`` rows at a time: ``logsumexp(2 * logits) - 2 * logsumexp(logits)``."""
    out = []
    with torch.no_grad():
        for start in range(0, logits.shape[0], _LOGSOFTMAX_CHUNK):
            chunk = logits[start: start + _LOGSOFTMAX_CHUNK].float()
            out.append(torch.logsumexp(2 * chunk, dim=-1) - 2 * torch.logsumexp(chunk, dim=-1))
    return torch.cat(out) if out else logits.new_zeros(0, dtype=torch.float32)


def check_outputs(outputs) -> None:
    """Raises on a per-token output no forward computes (``PER_TOKEN_OUTPUTS`` lists those it does)."""
    unknown = sorted(set(outputs) - set(PER_TOKEN_OUTPUTS))
    if unknown:
        raise ValueError(f"unknown per-token outputs {unknown}; a forward computes {list(PER_TOKEN_OUTPUTS)}")


def _pad_to(tensor: torch.Tensor, length: int, value: int) -> torch.Tensor:
    return F.pad(tensor, (0, length - tensor.shape[1]), value=value)


def cast_floating(inputs: dict, dtype: torch.dtype) -> dict:
    """``inputs`` with floating-point tensors in ``dtype`` (the model's): processors emit float32 or bfloat16
    whatever the model's weights are (Llama 4's emits bfloat16), and a float32 vision tower fed bfloat16 raises."""
    return {key: value.to(dtype) if isinstance(value, torch.Tensor) and value.is_floating_point() else value
            for key, value in inputs.items()}


def model_dtype(model) -> torch.dtype:
    """The dtype of the model's floating-point weights."""
    return next(p.dtype for p in model.parameters() if p.is_floating_point())


def extend_per_token(value: torch.Tensor, copies: int, length: int, fill: int = 0) -> torch.Tensor:
    """A per-token prompt input repeated for ``copies`` responses and continued over ``length`` response tokens:
    a (B, P) type id with ``fill`` (0, text; PaliGemma's suffix value for its ``token_type_ids``, see the
    collator's ``response_token_types``), a (B, P, ...) one (Mllama's cross-attention mask) with the last prompt
    position's values, so response tokens see the images the end of the prompt sees."""
    repeated = value.repeat(copies, *([1] * (value.dim() - 1)))
    if value.dim() == 2:
        tail = torch.full((repeated.shape[0], length), fill, dtype=value.dtype, device=value.device)
    else:
        tail = repeated[:, -1:].expand(-1, length, *repeated.shape[2:])
    return torch.cat([repeated, tail], dim=1)


def response_fields(batch: dict) -> tuple[str, ...]:
    """``("chosen", "rejected")`` for preference batches, ``("chosen",)`` for supervised ones."""
    return tuple(f for f in ("chosen", "rejected") if f"{f}_input_ids" in batch)


def stacked_completion_mask(batch: dict, width: int) -> torch.Tensor:
    """(F * B, width) response-token mask of the batch's responses, chosen rows then rejected ones, each padded
    with zeros to ``width``: the layout of the forwards' ``per_token_logps``."""
    return torch.cat([_pad_to(batch[f"{f}_completion_mask"], width, 0) for f in response_fields(batch)])


def concatenated_inputs(batch: dict, pad_token_id: int) -> dict:
    """Model inputs for the 2B sequences ``[prompt; chosen]`` (rows 0..B-1) and ``[prompt; rejected]``.

    Returns ``model_inputs`` (kwargs for the model's forward), ``completion_ids`` (2B, C) and
    ``completion_mask`` (2B, C). Per-image inputs are repeated in the same order, along the axis the processor
    stacks images along (the batch's ``image_axes``, else the first); per-token prompt inputs
    (``token_type_ids``, ``mm_token_type_ids``, ``cross_attention_mask``) continue over the responses as
    ``extend_per_token`` says.
    A supervised batch (no ``rejected``) gives B sequences instead of 2B.
    """
    fields = response_fields(batch)
    copies = len(fields)
    length = max(batch[f"{f}_input_ids"].shape[1] for f in fields)
    completion_ids = torch.cat([_pad_to(batch[f"{f}_input_ids"], length, pad_token_id) for f in fields])
    completion_attention = torch.cat([_pad_to(batch[f"{f}_attention_mask"], length, 0) for f in fields])
    completion_mask = stacked_completion_mask(batch, length)
    prompt_ids = batch["prompt_input_ids"].repeat(copies, 1)
    model_inputs = {
        "input_ids": torch.cat([prompt_ids, completion_ids], dim=1),
        "attention_mask": torch.cat([batch["prompt_attention_mask"].repeat(copies, 1), completion_attention],
                                    dim=1),
    }
    fills = batch.get("response_token_types", {})
    for key, value in batch["prompt_token_types"].items():
        model_inputs[key] = extend_per_token(value, copies, length, fills.get(key, 0))
    axes = batch.get("image_axes", {})  # a processor that stacks images along another axis (MiniCPM-V's last)
    for key, value in batch["vision_inputs"].items():
        model_inputs[key] = torch.cat([value] * copies, dim=axes.get(key, 0))
    return {"model_inputs": model_inputs, "completion_ids": completion_ids, "completion_mask": completion_mask}


def completion_logps(model, batch: dict, pad_token_id: int, outputs=()) -> dict[str, torch.Tensor]:
    """Summed response log-probs of the chosen and rejected responses (plain path).

    Returns ``chosen_logps``, ``rejected_logps`` (B,) float32 sums over response tokens,
    ``chosen_lengths``, ``rejected_lengths`` (B,) response token counts, and ``per_token_logps`` (2B, C)
    (zero outside the response) for metrics. Supervised batches give only the ``chosen_*`` entries.
    ``outputs`` names more per-token outputs (``PER_TOKEN_OUTPUTS``), each ``per_token_{name}`` (2B, C).
    A batch whose rows differ in image count runs one forward per count where the model needs it
    (``vlmdpo.forward.image_groups``).
    """
    check_outputs(outputs)
    if has_image_slots(batch["prompt_token_types"]):
        return by_image_count(lambda part: _completion_logps(model, part, pad_token_id, outputs), batch,
                              copies=len(response_fields(batch)))
    return _completion_logps(model, batch, pad_token_id, outputs)


def _completion_logps(model, batch: dict, pad_token_id: int, outputs=()) -> dict[str, torch.Tensor]:
    inputs = concatenated_inputs(batch, pad_token_id)
    completion_ids, completion_mask = inputs["completion_ids"], inputs["completion_mask"]
    length = completion_ids.shape[1]
    # logits at position t predict token t + 1: the last C + 1 positions cover all C response tokens
    model_inputs = cast_floating(inputs["model_inputs"], model_dtype(model))
    logits = model(**model_inputs, logits_to_keep=length + 1, use_cache=False).logits[:, :-1]
    selected = completion_mask.bool()
    per_token_logps = torch.zeros(completion_ids.shape, dtype=torch.float32, device=logits.device)
    per_token_logps[selected] = selective_log_softmax(logits[selected], completion_ids[selected])
    logps = per_token_logps.sum(dim=1)
    lengths = completion_mask.sum(dim=1)
    batch_size = batch["prompt_input_ids"].shape[0]
    out = {"per_token_logps": per_token_logps}
    if "log_sum_sq_probs" in outputs:
        out["per_token_log_sum_sq_probs"] = torch.zeros_like(per_token_logps)
        out["per_token_log_sum_sq_probs"][selected] = log_sum_sq_probs(logits[selected])
    for i, field in enumerate(response_fields(batch)):
        out[f"{field}_logps"] = logps[i * batch_size: (i + 1) * batch_size]
        out[f"{field}_lengths"] = lengths[i * batch_size: (i + 1) * batch_size]
    return out
