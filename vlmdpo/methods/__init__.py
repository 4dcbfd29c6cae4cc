"""Training methods: what each adds to the loss and what it needs from the batch, one module per method.

- ``losses``: the DPO family as pure functions of four (B,) summed log-probs, the losses on the chosen-minus-rejected
  reward difference (DPO, cDPO, IPO, SLiC hinge, robust DPO, length-normalised DPO, EXO, DiscoPOP), SimPO and SFT;
  ``fdivergence``: f-DPO's scores, which those difference losses take.
- ``response_rewards``: losses on each response's own reward (APO-zero, APO-down, NCA, SPPO-hard);
  ``aot``: AOT's losses, sorted across the batch.
- ``bco``: BCO's pair loss and its running reward shift.
- ``mdpo``: mDPO's conditional and anchored terms and the corrupted-image pass (``corrupt``: the corruptions).
- ``dense``: RLHF-V's dense DPO token weights; ``length_desensitised``: LD-DPO's log-probs past the shorter response.
- ``wpo``: WPO's pair weights; ``beta_dpo``: beta-DPO's batch beta and filter; ``margin_beta``: MM-DPO's beta per
  pair from its reward margin; ``dama``: DAMA's beta per pair from its CLIP score gap and the batch's reward gaps.
- ``trdpo``: TR-DPO's refresh of the reference toward the policy every few steps.
- ``registry``: every loss term by name, the presets, the methods (``build_methods``), ``combined_loss``.
- ``base`` (the ``Method`` hooks) and ``collate`` (``MethodCollator``).
"""

from vlmdpo.methods.base import Method
from vlmdpo.methods.collate import MethodCollator
from vlmdpo.methods.losses import rewards
from vlmdpo.methods.registry import (
    LOSS_KEYWORDS, LOSSES, MDPO, METHODS, MPO, PRESETS, LossTerm, build_methods, check_f_divergence, combined_loss,
    parse_spec,
)

__all__ = ["LOSSES", "LOSS_KEYWORDS", "MDPO", "METHODS", "MPO", "PRESETS", "LossTerm", "Method", "MethodCollator",
           "build_methods", "check_f_divergence", "combined_loss", "parse_spec", "rewards"]
