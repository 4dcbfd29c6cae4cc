"""``MethodCollator``: the processor-aware collator's batch plus what the run's methods read from it (dense DPO's
token weights, mDPO's corrupted-image responses), and the methods' row checks before training."""

from __future__ import annotations

from collections.abc import Sequence

from vlmdpo.methods.base import Method


class MethodCollator:
    """``collator(rows)``, then each method's ``add_to_batch`` (the collator's batch unchanged when no method
    adds anything)."""

    def __init__(self, collator, methods: Sequence[Method] = ()):
        self.collator, self.methods = collator, list(methods)

    @property
    def tokenizer(self):
        return self.collator.tokenizer

    @property
    def max_response_length(self):
        return self.collator.max_response_length

    def measure(self, row: dict) -> dict:
        """The collator's token counts of ``row`` (what ``vlmdpo.data.validate`` checks before training), after
        each method's check of the row."""
        for method in self.methods:
            method.check_row(row)
        return self.collator.measure(row)

    def __call__(self, rows: list[dict]) -> dict:
        batch = self.collator(rows)
        for method in self.methods:
            method.add_to_batch(batch, rows, self.collator)
        return batch
