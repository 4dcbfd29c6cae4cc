"""beta-DPO, DPO with a dynamic beta (Wu et al. 2024, arXiv:2407.08639): a batch-level beta calibrated by the
pairs' reward discrepancy, and beta-guided filtering of outlying pairs.

Each pair's reward discrepancy is ``M_i = (pi_c - ref_c) - (pi_r - ref_r)``. Per micro-batch:

1. the running statistics move towards the batch's: ``M_0 <- m * M_0 + (1 - m) * mean_i(M_i)`` and
   ``sigma <- m * sigma + (1 - m) * std_i(M_i)`` (m = ``momentum``, 0.9; both start at 0);
2. filtering: ``floor(B * (1 - rho))`` pairs (at least one) are drawn without replacement with probabilities
   proportional to ``exp(-(M_i - M_0) ** 2 / (2 * sigma ** 2))``; the others are left out of the loss
   (``rho = filter_ratio``, the share of each batch left out; 0.2 in the authors' example);
3. ``beta_batch = beta_0 * (1 + alpha * (mean_{kept}(M_i) - M_0))``, at least 1e-3, no gradient (``alpha``: 0.6 in
   the authors' example); the kept pairs' losses are averaged with it.

The paper gives the batch beta ``[1 + alpha * (E_batch[M_i] - M_0)] * beta_0``, the moving average ``M_0`` and the
Gaussian filtering with its ratio ``rho``. The rest is the authors' code (github.com/junkangwu/beta-DPO,
``trainers.py``), followed exactly: ``M_i`` without beta, the statistics updated with the batch before it is used,
``sigma`` as a moving average of each batch's (unbiased) standard deviation, the batch mean over the kept pairs,
the 1e-3 floor. Two guards are this module's: a zero ``sigma`` (every discrepancy equal, as at step 1 of a LoRA
run, where the policy is the reference) gives every pair at ``M_0`` weight 1, and all-zero weights draw
uniformly. The statistics are each process's own (the authors gather the discrepancies across GPUs first), and the
draws are seeded by the run's seed and the micro-batch count, so a resumed run draws the same pairs.
"""

from __future__ import annotations

import torch
from torch import Tensor

from vlmdpo.methods.base import Method

__all__ = ["BetaDPO", "batch_beta", "filter_pairs", "reward_discrepancies"]

BETA_FLOOR = 1e-3


def reward_discrepancies(policy_chosen_logps: Tensor, policy_rejected_logps: Tensor, ref_chosen_logps: Tensor,
                         ref_rejected_logps: Tensor) -> Tensor:
    """``M_i = (pi_c - ref_c) - (pi_r - ref_r)`` (B,) float32, detached, from the four (B,) log-probs."""
    return ((policy_chosen_logps.float() - ref_chosen_logps.float())
            - (policy_rejected_logps.float() - ref_rejected_logps.float())).detach()


def filter_pairs(discrepancies: Tensor, mean: Tensor, std: Tensor, filter_ratio: float,
                 generator: torch.Generator | None = None) -> Tensor:
    """Indices of the ``max(1, floor(B * (1 - filter_ratio)))`` pairs kept, drawn without replacement with
    weights ``exp(-((M_i - mean) / std) ** 2 / 2)`` (module docstring for the guards)."""
    keep = max(1, int(discrepancies.numel() * (1 - filter_ratio)))
    z = (discrepancies - mean) / std.clamp(min=torch.finfo(torch.float32).tiny)
    weights = torch.nan_to_num(torch.exp(-0.5 * z.pow(2)), nan=0.0)
    if not bool(weights.sum() > 0):
        weights = torch.ones_like(weights)
    return torch.multinomial(weights, keep, replacement=False, generator=generator)


def kept_pair_weights(discrepancies: Tensor, kept: Tensor) -> Tensor:
    """(B,) pair weights that leave out the pairs not in ``kept`` (indices), the kept ones scaled by B / kept so
    that the batch mean is the mean over the kept pairs."""
    weights = torch.zeros_like(discrepancies)
    weights[kept] = discrepancies.numel() / kept.numel()
    return weights


def batch_beta(beta, alpha: float, kept_discrepancies: Tensor, mean: Tensor) -> Tensor:
    """``max(1e-3, beta * (1 + alpha * (mean(kept_discrepancies) - mean)))``, 0-d, no gradient."""
    return (beta * (1 + alpha * (kept_discrepancies.mean() - mean))).clamp(min=BETA_FLOOR).detach()


class BetaDPO(Method):
    """beta-DPO in training: the running ``M_0`` and ``sigma`` (state, saved with checkpoints), the batch beta
    the losses use, and the filter as pair weights (``B / kept`` on the kept pairs, 0 elsewhere, so the batch mean
    is the kept pairs' mean). Logs ``beta`` (the step's) and ``beta_dpo/gap_mean``, ``beta_dpo/gap_std``."""

    name = "beta_dpo"

    def __init__(self, alpha: float = 0.6, filter_ratio: float = 0.2, momentum: float = 0.9, seed: int = 0):
        self.alpha, self.filter_ratio, self.momentum, self.seed = alpha, filter_ratio, momentum, seed
        self.mean: Tensor | float = 0.0
        self.std: Tensor | float = 0.0
        self.steps = 0

    def update(self, discrepancies: Tensor) -> None:
        """Move ``M_0`` and ``sigma`` towards the batch's mean and (unbiased) standard deviation."""
        if discrepancies.numel() < 2:
            raise ValueError("beta-DPO's sigma is the spread of each micro-batch's reward discrepancies, which one "
                             "pair does not have: set train.batch_size >= 2")
        m = self.momentum
        self.mean = m * torch.as_tensor(self.mean, device=discrepancies.device) + (1 - m) * discrepancies.mean()
        self.std = m * torch.as_tensor(self.std, device=discrepancies.device) + (1 - m) * discrepancies.std()

    def loss_changes(self, policy_out: dict, ref_out: dict, batch: dict, beta) -> dict:
        if "rejected_input_ids" not in batch:
            raise ValueError("loss.beta_dpo reads each pair's reward discrepancy: the batch has no rejected responses")
        gaps = reward_discrepancies(policy_out["chosen_logps"], policy_out["rejected_logps"],
                                    ref_out["chosen_logps"], ref_out["rejected_logps"])
        self.update(gaps)
        generator = torch.Generator(device=gaps.device).manual_seed(self.seed * 1_000_003 + self.steps)
        self.steps += 1
        kept = filter_pairs(gaps, self.mean, self.std, self.filter_ratio, generator)
        changes = {"beta": batch_beta(beta, self.alpha, gaps[kept], self.mean),
                   "metrics": {"beta_dpo/gap_mean": self.mean.detach(), "beta_dpo/gap_std": self.std.detach()}}
        if kept.numel() < gaps.numel():
            changes["pair_weights"] = kept_pair_weights(gaps, kept)
        return changes

    def state_dict(self) -> dict:
        return {"beta_dpo_gap_mean": float(self.mean), "beta_dpo_gap_std": float(self.std),
                "beta_dpo_steps": self.steps}

    def load_state_dict(self, state: dict) -> None:
        self.mean = float(state.get("beta_dpo_gap_mean", 0.0))
        self.std = float(state.get("beta_dpo_gap_std", 0.0))
        self.steps = int(state.get("beta_dpo_steps", 0))


def from_config(loss, seed: int = 0) -> BetaDPO | None:
    """beta-DPO when ``loss.beta_dpo`` is on."""
    if not loss.beta_dpo:
        return None
    return BetaDPO(loss.beta_dpo_alpha, loss.beta_dpo_filter, loss.beta_dpo_momentum, seed)
