"""Log-probs of the scored tokens straight from hidden states, without keeping a (tokens, vocabulary) tensor.

The LM head runs on the scored positions only, a slice of rows at a time, with the log-softmax in float32.
When gradients are wanted and the head itself is frozen (LoRA), the gradient of each log-prob with respect to
its hidden state, ``W[label] - softmax(logits) @ W``, is worked out in the same pass while the slice's logits
are at hand; the backward only scales it. That costs the one matmul the backward would have done anyway and
keeps (K, hidden) numbers instead of (K, vocabulary) logits. A trainable head (full fine-tuning) takes the
ordinary autograd path.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from vlmdpo.forward.logps import log_sum_sq_probs, selective_log_softmax

# Rows per slice are chosen so that one slice of float32 logits is about this many elements (32 MiB): big
# enough for an efficient matmul, and one buffer is reused for every slice (fresh buffers this large are new
# pages from the OS each time, which costs more than the arithmetic on them).
_SLICE_ELEMENTS = 1 << 23


def _rows_per_slice(vocab_size: int) -> int:
    return max(1, _SLICE_ELEMENTS // vocab_size)


def _fold_slices(hidden, weight, bias, labels, gradient: torch.Tensor | None) -> torch.Tensor:
    """Float32 log-probs of ``labels``; with ``gradient`` (K, H) given, also fill it with d logp / d hidden.

    Per slice, in one reused float32 buffer: logits, then ``exp(logits - max)``, then (for the gradient)
    ``onehot(label) - softmax``, then one matmul with the head's weight.
    """
    rows = min(_rows_per_slice(weight.shape[0]), max(1, hidden.shape[0]))
    logps = torch.empty(hidden.shape[0], dtype=torch.float32, device=hidden.device)
    buffer = torch.empty(rows, weight.shape[0], dtype=torch.float32, device=hidden.device)
    direct = (bias is None and weight.dtype == torch.float32 and hidden.dtype == torch.float32
              and not torch.is_autocast_enabled(hidden.device.type))
    for start in range(0, hidden.shape[0], rows):
        part = slice(start, start + rows)
        index = labels[part].unsqueeze(-1)
        scores = buffer[: index.shape[0]]
        if direct:
            torch.mm(hidden[part], weight.t(), out=scores)
        else:  # the head's own dtype and autocast, as the model would compute the logits
            scores.copy_(F.linear(hidden[part], weight, bias))
        target = scores.gather(-1, index)
        peak = scores.amax(dim=-1, keepdim=True)
        total = scores.sub_(peak).exp_().sum(dim=-1, keepdim=True)
        logps[part] = (target - peak - total.log()).squeeze(-1)
        if gradient is not None:
            scores.mul_(total.reciprocal().neg_())
            scores.scatter_add_(-1, index, torch.ones_like(target))
            gradient[part] = scores.to(weight.dtype) @ weight
    return logps


class _LogProbsWithGradient(torch.autograd.Function):
    """``log_softmax(hidden @ weight.T + bias)[i, labels[i]]`` whose backward reaches ``hidden`` only."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, labels):
        gradient = torch.empty_like(hidden)
        logps = _fold_slices(hidden, weight, bias, labels, gradient)
        ctx.save_for_backward(gradient)
        return logps

    @staticmethod
    def backward(ctx, grad_logps):
        (gradient,) = ctx.saved_tensors
        return gradient * grad_logps.unsqueeze(-1).to(gradient.dtype), None, None, None


def _softcapped_logps(hidden, lm_head, labels, softcap: float) -> torch.Tensor:
    """``selective_log_softmax(tanh(lm_head(hidden) / softcap) * softcap, labels)``, a slice of rows at a time;
    under autograd each slice's logits are recomputed in the backward instead of kept."""
    from torch.utils.checkpoint import checkpoint

    def slice_logps(part, part_labels):
        logits = lm_head(part)
        return selective_log_softmax(torch.tanh(logits / softcap) * softcap, part_labels)

    rows = _rows_per_slice(lm_head.weight.shape[0])
    parts = []
    for start in range(0, hidden.shape[0], rows):
        part, part_labels = hidden[start: start + rows], labels[start: start + rows]
        parts.append(checkpoint(slice_logps, part, part_labels, use_reentrant=False) if torch.is_grad_enabled()
                     else slice_logps(part, part_labels))
    return torch.cat(parts) if parts else hidden.new_zeros(0, dtype=torch.float32)


def head_logps(hidden: torch.Tensor, lm_head: torch.nn.Module, labels: torch.Tensor, *, logit_scale: float = 1.0,
               softcap: float | None = None) -> torch.Tensor:
    """Float32 log-probs (K,) of ``labels`` (K,) under ``lm_head(hidden)`` for ``hidden`` (K, H).

    Equal to ``selective_log_softmax(lm_head(hidden), labels)``; see the module docstring for how it saves
    memory. ``lm_head`` must be a plain ``nn.Linear`` (LoRA on the head takes the autograd path).
    ``logit_scale`` multiplies the logits (Cohere's, Aya Vision's; a bias-free head scales its input instead)
    and ``softcap`` soft-caps them as Gemma's ``final_logit_softcapping`` does (``tanh(logits / c) * c``),
    before the log-softmax.
    """
    if logit_scale != 1.0:
        if lm_head.bias is not None:
            raise ValueError("logit_scale needs a head without bias")
        hidden = hidden * logit_scale
    if softcap is not None:
        return _softcapped_logps(hidden, lm_head, labels, softcap)
    weight, bias = lm_head.weight, lm_head.bias
    plain_linear = type(lm_head) is torch.nn.Linear
    trainable_head = weight.requires_grad or (bias is not None and bias.requires_grad)
    grad_enabled = torch.is_grad_enabled()
    if not plain_linear or (grad_enabled and trainable_head):
        return selective_log_softmax(lm_head(hidden), labels)
    if grad_enabled and hidden.requires_grad:
        return _LogProbsWithGradient.apply(hidden, weight, bias, labels)
    with torch.no_grad():
        return _fold_slices(hidden, weight, bias, labels, None)


@torch.no_grad()
def head_log_sum_sq_probs(hidden: torch.Tensor, lm_head: torch.nn.Module, *, logit_scale: float = 1.0,
                          softcap: float | None = None) -> torch.Tensor:
    """``log sum_v p_v ** 2`` (K,) float32 of the distribution ``lm_head(hidden)`` at each row of ``hidden``
    (K, H), with ``head_logps``' logit transform, a slice of rows at a time and without gradients (WPO's
    weights read it; ``vlmdpo.forward.logps.log_sum_sq_probs``)."""
    rows = _rows_per_slice(lm_head.weight.shape[0])
    parts = []
    for start in range(0, hidden.shape[0], rows):
        logits = lm_head(hidden[start: start + rows] * logit_scale).float()
        if softcap is not None:
            logits = torch.tanh(logits / softcap) * softcap
        parts.append(log_sum_sq_probs(logits))
    return torch.cat(parts) if parts else hidden.new_zeros(0, dtype=torch.float32)
