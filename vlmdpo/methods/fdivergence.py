"""f-DPO: DPO's implicit reward under other f-divergences (Wang et al. 2023, arXiv:2309.16240, Theorem 1).

DPO regularises the policy with the reverse KL divergence, whose ``f'(u) = log u`` makes a response's reward
``beta * log(pi / ref)``. f-DPO takes ``f'`` of another divergence at ``u = pi / ref`` instead. The
``beta * log Z(x)`` left by the reparameterisation cancels only in the chosen-minus-rejected difference, so
only the losses on that difference take a divergence (``vlmdpo.methods.registry.check_f_divergence``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["F_DIVERGENCES", "f_divergence_score"]


def _alpha_divergence(logratio: Tensor, alpha: float) -> Tensor:
    if abs(alpha - 1.0) < 1e-6:  # the limit alpha -> 1 is log u
        return logratio
    # exp of a float32 overflows past 88.7; TRL caps the exponent at 80 the same way
    return torch.expm1(((alpha - 1.0) * logratio).clamp(max=80.0)) / (alpha - 1.0)


F_PRIMES = {
    "reverse_kl": lambda logratio, alpha: logratio,
    "forward_kl": lambda logratio, alpha: -torch.expm1(-logratio),
    "js_divergence": lambda logratio, alpha: math.log(2) + F.logsigmoid(logratio),
    "alpha_divergence": _alpha_divergence,
}
"""``f'(u)`` of each divergence as a function of ``log u``, named as TRL's ``f_divergence_type``."""

F_DIVERGENCES = tuple(F_PRIMES)


def f_divergence_score(logratio: Tensor, f_divergence: str = "reverse_kl", alpha: float = 0.5) -> Tensor:
    """``f'(u)`` at ``u = exp(logratio)``: the score whose chosen-minus-rejected difference f-DPO's losses take.

    ``logratio`` is a (B,) float32 ``log pi - log ref``; returns (B,). By ``f_divergence``:
    reverse_kl ``log u`` (DPO); forward_kl ``1 - 1/u``; js_divergence ``log(2u / (1 + u))``;
    alpha_divergence ``(u ** (alpha - 1) - 1) / (alpha - 1)``, which is ``log u`` at alpha = 1 and
    forward_kl at alpha = 0 (TRL's ``f_alpha_divergence_coef``; the exponent is capped at 80).
    """
    if f_divergence not in F_PRIMES:
        raise ValueError(f"f_divergence must be one of {list(F_DIVERGENCES)}, got {f_divergence!r}")
    return F_PRIMES[f_divergence](logratio, alpha)
