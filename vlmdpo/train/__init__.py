"""Training: one step (``step.dpo_step``), the loop on ``accelerate`` (``loop.train``), a run's rows
(``run_data``), checkpoints with exact resume, the precomputed reference cache, on-policy iterative DPO."""

from vlmdpo.train.loop import NonFiniteError, train
from vlmdpo.train.step import dpo_step

__all__ = ["NonFiniteError", "dpo_step", "train"]
