"""mDPO (Wang et al. 2024, arXiv:2406.11839): its conditional and anchored preference terms, and the
corrupted-image batch and forward pass the conditional term reads.

- ``mdpo_conditional`` (L_CoPO) prefers the chosen response given the real image over the same response given
  a corrupted one; ``CorruptedImages`` adds each row's chosen response with its images corrupted to the batch
  (the row's ``corrupted_images`` column when the dataset has one, else corrupted here by ``loss.corruption``,
  seeded by the run's seed and the row's index, so a resumed run sees the same images), scores it with the
  policy and the reference at each step, and refuses rows without an image before training.
- ``mdpo_anchor`` (L_AncPO) keeps the chosen reward above an anchor.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from vlmdpo.data.rows import DataError
from vlmdpo.methods.base import Method, Score
from vlmdpo.methods.corrupt import corrupt_row_images
from vlmdpo.methods.losses import as_float32


def mdpo_conditional(policy_chosen_logps: Tensor, policy_rejected_logps: Tensor, ref_chosen_logps: Tensor,
                     ref_rejected_logps: Tensor, *, beta: float = 0.1,
                     policy_corrupted_chosen_logps: Tensor | None = None,
                     ref_corrupted_chosen_logps: Tensor | None = None) -> Tensor:
    """mDPO's conditional preference, Wang et al. 2024 (arXiv:2406.11839), its L_CoPO term.

    The chosen response with the real image is preferred over the same chosen response with a corrupted
    image (``vlmdpo.methods.corrupt``): (B,) losses
    ``-log s(beta * ((pi_c - ref_c) - (pi_c' - ref_c')))``, where ``pi_c'`` and ``ref_c'`` are
    ``policy_corrupted_chosen_logps`` and ``ref_corrupted_chosen_logps``, (B,) summed log-probs of the
    chosen response given the corrupted image. Rejected log-probs are ignored. When the corrupted image
    is the real one, the term is the constant ln 2 and gives no gradient: the signal is the image alone.
    """
    if policy_corrupted_chosen_logps is None or ref_corrupted_chosen_logps is None:
        raise ValueError("mdpo_conditional needs policy_corrupted_chosen_logps and ref_corrupted_chosen_logps: "
                         "(B,) summed log-probs of the chosen response given a corrupted image "
                         "(vlmdpo.methods.corrupt), from the policy and from the reference")
    pc, rc, pcc, rcc = as_float32(policy_chosen_logps, ref_chosen_logps, policy_corrupted_chosen_logps,
                            ref_corrupted_chosen_logps)
    return -F.logsigmoid(beta * ((pc - rc) - (pcc - rcc)))


def mdpo_anchor(policy_chosen_logps: Tensor, policy_rejected_logps: Tensor, ref_chosen_logps: Tensor,
                ref_rejected_logps: Tensor, *, beta: float = 0.1, anchor_margin: float = 0.0) -> Tensor:
    """mDPO's anchored preference, Wang et al. 2024 (arXiv:2406.11839), its L_AncPO term.

    (B,) losses ``-log s(beta * chosen_logratio - delta)`` with ``delta = anchor_margin`` (the paper's
    anchor, 0 there): pushes the chosen reward above the anchor, so the chosen likelihood does not fall
    while the pair's margin grows. Rejected log-probs are ignored.
    """
    pc, rc = as_float32(policy_chosen_logps, ref_chosen_logps)
    return -F.logsigmoid(beta * (pc - rc) - anchor_margin)


class CorruptedImages(Method):
    """``batch["corrupted"]``: the collator's batch of each row's chosen response given its corrupted images; at
    each step its log-probs under the policy and the reference become ``mdpo_conditional``'s inputs."""

    name = "corrupted_images"

    def __init__(self, corruption: str = "crop_resize", seed: int = 0):
        self.corruption, self.seed = corruption, seed

    def check_row(self, row: dict) -> None:
        if not row["images"]:
            raise DataError(row.get("index", 0), "images", "mDPO's conditional term compares the chosen response "
                            "given the image with the same response given a corrupted image, and this row has no "
                            "image", "give the row an image, drop it, or leave mdpo_conditional out of loss.losses",
                            kind="no_image_for_mdpo")

    def corrupted_row(self, row: dict, position: int) -> dict:
        """The row's chosen response with its corrupted images: the dataset's ``corrupted_images`` column when it
        has one (``data_recipes.pair_builders.conditional_pairs``), else corrupted here."""
        if row.get("corrupted_images") is not None:
            corrupted = {**row, "images": row["corrupted_images"]}
        else:
            corrupted = corrupt_row_images(row, self.corruption, seed=f"{self.seed}:{row.get('index', position)}")
        return {key: value for key, value in corrupted.items() if key not in ("rejected", "corrupted_images")}

    def add_to_batch(self, batch: dict, rows: list[dict], collator) -> None:
        for row in rows:  # the up-front check refuses these before training; a direct caller too
            self.check_row(row)
        batch["corrupted"] = collator([self.corrupted_row(row, i) for i, row in enumerate(rows)])

    def loss_inputs(self, batch: dict, score: Score) -> dict:
        if "corrupted" not in batch:
            raise ValueError("mdpo_conditional needs the batch's corrupted-image responses: collate with "
                             "vlmdpo.methods.MethodCollator (vlmdpo.train does)")
        policy_out, ref_out = score(batch["corrupted"])
        return {"policy_corrupted_chosen_logps": policy_out["chosen_logps"],
                "ref_corrupted_chosen_logps": ref_out["chosen_logps"]}


def from_config(loss, seed: int = 0) -> CorruptedImages | None:
    """The corrupted-image pass when the loss spec has ``mdpo_conditional``."""
    return CorruptedImages(loss.corruption, seed) if "mdpo_conditional" in loss.names else None
