"""One DPO step on one micro-batch: response log-probs of the policy and the reference, then the loss.

The data path, end to end::

    batch = PreferenceCollator(processor)(rows)              # prompt left-padded, responses right-padded
    logps = logps_function(policy, batch, pad, "fast")       # packed [prompt; chosen; rejected] or plain
    policy_out = logps(policy)                               # response tokens only (completion_mask)
    with reference_mode(policy, reference) as ref_model:     # adapter disabled, or the frozen copy
        ref_out = logps(ref_model)
    loss, parts = combined_loss(spec, policy_out..., ref_out..., beta=...)
    loss.backward()

``dpo_step`` is that, plus the metrics the training loop logs; with dense DPO's token weights in the batch
each summed log-prob becomes the weighted one, and mDPO's conditional term adds a pass over the batch's
``corrupted`` responses (``vlmdpo.method_batches``).
"""

from __future__ import annotations

import torch

from vlmdpo.config import LossConfig
from vlmdpo.dense_weights import weighted_logps
from vlmdpo.fast_logps import packed_completion_logps, shared_image_features
from vlmdpo.logps import completion_logps
from vlmdpo.losses import combined_loss, rewards
from vlmdpo.modeling import reference_mode
from vlmdpo.packing import pack_pairs, padding_stats
from vlmdpo.reference_cache import ReferenceLogps


def logps_function(policy, batch: dict, pad_token_id: int, forward_path: str = "plain"):
    """``model -> response log-probs of batch`` by ``forward_path``; the fast path packs the batch and encodes
    its images once, for every model it is then called with (policy and reference)."""
    if forward_path == "fast":
        packed, features = pack_pairs(policy, batch), shared_image_features(policy, batch)
        return lambda model: packed_completion_logps(model, packed, features)
    return lambda model: completion_logps(model, batch, pad_token_id)


def policy_and_reference_logps(policy, reference, batch: dict, pad_token_id: int, forward_path: str = "plain",
                               with_reference: bool = True, ref_logps: ReferenceLogps | None = None):
    """Response log-probs of the policy and of the reference (``None`` when ``with_reference`` is off);
    precomputed ``ref_logps`` replace the reference pass."""
    logps = logps_function(policy, batch, pad_token_id, forward_path)
    policy_out = logps(policy)
    if not with_reference:
        return policy_out, None
    if ref_logps is not None:
        return policy_out, ref_logps.lookup(batch["index"], policy_out["chosen_logps"].device)
    with reference_mode(policy, reference) as ref_model:
        return policy_out, logps(ref_model)


def dense_weighted(out: dict, batch: dict, normalize: bool) -> dict:
    """``out`` with each ``{field}_logps`` replaced by dense DPO's weighted log-prob, from ``per_token_logps``
    and the batch's ``{field}_token_weights`` (``vlmdpo.method_batches``)."""
    per_token = out["per_token_logps"]
    batch_size, width = batch["prompt_input_ids"].shape[0], per_token.shape[1]

    def padded(tensor, value):  # (B, T) of the batch to the log-probs' width
        return torch.nn.functional.pad(tensor.to(per_token.device).float(), (0, width - tensor.shape[1]), value=value)

    weighted = dict(out)
    for i, field in enumerate(f for f in ("chosen", "rejected") if f"{f}_logps" in out):
        weighted[f"{field}_logps"] = weighted_logps(
            per_token[i * batch_size: (i + 1) * batch_size], padded(batch[f"{field}_completion_mask"], 0),
            padded(batch[f"{field}_token_weights"], 1), normalize=normalize)
    return weighted


def dpo_step(policy, reference, batch: dict, loss_config: LossConfig, *, pad_token_id: int,
             forward_path: str = "plain", bco_delta: float = 0.0, ref_logps: ReferenceLogps | None = None):
    """``(loss, metrics)`` for one micro-batch.

    Args:
        policy: the model being trained (LoRA-wrapped, or the full model).
        reference: the frozen copy under full fine-tuning, or ``None`` (the policy with its adapter disabled).
        batch: a ``PreferenceCollator`` batch on the model's device.
        loss_config: the loss spec, ``beta`` and the losses' own settings.
        pad_token_id: the tokenizer's pad id (the plain path pads chosen and rejected to one width).
        forward_path: ``"fast"`` (packed pairs) or ``"plain"`` (see ``vlmdpo.fast_logps``).
        bco_delta: BCO's running reward shift (kept by the training loop).
        ref_logps: precomputed reference log-probs, which replace the reference pass.

    Supervised batches (no rejected responses) and reference-free losses skip the passes they do not need;
    the tensors they would have produced are zeros that no loss in the spec reads.
    """
    policy_out, ref_out = policy_and_reference_logps(policy, reference, batch, pad_token_id, forward_path,
                                                     loss_config.needs_reference, ref_logps)
    if "chosen_token_weights" in batch:
        policy_out = dense_weighted(policy_out, batch, loss_config.dense_normalize)
        ref_out = ref_out and dense_weighted(ref_out, batch, loss_config.dense_normalize)
    corrupted = {}
    if loss_config.needs_corrupted_images:
        if "corrupted" not in batch:
            raise ValueError("mdpo_conditional needs the batch's corrupted-image responses: collate with "
                             "vlmdpo.method_batches.MethodBatches (vlmdpo.train does)")
        corrupted_policy, corrupted_ref = policy_and_reference_logps(policy, reference, batch["corrupted"],
                                                                     pad_token_id, forward_path)
        corrupted = {"policy_corrupted_chosen_logps": corrupted_policy["chosen_logps"],
                     "ref_corrupted_chosen_logps": corrupted_ref["chosen_logps"]}
    zeros = torch.zeros_like(policy_out["chosen_logps"])
    policy_out.setdefault("rejected_logps", zeros)
    policy_out.setdefault("rejected_lengths", policy_out["chosen_lengths"])
    ref_out = ref_out or {"chosen_logps": zeros, "rejected_logps": zeros}
    ref_out.setdefault("rejected_logps", zeros)
    beta = loss_config.beta
    loss, parts = combined_loss(
        loss_config.weighted(), policy_out["chosen_logps"], policy_out["rejected_logps"],
        ref_out["chosen_logps"], ref_out["rejected_logps"], beta=beta,
        label_smoothing=loss_config.label_smoothing, simpo_gamma=loss_config.simpo_gamma, bco_delta=bco_delta,
        anchor_margin=loss_config.anchor_margin, chosen_lengths=policy_out["chosen_lengths"],
        rejected_lengths=policy_out["rejected_lengths"], **corrupted)
    chosen_rewards = rewards(policy_out["chosen_logps"], ref_out["chosen_logps"], beta)
    rejected_rewards = rewards(policy_out["rejected_logps"], ref_out["rejected_logps"], beta)
    metrics = {
        "loss": loss.detach(),
        "rewards/chosen": chosen_rewards.mean(),
        "rewards/rejected": rejected_rewards.mean(),
        "rewards/margins": (chosen_rewards - rejected_rewards).mean(),
        "rewards/accuracies": (chosen_rewards > rejected_rewards).float().mean(),
        "logps/chosen": policy_out["chosen_logps"].detach().mean(),
        "logps/rejected": policy_out["rejected_logps"].detach().mean(),
        **{f"loss/{name}": value for name, value in parts.items()},
    }
    # share of the forward's token positions that are padding (the packed fast path has none)
    padding = 0.0 if forward_path == "fast" else padding_stats(batch)["padding_fraction"]
    metrics["padding/fraction"] = torch.tensor(padding, device=loss.device)
    if "rejected_input_ids" not in batch:  # supervised: there is no preference to report
        metrics = {k: v for k, v in metrics.items() if not k.startswith("rewards/") and k != "logps/rejected"}
    return loss, metrics
