"""Pack a collated preference batch into one padding-free sequence: per pair ``[prompt; chosen; rejected]``.

The prompt (image tokens included) appears once per pair. Both responses take the positions that follow the
prompt, as if each came right after it, and ``vlmdpo.forward.tree_attention`` lets each response see the prompt and
its own earlier tokens only. So one forward computes exactly what the plain path computes on
``[prompt; chosen]`` and ``[prompt; rejected]``, with the prompt run once and no padding token anywhere.

Positions are the one model-family difference: models with 3-D (M-RoPE) positions (Qwen2-VL and its kin) expose
``get_rope_index`` on their base model, and it is asked for the prompt's positions; the others count tokens.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import torch

from vlmdpo.forward.logps import response_fields
from vlmdpo.model.load import hf_model
from vlmdpo.forward.tree_attention import PairLayout


@dataclass
class PackedPairs:
    """A batch of B pairs as one sequence of N tokens, and where its response tokens are scored.

    Attributes:
        input_ids: (1, N) prompt and response tokens of every pair, no padding.
        position_ids: (1, N), or (3, 1, N) for M-RoPE models.
        token_types: per-token processor outputs (``mm_token_type_ids``...), (1, N) each; on responses the
            collator's ``response_token_types`` value (0 unless the processor gives a suffix another).
        vision_inputs: the batch's per-image inputs, unchanged (images stay in prompt order).
        layout: where each pair's prompt and responses sit (``PairLayout``), for the attention.
        score_index: (K,) index into the N positions of the position that predicts each scored token.
        labels: (K,) the scored tokens.
        score_row, score_col: (K,) where each scored token sits in the ``(F * B, C)`` per-token output
            (rows ``f * B + b`` for response field ``f`` of pair ``b``, as in the plain path).
        fields: the response fields, ``("chosen", "rejected")`` or ``("chosen",)``.
        shape: ``(F * B, C)``, the shape of the plain path's ``per_token_logps``.
        lengths: (F * B,) scored tokens per response.
    """

    input_ids: torch.Tensor
    position_ids: torch.Tensor
    token_types: dict[str, torch.Tensor]
    vision_inputs: dict[str, torch.Tensor]
    layout: PairLayout
    score_index: torch.Tensor
    labels: torch.Tensor
    score_row: torch.Tensor
    score_col: torch.Tensor
    fields: tuple[str, ...]
    shape: tuple[int, int]
    lengths: torch.Tensor


def _rope_index_fn(model):
    """The base model's ``get_rope_index`` (M-RoPE models), or ``None`` for 1-D positions."""
    base = hf_model(model)
    body = getattr(base, "model", base)
    return getattr(body, "get_rope_index", None)


def prompt_positions(model, batch: dict, extra: int) -> torch.Tensor:
    """Positions (A, B, P + extra) of each left-padded prompt followed by ``extra`` text tokens.

    ``A`` is 3 for M-RoPE models (asked of the model's own ``get_rope_index``, so image tokens get their
    (time, height, width) positions and the text after them continues where the model continues it), else 1.
    Padding positions are meaningless and never used.
    """
    ids, mask = batch["prompt_input_ids"], batch["prompt_attention_mask"]
    batch_size = ids.shape[0]
    tail = ids.new_zeros(batch_size, extra)
    full_ids, full_mask = torch.cat([ids, tail], dim=1), torch.cat([mask, torch.ones_like(tail)], dim=1)
    rope_index = _rope_index_fn(model)
    if rope_index is None:
        return (full_mask.cumsum(-1) - 1).clamp(min=0).unsqueeze(0)
    accepted = inspect.signature(rope_index).parameters
    kwargs = {key: torch.cat([value, tail.to(value.dtype)], dim=1)
              for key, value in batch["prompt_token_types"].items() if key in accepted}
    kwargs.update({key: value for key, value in batch["vision_inputs"].items() if key in accepted})
    positions, _ = rope_index(full_ids, attention_mask=full_mask, **kwargs)
    return positions


def model_prompt_masks(model, prompt_types: dict[str, torch.Tensor]) -> dict[str, torch.Tensor] | None:
    """The (P, P) boolean masks the model itself gives one unpadded prompt, per layer type, where they differ
    from causal; ``None`` when all are causal.

    Asked of the model's own ``create_masks_for_generate`` (models whose per-token inputs change attention:
    Gemma 3's bidirectional image blocks, PaliGemma's bidirectional prefix), with the prompt's per-token
    inputs (``prompt_types``, each (P,)). Models without one attend causally.
    """
    base = hf_model(model)
    create = getattr(type(base), "create_masks_for_generate", None)
    length = next(iter(prompt_types.values())).shape[0] if prompt_types else 0
    if create is None or length == 0:
        return None
    accepted = inspect.signature(create).parameters
    device = next(base.parameters()).device
    masks = create(config=base.config, inputs_embeds=torch.zeros(1, length, 1, device=device,
                                                                 dtype=next(base.parameters()).dtype),
                   attention_mask=torch.ones(1, length, dtype=torch.long, device=device), cache=None,
                   position_ids=torch.arange(length, device=device)[None],
                   is_first_iteration=True,
                   **{key: value[None] for key, value in prompt_types.items() if key in accepted})
    if not isinstance(masks, dict):
        masks = {"full_attention": masks}
    causal = torch.ones(length, length, dtype=torch.bool, device=device).tril()
    own = {}
    for kind, mask in masks.items():
        if mask is None:  # the mask function found plain causal attention enough
            continue
        if not isinstance(mask, torch.Tensor):
            raise ValueError(f"{type(base).__name__} builds {type(mask).__name__} attention masks; packed pairs "
                             "read boolean or additive mask tensors (load the model with sdpa or eager attention)")
        mask = mask[0, 0] if mask.dtype == torch.bool else mask[0, 0] == 0
        if not torch.equal(mask, causal):
            own[kind] = mask
    return own or None


def pack_pairs(model, batch: dict) -> PackedPairs:
    """Pack ``batch`` (from ``PreferenceCollator``) for ``fast_logps.packed_completion_logps``.

    ``model`` is asked only for positions (see ``prompt_positions``); nothing is padded.
    """
    fields = response_fields(batch)
    prompt_ids, prompt_mask = batch["prompt_input_ids"], batch["prompt_attention_mask"]
    batch_size, prompt_width = prompt_ids.shape
    responses = [(batch[f"{f}_input_ids"], batch[f"{f}_attention_mask"], batch[f"{f}_completion_mask"])
                 for f in fields]
    width = max(ids.shape[1] for ids, _, _ in responses)
    positions = prompt_positions(model, batch, width)
    response_types = batch.get("response_token_types", {})  # what a response token gets (PaliGemma's suffix: 1)

    pieces, position_pieces, type_pieces = [], [], {key: [] for key in batch["prompt_token_types"]}
    score_index, labels, score_row, score_col = [], [], [], []
    starts, prompt_lengths, response_lengths, prompt_masks = [], [], [], []
    start = 0
    for b in range(batch_size):
        valid = prompt_mask[b].bool()
        prompt_len = int(valid.sum())
        pieces.append(prompt_ids[b, valid])
        position_pieces.append(positions[:, b, :prompt_width][:, valid])
        for key, value in batch["prompt_token_types"].items():
            type_pieces[key].append(value[b, valid])
        prompt_types = {key: value[b, valid] for key, value in batch["prompt_token_types"].items()}
        prompt_masks.append(model_prompt_masks(model, prompt_types))
        offset, lengths = start + prompt_len, []
        for f, (ids, attention, completion) in enumerate(responses):
            length = int(attention[b].sum())  # right-padded: the first ``length`` tokens are real
            pieces.append(ids[b, :length])
            position_pieces.append(positions[:, b, prompt_width: prompt_width + length])
            for key, value in batch["prompt_token_types"].items():
                type_pieces[key].append(value.new_full((length,), response_types.get(key, 0)))
            cols = completion[b, :length].nonzero().squeeze(-1)
            # token j is predicted at position j - 1 of its own response; token 0 at the prompt's last token
            score_index.append(torch.where(cols == 0, start + prompt_len - 1, offset + cols - 1))
            labels.append(ids[b, cols])
            score_row.append(torch.full_like(cols, f * batch_size + b))
            score_col.append(cols)
            offset += length
            lengths.append(length)
        starts.append(start)
        prompt_lengths.append(prompt_len)
        response_lengths.append(tuple(lengths))
        start = offset

    counts = torch.stack([c.sum(1) for _, _, c in responses]).reshape(-1)
    return PackedPairs(
        input_ids=torch.cat(pieces).unsqueeze(0),
        position_ids=torch.cat(position_pieces, dim=1).unsqueeze(1) if positions.shape[0] > 1
        else torch.cat(position_pieces, dim=1),
        token_types={key: torch.cat(value).unsqueeze(0) for key, value in type_pieces.items()},
        vision_inputs=batch["vision_inputs"],
        layout=PairLayout(tuple(starts), tuple(prompt_lengths), tuple(response_lengths),
                          tuple(prompt_masks) if any(m is not None for m in prompt_masks) else None),
        score_index=torch.cat(score_index), labels=torch.cat(labels),
        score_row=torch.cat(score_row), score_col=torch.cat(score_col),
        fields=fields, shape=(len(fields) * batch_size, width), lengths=counts,
    )


def padding_stats(batch: dict) -> dict[str, float]:
    """Token counts of the plain layout (2B rows of ``[prompt; response]`` padded to the longest) against the
    packed one; ``padding_fraction`` is the share of the plain layout's tokens that are padding."""
    fields = response_fields(batch)
    prompt_tokens = batch["prompt_attention_mask"].sum(1)
    width = batch["prompt_input_ids"].shape[1] + max(batch[f"{f}_input_ids"].shape[1] for f in fields)
    plain = len(fields) * prompt_tokens.numel() * width
    real = sum(int((prompt_tokens + batch[f"{f}_attention_mask"].sum(1)).sum()) for f in fields)
    packed = int(prompt_tokens.sum()) + sum(int(batch[f"{f}_attention_mask"].sum()) for f in fields)
    return {"plain_tokens": plain, "real_tokens": real, "packed_tokens": packed,
            "padding_fraction": 1 - real / plain}
