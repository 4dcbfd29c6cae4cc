"""DPO-family preference losses as pure functions of summed response log-probs.

Every loss takes the same four (B,) tensors -- ``policy_chosen_logps``, ``policy_rejected_logps``,
``ref_chosen_logps``, ``ref_rejected_logps``: log-probs summed over the response tokens only -- plus the
keyword-only settings it uses and nothing else (optional ``chosen_lengths`` / ``rejected_lengths`` are (B,)
response token counts). ``beta`` may be a float or a tensor without gradient, 0-d (beta-DPO's batch beta) or
(B,) (MM-DPO's beta per pair). Each returns per-pair losses of shape (B,) in float32; the trainer takes the mean.
``vlmdpo.methods.registry`` registers them, with the losses on each response's own reward
(``response_rewards``, ``bco``), AOT's batch-sorted ones (``aot``) and mDPO's terms (``mdpo``).

Notation in the docstrings: ``chosen_logratio = pi_c - ref_c``, ``rejected_logratio = pi_r - ref_r``,
``h = chosen_logratio - rejected_logratio`` is the log-ratio difference, and ``s`` is the sigmoid. The losses on
``h`` take ``f_divergence`` (``vlmdpo.methods.fdivergence``): ``h`` is then ``f'(u_c) - f'(u_r)`` with
``u = pi / ref``, which is the log-ratio difference for the default reverse KL.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from vlmdpo.methods.fdivergence import f_divergence_score

__all__ = ["as_float32", "cdpo", "check_smoothing", "discopop", "exo_pair", "hinge", "ipo", "rewards", "robust", "sft",
           "sigmoid_dpo", "sigmoid_norm", "simpo"]


def as_float32(*tensors: Tensor) -> tuple[Tensor, ...]:
    # bf16 log-sigmoid near zero loses the digits that carry the preference signal.
    return tuple(t.float() for t in tensors)


def _per_token(logps: Tensor, lengths: Tensor) -> Tensor:
    # clamp: a response truncated to zero tokens has logps 0, so 0/1 = 0 rather than NaN.
    return logps.float() / lengths.float().clamp(min=1)


def _scores(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps,
            f_divergence="reverse_kl", alpha=0.5) -> tuple[Tensor, Tensor]:
    """The chosen and rejected f-DPO scores ``f'(pi / ref)``: the log-ratios under the reverse KL."""
    pc, pr, rc, rr = as_float32(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps)
    return f_divergence_score(pc - rc, f_divergence, alpha), f_divergence_score(pr - rr, f_divergence, alpha)


def _log_ratio_diff(*logps, f_divergence="reverse_kl", alpha=0.5) -> Tensor:
    chosen_scores, rejected_scores = _scores(*logps, f_divergence, alpha)
    return chosen_scores - rejected_scores


def _check_lengths(name: str, chosen_lengths, rejected_lengths) -> None:
    if chosen_lengths is None or rejected_lengths is None:
        raise ValueError(f"{name} needs chosen_lengths and rejected_lengths (response token counts, shape (B,)) "
                         "to length-normalise the log-probs")


def check_smoothing(label_smoothing: float, upper: float, closed: bool, name: str) -> None:
    """Raises unless ``0 <= label_smoothing <= upper`` (``< upper`` when not ``closed``), naming the loss."""
    if not (0.0 <= label_smoothing <= upper if closed else 0.0 <= label_smoothing < upper):
        bound = f"<= {upper}" if closed else f"< {upper}"
        raise ValueError(f"{name}: label_smoothing must be >= 0 and {bound}, got {label_smoothing}")


def sigmoid_dpo(policy_chosen_logps: Tensor, policy_rejected_logps: Tensor, ref_chosen_logps: Tensor,
                ref_rejected_logps: Tensor, *, beta: float = 0.1, label_smoothing: float = 0.0,
                f_divergence: str = "reverse_kl", f_divergence_alpha: float = 0.5) -> Tensor:
    """DPO, Rafailov et al. 2023 (arXiv:2305.18290), eq. 7; conservative DPO when label_smoothing > 0.

    Inputs are (B,) summed response log-probs; returns (B,) losses
    ``-(1 - eps) * log s(beta * h) - eps * log s(-beta * h)`` with ``eps = label_smoothing``.
    ``eps > 0`` is cDPO (Mitchell 2023, "A note on DPO with noisy preferences"; TRL's formula):
    the label is assumed flipped with probability eps, 0 <= eps <= 0.5. Another ``f_divergence`` is f-DPO.
    """
    check_smoothing(label_smoothing, 0.5, closed=True, name="sigmoid_dpo")
    logits = beta * _log_ratio_diff(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps,
                                    ref_rejected_logps, f_divergence=f_divergence, alpha=f_divergence_alpha)
    return -(1 - label_smoothing) * F.logsigmoid(logits) - label_smoothing * F.logsigmoid(-logits)


def cdpo(policy_chosen_logps: Tensor, policy_rejected_logps: Tensor, ref_chosen_logps: Tensor,
         ref_rejected_logps: Tensor, *, beta: float = 0.1, label_smoothing: float = 0.1,
         f_divergence: str = "reverse_kl", f_divergence_alpha: float = 0.5) -> Tensor:
    """Conservative DPO (Mitchell 2023): :func:`sigmoid_dpo` with label_smoothing defaulting to 0.1.

    (B,) inputs -> (B,) losses ``-(1 - eps) * log s(beta * h) - eps * log s(-beta * h)``.
    """
    check_smoothing(label_smoothing, 0.5, closed=True, name="cdpo")
    return sigmoid_dpo(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps,
                       beta=beta, label_smoothing=label_smoothing, f_divergence=f_divergence,
                       f_divergence_alpha=f_divergence_alpha)


def ipo(policy_chosen_logps: Tensor, policy_rejected_logps: Tensor, ref_chosen_logps: Tensor,
        ref_rejected_logps: Tensor, *, beta: float = 0.1, chosen_lengths: Tensor | None = None,
        rejected_lengths: Tensor | None = None, f_divergence: str = "reverse_kl",
        f_divergence_alpha: float = 0.5) -> Tensor:
    """IPO, Azar et al. 2023 (arXiv:2310.12036), eq. 17: (B,) losses ``(h - 1 / (2 * beta)) ** 2``.

    As in TRL, IPO works on length-averaged log-ratios: when ``chosen_lengths`` and ``rejected_lengths``
    ((B,) response token counts) are given, ``h = chosen_logratio / |y_c| - rejected_logratio / |y_r|``
    (each f-DPO score divided by its length), so callers always pass summed log-probs. Without lengths
    the sums are used as they are.
    """
    if (chosen_lengths is None) != (rejected_lengths is None):
        raise ValueError("ipo: pass both chosen_lengths and rejected_lengths, or neither")
    chosen_scores, rejected_scores = _scores(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps,
                                             ref_rejected_logps, f_divergence, f_divergence_alpha)
    if chosen_lengths is not None:
        chosen_scores = _per_token(chosen_scores, chosen_lengths)
        rejected_scores = _per_token(rejected_scores, rejected_lengths)
    return (chosen_scores - rejected_scores - 1 / (2 * beta)) ** 2


def hinge(policy_chosen_logps: Tensor, policy_rejected_logps: Tensor, ref_chosen_logps: Tensor,
          ref_rejected_logps: Tensor, *, beta: float = 0.1, f_divergence: str = "reverse_kl",
          f_divergence_alpha: float = 0.5) -> Tensor:
    """SLiC hinge loss, Zhao et al. 2023 (arXiv:2305.10425), eq. 3: (B,) losses ``relu(1 - beta * h)``.

    ``1 / beta`` plays the role of the SLiC margin delta; the reference terms make it the DPO-style
    hinge used by TRL.
    """
    return torch.relu(1 - beta * _log_ratio_diff(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps,
                                                 ref_rejected_logps, f_divergence=f_divergence,
                                                 alpha=f_divergence_alpha))


def robust(policy_chosen_logps: Tensor, policy_rejected_logps: Tensor, ref_chosen_logps: Tensor,
           ref_rejected_logps: Tensor, *, beta: float = 0.1, label_smoothing: float = 0.0,
           f_divergence: str = "reverse_kl", f_divergence_alpha: float = 0.5) -> Tensor:
    """Robust DPO, Chowdhury et al. 2024 (arXiv:2403.00409), eq. 10: an unbiased loss under label noise.

    (B,) inputs -> (B,) losses
    ``((1 - eps) * -log s(beta * h) + eps * log s(-beta * h)) / (1 - 2 * eps)``, with the flip rate
    ``eps = label_smoothing`` in [0, 0.5). At eps = 0 it is :func:`sigmoid_dpo`.
    """
    check_smoothing(label_smoothing, 0.5, closed=False, name="robust")
    logits = beta * _log_ratio_diff(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps,
                                    ref_rejected_logps, f_divergence=f_divergence, alpha=f_divergence_alpha)
    eps = label_smoothing
    return (-(1 - eps) * F.logsigmoid(logits) + eps * F.logsigmoid(-logits)) / (1 - 2 * eps)


def sigmoid_norm(policy_chosen_logps: Tensor, policy_rejected_logps: Tensor, ref_chosen_logps: Tensor,
                 ref_rejected_logps: Tensor, *, beta: float = 0.1, chosen_lengths: Tensor | None = None,
                 rejected_lengths: Tensor | None = None, f_divergence: str = "reverse_kl",
                 f_divergence_alpha: float = 0.5) -> Tensor:
    """Length-normalised DPO, the form Tulu 3 trains with (Lambert et al. 2024, arXiv:2411.15124; TRL's
    ``sigmoid_norm``).

    (B,) losses ``-log s(beta * (chosen_logratio / |y_c| - rejected_logratio / |y_r|))``: DPO on per-token
    log-ratios (each f-DPO score divided by its length), so a longer response earns no larger reward.
    ``chosen_lengths`` and ``rejected_lengths`` ((B,) response token counts) are required.
    """
    _check_lengths("sigmoid_norm", chosen_lengths, rejected_lengths)
    chosen_scores, rejected_scores = _scores(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps,
                                             ref_rejected_logps, f_divergence, f_divergence_alpha)
    margin = _per_token(chosen_scores, chosen_lengths) - _per_token(rejected_scores, rejected_lengths)
    return -F.logsigmoid(beta * margin)


def exo_pair(policy_chosen_logps: Tensor, policy_rejected_logps: Tensor, ref_chosen_logps: Tensor,
             ref_rejected_logps: Tensor, *, beta: float = 0.1, label_smoothing: float = 1e-3,
             f_divergence: str = "reverse_kl", f_divergence_alpha: float = 0.5) -> Tensor:
    """EXO on pairs, Ji et al. 2024 (arXiv:2402.00856), eq. 16 with K = 2 (TRL's ``exo_pair``).

    (B,) losses ``KL(q || p)``, the reverse KL from the policy's preference ``q = (s(beta * h), s(-beta * h))``
    to the smoothed label ``p = (1 - eps, eps)``:
    ``s(beta * h) * (log s(beta * h) - log(1 - eps)) + s(-beta * h) * (log s(-beta * h) - log eps)``,
    with ``eps = label_smoothing`` in (0, 1); the paper uses 1e-3 (this default). At eps -> 0 the second
    log diverges: EXO needs a smoothed label.
    """
    if not 0.0 < label_smoothing < 1.0:
        raise ValueError(f"exo_pair: label_smoothing (EXO's epsilon) must be > 0 and < 1, got {label_smoothing}; "
                         "the paper uses 1e-3")
    logits = beta * _log_ratio_diff(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps,
                                    ref_rejected_logps, f_divergence=f_divergence, alpha=f_divergence_alpha)
    chosen_term = torch.sigmoid(logits) * (F.logsigmoid(logits) - math.log1p(-label_smoothing))
    return chosen_term + torch.sigmoid(-logits) * (F.logsigmoid(-logits) - math.log(label_smoothing))


def discopop(policy_chosen_logps: Tensor, policy_rejected_logps: Tensor, ref_chosen_logps: Tensor,
             ref_rejected_logps: Tensor, *, beta: float = 0.1, discopop_tau: float = 0.05,
             f_divergence: str = "reverse_kl", f_divergence_alpha: float = 0.5) -> Tensor:
    """DiscoPOP's log-ratio modulated loss, Lu et al. 2024 (arXiv:2406.08414), eq. 5 (TRL's ``discopop``).

    (B,) losses ``(1 - m) * -log s(beta * h) + m * exp(-beta * h)`` with ``m = s(beta * h / tau)``,
    ``tau = discopop_tau`` (0.05 in the paper): the logistic DPO loss where the policy already prefers the
    chosen response less than the reference does, blending into the exponential loss where it prefers it more.
    Not convex: at h = 0 with tau = 0.05 its slope in h is positive.
    """
    if discopop_tau <= 0:
        raise ValueError(f"discopop: discopop_tau must be > 0, got {discopop_tau}")
    logits = beta * _log_ratio_diff(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps,
                                    ref_rejected_logps, f_divergence=f_divergence, alpha=f_divergence_alpha)
    modulation = torch.sigmoid(logits / discopop_tau)
    return (1 - modulation) * -F.logsigmoid(logits) + modulation * torch.exp(-logits)


def simpo(policy_chosen_logps: Tensor, policy_rejected_logps: Tensor, ref_chosen_logps: Tensor,
          ref_rejected_logps: Tensor, *, beta: float = 2.0, simpo_gamma: float = 0.5,
          chosen_lengths: Tensor | None = None, rejected_lengths: Tensor | None = None) -> Tensor:
    """SimPO, Meng et al. 2024 (arXiv:2405.14734), eq. 6: reference-free, length-normalised.

    (B,) losses ``-log s(beta * (pi_c / |y_c| - pi_r / |y_r|) - gamma)`` with ``gamma = simpo_gamma``;
    the reference log-probs are accepted for a uniform signature and ignored. ``chosen_lengths`` and
    ``rejected_lengths`` ((B,) response token counts) are required. The paper uses beta around 2.0-2.5
    (hence this default, not DPO's 0.1) and gamma / beta around 0.5.
    """
    _check_lengths("simpo", chosen_lengths, rejected_lengths)
    margin = _per_token(policy_chosen_logps, chosen_lengths) - _per_token(policy_rejected_logps, rejected_lengths)
    return -F.logsigmoid(beta * margin - simpo_gamma)


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
