"""``Method``: what a training method needs beyond a pair's four summed log-probs, as hooks that the collator
(``vlmdpo.methods.collate``), the step (``vlmdpo.train.step``) and the loop (``vlmdpo.train.loop``) call.

A method that is only a loss (DPO, IPO, SimPO, ...) needs none of them: it is a pure function in the registry.
A method that needs more from the batch (mDPO's corrupted images, dense DPO's token weights, MM-DPO's reward
margins) or from the policy's forward (WPO's per-token ``log sum_v p_v ** 2``), changes the log-probs every loss
reads (dense DPO, LD-DPO), feeds its loss an input of its own (mDPO's corrupted-image log-probs, BCO's running
reward shift), changes the loss's beta or weighs its pairs (beta-DPO, MM-DPO, WPO), keeps state across steps
(BCO, beta-DPO) or moves the reference between steps (TR-DPO) subclasses ``Method`` in its own module and is
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
    policy_outputs: frozenset[str] = frozenset()
    """Per-token outputs the method reads from the policy's forward besides its log-probs, each
    ``per_token_{name}`` in the policy's output (``vlmdpo.forward.logps.PER_TOKEN_OUTPUTS``)."""

    moves_reference = False
    """True when the method changes the reference during training (TR-DPO): precomputed reference log-probs would
    go stale, so ``train.precompute_ref_logps`` is refused."""

    def prepare_models(self, policy, reference) -> list:
        """Called once the policy and the reference (the frozen copy, or ``None`` with LoRA) are built, before the
        optimizer gathers the trainable weights and ``accelerate`` wraps the models: a method may add modules here
        (TR-DPO's reference adapter). Returns the objects (``state_dict``/``load_state_dict``) that each checkpoint
        must save beside the policy (TR-DPO's refreshed frozen copy)."""
        return []

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

    def loss_changes(self, policy_out: dict, ref_out: dict, batch: dict, beta) -> dict:
        """What the method changes in this step's loss, from the log-probs every loss reads (after ``reweight``;
        ``ref_out`` holds zeros where no loss reads the reference). ``beta`` is the beta so far: ``loss.beta``,
        or an earlier method's. Returns any of ``beta`` (a 0-d or (B,) tensor without gradient, which the losses
        and the reward metrics then use), ``pair_weights`` ((B,) without gradient, multiplying each pair's loss
        in every term before the batch mean) and ``metrics`` (``{name: detached 0-d tensor}``, logged with the
        step's; the same names at every step)."""
        return {}

    def observe(self, metrics: dict) -> None:
        """Called after each micro-batch's step with that step's metrics (detached tensors)."""

    def after_optimizer_step(self, step: int, policy, reference) -> str | None:
        """Called after each optimizer step (``step`` counts them from 1, a skipped non-finite one included), before
        that step's log line and checkpoint, with the models ``prepare_models`` saw; returns a line for the run's
        log, or ``None``."""
        return None

    def state_dict(self) -> dict:
        """What a checkpoint keeps of the method's state (JSON values), so a resumed run continues exactly."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        """Restore what ``state_dict`` returned (keys it did not write may be present and are ignored)."""
