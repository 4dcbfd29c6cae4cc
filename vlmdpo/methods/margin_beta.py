"""MM-DPO's dynamic reward scaling (MM-RLHF, Zhang et al. 2025, arXiv:2502.10391, section 4.2): a beta per pair,
larger for pairs whose reward margin is larger, so confidently ranked pairs weigh more.

With ``delta_i = r(y_w) - r(y_l)`` the pair's reward margin from a reward model (read from the data), the paper's

    beta(delta_i) = beta_ori * (1 + w * (1 - exp(-k * delta_i))),

constrained to ``[beta_ori, (1 + w) * beta_ori]`` ("to avoid overly aggressive updates"): a margin <= 0 gives
``beta_ori``, a large one approaches ``(1 + w) * beta_ori``. ``w`` (``loss.mm_dpo_weight``) balances the fixed and
the margin-driven part, ``k`` (``loss.mm_dpo_k``) sets how fast beta saturates in the margin; the paper's defaults
are ``w = k = 0.5`` (appendix F.2), with ``beta_ori = 0.1`` (section 5.1).

The authors' released code (github.com/Kwai-YuanQi/MM-RLHF, ``trl/trainer/dpo_trainer.py``) reads a precomputed
per-row ``ls_factor`` and floors beta at 1e-3 instead of the paper's lower bound; its ``dpo_loss`` also defaults to
an ``implicit_beta`` branch (a beta-DPO-style batch beta) that replaces this one. This module follows the paper.

Each row needs a ``reward_margin`` column, or ``chosen_score`` and ``rejected_score`` (the margin is then their
difference); ``data.columns`` renames a dataset's own. The margin is a constant of the data: no gradient.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from vlmdpo.data.rows import DataError
from vlmdpo.methods.base import Method

__all__ = ["MarginScaledBeta", "margin_scaled_beta", "row_margin"]


def margin_scaled_beta(beta, reward_margins: Tensor, weight: float, k: float) -> Tensor:
    """``beta * (1 + weight * (1 - exp(-k * reward_margins)))`` kept within ``[beta, (1 + weight) * beta]``, (B,)
    float32, no gradient."""
    margins = reward_margins.detach().float()
    return beta * (1 + weight * (1 - torch.exp(-k * margins))).clamp(min=1.0, max=1.0 + weight)


def row_margin(row: dict) -> float:
    """The row's reward margin: ``reward_margin``, else ``chosen_score - rejected_score``; raises ``DataError``
    when the row has neither or the value is not a finite number."""
    index = row.get("index", 0)
    if row.get("reward_margin") is not None:
        field, value = "reward_margin", row["reward_margin"]
    elif row.get("chosen_score") is not None and row.get("rejected_score") is not None:
        field, value = "chosen_score", _number(row["chosen_score"], index, "chosen_score")
        value = value - _number(row["rejected_score"], index, "rejected_score")
    else:
        raise DataError(index, "reward_margin", "MM-DPO's beta grows with each pair's reward margin, and this row has "
                        "neither a reward_margin nor chosen_score and rejected_score",
                        "give every row a reward_margin (or both scores; data.columns renames a dataset's own), or "
                        "set loss.mm_dpo_weight=0", kind="no_reward_margin")
    return _number(value, index, field)


def _number(value, index: int, field: str) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = float("nan")
    if not math.isfinite(number):
        raise DataError(index, field, f"the reward margin must be a finite number, got {value!r}",
                        "fix or drop the row", kind="bad_reward_margin")
    return number


class MarginScaledBeta(Method):
    """MM-DPO's beta in training: each row's reward margin added to the batch (``reward_margin`` (B,)), and the
    losses' beta scaled by it per pair; the step logs the batch's mean ``beta``."""

    name = "margin_scaled_beta"

    def __init__(self, weight: float, k: float):
        self.weight, self.k = weight, k

    def check_row(self, row: dict) -> None:
        row_margin(row)

    def add_to_batch(self, batch: dict, rows: list[dict], collator) -> None:
        batch["reward_margin"] = torch.tensor([row_margin(row) for row in rows], dtype=torch.float32)

    def loss_changes(self, policy_out: dict, ref_out: dict, batch: dict, beta) -> dict:
        if "reward_margin" not in batch:
            raise ValueError("loss.mm_dpo_weight needs the batch's reward margins: collate with "
                             "vlmdpo.methods.MethodCollator(collator, build_methods(loss_config)) (vlmdpo.train does)")
        margins = batch["reward_margin"].to(policy_out["chosen_logps"].device)
        return {"beta": margin_scaled_beta(beta, margins, self.weight, self.k)}


def from_config(loss, seed: int = 0) -> MarginScaledBeta | None:
    """MM-DPO's margin-scaled beta when ``loss.mm_dpo_weight`` is not 0."""
    return MarginScaledBeta(loss.mm_dpo_weight, loss.mm_dpo_k) if loss.mm_dpo_weight != 0 else None
