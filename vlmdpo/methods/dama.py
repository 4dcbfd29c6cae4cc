"""DAMA, data- and model-aware DPO (Lu et al., ICML 2025, arXiv:2502.01943): a beta per pair,
``beta_C,i = beta * alpha_D,i * alpha_M``, so that easy-to-distinguish pairs are not overfitted and hard ones not
underfitted.

Data-aware (per pair, a constant of the data): ``alpha_D,i = sigmoid(delta_i) / sigmoid(delta_bar)``, ``delta_i`` the
pair's hardness as an image-text score gap (paper, Algorithm 1 and eq. 3-6): each response is split into simple
sub-sentences by an LLM, every sub-sentence is scored against the image by CLIP, and ``delta_i`` is the chosen
response's summed score minus the rejected one's. ``delta_bar`` is the mean ``delta`` of the training pairs
(``loss.dama_clip_gap_mean``; the authors' code hard-codes 0.0482190464911681 for their RLAIF-V data). Both need
models this package does not run: precompute a ``clip_score_gap`` column, or ``chosen_clip_score`` and
``rejected_clip_score`` (a number, or a list of per-sub-sentence scores, summed as the authors' code sums its
``chosen_logits``), on the same scale as ``loss.dama_clip_gap_mean``.

Model-aware (per micro-batch, eq. 8-14): with ``R_i = (pi_c - ref_c) - (pi_r - ref_r)`` each pair's reward gap and
``R_bar`` its running mean (starting at 0),

1. ``max(1, floor(B * (1 - rho)))`` pairs are drawn without replacement with weights ``exp(-(R_i - R_bar) ** 2 / 2)``
   (``rho = loss.dama_filter``, 0.2); the others are left out of the loss (pair weight 0, ``B / kept`` on the kept);
2. ``alpha_M = mean_kept(sigmoid(R_i)) / sigmoid(R_bar)``;
3. after the step, ``R_bar <- gamma * R_bar + (1 - gamma) * mean_i(R_i)`` over all the batch's pairs
   (``gamma = loss.dama_momentum``, 0.9).

``beta_C`` is floored at 1e-3, without gradient. Algorithm 1 of the paper gives the combination ``beta * alpha_D *
alpha_M``, ``alpha_D``, ``alpha_M = sigmoid(R_B) / sigmoid(R_bar)`` and the update of ``R_bar`` after the step; what
it leaves open is the authors' code (github.com/injadlu/DAMA, ``DAMA/llava/train/train_dpo.py``, ``dpo_loss``),
followed exactly: ``R_B`` as the kept pairs' mean sigmoid, the Gaussian draw without a spread, 0.2 and 0.9, the floor.
This module's own guards are those of ``vlmdpo.methods.beta_dpo.filter_pairs`` (at least one pair kept, a uniform
draw when every weight is 0). The statistics are each process's own (the authors gather the gaps across GPUs), and
the draws are seeded by the run's seed and the micro-batch count, so a resumed run draws the same pairs.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from vlmdpo.data.rows import DataError
from vlmdpo.methods.base import Method
from vlmdpo.methods.beta_dpo import filter_pairs, kept_pair_weights, reward_discrepancies

__all__ = ["DAMA", "dama_beta", "data_aware_scale", "model_aware_scale", "row_clip_gap"]

BETA_FLOOR = 1e-3


def data_aware_scale(clip_gaps: Tensor, clip_gap_mean: float) -> Tensor:
    """``alpha_D = sigmoid(clip_gaps) / sigmoid(clip_gap_mean)`` (B,) float32, no gradient."""
    return torch.sigmoid(clip_gaps.detach().float()) / torch.sigmoid(torch.tensor(float(clip_gap_mean)))


def model_aware_scale(kept_gaps: Tensor, running_mean: Tensor) -> Tensor:
    """``alpha_M = mean(sigmoid(kept_gaps)) / sigmoid(running_mean)``, 0-d, no gradient."""
    return (torch.sigmoid(kept_gaps.detach().float()).mean() / torch.sigmoid(running_mean)).detach()


def dama_beta(beta, alpha_data: Tensor, alpha_model: Tensor) -> Tensor:
    """``max(1e-3, beta * alpha_data * alpha_model)`` (B,), no gradient."""
    return (beta * alpha_data * alpha_model).clamp(min=BETA_FLOOR).detach()


def row_clip_gap(row: dict) -> float:
    """The row's CLIP score gap: ``clip_score_gap``, else ``chosen_clip_score - rejected_clip_score`` (each a number
    or a list of per-sub-sentence scores, summed); raises ``DataError`` naming the row and field otherwise."""
    index = row.get("index", 0)
    if row.get("clip_score_gap") is not None:
        return _score(row["clip_score_gap"], index, "clip_score_gap", allow_list=False)
    if row.get("chosen_clip_score") is not None and row.get("rejected_clip_score") is not None:
        return (_score(row["chosen_clip_score"], index, "chosen_clip_score")
                - _score(row["rejected_clip_score"], index, "rejected_clip_score"))
    raise DataError(index, "clip_score_gap", "DAMA's data-aware beta reads each pair's CLIP image-text score gap, and "
                    "this row has neither a clip_score_gap nor chosen_clip_score and rejected_clip_score",
                    "precompute them as vlmdpo.methods.dama describes (data.columns renames a dataset's own), or set "
                    "loss.dama=false", kind="no_clip_score")


def _score(value, index: int, field: str, allow_list: bool = True) -> float:
    values = value if allow_list and isinstance(value, (list, tuple)) else [value]
    try:
        total = math.fsum(float(v) for v in values) if values else float("nan")
    except (TypeError, ValueError):
        total = float("nan")
    if not math.isfinite(total):
        kind = "a finite number or a non-empty list of them" if allow_list else "a finite number"
        raise DataError(index, field, f"the CLIP score must be {kind}, got {value!r}", "fix or drop the row",
                        kind="bad_clip_score")
    return total


class DAMA(Method):
    """DAMA in training: each row's CLIP score gap added to the batch (``clip_score_gap`` (B,)), the running mean
    reward gap (state, saved with checkpoints), the per-pair beta the losses use, and the filter as pair weights.
    Logs ``beta`` (the batch's mean), ``dama/alpha_model``, ``dama/alpha_data`` (the batch's mean) and
    ``dama/gap_mean`` (the running mean after the step)."""

    name = "dama"

    def __init__(self, clip_gap_mean: float, filter_ratio: float = 0.2, momentum: float = 0.9, seed: int = 0):
        self.clip_gap_mean, self.filter_ratio, self.momentum, self.seed = clip_gap_mean, filter_ratio, momentum, seed
        self.mean: Tensor | float = 0.0
        self.steps = 0

    def check_row(self, row: dict) -> None:
        row_clip_gap(row)

    def add_to_batch(self, batch: dict, rows: list[dict], collator) -> None:
        batch["clip_score_gap"] = torch.tensor([row_clip_gap(row) for row in rows], dtype=torch.float32)

    def loss_changes(self, policy_out: dict, ref_out: dict, batch: dict, beta) -> dict:
        if "clip_score_gap" not in batch:
            raise ValueError("loss.dama needs the batch's CLIP score gaps: collate with "
                             "vlmdpo.methods.MethodCollator(collator, build_methods(loss_config)) (vlmdpo.train does)")
        if "rejected_input_ids" not in batch:
            raise ValueError("loss.dama reads each pair's reward gap: the batch has no rejected responses")
        gaps = reward_discrepancies(policy_out["chosen_logps"], policy_out["rejected_logps"],
                                    ref_out["chosen_logps"], ref_out["rejected_logps"])
        mean = torch.as_tensor(self.mean, dtype=torch.float32, device=gaps.device)
        generator = torch.Generator(device=gaps.device).manual_seed(self.seed * 1_000_003 + self.steps)
        self.steps += 1
        kept = filter_pairs(gaps, mean, torch.ones_like(mean), self.filter_ratio, generator)
        alpha_data = data_aware_scale(batch["clip_score_gap"].to(gaps.device), self.clip_gap_mean)
        alpha_model = model_aware_scale(gaps[kept], mean)
        self.mean = self.momentum * mean + (1 - self.momentum) * gaps.mean()  # after the step (Algorithm 1, eq. 14)
        changes = {"beta": dama_beta(beta, alpha_data, alpha_model),
                   "metrics": {"dama/alpha_model": alpha_model, "dama/alpha_data": alpha_data.mean(),
                               "dama/gap_mean": self.mean.detach()}}
        if kept.numel() < gaps.numel():
            changes["pair_weights"] = kept_pair_weights(gaps, kept)
        return changes

    def state_dict(self) -> dict:
        return {"dama_gap_mean": float(self.mean), "dama_steps": self.steps}

    def load_state_dict(self, state: dict) -> None:
        self.mean = float(state.get("dama_gap_mean", 0.0))
        self.steps = int(state.get("dama_steps", 0))


def from_config(loss, seed: int = 0) -> DAMA | None:
    """DAMA when ``loss.dama`` is on."""
    if not loss.dama:
        return None
    return DAMA(loss.dama_clip_gap_mean, loss.dama_filter, loss.dama_momentum, seed)
