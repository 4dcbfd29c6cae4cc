"""TR-DPO (Gorbatovski et al. 2024, arXiv:2404.09656): every ``ref_model_sync_steps`` optimizer steps the reference
is pulled toward the policy, ``ref <- alpha * policy + (1 - alpha) * ref`` (TRL's ``sync_ref_model``).

Under full fine-tuning the frozen copy is mixed in place, weight by weight, as TRL's ``SyncRefModelCallback`` does,
and each checkpoint saves it. TRL refuses ``sync_ref_model`` with ``peft``: its reference is the base with the adapter
disabled, and there is nothing to mix. Here a LoRA reference is the base plus a second, frozen adapter
(``vlmdpo.model.lora.REFERENCE_ADAPTER``, zero until the first refresh), which ``reference_mode`` switches to; it is
part of the model's state, so each checkpoint saves it too.

What is mixed are the weights, ``W0 + alpha * dP + (1 - alpha) * dR`` with ``dP = s_P B_P A_P`` (the policy's
adapter) and ``dR = s_R B_R A_R`` (the reference's), not the factors: ``(a B_P + (1-a) B_R)(a A_P + (1-a) A_R)`` has
cross terms. The mixed delta is ``[a s_P B_P, (1-a) s_R B_R] @ [A_P; A_R]``, of rank at most ``r + R``, and is put back
into the reference adapter's rank ``R`` by an SVD of the stacked factors. After k refreshes its rank is at most
``k * r``, so with ``R = ref_model_exact_syncs * r`` the first ``ref_model_exact_syncs`` refreshes are exact and later
ones keep the best rank-R approximation (Eckart-Young), whose relative error the log reports.

Every process mixes its own full copy of the weights, the same way (DDP); sharded weights (FSDP, DeepSpeed) are
refused rather than gathered.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from vlmdpo.methods.base import Method
from vlmdpo.model.lora import REFERENCE_ADAPTER


def mix_weights(policy: nn.Module, reference: nn.Module, alpha: float) -> None:
    """``ref <- alpha * policy + (1 - alpha) * ref`` for every weight the policy trains, in place (TRL's formula);
    the weights it does not train (``model.frozen_parts``) are the reference's already and stay bit for bit."""
    weights = dict(getattr(policy, "module", policy).named_parameters())
    with torch.no_grad():
        for name, ref_weight in reference.named_parameters():
            if weights[name].requires_grad:
                ref_weight.mul_(1.0 - alpha).add_(weights[name].detach(), alpha=alpha)


def low_rank(b: Tensor, a: Tensor, rank: int) -> tuple[Tensor, Tensor, float]:
    """The best rank-``rank`` factors of ``b @ a`` ((d_out, m) by (m, d_in)), balanced, and the relative Frobenius
    error of the part left out (0 when ``b @ a`` has rank <= ``rank``, up to rounding)."""
    q_b, r_b = torch.linalg.qr(b)
    q_a, r_a = torch.linalg.qr(a.T)
    u, s, vh = torch.linalg.svd(r_b @ r_a.T)  # b @ a = q_b (u s vh) q_a^T
    keep = min(rank, s.numel())
    root = s[:keep].sqrt()
    new_b, new_a = b.new_zeros(b.shape[0], rank), a.new_zeros(rank, a.shape[1])
    new_b[:, :keep] = (q_b @ u[:, :keep]) * root
    new_a[:keep] = root[:, None] * (vh[:keep] @ q_a.T)
    total = float(s.square().sum())
    return new_b, new_a, math.sqrt(float(s[keep:].square().sum()) / total) if total > 0 else 0.0


def lora_layers(model: nn.Module, adapter: str):
    """``(name, layer)`` of every LoRA layer of ``model`` holding both ``adapter`` and the reference adapter."""
    for name, layer in model.named_modules():
        if adapter in getattr(layer, "lora_embedding_A", {}):
            raise ValueError(f"loss.sync_ref_model mixes plain LoRA on linear layers; {name} is an embedding")
        factors = getattr(layer, "lora_A", None)
        if isinstance(factors, nn.ModuleDict) and adapter in factors and REFERENCE_ADAPTER in factors:
            if not isinstance(factors[adapter], nn.Linear) or getattr(layer, "use_dora", {}).get(adapter):
                raise ValueError(f"loss.sync_ref_model mixes plain LoRA on linear layers; {name} is not one")
            yield name, layer


def mix_adapters(model: nn.Module, alpha: float) -> float:
    """Make the reference adapter's delta ``alpha * dP + (1 - alpha) * dR`` in every LoRA layer of ``model`` (a
    ``peft`` model whose active adapter is the policy's); returns the largest relative error over the layers (0
    while the mix fits the reference's rank)."""
    policy, worst = model.active_adapter, 0.0
    with torch.no_grad():
        for _, layer in lora_layers(model, policy):
            p_a, p_b = layer.lora_A[policy].weight, layer.lora_B[policy].weight
            r_a, r_b = layer.lora_A[REFERENCE_ADAPTER].weight, layer.lora_B[REFERENCE_ADAPTER].weight
            dtype = torch.float32 if r_a.device.type == "mps" else torch.float64  # mps has no float64
            s_p, s_r = layer.scaling[policy], layer.scaling[REFERENCE_ADAPTER]
            b = torch.cat([alpha * s_p * p_b.to(dtype), (1 - alpha) * s_r * r_b.to(dtype)], dim=1)
            a = torch.cat([p_a.to(dtype), r_a.to(dtype)], dim=0)
            new_b, new_a, error = low_rank(b, a, r_a.shape[0])
            r_b.copy_(new_b / s_r)
            r_a.copy_(new_a)
            worst = max(worst, error)
    return worst


def add_reference_adapter(model: nn.Module, rank_factor: int) -> None:
    """Give a ``peft`` policy a frozen reference adapter on the same layers, ``rank_factor`` times its rank, all
    zeros (the reference is the base until the first refresh)."""
    from peft import LoraConfig

    if REFERENCE_ADAPTER in getattr(model, "peft_config", {}):
        return
    if not hasattr(model, "add_adapter") or not hasattr(model, "peft_config"):
        raise ValueError("loss.sync_ref_model: the policy is neither a peft LoRA model nor has a frozen reference")
    own = model.peft_config[model.active_adapter]
    config = LoraConfig(r=rank_factor * own.r, lora_alpha=rank_factor * own.r, lora_dropout=0.0,
                        target_modules=own.target_modules, task_type=own.task_type, inference_mode=True,
                        rank_pattern={key: rank_factor * value for key, value in own.rank_pattern.items()})
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):  # the new layers' random init must not move the run's RNG
        model.add_adapter(REFERENCE_ADAPTER, config)
    with torch.no_grad():
        for name, weight in model.named_parameters():
            if f".{REFERENCE_ADAPTER}." in name and "lora_" in name:
                weight.zero_().requires_grad_(False)


class ReferenceRefresh(Method):
    """TR-DPO's soft refresh of the reference every ``every`` optimizer steps, with weight ``alpha`` on the policy.

    Its state in a checkpoint is the number of refreshes so far and the last one's relative error; the refreshed
    weights are the model's (the reference adapter) or an object of their own (the frozen copy).
    """

    name = "trdpo"
    moves_reference = True

    def __init__(self, alpha: float, every: int, exact_syncs: int = 4):
        self.alpha, self.every, self.exact_syncs = alpha, every, exact_syncs
        self.syncs, self.error = 0, 0.0

    def prepare_models(self, policy, reference) -> list:
        from accelerate.state import PartialState
        from accelerate.utils import DistributedType

        if PartialState().distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED):
            raise ValueError("loss.sync_ref_model mixes whole weights on each process, and FSDP and DeepSpeed shard "
                             "them: launch with plain data parallelism (DDP) or set loss.sync_ref_model=false")
        if reference is not None:
            return [reference]
        add_reference_adapter(getattr(policy, "module", policy), self.exact_syncs)
        return []

    def after_optimizer_step(self, step: int, policy, reference) -> str | None:
        if step % self.every:
            return None
        if reference is not None:
            mix_weights(policy, reference, self.alpha)
            self.error = 0.0
        else:
            self.error = mix_adapters(getattr(policy, "module", policy), self.alpha)
        self.syncs += 1
        line = f"step {step}: TR-DPO refresh {self.syncs}, ref <- {self.alpha} * policy + {1 - self.alpha:g} * ref"
        if self.error > 1e-6:  # rounding aside, the first ``exact_syncs`` refreshes leave out nothing
            line += (f"; the reference adapter (rank loss.ref_model_exact_syncs={self.exact_syncs} x model.lora_r) "
                     f"keeps the mix's best approximation of its rank, relative error {self.error:.2e} in the "
                     "worst layer (a larger loss.ref_model_exact_syncs keeps more refreshes exact)")
        return line

    def state_dict(self) -> dict:
        return {"ref_model_syncs": self.syncs, "ref_model_sync_error": self.error}

    def load_state_dict(self, state: dict) -> None:
        self.syncs = int(state.get("ref_model_syncs", 0))
        self.error = float(state.get("ref_model_sync_error", 0.0))


def from_config(loss, seed: int = 0) -> ReferenceRefresh | None:
    """The refresh when ``loss.sync_ref_model`` is on."""
    if not loss.sync_ref_model:
        return None
    return ReferenceRefresh(loss.ref_model_mixup_alpha, loss.ref_model_sync_steps, loss.ref_model_exact_syncs)
