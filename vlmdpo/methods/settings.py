"""``LossConfig``: the ``loss`` section of a run's config (``vlmdpo.config``), the losses and the settings of every
method that changes them, each validated where it is set."""

from __future__ import annotations

import math
from dataclasses import dataclass

from vlmdpo.methods.corrupt import CORRUPTIONS
from vlmdpo.methods.fdivergence import F_DIVERGENCES
from vlmdpo.methods.registry import LOSS_KEYWORDS, LOSSES, check_f_divergence, check_per_pair, parse_spec


@dataclass
class LossConfig:
    losses: str = "sigmoid"
    """One loss name, a preset (dpo, mpo, mdpo), or a weighted sum ``name:weight+name:weight``
    (``vlmdpo.methods.registry``)."""
    beta: float = 0.1
    """DPO temperature: how far the policy may move from the reference."""
    label_smoothing: float = 0.0
    """Assumed label-noise rate: the flip probability of conservative DPO (sigmoid, cdpo), robust DPO (robust) and
    AOT (aot, aot_unpaired), and EXO's epsilon (exo_pair needs it above 0; the paper uses 1e-3)."""
    simpo_gamma: float = 0.5
    """Target reward margin of SimPO."""
    discopop_tau: float = 0.05
    """DiscoPOP's temperature (``discopop``): how sharply its loss turns from logistic to exponential as the
    reward margin turns positive; 0.05 in the paper."""
    f_divergence: str = "reverse_kl"
    """f-DPO (arXiv 2309.16240): the divergence from the reference that the losses on the chosen-minus-rejected
    reward difference regularise with: reverse_kl (DPO), forward_kl, js_divergence or alpha_divergence
    (``vlmdpo.methods.fdivergence``). Any but reverse_kl needs every loss of the spec to be one of sigmoid,
    cdpo, ipo, hinge, robust, sigmoid_norm, exo_pair, discopop, with sft or simpo beside them if wanted."""
    f_divergence_alpha: float = 0.5
    """The alpha of ``f_divergence=alpha_divergence`` (TRL's ``f_alpha_divergence_coef``): 1 gives the reverse
    KL, 0 the forward KL."""
    sync_ref_model: bool = False
    """TR-DPO (arXiv 2404.09656, TRL's ``sync_ref_model``): every ``ref_model_sync_steps`` optimizer steps the
    reference is pulled toward the policy, ``ref <- alpha * policy + (1 - alpha) * ref`` (``vlmdpo.methods.trdpo``).
    Full fine-tuning mixes the frozen copy; LoRA keeps the reference in a second adapter
    (``ref_model_exact_syncs``). Needs a loss that reads the reference, and train.precompute_ref_logps=false."""
    ref_model_mixup_alpha: float = 0.6
    """TR-DPO's alpha (TRL's ``ref_model_mixup_alpha``), in (0, 1]: the policy's share of each refreshed
    reference (1 copies the policy)."""
    ref_model_sync_steps: int = 512
    """TR-DPO's tau (TRL's ``ref_model_sync_steps``): optimizer steps between refreshes of the reference (>= 1)."""
    ref_model_exact_syncs: int = 4
    """LoRA with ``sync_ref_model``: the reference adapter's rank is this many times ``model.lora_r``. Each refresh
    adds at most ``lora_r`` to the rank of the mixed reference, so the first this many refreshes are exact; later
    ones keep its best approximation of that rank (truncated SVD), whose relative error the log reports. It costs
    this many policy adapters of memory."""
    anchor_margin: float = 0.0
    """mDPO's anchor (``mdpo_anchor``): the chosen reward is pushed above this value (0 in the paper)."""
    ld_alpha: float | None = None
    """LD-DPO (arXiv 2409.06411, TRL's ``ld_alpha``), in [0, 1]: in each pair, the longer response's tokens past the
    shorter one's length count ``ld_alpha`` times in its log-prob, the policy's and the reference's
    (``vlmdpo.methods.length_desensitised``); 1 is DPO, 0 drops them; null turns it off. Needs pairs, and no sft,
    mdpo_conditional or dense_gamma (their log-probs would not be desensitised alike), nor
    train.precompute_ref_logps (which keeps only summed reference log-probs)."""
    use_weighting: bool = False
    """WPO (arXiv 2406.11827, TRL's ``use_weighting``): each pair's loss, in every term, is multiplied by
    ``w(y_c) * w(y_r)``, ``w(y) = exp(mean over y's tokens of log p(token) - log sum_v p_v ** 2)`` under the policy,
    without gradient (``vlmdpo.methods.wpo``; logged as ``wpo/weight``). Not with aot or aot_unpaired, which sort
    the batch (TRL refuses them too)."""
    beta_dpo: bool = False
    """beta-DPO (arXiv 2407.08639): a beta per micro-batch, ``beta * (1 + beta_dpo_alpha * (mean reward
    discrepancy of the kept pairs - its running mean))``, after leaving out ``beta_dpo_filter`` of the pairs, drawn
    as outliers of the running discrepancy distribution (``vlmdpo.methods.beta_dpo``; logged as ``beta``). Needs
    train.batch_size >= 2."""
    beta_dpo_alpha: float = 0.6
    """beta-DPO's alpha: how strongly the batch's reward discrepancy scales beta (0.6 in the authors' example; 0
    keeps beta and only filters)."""
    beta_dpo_filter: float = 0.2
    """beta-DPO's rho, in [0, 1): the share of each micro-batch left out of the loss by its filter (0.2 in the
    authors' code); 0 filters nothing."""
    beta_dpo_momentum: float = 0.9
    """beta-DPO's m, in [0, 1): the momentum of the running mean and spread of the reward discrepancy (0.9 in the
    authors' code)."""
    mm_dpo_weight: float = 0.0
    """MM-DPO's w (MM-RLHF, arXiv 2502.10391): each pair's beta is ``beta * (1 + w * (1 - exp(-k * delta)))`` kept
    within ``[beta, (1 + w) * beta]``, delta its reward margin from the data (a ``reward_margin`` column, or
    ``chosen_score - rejected_score``; ``vlmdpo.methods.margin_beta``; logged as ``beta``); 0 turns it off, the paper
    uses 0.5."""
    mm_dpo_k: float = 0.5
    """MM-DPO's k (> 0): how fast the margin-scaled beta saturates at ``beta * (1 + w)`` as the margin grows (0.5, the
    paper's default)."""
    dama: bool = False
    """DAMA (arXiv 2502.01943): each pair's beta is ``beta * alpha_D * alpha_M``, the data-aware
    ``alpha_D = sigmoid(delta) / sigmoid(dama_clip_gap_mean)`` from the pair's precomputed CLIP image-text score gap
    (a ``clip_score_gap`` column, or ``chosen_clip_score - rejected_clip_score``) and the model-aware ``alpha_M`` from
    the batch's reward gaps against their running mean, after leaving out ``dama_filter`` of the pairs
    (``vlmdpo.methods.dama``; logged as ``beta``, ``dama/alpha_model``, ``dama/gap_mean``). Needs pairs and a loss
    that reads the reference; not with beta_dpo or mm_dpo_weight."""
    dama_clip_gap_mean: float | None = None
    """DAMA's delta-bar, required with ``dama``: the mean CLIP score gap of the training pairs, which makes
    ``alpha_D`` 1 for a pair of average hardness (the authors' RLAIF-V data gives 0.0482190464911681)."""
    dama_filter: float = 0.2
    """DAMA's share of each micro-batch left out of the loss, in [0, 1), drawn as outliers of the running reward gap
    (0.2 in the authors' code); 0 filters nothing."""
    dama_momentum: float = 0.9
    """DAMA's gamma, in [0, 1): the momentum of the running mean reward gap (0.9 in the authors' code)."""
    corruption: str = "crop_resize"
    """How ``mdpo_conditional`` corrupts each image for its second forward (``vlmdpo.methods.corrupt``): crop_resize
    (a random crop of 20-60% of the area resized back, so the image-token count is kept), noise or
    mask_patches. Each row's corruption is seeded by ``train.seed`` and the row's index."""
    dense_gamma: float = 1.0
    """RLHF-V's dense DPO (arXiv 2312.00849): tokens of the words where chosen and rejected differ weigh
    ``dense_gamma`` (5 in the paper), the rest 1, in every response log-prob a loss reads; 1 turns it off."""
    dense_normalize: bool = True
    """Dense DPO: divide each weighted log-prob by its total weight (the paper's N = |y_u| + gamma |y_c|, which
    makes it a weighted mean, so ``beta`` works on another scale than for summed DPO); false: the weighted sum."""

    def weighted(self) -> list[tuple[str, float]]:
        """The loss spec as ``[(name, weight), ...]``; raises on unknown names (parsed once per spec)."""
        return list(parse_spec(self.losses))

    @property
    def names(self) -> frozenset[str]:
        """The loss terms of the spec."""
        return frozenset(name for name, _ in parse_spec(self.losses))

    @property
    def needs_reference(self) -> bool:
        """False when no loss in the spec reads the reference (SFT, SimPO): the reference pass is skipped."""
        return any(LOSSES[name].reference for name in self.names)

    @property
    def responses(self) -> tuple[str, ...]:
        """``("chosen",)`` when no loss reads the rejected response (SFT), else both."""
        return ("chosen", "rejected") if any(LOSSES[name].rejected for name in self.names) else ("chosen",)

    def settings(self) -> dict:
        """The fields the registered losses take as keywords (beta, label_smoothing, simpo_gamma, ...)."""
        return {name: getattr(self, name) for name in sorted(LOSS_KEYWORDS) if hasattr(self, name)}

    def _check_modifiers(self) -> None:
        """LD-DPO, WPO, beta-DPO, MM-DPO and DAMA settings, and the loss specs each cannot apply to."""
        names, pairs = self.names, self.responses == ("chosen", "rejected")
        if self.ld_alpha is not None:
            if not 0 <= self.ld_alpha <= 1:
                raise ValueError(f"loss.ld_alpha must be in [0, 1] (1 is DPO) or null, got {self.ld_alpha}")
            if not pairs:
                raise ValueError(f"loss.ld_alpha splits each pair at its shorter response, and {self.losses!r} reads no "
                                 "rejected response: leave loss.ld_alpha unset")
            clashing = sorted(names & {"sft", "mdpo_conditional"}) + (["dense_gamma"] if self.dense_gamma != 1 else [])
            if clashing:
                raise ValueError(f"loss.ld_alpha replaces the log-probs every term reads, and {clashing} need others "
                                 "(TRL's sft reads the plain ones, mdpo_conditional compares with plain corrupted-image "
                                 "log-probs, dense_gamma weighs them itself): leave loss.ld_alpha unset, or drop those "
                                 "terms from loss.losses and set loss.dense_gamma=1")
        if self.use_weighting:
            if not pairs:
                raise ValueError(f"loss.use_weighting weighs pairs, and {self.losses!r} reads no rejected response: "
                                 "set loss.use_weighting=false or add a pair loss")
            check_per_pair(names, "loss.use_weighting (WPO)")
        if self.beta_dpo:
            if not pairs:
                raise ValueError(f"loss.beta_dpo reads each pair's reward discrepancy, and {self.losses!r} reads no "
                                 "rejected response: set loss.beta_dpo=false or add a pair loss")
            if not self.needs_reference:
                raise ValueError(f"loss.beta_dpo measures rewards against the reference, and {self.losses!r} reads "
                                 "none (sft, simpo): set loss.beta_dpo=false or add a loss that reads the reference")
            if not (0 <= self.beta_dpo_filter < 1 and 0 <= self.beta_dpo_momentum < 1
                    and math.isfinite(self.beta_dpo_alpha)):
                raise ValueError("loss.beta_dpo_filter and loss.beta_dpo_momentum must be in [0, 1) and "
                                 f"loss.beta_dpo_alpha finite, got {self.beta_dpo_filter}, {self.beta_dpo_momentum} "
                                 f"and {self.beta_dpo_alpha}")
            if self.beta_dpo_filter > 0:
                check_per_pair(names, "loss.beta_dpo_filter")
        if self.mm_dpo_weight != 0:
            if not (self.mm_dpo_weight > 0 and self.mm_dpo_k > 0 and math.isfinite(self.mm_dpo_weight * self.mm_dpo_k)):
                raise ValueError(f"loss.mm_dpo_weight and loss.mm_dpo_k must be finite and > 0 (mm_dpo_weight=0 turns "
                                 f"MM-DPO off), got {self.mm_dpo_weight} and {self.mm_dpo_k}")
            if self.beta_dpo:
                raise ValueError("loss.beta_dpo and loss.mm_dpo_weight both set the beta: choose one")
            if not pairs:
                raise ValueError(f"loss.mm_dpo_weight scales a pair's beta, and {self.losses!r} reads no rejected "
                                 "response: set loss.mm_dpo_weight=0 or add a pair loss")
            check_per_pair(names, "loss.mm_dpo_weight (MM-DPO)")
        if self.dama:
            self._check_dama()

    def _check_dama(self) -> None:
        """DAMA's settings, the other beta methods it excludes, and the loss specs it cannot apply to."""
        if self.beta_dpo or self.mm_dpo_weight != 0:
            raise ValueError("loss.dama, loss.beta_dpo and loss.mm_dpo_weight each set the beta: choose one")
        if self.dama_clip_gap_mean is None or not math.isfinite(self.dama_clip_gap_mean):
            raise ValueError("loss.dama needs loss.dama_clip_gap_mean, the mean clip_score_gap of the training pairs "
                             f"(alpha_D = sigmoid(gap) / sigmoid(mean)), got {self.dama_clip_gap_mean}")
        if not (0 <= self.dama_filter < 1 and 0 <= self.dama_momentum < 1):
            raise ValueError("loss.dama_filter and loss.dama_momentum must be in [0, 1), got "
                             f"{self.dama_filter} and {self.dama_momentum}")
        if self.responses != ("chosen", "rejected") or not self.needs_reference:
            raise ValueError(f"loss.dama reads each pair's reward gap against the reference, and {self.losses!r} reads "
                             "no rejected response or no reference: set loss.dama=false or use a pair loss that reads "
                             "the reference")
        check_per_pair(self.names, "loss.dama (DAMA)")

    def __post_init__(self):
        parse_spec(self.losses)
        self._check_modifiers()
        if self.beta <= 0:
            raise ValueError(f"loss.beta must be positive, got {self.beta}")
        if self.dense_gamma <= 0:
            raise ValueError(f"loss.dense_gamma must be > 0 (1 turns dense weights off), got {self.dense_gamma}")
        if self.corruption not in CORRUPTIONS:
            raise ValueError(f"loss.corruption must be one of {sorted(CORRUPTIONS)}, got {self.corruption!r}")
        if "exo_pair" in self.names and not 0 < self.label_smoothing < 1:
            raise ValueError("loss.label_smoothing is EXO's epsilon for exo_pair and must be > 0 and < 1 (the paper "
                             f"uses 1e-3), got {self.label_smoothing}")
        if self.discopop_tau <= 0:
            raise ValueError(f"loss.discopop_tau must be > 0, got {self.discopop_tau}")
        if self.f_divergence not in F_DIVERGENCES:
            raise ValueError(f"loss.f_divergence must be one of {list(F_DIVERGENCES)}, got {self.f_divergence!r}")
        if not float("-inf") < self.f_divergence_alpha < float("inf"):
            raise ValueError(f"loss.f_divergence_alpha must be a finite number, got {self.f_divergence_alpha}")
        if not 0 < self.ref_model_mixup_alpha <= 1:
            raise ValueError(f"loss.ref_model_mixup_alpha must be in (0, 1], got {self.ref_model_mixup_alpha}")
        if self.ref_model_sync_steps < 1 or self.ref_model_exact_syncs < 1:
            raise ValueError("loss.ref_model_sync_steps and loss.ref_model_exact_syncs must be >= 1, got "
                             f"{self.ref_model_sync_steps} and {self.ref_model_exact_syncs}")
        if self.sync_ref_model and not self.needs_reference:
            raise ValueError(f"loss.sync_ref_model refreshes the reference, and no loss of {self.losses!r} reads "
                             "one: set loss.sync_ref_model=false or use a loss that reads the reference")
        check_f_divergence([name for name, _ in self.weighted()], self.f_divergence)
