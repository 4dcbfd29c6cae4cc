"""DPO-family preference losses as pure functions of summed response log-probs.

Every loss takes the same four (B,) tensors -- ``policy_chosen_logps``, ``policy_rejected_logps``,
``ref_chosen_logps``, ``ref_rejected_logps``: log-probs summed over the response tokens only -- plus the
keyword-only settings it uses and nothing else (optional ``chosen_lengths`` / ``rejected_lengths`` are (B,)
response token counts). Each returns per-pair losses of shape (B,) in float32; the trainer takes the mean.
``vlmdpo.methods.registry`` registers them, with BCO's (``bco``) and mDPO's (``mdpo``) terms.

Notation in the docstrings: ``h = (pi_c - pi_r) - (ref_c - ref_r)`` is the log-ratio difference,
``chosen_logratio = pi_c - ref_c``, ``rejected_logratio = pi_r - ref_r``, and ``s`` is the sigmoid.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["apo_zero", "as_float32", "cdpo", "hinge", "ipo", "rewards", "robust", "sft", "sigmoid_dpo", "simpo"]


def as_float32(*tensors: Tensor) -> tuple[Tensor, ...]:
    # bf16 log-sigmoid near zero loses the digits that carry the preference signal.
    return tuple(t.float() for t in tensors)


def _per_token(logps: Tensor, lengths: Tensor) -> Tensor:
    # clamp: a response truncated to zero tokens has logps 0, so 0/1 = 0 rather than NaN.
    return logps.float() / lengths.float().clamp(min=1)


def _log_ratio_diff(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps):
    pc, pr, rc, rr = as_float32(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps)
    return (pc - pr) - (rc - rr)


def _check_smoothing(label_smoothing: float, upper: float, closed: bool, name: str) -> None:
    if not (0.0 <= label_smoothing <= upper if closed else 0.0 <= label_smoothing < upper):
        bound = f"<= {upper}" if closed else f"< {upper}"
        raise ValueError(f"{name}: label_smoothing must be >= 0 and {bound}, got {label_smoothing}")


def sigmoid_dpo(policy_chosen_logps: Tensor, policy_rejected_logps: Tensor, ref_chosen_logps: Tensor,
                ref_rejected_logps: Tensor, *, beta: float = 0.1, label_smoothing: float = 0.0) -> Tensor:
    """DPO, Rafailov et al. 2023 (arXiv:2305.18290), eq. 7; conservative DPO when label_smoothing > 0.

    Inputs are (B,) summed response log-probs; returns (B,) losses
    ``-(1 - eps) * log s(beta * h) - eps * log s(-beta * h)`` with ``eps = label_smoothing``.
    ``eps > 0`` is cDPO (Mitchell 2023, "A note on DPO with noisy preferences"; TRL's formula):
    the label is assumed flipped with probability eps, 0 <= eps <= 0.5.
    """
    _check_smoothing(label_smoothing, 0.5, closed=True, name="sigmoid_dpo")
    logits = beta * _log_ratio_diff(policy_chosen_logps, policy_rejected_logps,
                                    ref_chosen_logps, ref_rejected_logps)
    return -(1 - label_smoothing) * F.logsigmoid(logits) - label_smoothing * F.logsigmoid(-logits)


def cdpo(policy_chosen_logps: Tensor, policy_rejected_logps: Tensor, ref_chosen_logps: Tensor,
         ref_rejected_logps: Tensor, *, beta: float = 0.1, label_smoothing: float = 0.1) -> Tensor:
    """Conservative DPO (Mitchell 2023): :func:`sigmoid_dpo` with label_smoothing defaulting to 0.1.

    (B,) inputs -> (B,) losses ``-(1 - eps) * log s(beta * h) - eps * log s(-beta * h)``.
    """
    _check_smoothing(label_smoothing, 0.5, closed=True, name="cdpo")
    return sigmoid_dpo(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps,
                       beta=beta, label_smoothing=label_smoothing)


def ipo(policy_chosen_logps: Tensor, policy_rejected_logps: Tensor, ref_chosen_logps: Tensor,
        ref_rejected_logps: Tensor, *, beta: float = 0.1, chosen_lengths: Tensor | None = None,
        rejected_lengths: Tensor | None = None) -> Tensor:
    """IPO, Azar et al. 2023 (arXiv:2310.12036), eq. 17: (B,) losses ``(h - 1 / (2 * beta)) ** 2``.

    As in TRL, IPO works on length-averaged log-probs: when ``chosen_lengths`` and
    ``rejected_lengths`` ((B,) response token counts) are given, all four log-probs are divided by
    their response length here, so callers always pass summed log-probs. Without lengths the sums
    are used as they are.
    """
    logps = (policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps)
    if (chosen_lengths is None) != (rejected_lengths is None):
        raise ValueError("ipo: pass both chosen_lengths and rejected_lengths, or neither")
    if chosen_lengths is not None:
        lengths = (chosen_lengths, rejected_lengths, chosen_lengths, rejected_lengths)
        logps = tuple(_per_token(lp, n) for lp, n in zip(logps, lengths))
    return (_log_ratio_diff(*logps) - 1 / (2 * beta)) ** 2


def hinge(policy_chosen_logps: Tensor, policy_rejected_logps: Tensor, ref_chosen_logps: Tensor,
          ref_rejected_logps: Tensor, *, beta: float = 0.1) -> Tensor:
    """SLiC hinge loss, Zhao et al. 2023 (arXiv:2305.10425), eq. 3: (B,) losses ``relu(1 - beta * h)``.

    ``1 / beta`` plays the role of the SLiC margin delta; the reference terms make it the DPO-style
    hinge used by TRL.
    """
    return torch.relu(1 - beta * _log_ratio_diff(policy_chosen_logps, policy_rejected_logps,
                                                 ref_chosen_logps, ref_rejected_logps))


def robust(policy_chosen_logps: Tensor, policy_rejected_logps: Tensor, ref_chosen_logps: Tensor,
           ref_rejected_logps: Tensor, *, beta: float = 0.1, label_smoothing: float = 0.0) -> Tensor:
    """Robust DPO, Chowdhury et al. 2024 (arXiv:2403.00409), eq. 10: an unbiased loss under label noise.

    (B,) inputs -> (B,) losses
    ``((1 - eps) * -log s(beta * h) + eps * log s(-beta * h)) / (1 - 2 * eps)``, with the flip rate
    ``eps = label_smoothing`` in [0, 0.5). At eps = 0 it is :func:`sigmoid_dpo`.
    """
    _check_smoothing(label_smoothing, 0.5, closed=False, name="robust")
    logits = beta * _log_ratio_diff(policy_chosen_logps, policy_rejected_logps,
                                    ref_chosen_logps, ref_rejected_logps)
    eps = label_smoothing
    return (-(1 - eps) * F.logsigmoid(logits) + eps * F.logsigmoid(-logits)) / (1 - 2 * eps)


def simpo(policy_chosen_logps: Tensor, policy_rejected_logps: Tensor, ref_chosen_logps: Tensor,
          ref_rejected_logps: Tensor, *, beta: float = 2.0, simpo_gamma: float = 0.5,
          chosen_lengths: Tensor | None = None, rejected_lengths: Tensor | None = None) -> Tensor:
    """SimPO, Meng et al. 2024 (arXiv:2405.14734), eq. 6: reference-free, length-normalised.

    (B,) losses ``-log s(beta * (pi_c / |y_c| - pi_r / |y_r|) - gamma)`` with ``gamma = simpo_gamma``;
    the reference log-probs are accepted for a uniform signature and ignored. ``chosen_lengths`` and
    ``rejected_lengths`` ((B,) response token counts) are required. The paper uses beta around 2.0-2.5
    (hence this default, not DPO's 0.1) and gamma / beta around 0.5.
    """
    if chosen_lengths is None or rejected_lengths is None:
        raise ValueError("simpo needs chosen_lengths and rejected_lengths (response token counts, shape (B,)) "
                         "to length-normalise the log-probs")
    margin = _per_token(policy_chosen_logps, chosen_lengths) - _per_token(policy_rejected_logps, rejected_lengths)
    return -F.logsigmoid(beta * margin - simpo_gamma)


def apo_zero(policy_chosen_logps: Tensor, policy_rejected_logps: Tensor, ref_chosen_logps: Tensor,
             ref_rejected_logps: Tensor, *, beta: float = 0.1) -> Tensor:
    """APO-zero, D'Oosterlinck et al. 2024 (arXiv:2408.06266), eq. 8 (TRL's ``apo_zero``).

    (B,) losses ``(1 - s(beta * chosen_logratio)) + s(beta * rejected_logratio)``: pushes chosen
    likelihood up and rejected down independently, for data where the chosen answer beats the model.
    """
    pc, pr, rc, rr = as_float32(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps)
    return (1 - torch.sigmoid(beta * (pc - rc))) + torch.sigmoid(beta * (pr - rr))


def sft(policy_chosen_logps: Tensor, policy_rejected_logps: Tensor, ref_chosen_logps: Tensor,
        ref_rejected_logps: Tensor, *, chosen_lengths: Tensor | None = None) -> Tensor:
    """Negative log-likelihood of the chosen response (the generation term of MPO, arXiv:2411.10442).

    (B,) losses ``-pi_c / |y_c|`` (per-token mean NLL) when ``chosen_lengths`` is given, else the
    summed NLL ``-pi_c``. Rejected and reference log-probs are ignored.
    """
    if chosen_lengths is None:
        return -policy_chosen_logps.float()
    return -_per_token(policy_chosen_logps, chosen_lengths)


def rewards(policy_logps: Tensor, ref_logps: Tensor, beta: float) -> Tensor:
    """Implicit DPO reward ``beta * (policy_logps - ref_logps)`` of shape (B,), detached, for metrics."""
    return (beta * (policy_logps.float() - ref_logps.float())).detach()
