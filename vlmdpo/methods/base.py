"""``Method``: what a training method needs beyond a pair's four summed log-probs, as hooks that the collator
(``vlmdpo.methods.collate``), the step (``vlmdpo.train.step``) and the loop (``vlmdpo.train.loop``) call.

A method that is only a loss (DPO, IPO, SimPO, ...) needs none of them: it is a pure function in the registry.
A method that needs more from the batch (mDPO's corrupted images, dense DPO's token weights), changes the
log-probs every loss reads (dense DPO), feeds its loss an input of its own (mDPO's corrupted-image log-probs,
BCO's running reward shift) or keeps state across steps (BCO) subclasses ``Method`` in its own module and is
listed once in ``vlmdpo.methods.registry.METHODS``.
"""

from __future__ import annotations

from collections.abc import Callable

Score = Callable[[dict], tuple[dict, dict | None]]
"""``score(batch) -> (policy_out, ref_out)``: the response log-probs of a collated batch from the policy and
the reference, on the run's forward path (``vlmdpo.train.step.policy_and_reference_logps``)."""


class Method:
    """Hooks of a training method; each default adds nothing."""

    name = "method"

    def check_row(self, row: dict) -> None:
        """Refuse a row this method cannot train on (raise ``vlmdpo.data.DataError``): called by the up-front
        check of every row before step 1 and again when the row is collated."""

    def add_to_batch(self, batch: dict, rows: list[dict], collator) -> None:
        """Add what the method reads to the collator's ``batch`` of ``rows`` (in place)."""

    def reweight(self, policy_out: dict, ref_out: dict | None, batch: dict) -> tuple[dict, dict | None]:
        """The response log-probs every loss then reads; ``{field}_logps`` (B,) may be replaced."""
        return policy_out, ref_out

    def loss_inputs(self, batch: dict, score: Score) -> dict:
        """Keyword inputs of the method's loss terms (each must be a keyword some registered loss takes)."""
        return {}

    def observe(self, metrics: dict) -> None:
        """Called after each micro-batch's step with that step's metrics (detached tensors)."""

    def state_dict(self) -> dict:
        """What a checkpoint keeps of the method's state (JSON values), so a resumed run continues exactly."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        """Restore what ``state_dict`` returned (keys it did not write may be present and are ignored)."""
