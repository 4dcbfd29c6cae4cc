"""Token weights for RLHF-V's dense direct preference optimization (DDPO; Yu et al. 2024, arXiv:2312.00849).

RLHF-V's pairs are a response and its fine-grained correction. DDPO weights the tokens of the changed
segments ``y_c`` by ``gamma`` (> 1; 5 in the paper) and the unchanged ones ``y_u`` by 1, and normalises:

    log pi(y | x) = (1 / N) * (sum_{y_u} log p(y_i | x, y_<i) + gamma * sum_{y_c} log p(y_i | x, y_<i)),
    N = |y_u| + gamma * |y_c|,

the normaliser keeping longer responses from scoring higher. That log-likelihood then goes into the DPO
loss unchanged (``vlmdpo.methods.losses.sigmoid_dpo``).

The path: :func:`word_weights` diffs the two responses word by word (``difflib.SequenceMatcher``);
:func:`token_weights` carries a word's weight to the tokens it overlaps, through a fast tokenizer's
``return_offsets_mapping``; :func:`weighted_logps` turns (B, C) per-token log-probs into the (B,)
log-likelihood above. In training, ``DenseWeights`` adds the weights to each collated batch
(:func:`dense_token_weights`, from the responses as collated) and replaces every response log-prob the losses
read by the weighted one (:func:`dense_weighted`), on both forward paths.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Sequence

import torch

from vlmdpo.methods.base import Method

__all__ = ["DenseWeights", "completion_token_weights", "dense_token_weights", "dense_weighted", "text_token_weights",
           "token_weights", "weighted_logps", "word_spans", "word_weights"]

_WORD = re.compile(r"\S+")


def word_spans(text: str) -> list[tuple[int, int]]:
    """``(start, end)`` character offsets of the whitespace-separated words of ``text``."""
    return [match.span() for match in _WORD.finditer(text)]


def word_weights(chosen: str, rejected: str, gamma: float = 5.0) -> tuple[list[float], list[float]]:
    """Per-word weights of ``chosen`` and of ``rejected``: ``gamma`` on words the other response lacks.

    The responses are split on whitespace and aligned with ``difflib.SequenceMatcher`` (junk heuristic
    off, so frequent words still align); words inside a replaced, deleted or inserted block get
    ``gamma``, matched words 1. Returns one list per response, one weight per word of it.
    """
    if gamma <= 0:
        raise ValueError(f"gamma must be > 0, got {gamma}")
    chosen_words, rejected_words = chosen.split(), rejected.split()
    chosen_w, rejected_w = [1.0] * len(chosen_words), [1.0] * len(rejected_words)
    matcher = difflib.SequenceMatcher(a=chosen_words, b=rejected_words, autojunk=False)
    for tag, i1, i2, j1, j2 in matcher.get_opcodes():
        if tag != "equal":
            chosen_w[i1:i2] = [float(gamma)] * (i2 - i1)
            rejected_w[j1:j2] = [float(gamma)] * (j2 - j1)
    return chosen_w, rejected_w


def token_weights(text: str, word_weights: Sequence[float],
                  offsets: Sequence[tuple[int, int]]) -> list[float]:
    """One weight per token: the largest weight of the words of ``text`` that the token overlaps.

    ``offsets`` are the tokens' ``(start, end)`` character offsets into ``text`` (a fast tokenizer's
    ``return_offsets_mapping``). A token over whitespace only, or a special token (``(0, 0)``), gets 1;
    a token that spans a changed word and an unchanged one gets the larger weight, so no changed
    character is under-weighted.
    """
    spans = word_spans(text)
    if len(spans) != len(word_weights):
        raise ValueError(f"text has {len(spans)} words but {len(word_weights)} word weights were given")
    out = []
    for start, end in offsets:
        overlapping = [w for (s, e), w in zip(spans, word_weights) if s < end and start < e]
        out.append(max(overlapping, default=1.0))
    return out


def text_token_weights(tokenizer, text: str, word_weights: Sequence[float]) -> tuple[list[int], list[float]]:
    """``(input_ids, weights)`` of ``text`` tokenized without special tokens by a fast ``tokenizer``."""
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    return encoded["input_ids"], token_weights(text, word_weights, encoded["offset_mapping"])


def _decoded_offsets(tokenizer, ids: list[int]) -> tuple[str, list[tuple[int, int]]]:
    """The decoded ``ids`` and each token's character span in it."""
    decoded = tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)
    # Fast path, linear: re-encoding the decoded text gives the same ids for most byte-level BPE tokenizers.
    encoded = tokenizer(decoded, add_special_tokens=False, return_offsets_mapping=True)
    if encoded["input_ids"] == ids:
        return decoded, [tuple(span) for span in encoded["offset_mapping"]]
    # Otherwise decode prefix by prefix (quadratic, but a completion is short): a token's text can depend
    # on its neighbours (SentencePiece drops a leading space at the start), so tokens are not decoded alone.
    decoded, offsets = "", []
    for k in range(len(ids)):
        prefix = tokenizer.decode(ids[: k + 1], skip_special_tokens=False, clean_up_tokenization_spaces=False)
        offsets.append((min(len(decoded), len(prefix)), len(prefix)))
        decoded = prefix
    return decoded, offsets


def completion_token_weights(tokenizer, completion_ids: Sequence[int], text: str,
                             word_weights: Sequence[float]) -> list[float]:
    """Weights for a whole collated completion (a ``chosen_input_ids`` row): each token that overlaps a word
    of the response ``text`` gets that word's weight, every other token (template, end of turn, padding) 1.

    The chat template may tokenize the text differently in context (Llava's "ASSISTANT: a" gives " a", not
    "a"), so the tokens are not matched by id: the completion is decoded with each token's character span,
    ``text`` is found in the decoded completion (its last occurrence) and :func:`token_weights` runs on
    those spans. Raises ``ValueError`` if the text is not in the completion.
    """
    ids = list(completion_ids)
    decoded, offsets = _decoded_offsets(tokenizer, ids)
    position = decoded.rfind(text)
    if position < 0:
        raise ValueError(f"the response text {text[:60]!r} does not appear in the decoded completion "
                         f"{decoded[:120]!r}")
    return token_weights(text, word_weights, [(s - position, e - position) for s, e in offsets])


def weighted_logps(per_token_logps: torch.Tensor, completion_mask: torch.Tensor, token_weights: torch.Tensor,
                   normalize: bool = True) -> torch.Tensor:
    """DDPO's log-likelihood (module docstring), (B,) float32, from (B, C) per-token log-probs.

    ``completion_mask`` (B, C) marks the response tokens and ``token_weights`` (B, C) holds their
    weights (1 or gamma). ``normalize=True`` divides by ``N = sum(weights * mask)`` as the paper does;
    ``normalize=False`` gives the plain weighted sum (the RLHF-V code's ``dpo_use_average=False``),
    which at gamma = 1 is exactly the summed log-prob that ``vlmdpo.forward.logps.completion_logps`` returns.
    """
    if not per_token_logps.shape == completion_mask.shape == token_weights.shape:
        raise ValueError(f"per_token_logps {tuple(per_token_logps.shape)}, completion_mask "
                         f"{tuple(completion_mask.shape)} and token_weights {tuple(token_weights.shape)} "
                         f"must have the same (B, C) shape")
    weights = token_weights.float() * completion_mask.float()
    total = (per_token_logps.float() * weights).sum(dim=-1)
    if not normalize:
        return total
    # clamp: a response truncated to zero tokens has total 0, so 0/1 = 0 rather than NaN.
    return total / weights.sum(dim=-1).clamp(min=1e-8)


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


def dense_weighted(out: dict, batch: dict, normalize: bool) -> dict:
    """``out`` with each ``{field}_logps`` replaced by dense DPO's weighted log-prob, from ``per_token_logps``
    and the batch's ``{field}_token_weights`` (:func:`dense_token_weights`)."""
    per_token = out["per_token_logps"]
    batch_size, width = batch["prompt_input_ids"].shape[0], per_token.shape[1]

    def padded(tensor, value):  # (B, T) of the batch to the log-probs' width
        return torch.nn.functional.pad(tensor.to(per_token.device).float(), (0, width - tensor.shape[1]), value=value)

    weighted = dict(out)
    for i, field in enumerate(f for f in ("chosen", "rejected") if f"{f}_logps" in out):
        weighted[f"{field}_logps"] = weighted_logps(
            per_token[i * batch_size: (i + 1) * batch_size], padded(batch[f"{field}_completion_mask"], 0),
            padded(batch[f"{field}_token_weights"], 1), normalize=normalize)
    return weighted


class DenseWeights(Method):
    """Dense DPO in training: token weights added to each batch, and every response log-prob the losses read
    (policy and reference) replaced by the weighted one."""

    name = "dense_weights"

    def __init__(self, gamma: float = 5.0, normalize: bool = True):
        self.gamma, self.normalize = gamma, normalize

    def add_to_batch(self, batch: dict, rows: list[dict], collator) -> None:
        batch.update(dense_token_weights(batch, collator.tokenizer, self.gamma))

    def reweight(self, policy_out: dict, ref_out: dict | None, batch: dict) -> tuple[dict, dict | None]:
        if "chosen_token_weights" not in batch:
            raise ValueError("loss.dense_gamma needs the batch's token weights: collate with "
                             "vlmdpo.methods.MethodCollator(collator, build_methods(loss_config)) (vlmdpo.train does)")
        return (dense_weighted(policy_out, batch, self.normalize),
                ref_out and dense_weighted(ref_out, batch, self.normalize))


def from_config(loss, seed: int = 0) -> DenseWeights | None:
    """Dense weights when ``loss.dense_gamma`` is not 1."""
    return DenseWeights(loss.dense_gamma, loss.dense_normalize) if loss.dense_gamma != 1.0 else None
