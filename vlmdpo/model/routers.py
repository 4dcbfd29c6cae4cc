"""Mixture-of-experts routers: which modules they are (asked of the model), and their load-balancing loss over a
forward pass, for the training loss when the routers train.

The term is the model's own (Switch Transformer's auxiliary loss, arXiv:2101.03961, as the model's transformers
module computes it) times the config's ``router_aux_loss_coef``. It applies when the config asks for router logits
(``output_router_logits``, off in the hub checkpoints) and a router weight trains (full fine-tuning). LoRA never
wraps a router, so under LoRA the term is left out: the routers cannot learn from it, and its only gradient would
push the adapters to move hidden states toward a balance the frozen router was never trained to need.

Router logits are recorded by hooks on the modules the model records them from (the routers, or the block around
them) rather than read from the model's output, so that both forward paths (plain and packed) give them; the loss
counts every token the forward saw except padding. The plain path sees a pair's prompt twice (once with each
response), the packed one once, so the term differs slightly between them.
"""

from __future__ import annotations

import sys

import torch
from torch import nn


def _router_classes(model: nn.Module) -> dict[type, int]:
    """Router class -> index of the logits in its output: what the model's transformers classes record as
    ``router_logits`` (their ``_can_record_outputs``)."""
    classes = {}
    for module in model.modules():
        target = (getattr(module, "_can_record_outputs", None) or {}).get("router_logits")
        target_class = getattr(target, "target_class", target)
        if isinstance(target_class, type):
            classes[target_class] = getattr(target, "index", 0)
    return classes


def router_modules(model: nn.Module) -> list[nn.Module]:
    """The routers in ``model``: the modules whose outputs the model records as ``router_logits``, or, where it
    records them from the mixture-of-experts block around its routers, the block's ``*Router`` modules (ERNIE 4.5
    VL: one per modality). Never the whole block: its experts and shared experts are not routers."""
    classes = tuple(_router_classes(model))
    routers = []
    for module in model.modules():
        if classes and isinstance(module, classes):
            inner = [sub for sub in module.modules() if sub is not module and "router" in type(sub).__name__.lower()]
            routers += inner or [module]
    return routers


def router_loss_coefficient(model: nn.Module) -> float:
    """``router_aux_loss_coef`` when the load-balancing term applies to ``model`` (a transformers model, unwrapped):
    its config asks for router logits and a router weight trains; else 0 (also for a model with no
    ``transformers`` config: nothing there returns router logits)."""
    config = getattr(model, "config", None)
    if config is None or not hasattr(config, "get_text_config"):
        return 0.0
    text_config = config.get_text_config()
    coefficient = float(getattr(text_config, "router_aux_loss_coef", 0.0) or 0.0)
    if not (getattr(text_config, "output_router_logits", False) and coefficient):
        return 0.0
    routers = router_modules(model)
    trains = any(param.requires_grad for router in routers for param in router.parameters())
    return coefficient if trains else 0.0


def turn_on_load_balancing(model: nn.Module, coefficient: float) -> None:
    """Ask ``model`` (a transformers model) for its router logits and weigh its load-balancing term by
    ``coefficient`` (``model.router_aux_loss_coef``); ``ValueError`` for a model without routers."""
    if not router_modules(model):
        raise ValueError(f"model.router_aux_loss_coef is set, but {type(model).__name__} has no mixture-of-experts "
                         "routers: unset it")
    text_config = model.config.get_text_config()
    text_config.output_router_logits, text_config.router_aux_loss_coef = True, float(coefficient)


def generation_settings(model: nn.Module) -> dict:
    """``generate`` keywords for ``model``: with its router logits on, ``output_router_logits=False`` (transformers'
    load-balancing loss fails on a cached decoding step's router logits with the whole attention mask)."""
    config = getattr(model, "config", None)
    text_config = config.get_text_config() if config is not None and hasattr(config, "get_text_config") else None
    return {"output_router_logits": False} if getattr(text_config, "output_router_logits", False) else {}


class RecordedRouterLogits:
    """A context manager: while it is open, each router call of ``model`` adds its logits ``(tokens, experts)`` to
    ``logits``, in call order (layer by layer)."""

    def __init__(self, model: nn.Module):
        self.model, self.logits, self._handles = model, [], []

    def _record(self, index: int):
        def hook(_module, _args, output):
            self.logits.append(output[index] if isinstance(output, (tuple, list)) else output)
        return hook

    def __enter__(self):
        for router_class, index in _router_classes(self.model).items():
            self._handles += [module.register_forward_hook(self._record(index)) for module in self.model.modules()
                              if isinstance(module, router_class)]
        return self

    def __exit__(self, *_exc):
        for handle in self._handles:
            handle.remove()
        self._handles = []


def load_balancing_loss(model: nn.Module, router_logits: list[torch.Tensor],
                        attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """The model's own load-balancing loss (its transformers module's ``load_balancing_loss_func``) over the
    recorded ``router_logits`` of one forward; ``attention_mask`` (B, T) leaves out padding, ``None``: every
    token counts. Unweighted: the caller multiplies by ``router_loss_coefficient``."""
    loss_func = getattr(sys.modules[type(model).__module__], "load_balancing_loss_func", None)
    if loss_func is None:
        raise ValueError(f"{type(model).__name__} returns no load-balancing loss its module defines; set "
                         "output_router_logits=false in its config")
    text_config = model.config.get_text_config()
    num_experts = next(getattr(text_config, key) for key in ("num_experts", "num_local_experts", "n_routed_experts")
                       if isinstance(getattr(text_config, key, None), int))
    return loss_func(tuple(router_logits), num_experts, text_config.num_experts_per_tok, attention_mask)
