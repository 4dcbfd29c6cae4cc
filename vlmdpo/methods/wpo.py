"""WPO, weighted preference optimization (Zhou et al. 2024, arXiv:2406.11827), eq. 2 in TRL's form
(``use_weighting``).

Off-policy pairs (responses the policy would rarely write) teach it less; WPO weighs each pair by how likely the
policy is to produce its responses: the per-token geometric mean of each token's probability divided by
``sum_v p_v ** 2``, the probability the policy gives a token it samples itself, so a flat next-token
distribution does not count as off-policy:

    w(x, y) = exp((1 / |y|) * sum_t (log p(y_t | x, y_<t) - log sum_v p(v | x, y_<t) ** 2)),

and the pair's loss is multiplied by ``w(x, y_c) * w(x, y_r)``. As in TRL, the weight is a constant: no gradient
flows through it (TRL computes it under ``torch.no_grad``), and it multiplies each pair's loss in every loss term.
The per-token ``log sum_v p_v ** 2`` comes from the policy's forward (``Method.policy_outputs``).
"""

from __future__ import annotations

import torch
from torch import Tensor

from vlmdpo.forward.logps import stacked_completion_mask
from vlmdpo.methods.base import Method

__all__ = ["WPOWeights", "wpo_weights"]


def wpo_weights(per_token_logps: Tensor, per_token_log_sum_sq_probs: Tensor, completion_mask: Tensor) -> Tensor:
    """WPO's pair weights ``w(x, y_c) * w(x, y_r)`` (B,), without gradient.

    All three inputs are (2B, C), chosen rows then rejected rows: the policy's per-token log-probs, its
    per-token ``log sum_v p_v ** 2`` and the response-token mask. A row with no response token gets weight 1.
    """
    with torch.no_grad():
        mask = completion_mask.to(per_token_logps.device).float()
        aligned = (per_token_logps.float() - per_token_log_sum_sq_probs.float()) * mask
        weights = torch.exp(aligned.sum(dim=1) / mask.sum(dim=1).clamp(min=1))
        chosen, rejected = weights.chunk(2)
        return chosen * rejected


class WPOWeights(Method):
    """WPO in training: the policy's forward also returns ``log sum_v p_v ** 2`` per response token, and each
    pair's loss is multiplied by its weight; ``wpo/weight`` (the batch mean) is logged."""

    name = "wpo_weights"
    policy_outputs = frozenset({"log_sum_sq_probs"})

    def loss_changes(self, policy_out: dict, ref_out: dict, batch: dict, beta) -> dict:
        if "rejected_input_ids" not in batch:
            raise ValueError("loss.use_weighting weighs each pair by both its responses: the batch has no rejected "
                             "responses")
        if "per_token_log_sum_sq_probs" not in policy_out:
            raise ValueError("loss.use_weighting needs the policy's per-token log_sum_sq_probs: compute the "
                             "log-probs with outputs=('log_sum_sq_probs',) (vlmdpo.train.dpo_step does)")
        per_token = policy_out["per_token_logps"]
        weights = wpo_weights(per_token, policy_out["per_token_log_sum_sq_probs"],
                              stacked_completion_mask(batch, per_token.shape[1]))
        return {"pair_weights": weights, "metrics": {"wpo/weight": weights.mean()}}


def from_config(loss, seed: int = 0) -> WPOWeights | None:
    """WPO's weights when ``loss.use_weighting`` is on."""
    return WPOWeights() if loss.use_weighting else None
