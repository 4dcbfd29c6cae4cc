"""What some losses read beyond a pair's two responses, added to the collator's batch.

- Dense DPO (RLHF-V, arXiv 2312.00849): ``chosen_token_weights`` / ``rejected_token_weights`` (B, T), beside
  each ``*_completion_mask``: ``gamma`` on the tokens of words where the two responses differ, 1 elsewhere
  (``vlmdpo.dense_weights``).
- mDPO's conditional term (arXiv 2406.11839): ``corrupted``, the collator's batch of each row's chosen
  response with its images corrupted: the row's ``corrupted_images`` when the dataset has that column, else
  corrupted here (``vlmdpo.corrupt``), seeded by the run's seed and the row's index, so a resumed run sees
  the same corruptions.

``vlmdpo.step.dpo_step`` reads both when they are there.
"""

from __future__ import annotations

import torch

from vlmdpo.config import LossConfig
from vlmdpo.corrupt import corrupt_row_images
from vlmdpo.data import DataError
from vlmdpo.dense_weights import completion_token_weights, word_weights


def dense_token_weights(batch: dict, tokenizer, gamma: float) -> dict[str, torch.Tensor]:
    """``{field}_token_weights`` (B, T) for the batch's responses, aligned with ``{field}_input_ids``: the
    responses' words as the collator kept them, diffed chosen against rejected."""
    fields = [f for f in ("chosen", "rejected") if f"{f}_input_ids" in batch]
    if fields != ["chosen", "rejected"]:
        raise ValueError("dense DPO weights come from the difference between chosen and rejected: the batch "
                         "has no rejected responses")
    out = {f"{field}_token_weights": torch.ones(batch[f"{field}_input_ids"].shape) for field in fields}
    for i in range(batch["chosen_input_ids"].shape[0]):
        # the responses as collated (truncated to data.max_response_length where they were longer)
        texts = {field: tokenizer.decode(batch[f"{field}_input_ids"][i][batch[f"{field}_completion_mask"][i].bool()],
                                         skip_special_tokens=True).strip() for field in fields}
        weights = dict(zip(fields, word_weights(texts["chosen"], texts["rejected"], gamma)))
        for field in fields:
            ids = batch[f"{field}_input_ids"][i].tolist()
            out[f"{field}_token_weights"][i] = torch.tensor(
                completion_token_weights(tokenizer, ids, texts[field], weights[field]))
    return out


class MethodBatches:
    """``collator(rows)`` plus the dense weights and the corrupted-image batch ``loss`` asks for (the collator's
    batch as it is when it asks for neither)."""

    def __init__(self, collator, loss: LossConfig, seed: int = 0):
        self.collator, self.tokenizer, self.seed = collator, collator.tokenizer, seed
        self.dense_gamma = loss.dense_gamma
        self.corruption = loss.corruption if loss.needs_corrupted_images else None

    @property
    def max_response_length(self):
        return self.collator.max_response_length

    def measure(self, row: dict) -> dict:
        """The collator's token counts of ``row`` (what ``vlmdpo.validate`` checks before training), refusing
        a row these additions cannot be made for."""
        self._check_images(row)
        return self.collator.measure(row)

    def _check_images(self, row: dict) -> None:
        if self.corruption is not None and not row["images"]:
            raise DataError(row.get("index", 0), "images", "mDPO's conditional term compares the chosen response "
                            "given the image with the same response given a corrupted image, and this row has no "
                            "image", "give the row an image, drop it, or leave mdpo_conditional out of loss.losses",
                            kind="no_image_for_mdpo")

    def _corrupted_row(self, row: dict, position: int) -> dict:
        """The row's chosen response with its corrupted images: the dataset's ``corrupted_images`` column when it
        has one (``data_recipes.pair_builders.conditional_pairs``), else corrupted here by ``loss.corruption``."""
        if row.get("corrupted_images") is not None:
            corrupted = {**row, "images": row["corrupted_images"]}
        else:
            corrupted = corrupt_row_images(row, self.corruption, seed=f"{self.seed}:{row.get('index', position)}")
        return {key: value for key, value in corrupted.items() if key not in ("rejected", "corrupted_images")}

    def __call__(self, rows: list[dict]) -> dict:
        batch = self.collator(rows)
        if self.dense_gamma != 1.0:
            batch.update(dense_token_weights(batch, self.tokenizer, self.dense_gamma))
        if self.corruption is not None:
            for row in rows:  # the up-front check (measure) refuses these before training; a direct caller too
                self._check_images(row)
            batch["corrupted"] = self.collator([self._corrupted_row(row, i) for i, row in enumerate(rows)])
        return batch
