"""The optimizer: AdamW over the trainable weights, with a learning rate per part of the VLM where asked.

A vision tower that is adapted at the language model's rate can lose what it learnt in pretraining faster than the
alignment gains; ms-swift's ``vit_lr`` / ``aligner_lr`` and LLaVA-OneVision's lower vision rate answer the same way.
"""

from __future__ import annotations

import torch
from torch import nn

from vlmdpo.model.lora import PART_CHOICES, part_of


def parameter_groups(model: nn.Module, learning_rate: float,
                     part_learning_rates: dict[str, float] | None = None) -> list[dict]:
    """AdamW parameter groups of ``model``'s trainable weights: one per part named in ``part_learning_rates``
    (``language``, ``projector``, ``vision``) at its rate, then the rest at ``learning_rate``, listed first so
    that the scheduler's first rate is the main one. A named part with no trainable weight is refused."""
    rates = dict(part_learning_rates or {})
    unknown = set(rates) - set(PART_CHOICES)
    if unknown:
        raise ValueError(f"train.part_learning_rates has unknown parts {sorted(unknown)}; use {'/'.join(PART_CHOICES)}")
    grouped: dict[str | None, list[torch.nn.Parameter]] = {None: [], **{part: [] for part in rates}}
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            part = part_of(name)
            grouped[part if part in rates else None].append(parameter)
    empty = [part for part in rates if not grouped[part]]
    if empty:
        raise ValueError(f"train.part_learning_rates names {empty}, but nothing trains there: add the part to "
                         "model.lora_parts (LoRA) or take it out of model.frozen_parts (full fine-tuning), or drop "
                         "its rate")
    groups = [{"params": grouped[None], "lr": learning_rate, "part": "rest"}] if grouped[None] else []
    return groups + [{"params": grouped[part], "lr": rate, "part": part} for part, rate in rates.items()]


def build_optimizer(model: nn.Module, *, learning_rate: float, weight_decay: float,
                    part_learning_rates: dict[str, float] | None = None) -> torch.optim.AdamW:
    """AdamW over ``model``'s trainable weights (see ``parameter_groups``)."""
    return torch.optim.AdamW(parameter_groups(model, learning_rate, part_learning_rates), lr=learning_rate,
                             weight_decay=weight_decay)
