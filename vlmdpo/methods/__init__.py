"""Training methods: what each adds to the loss and what it needs from the batch, one module per method.

- ``losses``: the DPO family as pure functions of four (B,) summed log-probs (DPO, cDPO, IPO, SLiC hinge,
  robust DPO, SimPO, APO-zero, SFT).
- ``bco``: BCO's pair loss and its running reward shift.
- ``mdpo``: mDPO's conditional and anchored terms and the corrupted-image pass (``corrupt``: the corruptions).
- ``dense``: RLHF-V's dense DPO token weights.
- ``registry``: every loss term by name, the presets, the methods (``build_methods``), ``combined_loss``.
- ``base`` (the ``Method`` hooks) and ``collate`` (``MethodCollator``).
"""

from vlmdpo.methods.base import Method
from vlmdpo.methods.collate import MethodCollator
from vlmdpo.methods.losses import rewards
from vlmdpo.methods.registry import (
    LOSS_KEYWORDS, LOSSES, MDPO, METHODS, MPO, PRESETS, LossTerm, build_methods, combined_loss, parse_spec,
)

__all__ = ["LOSSES", "LOSS_KEYWORDS", "MDPO", "METHODS", "MPO", "PRESETS", "LossTerm", "Method", "MethodCollator",
           "build_methods", "combined_loss", "parse_spec", "rewards"]
