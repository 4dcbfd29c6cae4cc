"""Attention for packed preference pairs: each response sees its prompt and its own earlier tokens.

``vlmdpo.packing`` lays a batch out as one sequence, per pair ``[prompt; chosen; rejected]``. Here each pair's
prompt attends causally to itself (one ``is_causal`` SDPA call, so the prompt's keys and values are computed
once and the upper triangle is skipped), and each response attends to the prompt plus its own past (one masked
SDPA call per response): the rejected response never sees the chosen one. That is the prompt's key/value cache
shared by two continuations, inside one ordinary forward, so gradients reach the prompt and gradient
checkpointing replays it unchanged (the layout travels in the forward's keyword arguments, which the
checkpoint keeps).

``install_tree_attention(model)`` registers a wrapper around the language model's attention implementation
(sdpa or eager): calls that carry a ``pair_layout`` keyword go through ``tree_attention``, all others to the
original function, so generation and the plain path are unchanged.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

LAYOUT_KWARG = "pair_layout"
SUPPORTED_ATTENTION = ("sdpa", "eager")


@dataclass(eq=False)
class PairLayout:
    """Where each pair sits in a packed sequence: pair ``b`` starts at ``starts[b]``, has ``prompt_lengths[b]``
    prompt tokens, then one block of ``response_lengths[b][f]`` tokens per response field ``f``."""

    starts: tuple[int, ...]
    prompt_lengths: tuple[int, ...]
    response_lengths: tuple[tuple[int, ...], ...]
    _masks: dict = field(default_factory=dict, repr=False)

    def response_mask(self, length: int, prompt_len: int, device: torch.device) -> torch.Tensor:
        """(length, prompt_len + length) boolean mask: a response sees the whole prompt and its own past."""
        key = (length, prompt_len, device)
        if key not in self._masks:
            mask = torch.ones(length, prompt_len + length, dtype=torch.bool, device=device)
            mask[:, prompt_len:] = torch.ones(length, length, dtype=torch.bool, device=device).tril()
            self._masks[key] = mask
        return self._masks[key]


def _sdpa(query, key, value, groups: int, **kwargs) -> torch.Tensor:
    if groups > 1:
        return F.scaled_dot_product_attention(query, key, value, enable_gqa=True, **kwargs)
    return F.scaled_dot_product_attention(query, key, value, **kwargs)


def tree_attention(module, query, key, value, layout: PairLayout, dropout: float = 0.0,
                   scaling: float | None = None) -> torch.Tensor:
    """Attention output (1, N, H, D) for ``query`` (1, H, N, D), ``key``/``value`` (1, Hkv, N, D) packed as
    ``layout`` says."""
    groups = getattr(module, "num_key_value_groups", 1)
    options = {"dropout_p": dropout, "scale": scaling}
    outputs = []
    for b, (start, prompt_len) in enumerate(zip(layout.starts, layout.prompt_lengths)):
        prompt = slice(start, start + prompt_len)
        prompt_key, prompt_value = key[:, :, prompt], value[:, :, prompt]
        outputs.append(_sdpa(query[:, :, prompt], prompt_key, prompt_value, groups, is_causal=True, **options))
        offset = start + prompt_len
        for length in layout.response_lengths[b]:
            if length == 0:
                continue
            own = slice(offset, offset + length)
            if offset == prompt.stop:  # the first response follows the prompt: one slice holds both
                own_key, own_value = key[:, :, start: own.stop], value[:, :, start: own.stop]
            else:
                own_key = torch.cat([prompt_key, key[:, :, own]], dim=2)
                own_value = torch.cat([prompt_value, value[:, :, own]], dim=2)
            outputs.append(_sdpa(query[:, :, own], own_key, own_value, groups,
                                 attn_mask=layout.response_mask(length, prompt_len, query.device), **options))
            offset += length
    return torch.cat(outputs, dim=2).transpose(1, 2).contiguous()


def placeholder_mask(device) -> torch.Tensor:
    """A (1, 1, 1, 1) mask to pass with a packed call: transformers takes a 4-D mask as already prepared and
    builds none, where it would otherwise build one over the whole packed sequence (N x N) that
    ``tree_attention``, masking pair by pair, never reads."""
    return torch.ones(1, 1, 1, 1, dtype=torch.bool, device=device)


def _original(name: str, module):
    from transformers import AttentionInterface

    if name == "eager":  # each model defines its own eager function next to its attention module
        return sys.modules[type(module).__module__].eager_attention_forward
    return AttentionInterface._global_mapping[name]


def _wrapper(base: str):
    def attention(module, query, key, value, attention_mask, dropout: float = 0.0, scaling: float | None = None,
                  **kwargs):
        layout = kwargs.pop(LAYOUT_KWARG, None)
        if layout is None:
            return _original(base, module)(module, query, key, value, attention_mask, dropout=dropout,
                                           scaling=scaling, **kwargs)
        return tree_attention(module, query, key, value, layout, dropout=dropout, scaling=scaling), None

    return attention


def tree_attention_name(base: str) -> str:
    return f"vlmdpo_tree_{base}"


def install_tree_attention(model) -> str:
    """Make ``model``'s language model accept ``pair_layout``; return its attention implementation's name.

    Idempotent. Raises ``ValueError`` for implementations other than sdpa and eager (flash attention kernels
    take no arbitrary masks; the plain path serves those models).
    """
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    config = model.config.get_text_config()
    current = config._attn_implementation or "eager"
    if current.startswith("vlmdpo_tree_"):
        return current
    if current not in SUPPORTED_ATTENTION:
        raise ValueError(f"the language model uses {current!r} attention; packed pairs need one of "
                         f"{SUPPORTED_ATTENTION}")
    name = tree_attention_name(current)
    AttentionInterface.register(name, _wrapper(current))
    AttentionMaskInterface.register(name, AttentionMaskInterface._global_mapping[current])
    sub_configs = [key for key in model.config.sub_configs if getattr(model.config, key) is config]
    model.set_attn_implementation({key: name for key in sub_configs} if sub_configs else name)
    return name
