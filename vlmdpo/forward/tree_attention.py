"""Attention for packed preference pairs: each response sees its prompt and its own earlier tokens.

``vlmdpo.forward.packing`` lays a batch out as one sequence, per pair ``[prompt; chosen; rejected]``. Here each pair's
prompt attends to itself as the model would have it (one ``is_causal`` SDPA call, or the model's own prompt
mask: Gemma 3's bidirectional image blocks, PaliGemma's prefix), so the prompt's keys and values are computed
once; each response attends to the prompt plus its own past, one SDPA call per response with a causal mask
aligned to the bottom right (``causal_lower_right``: FlashAttention's own convention when queries are fewer than
keys, so on a GPU the call reaches the fused kernels; on a CPU, which has no such kernels, the same mask built
once per batch and shared by every layer). The rejected response never sees the chosen one.
Sliding-window layers keep their window, counted from each response's own position after its prompt. That is
the prompt's key/value cache shared by two continuations, inside one ordinary forward, so gradients reach the
prompt and gradient checkpointing replays it unchanged (the layout travels in the forward's keyword
arguments, which the checkpoint keeps).

``install_tree_attention(model)`` registers a wrapper around the language model's attention implementation
(sdpa, eager, FlashAttention 2/3 or flex): calls that carry a ``pair_layout`` keyword go through
``tree_attention``, all others to the original function, so generation and the plain path are unchanged.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch.nn.attention.bias import causal_lower_right

LAYOUT_KWARG = "pair_layout"
# Packed calls always run through SDPA here; unpacked calls (generation, the plain path) keep the model's own
# implementation, so a model loaded with a FlashAttention or flex kernel keeps it wherever packing is not used.
SUPPORTED_ATTENTION = ("sdpa", "eager", "flash_attention_2", "flash_attention_3", "flex_attention")
# Keyword arguments some attention modules pass that change the attention itself; tree attention does not
# reproduce them, so a packed call that carries one is refused rather than computed wrong.
_UNSUPPORTED_KWARGS = ("softcap", "s_aux")


@dataclass(eq=False)
class PairLayout:
    """Where each pair sits in a packed sequence: pair ``b`` starts at ``starts[b]``, has ``prompt_lengths[b]``
    prompt tokens, then one block of ``response_lengths[b][f]`` tokens per response field ``f``.

    ``prompt_masks[b]``, when given, maps a layer type (``"full_attention"``, ``"sliding_attention"``) to the
    (P, P) boolean mask the model itself gives pair ``b``'s prompt (Gemma 3's bidirectional image blocks,
    PaliGemma's bidirectional prefix); ``None`` means causal.
    """

    starts: tuple[int, ...]
    prompt_lengths: tuple[int, ...]
    response_lengths: tuple[tuple[int, ...], ...]
    prompt_masks: tuple[dict[str, torch.Tensor] | None, ...] | None = None
    _masks: dict = field(default_factory=dict, repr=False)

    def prompt_mask(self, pair: int, layer_type: str, window: int | None, device, dtype=torch.float32):
        """Pair ``pair``'s (P, P) additive prompt mask for a layer (``additive_mask``); ``None`` when it is plain
        causal (SDPA's ``is_causal``)."""
        own = self.prompt_masks[pair] if self.prompt_masks else None
        if own is not None and layer_type in own:
            return self._cached(("own", pair, layer_type, device, dtype),
                                lambda: additive_mask(own[layer_type].to(device), dtype))
        length = self.prompt_lengths[pair]
        if window is None or length <= window:
            return None
        return self._cached(("prompt", length, window, device, dtype),
                            lambda: additive_mask(window_mask(length, 0, window, device), dtype))

    def response_mask(self, length: int, prompt_len: int, window: int | None, device, dtype=torch.float32):
        """The mask of a response of ``length`` tokens after a prompt of ``prompt_len``: it sees the whole prompt
        and its own past, a causal mask aligned to the bottom right. Where SDPA has fused kernels (CUDA, XPU)
        that is ``causal_lower_right``, which they serve without building the mask; elsewhere (a CPU builds it
        on every call, as a new float mask kept for the backward), the same mask built once for every layer as
        an ``additive_mask``. With a sliding window shorter than ``prompt_len + length``, an additive mask that
        also drops keys outside the window."""
        if window is None or prompt_len + length <= window:
            if fused_kernels(device):
                return causal_lower_right(length, prompt_len + length)
            window = prompt_len + length  # a window that cuts nothing: the bottom-right causal mask
        return self._cached(("response", length, prompt_len, window, device, dtype),
                            lambda: additive_mask(window_mask(length, prompt_len, window, device), dtype))

    def _cached(self, key, build):
        if key not in self._masks:
            self._masks[key] = build()
        return self._masks[key]


def fused_kernels(device) -> bool:
    """Whether SDPA has FlashAttention / memory-efficient kernels on ``device`` (CUDA and XPU)."""
    return torch.device(device).type in ("cuda", "xpu")


def additive_mask(allowed: torch.Tensor, dtype) -> torch.Tensor:
    """A boolean mask (True: attend) as the float mask SDPA adds to the scores: 0 where allowed, -inf elsewhere.
    SDPA turns a boolean mask into this on every call and keeps that copy for the backward; one shared float
    mask is kept once for all the layers that use it."""
    return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill_(~allowed, float("-inf"))


def window_mask(length: int, prompt_len: int, window: int, device) -> torch.Tensor:
    """(length, prompt_len + length) boolean mask for queries at positions ``prompt_len ..`` of a sequence:
    causal, and only keys less than ``window`` positions back (transformers' rule: ``kv > q - window``)."""
    query = torch.arange(prompt_len, prompt_len + length, device=device)[:, None]
    key = torch.arange(prompt_len + length, device=device)[None, :]
    return (key <= query) & (key > query - window)


def _repeat_kv(tensor: torch.Tensor, groups: int) -> torch.Tensor:
    return tensor if groups == 1 else tensor.repeat_interleave(groups, dim=1)


def _sdpa(query, key, value, groups: int, attn_mask=None, **kwargs) -> torch.Tensor:
    if isinstance(attn_mask, torch.nn.attention.bias.CausalBias):
        # CausalBias's fused kernels take as many key as query heads: repeat grouped keys here
        return F.scaled_dot_product_attention(query, _repeat_kv(key, groups), _repeat_kv(value, groups),
                                              attn_mask=attn_mask, **kwargs)
    if groups > 1:
        return F.scaled_dot_product_attention(query, key, value, attn_mask=attn_mask, enable_gqa=True, **kwargs)
    return F.scaled_dot_product_attention(query, key, value, attn_mask=attn_mask, **kwargs)


def layer_type(module) -> str:
    """The attention layer's kind as its config names it (``"full_attention"`` when the config has none)."""
    kind = getattr(module, "layer_type", None)
    if kind is None:
        kinds, index = getattr(module.config, "layer_types", None), getattr(module, "layer_idx", None)
        kind = kinds[index] if kinds is not None and index is not None else "full_attention"
    return kind


def tree_attention(module, query, key, value, layout: PairLayout, dropout: float = 0.0,
                   scaling: float | None = None, sliding_window: int | None = None) -> torch.Tensor:
    """Attention output (1, N, H, D) for ``query`` (1, H, N, D), ``key``/``value`` (1, Hkv, N, D) packed as
    ``layout`` says; ``sliding_window``: keys at most that many positions back, counting the prompt and the
    response's own past (so each response sees what it would see right after its prompt)."""
    groups = query.shape[1] // key.shape[1]
    options = {"dropout_p": dropout, "scale": scaling}
    kind = layer_type(module)
    outputs = []
    for b, (start, prompt_len) in enumerate(zip(layout.starts, layout.prompt_lengths)):
        prompt = slice(start, start + prompt_len)
        prompt_key, prompt_value = key[:, :, prompt], value[:, :, prompt]
        mask = layout.prompt_mask(b, kind, sliding_window, query.device, query.dtype)
        outputs.append(_sdpa(query[:, :, prompt], prompt_key, prompt_value, groups, attn_mask=mask,
                             is_causal=mask is None, **options))
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
            mask = layout.response_mask(length, prompt_len, sliding_window, query.device, query.dtype)
            outputs.append(_sdpa(query[:, :, own], own_key, own_value, groups, attn_mask=mask, **options))
            offset += length
    return torch.cat([output.transpose(1, 2) for output in outputs], dim=1)  # (1, N, H, D), one copy


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


def _wrapper(original):
    """The attention function for packed models: ``original(module)`` is the function unpacked calls get."""
    def attention(module, query, key, value, attention_mask, dropout: float = 0.0, scaling: float | None = None,
                  **kwargs):
        layout = kwargs.pop(LAYOUT_KWARG, None)
        if layout is None:
            return original(module)(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                    **kwargs)
        refused = [name for name in _UNSUPPORTED_KWARGS if kwargs.get(name) is not None]
        if refused:
            raise ValueError(f"packed pairs do not reproduce attention with {refused} "
                             f"({type(module).__name__}); use train.forward_path=plain")
        window = kwargs.get("sliding_window", getattr(module, "sliding_window", None))
        return tree_attention(module, query, key, value, layout, dropout=dropout, scaling=scaling,
                              sliding_window=window), None

    attention.vlmdpo_tree = True
    return attention


def tree_attention_name(base: str) -> str:
    return f"vlmdpo_tree_{base}"


def install_tree_attention(model) -> str:
    """Make ``model``'s language model accept ``pair_layout``; return its attention implementation's name.

    sdpa, eager and flex models get a wrapper under a name of their own (``vlmdpo_tree_<base>``). FlashAttention
    models keep their implementation's name, since transformers finds the kernels by it: the registered
    function is wrapped in place, and the wrapper passes every unpacked call on unchanged.
    Idempotent. Raises ``ValueError`` for implementations not in ``SUPPORTED_ATTENTION``.
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
    if current.startswith("flash_attention"):
        function = AttentionInterface._global_mapping[current]
        if not getattr(function, "vlmdpo_tree", False):
            AttentionInterface.register(current, _wrapper(lambda module: function))
        return current
    name = tree_attention_name(current)
    AttentionInterface.register(name, _wrapper(lambda module: _original(current, module)))
    AttentionMaskInterface.register(name, AttentionMaskInterface._global_mapping[current])
    sub_configs = [key for key in model.config.sub_configs if getattr(model.config, key) is config]
    model.set_attn_implementation({key: name for key in sub_configs} if sub_configs else name)
    return name
