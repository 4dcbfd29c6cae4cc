"""AOT, Melnyk et al. 2024 (arXiv:2406.05882): distributional preference alignment by optimal transport.

AOT asks the chosen rewards to dominate the rejected ones as distributions (first-order stochastic dominance),
not pair by pair: in one dimension the optimal transport plan matches sorted values with sorted values, so
both losses sort across the batch and each row's loss depends on the other rows. The mean over the batch is
what TRL computes; with gradient accumulation the sorting is over each micro-batch, as in TRL.

Each takes the four (B,) summed response log-probs and returns (B,) float32 losses (``s`` is the sigmoid).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from vlmdpo.methods.losses import as_float32, check_smoothing

__all__ = ["aot", "aot_unpaired"]


def _smoothed_logistic(margin: Tensor, beta: float, label_smoothing: float) -> Tensor:
    if torch.is_tensor(beta) and beta.dim() > 0:
        raise ValueError("AOT sorts the pairs across the batch, so a per-pair beta would meet another pair's margin: "
                         "give it one beta (a float or a 0-d tensor)")
    return (-(1 - label_smoothing) * F.logsigmoid(beta * margin)
            - label_smoothing * F.logsigmoid(-beta * margin))


def aot(policy_chosen_logps: Tensor, policy_rejected_logps: Tensor, ref_chosen_logps: Tensor,
        ref_rejected_logps: Tensor, *, beta: float = 0.1, label_smoothing: float = 0.0) -> Tensor:
    """Paired AOT (TRL's ``aot``): the policy's chosen-minus-rejected log-prob margins dominate the reference's.

    ``d = sort(pi_c - pi_r) - sort(ref_c - ref_r)`` over the batch (ascending, so the k-th smallest policy
    margin meets the k-th smallest reference margin); (B,) losses
    ``-(1 - eps) * log s(beta * d) - eps * log s(-beta * d)`` with ``eps = label_smoothing`` in [0, 0.5].
    With one row it is :func:`vlmdpo.methods.losses.sigmoid_dpo`.
    """
    check_smoothing(label_smoothing, 0.5, closed=True, name="aot")
    pc, pr, rc, rr = as_float32(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps)
    margins = torch.sort(pc - pr, dim=0).values - torch.sort(rc - rr, dim=0).values
    return _smoothed_logistic(margins, beta, label_smoothing)


def aot_unpaired(policy_chosen_logps: Tensor, policy_rejected_logps: Tensor, ref_chosen_logps: Tensor,
                 ref_rejected_logps: Tensor, *, beta: float = 0.1, label_smoothing: float = 0.0) -> Tensor:
    """Unpaired AOT (TRL's ``aot_unpaired``): the chosen log-ratios dominate the rejected ones as distributions,
    for data whose chosen and rejected responses need not come in pairs.

    ``d = sort(chosen_logratio) - sort(rejected_logratio)`` over the batch (ascending), with
    ``chosen_logratio = pi_c - ref_c``, ``rejected_logratio = pi_r - ref_r``; (B,) losses
    ``-(1 - eps) * log s(beta * d) - eps * log s(-beta * d)`` with ``eps = label_smoothing`` in [0, 0.5].
    """
    check_smoothing(label_smoothing, 0.5, closed=True, name="aot_unpaired")
    pc, pr, rc, rr = as_float32(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps)
    margins = torch.sort(pc - rc, dim=0).values - torch.sort(pr - rr, dim=0).values
    return _smoothed_logistic(margins, beta, label_smoothing)
