"""Checks a run makes on its own model before the first step, whatever the family: a model that breaks what
DPO assumes stops the run with a message, instead of training on log-probs that mean something else.

``causality_problem``: DPO's per-token log-probs assume each response token is scored from the tokens before it
only. A model that lets responses attend both ways (PaliGemma's ``token_type_ids`` marking them as prefix, a
processor output continued wrongly over the responses) would move earlier log-probs when a later token changes.
"""

from __future__ import annotations

import torch

from vlmdpo.forward.logps import completion_logps, model_dtype
from vlmdpo.model.lora import eval_mode


def _changed_last_tokens(batch: dict) -> tuple[dict, list[tuple[int, int]]]:
    """``batch`` with the last response token of each chosen response replaced by another token of the same
    response (a plain text token), and the ``(row, position)`` pairs changed."""
    ids = batch["chosen_input_ids"].clone()
    changed = []
    for row in range(ids.shape[0]):
        positions = batch["chosen_completion_mask"][row].nonzero().flatten().tolist()
        if len(positions) < 2:
            continue
        last, others = positions[-1], [int(ids[row, p]) for p in positions[:-1]]
        replacement = next((t for t in others if t != int(ids[row, last])), None)
        if replacement is not None:
            ids[row, last] = replacement
            changed.append((row, last))
    return {**batch, "chosen_input_ids": ids}, changed


def causality_problem(model, batch: dict, pad_token_id: int) -> str | None:
    """Why ``model`` does not score responses causally on ``batch`` (a later token moved an earlier token's
    log-prob beyond rounding), or ``None``."""
    altered, changed = _changed_last_tokens(batch)
    if not changed:
        return None
    with eval_mode(model), torch.no_grad():
        before = completion_logps(model, batch, pad_token_id)["per_token_logps"]
        after = completion_logps(model, altered, pad_token_id)["per_token_logps"]
    tolerance = 1e-4 if model_dtype(model) == torch.float32 else 5e-2
    moved = max(float((after[row, :last] - before[row, :last]).abs().max()) for row, last in changed)
    if moved > tolerance:
        return (f"changing the last token of a response moved the log-probs of the tokens before it by up to "
                f"{moved:.2g}: this model does not score responses causally as vlmdpo feeds it (a per-token "
                "processor output, such as PaliGemma's token_type_ids, may mark responses as bidirectional prefix)")
    return None
