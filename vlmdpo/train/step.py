"""One DPO step on one micro-batch: response log-probs of the policy and the reference, then the loss.

The data path, end to end::

    batch = PreferenceCollator(processor)(rows)              # prompt left-padded, responses right-padded
    logps = logps_function(policy, batch, pad, "fast")       # packed [prompt; chosen; rejected] or plain
    policy_out = logps(policy)                               # response tokens only (completion_mask)
    with reference_mode(policy, reference) as ref_model:     # adapter disabled, or the frozen copy
        ref_out = logps(ref_model)
    loss, parts = combined_loss(spec, policy_out..., ref_out..., beta=...)
    loss.backward()

``dpo_step`` is that, plus the metrics the training loop logs, and the hooks of the run's methods
(``vlmdpo.methods``): dense DPO and LD-DPO reweight the log-probs, mDPO scores its corrupted-image responses,
BCO hands its running shift to its loss, beta-DPO and MM-DPO set the beta, WPO weights each pair's loss. A
mixture-of-experts model whose routers train adds its load-balancing loss (``vlmdpo.model.routers``).
"""

from __future__ import annotations

import contextlib

import torch

from vlmdpo.config import LossConfig
from vlmdpo.forward.fast import packed_completion_logps, shared_image_features
from vlmdpo.forward.logps import completion_logps, concatenated_inputs
from vlmdpo.forward.packing import pack_pairs, padding_stats
from vlmdpo.methods.base import Method
from vlmdpo.methods.losses import rewards
from vlmdpo.methods.registry import build_methods, combined_loss
from vlmdpo.model.load import hf_model
from vlmdpo.model.lora import reference_mode
from vlmdpo.model.routers import RecordedRouterLogits, load_balancing_loss, router_loss_coefficient
from vlmdpo.train.reference_cache import ReferenceLogps


def logps_function(policy, batch: dict, pad_token_id: int, forward_path: str = "plain"):
    """``(model, outputs=()) -> response log-probs of batch`` by ``forward_path`` (``outputs``: more per-token
    outputs, ``vlmdpo.forward.logps.PER_TOKEN_OUTPUTS``); the fast path packs the batch and encodes its images
    once, for every model it is then called with (policy and reference)."""
    if forward_path == "fast":
        packed, features = pack_pairs(policy, batch), shared_image_features(policy, batch)
        return lambda model, outputs=(): packed_completion_logps(model, packed, features, outputs)
    return lambda model, outputs=(): completion_logps(model, batch, pad_token_id, outputs)


def policy_and_reference_logps(policy, reference, batch: dict, pad_token_id: int, forward_path: str = "plain",
                               with_reference: bool = True, ref_logps: ReferenceLogps | None = None,
                               policy_outputs=(), policy_pass=None):
    """Response log-probs of the policy (with the per-token ``policy_outputs`` besides) and of the reference
    (``None`` when ``with_reference`` is off); precomputed ``ref_logps`` replace the reference pass.
    ``policy_pass``: a context manager around the policy's forward alone (recording its router logits)."""
    logps = logps_function(policy, batch, pad_token_id, forward_path)
    with policy_pass or contextlib.nullcontext():
        policy_out = logps(policy, policy_outputs)
    if not with_reference:
        return policy_out, None
    if ref_logps is not None:
        return policy_out, ref_logps.lookup(batch["index"], policy_out["chosen_logps"].device)
    with reference_mode(policy, reference) as ref_model:
        return policy_out, logps(ref_model)


def dpo_step(policy, reference, batch: dict, loss_config: LossConfig, *, pad_token_id: int,
             forward_path: str = "plain", methods: list[Method] | None = None,
             ref_logps: ReferenceLogps | None = None):
    """``(loss, metrics)`` for one micro-batch.

    Args:
        policy: the model being trained (LoRA-wrapped, or the full model).
        reference: the frozen copy under full fine-tuning, or ``None`` (the policy with its adapter disabled).
        batch: a ``PreferenceCollator`` batch on the model's device (a ``MethodCollator``'s when a method adds
            to it: dense weights, corrupted images).
        loss_config: the loss spec, ``beta`` and the losses' own settings.
        pad_token_id: the tokenizer's pad id (the plain path pads chosen and rejected to one width).
        forward_path: ``"fast"`` (packed pairs) or ``"plain"`` (see ``vlmdpo.forward.fast``).
        methods: the run's methods (``vlmdpo.methods.build_methods``), whose state (BCO's shift) the training
            loop keeps; ``None`` builds them afresh from ``loss_config``.
        ref_logps: precomputed reference log-probs, which replace the reference pass.

    Supervised batches (no rejected responses) and reference-free losses skip the passes they do not need;
    the tensors they would have produced are zeros that no loss in the spec reads.
    """
    methods = build_methods(loss_config) if methods is None else methods
    policy_outputs = sorted(set().union(*(method.policy_outputs for method in methods)))
    model = hf_model(policy)
    router_coefficient = router_loss_coefficient(model)
    recording = RecordedRouterLogits(model) if router_coefficient else None
    policy_out, ref_out = policy_and_reference_logps(policy, reference, batch, pad_token_id, forward_path,
                                                     loss_config.needs_reference, ref_logps, policy_outputs,
                                                     policy_pass=recording)
    for method in methods:
        policy_out, ref_out = method.reweight(policy_out, ref_out, batch)
    inputs = {}
    for method in methods:
        inputs.update(method.loss_inputs(batch, lambda extra: policy_and_reference_logps(
            policy, reference, extra, pad_token_id, forward_path)))
    zeros = torch.zeros_like(policy_out["chosen_logps"])
    policy_out.setdefault("rejected_logps", zeros)
    policy_out.setdefault("rejected_lengths", policy_out["chosen_lengths"])
    ref_out = ref_out or {"chosen_logps": zeros, "rejected_logps": zeros}
    ref_out.setdefault("rejected_logps", zeros)
    beta, pair_weights, method_metrics = loss_config.beta, None, {}
    for method in methods:  # per-pair or per-batch beta (beta-DPO, MM-DPO), pair weights (WPO, beta-DPO's filter)
        changes = method.loss_changes(policy_out, ref_out, batch, beta)
        beta = changes.get("beta", beta)
        if "pair_weights" in changes:
            pair_weights = changes["pair_weights"] * (1 if pair_weights is None else pair_weights)
        method_metrics.update(changes.get("metrics", {}))
    loss, parts = combined_loss(
        loss_config.weighted(), policy_out["chosen_logps"], policy_out["rejected_logps"],
        ref_out["chosen_logps"], ref_out["rejected_logps"], **{**loss_config.settings(), "beta": beta},
        chosen_lengths=policy_out["chosen_lengths"], rejected_lengths=policy_out["rejected_lengths"],
        pair_weights=pair_weights, **inputs)
    if router_coefficient:  # the packed fast path has no padding; the plain one's is left out
        mask = None if forward_path == "fast" else concatenated_inputs(batch, pad_token_id)["model_inputs"][
            "attention_mask"]
        router_loss = router_coefficient * load_balancing_loss(model, recording.logits, mask)
        loss, parts["router_load_balancing"] = loss + router_loss, router_loss.detach()
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
        **method_metrics,
    }
    if torch.is_tensor(beta):  # a method set it: the beta the losses used, averaged over the pairs
        metrics["beta"] = beta.detach().float().mean()
    # share of the forward's token positions that are padding (the packed fast path has none)
    padding = 0.0 if forward_path == "fast" else padding_stats(batch)["padding_fraction"]
    metrics["padding/fraction"] = torch.tensor(padding, device=loss.device)
    if "rejected_input_ids" not in batch:  # supervised: there is no preference to report
        metrics = {k: v for k, v in metrics.items() if not k.startswith("rewards/") and k != "logps/rejected"}
    return loss, metrics
