"""DPO-family preference losses as pure functions of summed response log-probs.

Every loss takes the same four (B,) tensors -- ``policy_chosen_logps``, ``policy_rejected_logps``,
``ref_chosen_logps``, ``ref_rejected_logps``: log-probs summed over the response tokens only -- plus
keyword-only hyper-parameters, optional ``chosen_lengths`` / ``rejected_lengths`` ((B,) response token
counts) and ``**_``, so that :func:`combined_loss` can hand one keyword set to every component.
Each returns per-pair losses of shape (B,) in float32; the trainer takes the mean.

Notation in the docstrings: ``h = (pi_c - pi_r) - (ref_c - ref_r)`` is the log-ratio difference,
``chosen_logratio = pi_c - ref_c``, ``rejected_logratio = pi_r - ref_r``, and ``s`` is the sigmoid.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "CHOSEN_ONLY", "CORRUPTED_IMAGE", "LOSSES", "MDPO", "MPO", "REFERENCE_FREE", "apo_zero", "bco_pair", "cdpo",
    "combined_loss", "hinge", "ipo", "mdpo_anchor", "mdpo_conditional", "rewards", "robust", "sft", "sigmoid_dpo",
    "simpo",
]


def _f32(*tensors: Tensor) -> tuple[Tensor, ...]:
    # bf16 log-sigmoid near zero loses the digits that carry the preference signal.
    return tuple(t.float() for t in tensors)


def _per_token(logps: Tensor, lengths: Tensor) -> Tensor:
    # clamp: a response truncated to zero tokens has logps 0, so 0/1 = 0 rather than NaN.
    return logps.float() / lengths.float().clamp(min=1)


def _log_ratio_diff(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps):
    pc, pr, rc, rr = _f32(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps)
    return (pc - pr) - (rc - rr)


def _check_smoothing(label_smoothing: float, upper: float, closed: bool, name: str) -> None:
    if not (0.0 <= label_smoothing <= upper if closed else 0.0 <= label_smoothing < upper):
        bound = f"<= {upper}" if closed else f"< {upper}"
        raise ValueError(f"{name}: label_smoothing must be >= 0 and {bound}, got {label_smoothing}")


def sigmoid_dpo(policy_chosen_logps: Tensor, policy_rejected_logps: Tensor, ref_chosen_logps: Tensor,
                ref_rejected_logps: Tensor, *, beta: float = 0.1, label_smoothing: float = 0.0, **_) -> Tensor:
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
         ref_rejected_logps: Tensor, *, beta: float = 0.1, label_smoothing: float = 0.1, **_) -> Tensor:
    """Conservative DPO (Mitchell 2023): :func:`sigmoid_dpo` with label_smoothing defaulting to 0.1.

    (B,) inputs -> (B,) losses ``-(1 - eps) * log s(beta * h) - eps * log s(-beta * h)``.
    """
    _check_smoothing(label_smoothing, 0.5, closed=True, name="cdpo")
    return sigmoid_dpo(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps,
                       beta=beta, label_smoothing=label_smoothing)


def ipo(policy_chosen_logps: Tensor, policy_rejected_logps: Tensor, ref_chosen_logps: Tensor,
        ref_rejected_logps: Tensor, *, beta: float = 0.1, chosen_lengths: Tensor | None = None,
        rejected_lengths: Tensor | None = None, **_) -> Tensor:
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
          ref_rejected_logps: Tensor, *, beta: float = 0.1, **_) -> Tensor:
    """SLiC hinge loss, Zhao et al. 2023 (arXiv:2305.10425), eq. 3: (B,) losses ``relu(1 - beta * h)``.

    ``1 / beta`` plays the role of the SLiC margin delta; the reference terms make it the DPO-style
    hinge used by TRL.
    """
    return torch.relu(1 - beta * _log_ratio_diff(policy_chosen_logps, policy_rejected_logps,
                                                 ref_chosen_logps, ref_rejected_logps))


def robust(policy_chosen_logps: Tensor, policy_rejected_logps: Tensor, ref_chosen_logps: Tensor,
           ref_rejected_logps: Tensor, *, beta: float = 0.1, label_smoothing: float = 0.0, **_) -> Tensor:
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
          chosen_lengths: Tensor | None = None, rejected_lengths: Tensor | None = None, **_) -> Tensor:
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


def bco_pair(policy_chosen_logps: Tensor, policy_rejected_logps: Tensor, ref_chosen_logps: Tensor,
             ref_rejected_logps: Tensor, *, beta: float = 0.1, bco_delta: float | Tensor = 0.0, **_) -> Tensor:
    """Paired BCO, Jung et al. 2024 (arXiv:2404.04656), eq. 6 in TRL's ``bco_pair`` form.

    (B,) losses ``-log s(beta * chosen_logratio - delta) - log s(-(beta * rejected_logratio - delta))``
    with ``delta = bco_delta``. The paper's delta is a running mean of the rewards
    (``beta * logratio`` over chosen and rejected); a pure function cannot keep state, so the caller
    tracks it and passes it in (scalar or 0-d tensor); 0.0 reduces to a fixed classifier threshold.
    """
    pc, pr, rc, rr = _f32(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps)
    chosen_rewards, rejected_rewards = beta * (pc - rc), beta * (pr - rr)
    return -F.logsigmoid(chosen_rewards - bco_delta) - F.logsigmoid(-(rejected_rewards - bco_delta))


def apo_zero(policy_chosen_logps: Tensor, policy_rejected_logps: Tensor, ref_chosen_logps: Tensor,
             ref_rejected_logps: Tensor, *, beta: float = 0.1, **_) -> Tensor:
    """APO-zero, D'Oosterlinck et al. 2024 (arXiv:2408.06266), eq. 8 (TRL's ``apo_zero``).

    (B,) losses ``(1 - s(beta * chosen_logratio)) + s(beta * rejected_logratio)``: pushes chosen
    likelihood up and rejected down independently, for data where the chosen answer beats the model.
    """
    pc, pr, rc, rr = _f32(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps)
    return (1 - torch.sigmoid(beta * (pc - rc))) + torch.sigmoid(beta * (pr - rr))


def sft(policy_chosen_logps: Tensor, policy_rejected_logps: Tensor, ref_chosen_logps: Tensor,
        ref_rejected_logps: Tensor, *, chosen_lengths: Tensor | None = None, **_) -> Tensor:
    """Negative log-likelihood of the chosen response (the generation term of MPO, arXiv:2411.10442).

    (B,) losses ``-pi_c / |y_c|`` (per-token mean NLL) when ``chosen_lengths`` is given, else the
    summed NLL ``-pi_c``. Rejected and reference log-probs are ignored.
    """
    if chosen_lengths is None:
        return -policy_chosen_logps.float()
    return -_per_token(policy_chosen_logps, chosen_lengths)


def mdpo_conditional(policy_chosen_logps: Tensor, policy_rejected_logps: Tensor, ref_chosen_logps: Tensor,
                     ref_rejected_logps: Tensor, *, beta: float = 0.1,
                     policy_corrupted_chosen_logps: Tensor | None = None,
                     ref_corrupted_chosen_logps: Tensor | None = None, **_) -> Tensor:
    """mDPO's conditional preference, Wang et al. 2024 (arXiv:2406.11839), its L_CoPO term.

    The chosen response with the real image is preferred over the same chosen response with a corrupted
    image (``vlmdpo.corrupt``): (B,) losses
    ``-log s(beta * ((pi_c - ref_c) - (pi_c' - ref_c')))``, where ``pi_c'`` and ``ref_c'`` are
    ``policy_corrupted_chosen_logps`` and ``ref_corrupted_chosen_logps``, (B,) summed log-probs of the
    chosen response given the corrupted image. Rejected log-probs are ignored. When the corrupted image
    is the real one, the term is the constant ln 2 and gives no gradient: the signal is the image alone.
    """
    if policy_corrupted_chosen_logps is None or ref_corrupted_chosen_logps is None:
        raise ValueError("mdpo_conditional needs policy_corrupted_chosen_logps and ref_corrupted_chosen_logps: "
                         "(B,) summed log-probs of the chosen response given a corrupted image "
                         "(vlmdpo.corrupt), from the policy and from the reference")
    pc, rc, pcc, rcc = _f32(policy_chosen_logps, ref_chosen_logps, policy_corrupted_chosen_logps,
                            ref_corrupted_chosen_logps)
    return -F.logsigmoid(beta * ((pc - rc) - (pcc - rcc)))


def mdpo_anchor(policy_chosen_logps: Tensor, policy_rejected_logps: Tensor, ref_chosen_logps: Tensor,
                ref_rejected_logps: Tensor, *, beta: float = 0.1, anchor_margin: float = 0.0, **_) -> Tensor:
    """mDPO's anchored preference, Wang et al. 2024 (arXiv:2406.11839), its L_AncPO term.

    (B,) losses ``-log s(beta * chosen_logratio - delta)`` with ``delta = anchor_margin`` (the paper's
    anchor, 0 there): pushes the chosen reward above the anchor, so the chosen likelihood does not fall
    while the pair's margin grows. Rejected log-probs are ignored.
    """
    pc, rc = _f32(policy_chosen_logps, ref_chosen_logps)
    return -F.logsigmoid(beta * (pc - rc) - anchor_margin)


LOSSES: dict[str, Callable[..., Tensor]] = {
    "sigmoid": sigmoid_dpo,
    "cdpo": cdpo,
    "ipo": ipo,
    "hinge": hinge,
    "robust": robust,
    "simpo": simpo,
    "bco_pair": bco_pair,
    "apo_zero": apo_zero,
    "sft": sft,
    "mdpo_conditional": mdpo_conditional,
    "mdpo_anchor": mdpo_anchor,
}

MPO: tuple[tuple[str, float], ...] = (("sigmoid", 0.8), ("bco_pair", 0.2), ("sft", 1.0))

# What each loss reads: the trainer skips the reference pass, or the rejected responses, when no
# component of a combined loss needs them.
REFERENCE_FREE = frozenset({"simpo", "sft"})
CHOSEN_ONLY = frozenset({"sft", "mdpo_conditional", "mdpo_anchor"})
"""Mixed Preference Optimization, Wang et al. 2024 (arXiv:2411.10442): preference + quality + generation."""

MDPO: tuple[tuple[str, float], ...] = (("sigmoid", 1.0), ("mdpo_conditional", 1.0), ("mdpo_anchor", 1.0))
"""mDPO, Wang et al. 2024 (arXiv:2406.11839): its objective L_DPO + L_CoPO + L_AncPO, equal weights."""

# Losses that read the chosen response's log-probs given a corrupted image: the trainer runs that pass
# (``policy_corrupted_chosen_logps``, ``ref_corrupted_chosen_logps``) only when one of them is used.
CORRUPTED_IMAGE = frozenset({"mdpo_conditional"})


def rewards(policy_logps: Tensor, ref_logps: Tensor, beta: float) -> Tensor:
    """Implicit DPO reward ``beta * (policy_logps - ref_logps)`` of shape (B,), detached, for metrics."""
    return (beta * (policy_logps.float() - ref_logps.float())).detach()


def combined_loss(losses: Sequence[tuple[str, float]] | Mapping[str, float], policy_chosen_logps: Tensor,
                  policy_rejected_logps: Tensor, ref_chosen_logps: Tensor, ref_rejected_logps: Tensor,
                  **kwargs) -> tuple[Tensor, dict[str, Tensor]]:
    """Weighted sum of registered losses, e.g. ``MPO``: ``sum_k w_k * mean_B(loss_k)``.

    ``losses`` is ``[(name, weight), ...]`` or ``{name: weight}``; every name must be in
    :data:`LOSSES`, weights must be >= 0 (a zero weight still computes the component, for logging).
    ``kwargs`` (beta, label_smoothing, chosen_lengths, ...) go to every component; each takes what it
    uses. Returns the scalar total and ``{name: mean loss}`` detached, for logging.
    """
    pairs = list(losses.items()) if isinstance(losses, Mapping) else [tuple(p) for p in losses]
    if not pairs:
        raise ValueError("combined_loss needs at least one (name, weight) pair")
    names = [name for name, _ in pairs]
    unknown = [name for name in names if name not in LOSSES]
    if unknown:
        raise ValueError(f"unknown loss name(s) {unknown}; known losses: {sorted(LOSSES)}")
    if len(set(names)) != len(names):
        raise ValueError(f"each loss may appear once, got {names}")
    negative = {name: weight for name, weight in pairs if weight < 0}
    if negative:
        raise ValueError(f"loss weights must be >= 0, got {negative}")

    total = torch.zeros((), dtype=torch.float32, device=policy_chosen_logps.device)
    components: dict[str, Tensor] = {}
    for name, weight in pairs:
        mean = LOSSES[name](policy_chosen_logps, policy_rejected_logps, ref_chosen_logps,
                            ref_rejected_logps, **kwargs).mean()
        total = total + weight * mean
        components[name] = mean.detach()
    return total, components
