"""Preference fit on held-out pairs: does the policy prefer the chosen response more than the reference does?

The same quantities the training loop logs (``vlmdpo.train.step.dpo_step``), computed over a whole split with no
gradients: implicit rewards ``beta * (policy_logps - ref_logps)`` (DPO, arXiv:2305.18290, sec. 5), reward
accuracy (share of pairs whose chosen reward is strictly larger, as in TRL), and the mean reward margin.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from tqdm.auto import tqdm

from vlmdpo.data.collator import PreferenceCollator
from vlmdpo.forward.logps import completion_logps
from vlmdpo.methods.losses import rewards
from vlmdpo.model.lora import eval_mode, reference_mode


def _batched_logps(model, collator: PreferenceCollator, rows: Sequence[dict], batch_size: int,
                   progress: bool, desc: str) -> dict[str, torch.Tensor]:
    """Summed response log-probs and lengths of every row, (N,) float32 / long on the CPU."""
    device = next(getattr(model, "module", model).parameters()).device
    pad_token_id = collator.tokenizer.pad_token_id
    parts: dict[str, list[torch.Tensor]] = {}
    for start in tqdm(range(0, len(rows), batch_size), desc=desc, disable=not progress, leave=False,
                      dynamic_ncols=True):
        batch = collator(list(rows[start: start + batch_size]))
        batch = {key: _to(value, device) for key, value in batch.items()}
        with torch.no_grad():
            out = completion_logps(model, batch, pad_token_id)
        for key in ("chosen_logps", "rejected_logps", "chosen_lengths", "rejected_lengths"):
            parts.setdefault(key, []).append(out[key].detach().cpu())
    return {key: torch.cat(values) for key, values in parts.items()}


def _to(value, device):
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, dict):
        return {key: _to(v, device) for key, v in value.items()}
    return value


def preference_fit(
    model,
    processor,
    pairs_rows: Sequence[dict],
    *,
    beta: float = 0.1,
    batch_size: int = 8,
    reference=None,
    reference_logps: dict[str, Sequence[float]] | None = None,
    max_response_length: int | None = None,
    progress: bool = True,
) -> dict:
    """Reward accuracy, margins and log-probs of ``model`` on preference pairs, against a reference.

    Args:
        model: the policy (a ``peft`` model, a merged checkpoint, or a model wrapped by DDP/accelerate).
        processor: its ``AutoProcessor``.
        pairs_rows: normalized preference rows (``vlmdpo.data.rows.normalize_row``); ``row["index"]`` is used as
            the row id in ``per_pair`` when present, else the position.
        beta: the DPO temperature of the implicit reward.
        reference: ``None`` to use ``model`` with its adapter disabled (``vlmdpo.model.lora.reference_mode``),
            or an explicit reference model (the base model, for merged checkpoints). Passing ``model`` itself
            evaluates the base against itself: log-probs only, reward metrics are ``None``.
        reference_logps: precomputed ``{"chosen_logps": [...], "rejected_logps": [...]}`` per row (e.g. the
            base model's policy log-probs from an earlier call); skips the reference pass entirely.
        max_response_length: responses are truncated to this many tokens, as in training.

    Returns:
        ``reward_accuracy``, ``reward_margin`` (mean), ``chosen_reward``, ``rejected_reward`` (means),
        ``policy_chosen_logps``, ``policy_rejected_logps``, ``ref_chosen_logps``, ``ref_rejected_logps``
        (means of summed response log-probs), ``logp_accuracy`` (share of pairs where the policy itself gives
        the chosen response more log-prob), ``num_pairs``, and ``per_pair``: one dict per pair
        with ``index``, the four log-probs, ``chosen_reward``, ``rejected_reward`` and ``margin``.
    """
    if not pairs_rows:
        raise ValueError("preference_fit needs at least one pair")
    collator = PreferenceCollator(processor, max_response_length=max_response_length)
    with eval_mode(model):  # no dropout: the numbers must not depend on the RNG
        policy = _batched_logps(model, collator, pairs_rows, batch_size, progress, "policy log-probs")
    self_reference = reference is model
    if reference_logps is not None:
        ref = {key: torch.tensor(list(reference_logps[key]), dtype=torch.float32)
               for key in ("chosen_logps", "rejected_logps")}
        if len(ref["chosen_logps"]) != len(pairs_rows):
            raise ValueError(f"reference_logps has {len(ref['chosen_logps'])} rows, the pairs {len(pairs_rows)}")
    elif self_reference:
        ref = policy
    else:
        with eval_mode(model), reference_mode(model, reference) as ref_model:
            ref = _batched_logps(ref_model, collator, pairs_rows, batch_size, progress, "reference log-probs")
    return summarize_fit(policy, ref, beta, [row.get("index", i) for i, row in enumerate(pairs_rows)],
                         has_rewards=not self_reference)


def summarize_fit(policy: dict[str, torch.Tensor], ref: dict[str, torch.Tensor], beta: float,
                  indices: Sequence[int], has_rewards: bool = True) -> dict:
    """The metrics of :func:`preference_fit` from per-row (N,) policy and reference log-probs."""
    chosen_rewards = rewards(policy["chosen_logps"], ref["chosen_logps"], beta)
    rejected_rewards = rewards(policy["rejected_logps"], ref["rejected_logps"], beta)
    margins = chosen_rewards - rejected_rewards

    def mean(values: torch.Tensor) -> float:
        return float(values.float().mean())

    per_pair = [
        {"index": int(index), "policy_chosen_logps": float(pc), "policy_rejected_logps": float(pr),
         "ref_chosen_logps": float(rc), "ref_rejected_logps": float(rr), "chosen_reward": float(cr),
         "rejected_reward": float(rj), "margin": float(m)}
        for index, pc, pr, rc, rr, cr, rj, m in zip(
            indices, policy["chosen_logps"], policy["rejected_logps"], ref["chosen_logps"],
            ref["rejected_logps"], chosen_rewards, rejected_rewards, margins)
    ]
    reward_metrics = {
        "reward_accuracy": mean(chosen_rewards > rejected_rewards),
        "reward_margin": mean(margins),
        "chosen_reward": mean(chosen_rewards),
        "rejected_reward": mean(rejected_rewards),
    }
    if not has_rewards:  # a model against itself: every reward is 0 by construction, not a measurement
        reward_metrics = dict.fromkeys(reward_metrics)
        for pair in per_pair:
            pair.update(chosen_reward=None, rejected_reward=None, margin=None)
    return {
        **reward_metrics,
        "logp_accuracy": mean(policy["chosen_logps"] > policy["rejected_logps"]),
        "policy_chosen_logps": mean(policy["chosen_logps"]),
        "policy_rejected_logps": mean(policy["rejected_logps"]),
        "ref_chosen_logps": mean(ref["chosen_logps"]),
        "ref_rejected_logps": mean(ref["rejected_logps"]),
        "num_pairs": len(per_pair),
        "per_pair": per_pair,
    }
