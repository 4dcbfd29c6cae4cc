"""Preference losses on each response's own implicit reward rather than on the chosen-minus-rejected difference.

Each takes the four (B,) summed response log-probs and returns (B,) float32 losses, as in
``vlmdpo.methods.losses``; the rewards are ``chosen_reward = beta * (pi_c - ref_c)`` and
``rejected_reward = beta * (pi_r - ref_r)``, and ``s`` is the sigmoid. A reward taken alone keeps the
``beta * log Z(x)`` that only the difference cancels, so these losses take no f-divergence. BCO's pair loss,
which needs a running shift, lives in ``vlmdpo.methods.bco``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from vlmdpo.methods.losses import as_float32

__all__ = ["apo_down", "apo_zero", "nca_pair", "sppo_hard"]


def _logratios(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps):
    pc, pr, rc, rr = as_float32(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps)
    return pc - rc, pr - rr


def apo_zero(policy_chosen_logps: Tensor, policy_rejected_logps: Tensor, ref_chosen_logps: Tensor,
             ref_rejected_logps: Tensor, *, beta: float = 0.1) -> Tensor:
    """APO-zero, D'Oosterlinck et al. 2024 (arXiv:2408.06266), eq. 7 (TRL's ``apo_zero``).

    (B,) losses ``(1 - s(chosen_reward)) + s(rejected_reward)``: pushes chosen likelihood up and rejected
    down independently, for data where the chosen answer beats the model.
    """
    chosen_logratio, rejected_logratio = _logratios(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps,
                                                    ref_rejected_logps)
    return (1 - torch.sigmoid(beta * chosen_logratio)) + torch.sigmoid(beta * rejected_logratio)


def apo_down(policy_chosen_logps: Tensor, policy_rejected_logps: Tensor, ref_chosen_logps: Tensor,
             ref_rejected_logps: Tensor, *, beta: float = 0.1) -> Tensor:
    """APO-down, D'Oosterlinck et al. 2024 (arXiv:2408.06266), eq. 8 (TRL's ``apo_down``).

    (B,) losses ``s(chosen_reward) + (1 - s(chosen_reward - rejected_reward))``: pushes the chosen
    likelihood down and the rejected one down further, for data where the model already beats the chosen
    answer. At pi == ref the two terms' slopes in the chosen log-prob cancel.
    """
    chosen_logratio, rejected_logratio = _logratios(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps,
                                                    ref_rejected_logps)
    return torch.sigmoid(beta * chosen_logratio) + (1 - torch.sigmoid(beta * (chosen_logratio - rejected_logratio)))


def nca_pair(policy_chosen_logps: Tensor, policy_rejected_logps: Tensor, ref_chosen_logps: Tensor,
             ref_rejected_logps: Tensor, *, beta: float = 0.1) -> Tensor:
    """NCA on pairs, Chen et al. 2024 (arXiv:2402.05369), its pairwise noise-contrastive loss (TRL's ``nca_pair``).

    (B,) losses ``-log s(chosen_reward) - 0.5 * log s(-chosen_reward) - 0.5 * log s(-rejected_reward)``:
    each response's reward is classified on its own, NCA's remedy for DPO lowering the chosen likelihood.
    """
    chosen_logratio, rejected_logratio = _logratios(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps,
                                                    ref_rejected_logps)
    chosen_reward, rejected_reward = beta * chosen_logratio, beta * rejected_logratio
    return (-F.logsigmoid(chosen_reward) - 0.5 * F.logsigmoid(-chosen_reward)
            - 0.5 * F.logsigmoid(-rejected_reward))


def sppo_hard(policy_chosen_logps: Tensor, policy_rejected_logps: Tensor, ref_chosen_logps: Tensor,
              ref_rejected_logps: Tensor, *, beta: float = 0.1) -> Tensor:
    """SPPO with hard labels, Wu et al. 2024 (arXiv:2405.00675), eq. 4.7 with P = 1 for the chosen response and
    0 for the rejected (TRL's ``sppo_hard``).

    (B,) losses ``(chosen_logratio - 1 / (2 * beta)) ** 2 + (rejected_logratio + 1 / (2 * beta)) ** 2``:
    each log-ratio is regressed to its own target, +-1 / (2 * beta), rather than their difference.
    """
    chosen_logratio, rejected_logratio = _logratios(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps,
                                                    ref_rejected_logps)
    return (chosen_logratio - 0.5 / beta) ** 2 + (rejected_logratio + 0.5 / beta) ** 2
