"""Sharded training with FSDP2 (``torch.distributed.fsdp.fully_shard``), in the loop ``accelerate`` runs.

``accelerate`` runs FSDP only on accelerators: with ``ACCELERATE_USE_CPU`` its distributed type stays
``MULTI_CPU`` whatever the FSDP settings, so on a CPU (and wherever ``train.sharding=fsdp2`` is set) vlmdpo shards
the policy itself, as ``accelerate``'s FSDP2 plugin does with its transformer-block wrap policy: ``fully_shard`` on
each block the model names in ``_no_split_modules`` (decoder layers, vision encoder layers, embeddings), then on the
whole model. Under full fine-tuning the frozen reference copy is sharded the same way. ``accelerate`` then keeps
the devices, the loader, accumulation and logging, but must not wrap the policy in DDP.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from vlmdpo.forward.idle_vision import run_vision_every_forward, take_images_seen
from vlmdpo.model.load import hf_model
from vlmdpo.model.lora import part_of

SHARDING_CHOICES = ("none", "fsdp2")


def block_classes(model: nn.Module) -> set[str]:
    """Class names of the blocks a model must not be split inside: the union of ``_no_split_modules`` of every
    ``transformers`` model in it (the VLM's, its language model's, its vision tower's)."""
    return set().union(*(getattr(module, "_no_split_modules", None) or () for module in model.modules()))


def sharding_active(choice: str) -> bool:
    """True when ``train.sharding`` asks for sharding and ``torch.distributed`` runs more than one process."""
    distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
    return choice != "none" and distributed and torch.distributed.get_world_size() > 1


def shard_policy(policy: nn.Module, blank_image_inputs: dict[str, torch.Tensor] | None) -> nn.Module:
    """``fully_shard`` each block of every part of ``policy``'s model, then the model; return ``policy``.

    Call it after every module is in place (LoRA, a method's extra adapter) and before the optimizer is built:
    the parameters become ``DTensor`` shards. ``blank_image_inputs`` (``PreferenceCollator.blank_image_inputs``)
    keep the vision tower running on text-only batches (``vlmdpo.forward.idle_vision``); ``None`` for a model
    without images.
    """
    return _shard(policy, blank_image_inputs, root_reshards_after_forward=None)


def shard_reference(reference: nn.Module, blank_image_inputs: dict[str, torch.Tensor] | None) -> nn.Module:
    """``shard_policy`` for the frozen reference copy of full fine-tuning; return ``reference``.

    It only runs forward, on every process in the same order (the reference pass of each step), and the blank
    image keeps its vision tower's all-gathers in step too. Its whole model also reshards after each forward: FSDP2
    keeps the outermost unit's parameters gathered after forward for the backward that follows, which a reference
    never runs.
    """
    return _shard(reference, blank_image_inputs, root_reshards_after_forward=True)


def _shard(model: nn.Module, blank_image_inputs: dict[str, torch.Tensor] | None,
           root_reshards_after_forward: bool | None) -> nn.Module:
    from torch.distributed.fsdp import fully_shard

    base = hf_model(model)
    names = block_classes(base)
    blocks = [module for module in base.modules() if type(module).__name__ in names
              and any(True for _ in module.parameters())]
    if not blocks:
        raise ValueError(f"{type(base).__name__} names no blocks in _no_split_modules to shard by")
    for block in reversed(blocks):  # innermost first: a unit's parameters are those no inner unit holds
        fully_shard(block)
    fully_shard(base, reshard_after_forward=root_reshards_after_forward)
    if blank_image_inputs is not None:
        run_vision_every_forward(base, blank_image_inputs)
    return model


def vision_every_forward_under_deepspeed(models: list[nn.Module], blank_image_inputs: dict[str, torch.Tensor] | None,
                                         pads_images_per_row: bool) -> bool:
    """Under ``accelerate`` with DeepSpeed on several processes, hook ``models`` (the policy, full fine-tuning's
    reference) so that every forward runs the vision tower (``vlmdpo.forward.idle_vision``); return whether it did.

    ZeRO-3 all-gathers each module's parameters when it runs, and ZeRO-2 reduces gradients in buckets every process
    must fill alike: a text-only micro-batch beside one with images aborts the job on gloo and hangs NCCL
    (``tests/test_deepspeed.py`` shows both, and the rule making them equal one process). A step where no process
    saw an image still differs from one process under ZeRO: its zero vision gradients count as an Adam step there.
    """
    if blank_image_inputs is None:
        return False
    if pads_images_per_row:
        raise ValueError("DeepSpeed with several processes does not yet run a model whose processor pads images per "
                         "row (Mllama): its batches run one forward per image count, which can differ between "
                         "processes; run it on one process")
    for model in models:
        run_vision_every_forward(hf_model(model), blank_image_inputs)
    return True


def full_state_dict(policy: nn.Module) -> dict[str, torch.Tensor]:
    """The policy's whole state dict on the CPU, gathered from every process's shards (a collective: every process
    calls it)."""
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_model_state_dict,
    )

    return get_model_state_dict(policy, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def is_fsdp2(policy: nn.Module) -> bool:
    """True when ``shard_policy`` sharded ``policy`` (its model is an FSDP2 unit)."""
    from torch.distributed.fsdp import FSDPModule

    return isinstance(hf_model(policy), FSDPModule)


def save_sharded_state(policy: nn.Module, optimizer: torch.optim.Optimizer, folder: Path) -> None:
    """Each process writes its shards of the trainable weights and of the optimizer state to ``folder``
    (``torch.distributed.checkpoint``; a collective). Frozen weights are left out: they come from the base model."""
    import torch.distributed.checkpoint as dcp

    dcp.save(_sharded_state(policy, optimizer), checkpoint_id=str(folder))


def load_sharded_state(policy: nn.Module, optimizer: torch.optim.Optimizer, folder: Path) -> None:
    """Load what ``save_sharded_state`` wrote into ``policy`` and ``optimizer`` (a collective; any number of
    processes may read it)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import set_state_dict

    state = _sharded_state(policy, optimizer)
    dcp.load(state, checkpoint_id=str(folder))
    set_state_dict(policy, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"],
                   options=_options())


def _sharded_state(policy: nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    from torch.distributed.checkpoint.state_dict import get_state_dict

    model_state, optimizer_state = get_state_dict(policy, optimizer, options=_options())
    return {"model": model_state, "optimizer": optimizer_state}


def _options():
    """Only the trainable weights (LoRA, or every weight under full fine-tuning). Loading them is not strict,
    as the frozen ones stay as loaded from the base model; ``dcp.load`` fails on any trainable one missing."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(ignore_frozen_params=True, strict=False)


def drop_blank_image_gradients(policy: nn.Module) -> None:
    """Before an optimizer step of a sharded run: when no process ran a real image since the last step, the
    vision tower's and projector's gradients come from blank images alone (zeros) and are set to ``None``, as an
    unsharded run leaves them; Adam would otherwise still move those weights by their momentum."""
    seen = torch.tensor([float(take_images_seen(policy))])
    torch.distributed.all_reduce(seen)
    if seen.item() == 0:
        for name, param in policy.named_parameters():
            if part_of(name) in ("vision", "projector"):
                param.grad = None
