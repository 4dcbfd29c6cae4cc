"""The one place training methods are registered: loss terms by name, presets, and the methods that need more
than a loss (``METHODS``). Adding a method touches its own module and this file.

A loss spec is ``name:weight+name:weight`` (or a preset name); :func:`combined_loss` sums the registered
terms, handing each only the keywords its signature names, and refuses a keyword no registered loss takes.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

import vlmdpo.methods.aot as aot
import vlmdpo.methods.bco as bco
import vlmdpo.methods.beta_dpo as beta_dpo
import vlmdpo.methods.dama as dama
import vlmdpo.methods.dense as dense
import vlmdpo.methods.length_desensitised as length_desensitised
import vlmdpo.methods.margin_beta as margin_beta
import vlmdpo.methods.mdpo as mdpo
import vlmdpo.methods.response_rewards as response_rewards
import vlmdpo.methods.trdpo as trdpo
import vlmdpo.methods.wpo as wpo
from vlmdpo.methods.base import Method
from vlmdpo.methods.losses import cdpo, discopop, exo_pair, hinge, ipo, robust, sft, sigmoid_dpo, sigmoid_norm, simpo

_LOGPS = ("policy_chosen_logps", "policy_rejected_logps", "ref_chosen_logps", "ref_rejected_logps")


@dataclass(frozen=True)
class LossTerm:
    """A registered loss: the pure function and what it reads, so a run skips the passes no term needs."""

    fn: Callable[..., Tensor]
    reference: bool = True
    """Reads the reference log-probs (False: the reference pass is skipped when no other term reads them)."""
    rejected: bool = True
    """Reads the rejected response (when no term of a spec does, rows need no rejected response: SFT)."""
    per_pair: bool = True
    """Each pair's loss depends on that pair alone (False: AOT sorts across the batch, so a pair's weight or
    beta would meet another pair's loss)."""
    keywords: frozenset[str] = field(init=False)
    """The keyword arguments the function takes beyond the four log-probs."""

    def __post_init__(self):
        names = [name for name in inspect.signature(self.fn).parameters if name not in _LOGPS]
        object.__setattr__(self, "keywords", frozenset(names))

    def __call__(self, *logps: Tensor, **keywords) -> Tensor:
        return self.fn(*logps, **keywords)


LOSSES: dict[str, LossTerm] = {
    "sigmoid": LossTerm(sigmoid_dpo),
    "cdpo": LossTerm(cdpo),
    "ipo": LossTerm(ipo),
    "hinge": LossTerm(hinge),
    "robust": LossTerm(robust),
    "sigmoid_norm": LossTerm(sigmoid_norm),
    "exo_pair": LossTerm(exo_pair),
    "discopop": LossTerm(discopop),
    "simpo": LossTerm(simpo, reference=False),
    "aot": LossTerm(aot.aot, per_pair=False),
    "aot_unpaired": LossTerm(aot.aot_unpaired, per_pair=False),
    "bco_pair": LossTerm(bco.bco_pair),
    "apo_zero": LossTerm(response_rewards.apo_zero),
    "apo_down": LossTerm(response_rewards.apo_down),
    "nca_pair": LossTerm(response_rewards.nca_pair),
    "sppo_hard": LossTerm(response_rewards.sppo_hard),
    "sft": LossTerm(sft, reference=False, rejected=False),
    "mdpo_conditional": LossTerm(mdpo.mdpo_conditional, rejected=False),
    "mdpo_anchor": LossTerm(mdpo.mdpo_anchor, rejected=False),
}

LOSS_KEYWORDS = frozenset().union(*(term.keywords for term in LOSSES.values()))
"""Every keyword some registered loss takes: a loss setting or input outside it is a mistake."""

MPO: tuple[tuple[str, float], ...] = (("sigmoid", 0.8), ("bco_pair", 0.2), ("sft", 1.0))
"""Mixed Preference Optimization, Wang et al. 2024 (arXiv:2411.10442): preference + quality + generation."""

MDPO: tuple[tuple[str, float], ...] = (("sigmoid", 1.0), ("mdpo_conditional", 1.0), ("mdpo_anchor", 1.0))
"""mDPO, Wang et al. 2024 (arXiv:2406.11839): its objective L_DPO + L_CoPO + L_AncPO, equal weights."""

PRESETS = {"dpo": "sigmoid", "mpo": "+".join(f"{name}:{weight}" for name, weight in MPO),
           "mdpo": "+".join(f"{name}:{weight}" for name, weight in MDPO)}
"""Loss specs by name (``loss.losses=mpo``)."""

METHODS: tuple[Callable[..., Method | None], ...] = (dense.from_config, mdpo.from_config, bco.from_config,
                                                     trdpo.from_config, length_desensitised.from_config,
                                                     beta_dpo.from_config, margin_beta.from_config,
                                                     dama.from_config, wpo.from_config)
"""``from_config(loss_config, seed) -> Method | None`` of every method that needs more than its loss terms."""


def check_f_divergence(names: Iterable[str], f_divergence: str) -> None:
    """Refuses an f-divergence other than the reverse KL for a spec it would not apply to wholly.

    It applies to the terms that take ``f_divergence`` (the losses on the chosen-minus-rejected reward
    difference, where f-DPO's ``beta * log Z(x)`` cancels); a reference-free term (sft, simpo) has no
    log-ratio to change and may sit beside them. Any other term, or a spec with no term it applies to, is an
    error rather than a setting that silently does nothing, as TRL's DPOTrainer refuses it.
    """
    if f_divergence == "reverse_kl":
        return
    names = list(names)
    takers = sorted(name for name, term in LOSSES.items() if "f_divergence" in term.keywords)
    refused = [name for name in names if "f_divergence" not in LOSSES[name].keywords and LOSSES[name].reference]
    if refused or not set(names) & set(takers):
        reason = f"it does not apply to {refused}" if refused else f"the spec {names} has none of them"
        raise ValueError(f"loss.f_divergence={f_divergence} applies only to the losses on the chosen-minus-rejected "
                         f"reward difference, {takers} (sft and simpo, which read no log-ratio, may sit beside them); "
                         f"{reason}. "
                         "Set loss.f_divergence=reverse_kl or change loss.losses")


@functools.lru_cache(maxsize=256)
def parse_spec(spec: str) -> tuple[tuple[str, float], ...]:
    """``"sigmoid:0.8+sft"`` (or a preset name) as ``(("sigmoid", 0.8), ("sft", 1.0))``; raises on unknown names."""
    pairs = []
    for part in PRESETS.get(spec, spec).split("+"):
        name, _, weight = part.strip().partition(":")
        if name not in LOSSES:
            raise ValueError(f"loss.losses: unknown loss {name!r}; known: {sorted(LOSSES)} or presets {sorted(PRESETS)}")
        pairs.append((name, float(weight) if weight else 1.0))
    return tuple(pairs)


def build_methods(loss_config, seed: int = 0) -> list[Method]:
    """The methods a run with ``loss_config`` (a ``vlmdpo.config.LossConfig``) needs beyond its loss terms,
    in the order their hooks run; ``seed`` seeds what they draw per row (mDPO's corruptions)."""
    return [method for from_config in METHODS if (method := from_config(loss_config, seed)) is not None]


def check_per_pair(names: Iterable[str], setting: str) -> None:
    """Refuses ``setting`` (per-pair weights or betas) with a loss that sorts across the batch (AOT), as TRL's
    DPOTrainer refuses WPO's weights with it."""
    sorting = sorted(name for name in names if not LOSSES[name].per_pair)
    if sorting:
        raise ValueError(f"{setting} gives each pair its own value, and {sorting} sort the pairs across the batch, "
                         "which would misalign them: leave it off or drop those losses from loss.losses")


def combined_loss(losses: Sequence[tuple[str, float]] | Mapping[str, float], policy_chosen_logps: Tensor,
                  policy_rejected_logps: Tensor, ref_chosen_logps: Tensor, ref_rejected_logps: Tensor,
                  *, pair_weights: Tensor | None = None, **inputs) -> tuple[Tensor, dict[str, Tensor]]:
    """Weighted sum of registered losses, e.g. ``MPO``: ``sum_k w_k * mean_B(pair_weights * loss_k)``.

    ``losses`` is ``[(name, weight), ...]`` or ``{name: weight}``; every name must be in :data:`LOSSES`,
    weights must be >= 0 (a zero weight still computes the component, for logging). ``pair_weights`` (B,)
    multiply each pair's loss in every term (WPO's weights; ``None``: 1). ``inputs`` (beta, label_smoothing,
    chosen_lengths, bco_delta, ...) go to each component that names them in its signature; one
    that no registered loss takes is an error (a misspelled setting never passes silently), and so is an
    ``f_divergence`` some term cannot take (:func:`check_f_divergence`). ``beta`` may be a float, a 0-d or a (B,)
    tensor; pair weights or a (B,) beta with a term that sorts the batch (AOT) are refused
    (:func:`check_per_pair`). Returns the scalar total and ``{name: mean loss}`` detached, for logging.
    """
    pairs = list(losses.items()) if isinstance(losses, Mapping) else [tuple(p) for p in losses]
    if not pairs:
        raise ValueError("combined_loss needs at least one (name, weight) pair")
    names = [name for name, _ in pairs]
    unknown = [name for name in names if name not in LOSSES]
    if unknown:
        raise ValueError(f"unknown loss name(s) {unknown}; known losses: {sorted(LOSSES)}")
    if len(set(names)) != len(names):
        raise ValueError(f"each loss may appear once, got {names}")
    negative = {name: weight for name, weight in pairs if weight < 0}
    if negative:
        raise ValueError(f"loss weights must be >= 0, got {negative}")
    strange = sorted(set(inputs) - LOSS_KEYWORDS)
    if strange:
        raise TypeError(f"combined_loss: no registered loss takes {strange}; the keywords losses take are "
                        f"{sorted(LOSS_KEYWORDS)}")
    check_f_divergence(names, inputs.get("f_divergence", "reverse_kl"))
    if pair_weights is not None:
        check_per_pair(names, "pair_weights")
    if torch.is_tensor(inputs.get("beta")) and inputs["beta"].dim() > 0:
        check_per_pair(names, "a per-pair beta")

    total = torch.zeros((), dtype=torch.float32, device=policy_chosen_logps.device)
    components: dict[str, Tensor] = {}
    for name, weight in pairs:
        term = LOSSES[name]
        per_pair = term(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps,
                        **{key: value for key, value in inputs.items() if key in term.keywords})
        mean = (per_pair if pair_weights is None else per_pair * pair_weights).mean()
        total = total + weight * mean
        components[name] = mean.detach()
    return total, components
