"""BCO on pairs (Jung et al. 2024, arXiv:2404.04656): its loss term and its running reward shift.

The loss (``bco_pair``) is a pure function of the four log-probs and a shift ``delta``; the shift is the
running mean of the rewards seen so far in training, kept here (``RewardShift``) as a method's state, fed to the
loss at each step and saved with each checkpoint.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from vlmdpo.methods.base import Method
from vlmdpo.methods.losses import as_float32


def bco_pair(policy_chosen_logps: Tensor, policy_rejected_logps: Tensor, ref_chosen_logps: Tensor,
             ref_rejected_logps: Tensor, *, beta: float = 0.1, bco_delta: float | Tensor = 0.0) -> Tensor:
    """Paired BCO, Jung et al. 2024 (arXiv:2404.04656), eq. 6 in TRL's ``bco_pair`` form.

    (B,) losses ``-log s(beta * chosen_logratio - delta) - log s(-(beta * rejected_logratio - delta))``
    with ``delta = bco_delta``. The paper's delta is a running mean of the rewards
    (``beta * logratio`` over chosen and rejected); a pure function cannot keep state, so the caller
    tracks it and passes it in (scalar or 0-d tensor; :class:`RewardShift` in training); 0.0 reduces to a fixed
    classifier threshold.
    """
    pc, pr, rc, rr = as_float32(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps)
    chosen_rewards, rejected_rewards = beta * (pc - rc), beta * (pr - rr)
    return -F.logsigmoid(chosen_rewards - bco_delta) - F.logsigmoid(-(rejected_rewards - bco_delta))


class RewardShift(Method):
    """BCO's ``delta``: the running mean, over the micro-batches trained so far, of each micro-batch's mean reward
    ``(mean chosen reward + mean rejected reward) / 2``; a micro-batch whose rewards are not finite is left out.

    Kept on the rewards' device in float64 (float32 where the device has no float64), so training never waits
    on the host for it; a checkpoint stores it as a float (``bco_delta``, ``reward_count``).
    """

    name = "bco_shift"

    def __init__(self):
        self.delta: Tensor | float = 0.0
        self.count: Tensor | int = 0

    def loss_inputs(self, batch: dict, score) -> dict:
        return {"bco_delta": self.delta}

    def observe(self, metrics: dict) -> None:
        if "rewards/chosen" not in metrics:  # a supervised batch has no rewards
            return
        chosen = metrics["rewards/chosen"]
        dtype = torch.float32 if chosen.device.type == "mps" else torch.float64
        mean = ((chosen + metrics["rewards/rejected"]) / 2).to(dtype)
        finite = torch.isfinite(mean)
        count = torch.as_tensor(self.count, dtype=dtype, device=mean.device) + finite.to(dtype)
        delta = torch.as_tensor(self.delta, dtype=dtype, device=mean.device)
        self.delta = torch.where(finite, delta + (mean - delta) / count.clamp(min=1), delta)
        self.count = count

    def state_dict(self) -> dict:
        return {"bco_delta": float(self.delta), "reward_count": int(self.count)}

    def load_state_dict(self, state: dict) -> None:
        self.delta, self.count = float(state.get("bco_delta", 0.0)), int(state.get("reward_count", 0))


def from_config(loss, seed: int = 0) -> RewardShift | None:
    """The running shift when the loss spec has ``bco_pair``."""
    return RewardShift() if "bco_pair" in loss.names else None
