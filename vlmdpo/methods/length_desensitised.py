"""LD-DPO, length-desensitised DPO (Liu et al. 2024, arXiv:2409.06411; TRL's ``ld_alpha``).

DPO's summed log-prob grows with a response's length, so a pair's reward difference rewards verbosity. LD-DPO
splits each response at the pair's shared length ``l_p = min(|y_c|, |y_r|)``: the first ``l_p`` response tokens
count in full, the longer response's tokens past ``l_p`` by ``alpha``:

    log pi(y | x) ~ sum_{i <= l_p} log p(y_i | x, y_<i) + alpha * sum_{i > l_p} log p(y_i | x, y_<i),

for the policy and the reference alike; every loss then reads these log-probs. alpha = 1 is DPO, alpha = 0
drops the longer response's excess tokens. Positions count response tokens only (the completion mask's running
count), as in TRL's ``DPOTrainer._compute_loss``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from vlmdpo.forward.logps import stacked_completion_mask
from vlmdpo.methods.base import Method

__all__ = ["LengthDesensitised", "desensitised_logps"]


def desensitised_logps(per_token_logps: Tensor, completion_mask: Tensor, alpha: float) -> Tensor:
    """LD-DPO's log-probs (2B,) from per-token log-probs (2B, C), chosen rows then rejected rows.

    ``completion_mask`` (2B, C) marks the response tokens; the k-th response token of a row counts fully
    when ``k <= min(|y_c|, |y_r|)`` of its pair, else times ``alpha``.
    """
    if per_token_logps.shape != completion_mask.shape or per_token_logps.shape[0] % 2:
        raise ValueError(f"per_token_logps {tuple(per_token_logps.shape)} and completion_mask "
                         f"{tuple(completion_mask.shape)} must be one (2B, C) shape, chosen rows then rejected")
    mask = completion_mask.to(per_token_logps.device).bool()
    position = mask.long().cumsum(dim=1)
    chosen_lengths, rejected_lengths = mask.sum(dim=1).chunk(2)
    shared = torch.minimum(chosen_lengths, rejected_lengths).repeat(2).unsqueeze(1)
    logps = per_token_logps.float()
    shared_logps = (logps * (mask & (position <= shared))).sum(dim=1)
    tail_logps = (logps * (mask & (position > shared))).sum(dim=1)
    return shared_logps + alpha * tail_logps


def _desensitised(out: dict, batch: dict, alpha: float) -> dict:
    """``out`` with ``chosen_logps`` and ``rejected_logps`` replaced by LD-DPO's."""
    per_token = out["per_token_logps"]
    logps = desensitised_logps(per_token, stacked_completion_mask(batch, per_token.shape[1]), alpha)
    chosen, rejected = logps.chunk(2)
    return {**out, "chosen_logps": chosen, "rejected_logps": rejected}


class LengthDesensitised(Method):
    """LD-DPO in training: every response log-prob the losses read, the policy's and the reference's, replaced
    by the length-desensitised one."""

    name = "length_desensitised"

    def __init__(self, alpha: float):
        self.alpha = alpha

    def reweight(self, policy_out: dict, ref_out: dict | None, batch: dict) -> tuple[dict, dict | None]:
        if "rejected_input_ids" not in batch:
            raise ValueError("loss.ld_alpha splits each pair at its shorter response: the batch has no rejected "
                             "responses")
        if ref_out is not None and "per_token_logps" not in ref_out:
            raise ValueError("loss.ld_alpha desensitises the reference's per-token log-probs too, and "
                             "train.precompute_ref_logps keeps only their sums: set train.precompute_ref_logps=false "
                             "or leave loss.ld_alpha unset")
        return _desensitised(policy_out, batch, self.alpha), ref_out and _desensitised(ref_out, batch, self.alpha)


def from_config(loss, seed: int = 0) -> LengthDesensitised | None:
    """LD-DPO when ``loss.ld_alpha`` is set."""
    return LengthDesensitised(loss.ld_alpha) if loss.ld_alpha is not None else None
