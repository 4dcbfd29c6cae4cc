"""RLHF-V dense DPO weights (arXiv:2312.00849): word diffs, weights carried to tokens of the tiny models'
real tokenizers and into collated batches, and the normalised weighted log-likelihood.

Hand-worked weighted log-likelihood (module docstring of vlmdpo.methods.dense):
    per-token log-probs (-1, -2, -3), weights (1, 5, 1), all response tokens:
        sum = -1 - 10 - 3 = -14, N = 1 + 5 + 1 = 7, normalised -14 / 7 = -2
    the last token masked out: sum = -11, N = 6, normalised -11 / 6
"""

import pytest
import torch

from vlmdpo.data.collator import PreferenceCollator
from vlmdpo.data.rows import normalize_row
from vlmdpo.methods.dense import (completion_token_weights, text_token_weights, token_weights, weighted_logps,
                                  word_weights)
from vlmdpo.forward.logps import completion_logps
from vlmdpo.methods.losses import sigmoid_dpo

CHOSEN = "a large red circle next to a small blue square."
REJECTED = "a large green circle next to a small blue triangle on a table."
# the diff: "red" -> "green", "square." -> "triangle on a table."
CHOSEN_CHANGED, REJECTED_CHANGED = ["red", "square."], ["green", "triangle on a table."]


def gamma_runs(tokenizer, ids, weights, gamma):
    """The decoded runs of consecutive gamma-weighted tokens, stripped."""
    runs, current = [], []
    for token, weight in zip(ids, weights):
        if weight == gamma:
            current.append(token)
        elif current:
            runs.append(current)
            current = []
    if current:
        runs.append(current)
    return [tokenizer.decode(run).strip() for run in runs]


def test_word_weights_mark_the_changed_words():
    chosen_w, rejected_w = word_weights(CHOSEN, REJECTED, gamma=5.0)
    assert [w for w, x in zip(CHOSEN.split(), chosen_w) if x == 5.0] == ["red", "square."]
    assert [w for w, x in zip(REJECTED.split(), rejected_w) if x == 5.0] == ["green", "triangle", "on", "a", "table."]
    assert chosen_w.count(1.0) == 8 and rejected_w.count(1.0) == 8


def test_word_weights_insertion_only_weights_the_inserted_words():
    chosen_w, rejected_w = word_weights("a dog.", "a dog and a cat.", gamma=3.0)
    # "dog." vs "dog" differ as words, so the changed block is "dog." / "dog and a cat."
    assert chosen_w == [1.0, 3.0] and rejected_w == [1.0, 3.0, 3.0, 3.0, 3.0]
    assert word_weights("same words here", "same words here", gamma=3.0) == ([1.0] * 3, [1.0] * 3)
    with pytest.raises(ValueError, match="gamma"):
        word_weights("a", "b", gamma=0.0)


def test_token_weights_by_offsets():
    text = "a red cat"  # words at (0, 1), (2, 5), (6, 9)
    weights = [1.0, 5.0, 1.0]
    # a special token (0, 0); " red" with its space (1, 5); a token across "d c" (4, 7); "at" (7, 9)
    assert token_weights(text, weights, [(0, 0), (1, 5), (4, 7), (7, 9)]) == [1.0, 5.0, 5.0, 1.0]
    with pytest.raises(ValueError, match="3 words but 2"):
        token_weights(text, [1.0, 5.0], [(0, 1)])


def test_gamma_tokens_decode_to_the_changed_words(tiny_model_and_processor):
    tokenizer = tiny_model_and_processor[1].tokenizer
    for text, changed, weights in zip((CHOSEN, REJECTED), (CHOSEN_CHANGED, REJECTED_CHANGED),
                                      word_weights(CHOSEN, REJECTED, gamma=5.0)):
        ids, per_token = text_token_weights(tokenizer, text, weights)
        assert len(ids) == len(per_token) and tokenizer.decode(ids) == text
        assert gamma_runs(tokenizer, ids, per_token, 5.0) == changed


@pytest.fixture
def batch_and_weights(tiny_model_and_processor, images):
    """A collated one-image pair and its (2, C) token weights: chosen row, then rejected."""
    model, processor = tiny_model_and_processor
    collator = PreferenceCollator(processor)
    row = normalize_row({"images": [images["square"]], "prompt": "describe the image.",
                         "chosen": CHOSEN, "rejected": REJECTED}, 0)
    batch = collator([row])
    weights = [completion_token_weights(processor.tokenizer, batch[f"{field}_input_ids"][0].tolist(), text, words)
               for field, text, words in zip(("chosen", "rejected"), (CHOSEN, REJECTED),
                                             word_weights(CHOSEN, REJECTED, 5.0))]
    return model, processor, batch, weights


def test_weights_line_up_with_the_collated_completion(batch_and_weights):
    _, processor, batch, weights = batch_and_weights
    for field, changed, row_weights in zip(("chosen", "rejected"), (CHOSEN_CHANGED, REJECTED_CHANGED), weights):
        ids = batch[f"{field}_input_ids"][0].tolist()
        mask = batch[f"{field}_completion_mask"][0].tolist()
        assert len(row_weights) == len(ids)
        assert gamma_runs(processor.tokenizer, ids, row_weights, 5.0) == changed
        assert all(m == 1 for m, w in zip(mask, row_weights) if w == 5.0)  # gamma only on response tokens


def test_completion_token_weights_needs_the_text_in_the_completion(tiny_model_and_processor):
    tokenizer = tiny_model_and_processor[1].tokenizer
    ids = tokenizer("a red circle.", add_special_tokens=False)["input_ids"]
    with pytest.raises(ValueError, match="does not appear"):
        completion_token_weights(tokenizer, ids, "a blue circle.", [1.0, 5.0, 1.0])


def test_weighted_logps_hand_worked():
    per_token = torch.tensor([[-1.0, -2.0, -3.0], [-1.0, -2.0, -3.0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    weights = torch.tensor([[1.0, 5.0, 1.0], [1.0, 5.0, 1.0]])
    torch.testing.assert_close(weighted_logps(per_token, mask, weights), torch.tensor([-2.0, -11.0 / 6]))
    torch.testing.assert_close(weighted_logps(per_token, mask, weights, normalize=False), torch.tensor([-14.0, -11.0]))
    with pytest.raises(ValueError, match="same"):
        weighted_logps(per_token, mask, weights[:, :2])


def test_gamma_one_is_plain_dpo(batch_and_weights):
    model, processor, batch, _ = batch_and_weights
    with torch.no_grad():
        policy = completion_logps(model, batch, processor.tokenizer.pad_token_id)
    per_token = policy["per_token_logps"]
    width = per_token.shape[1]
    masks = [batch[f"{f}_completion_mask"] for f in ("chosen", "rejected")]
    mask = torch.cat([torch.nn.functional.pad(m, (0, width - m.shape[1])) for m in masks])
    ones = torch.ones_like(per_token)
    summed = weighted_logps(per_token, mask, ones, normalize=False)
    plain = torch.cat([policy["chosen_logps"], policy["rejected_logps"]])
    torch.testing.assert_close(summed, plain, rtol=0, atol=0)
    lengths = torch.cat([policy["chosen_lengths"], policy["rejected_lengths"]]).float()
    torch.testing.assert_close(weighted_logps(per_token, mask, ones), plain / lengths)

    # any stand-in reference: the DPO loss on the gamma = 1 weighted sums is DPO's
    ref = plain.detach() + torch.tensor([0.3, -0.2])
    dense = sigmoid_dpo(summed[:1], summed[1:], ref[:1], ref[1:], beta=0.1)
    torch.testing.assert_close(dense, sigmoid_dpo(policy["chosen_logps"], policy["rejected_logps"],
                                                  ref[:1], ref[1:], beta=0.1), rtol=0, atol=0)


def test_prefix_decoding_fallback_gives_the_same_weights(batch_and_weights):
    """A tokenizer whose re-encoding does not round-trip takes the prefix-decoding path: same weights."""
    _, processor, batch, weights = batch_and_weights

    class NoRoundTrip:
        def __init__(self, tokenizer):
            self.tokenizer = tokenizer

        def decode(self, *args, **kwargs):
            return self.tokenizer.decode(*args, **kwargs)

        def __call__(self, text, **kwargs):
            encoded = self.tokenizer(text, **kwargs)
            return {**encoded, "input_ids": encoded["input_ids"][1:]}

    slow = completion_token_weights(NoRoundTrip(processor.tokenizer), batch["chosen_input_ids"][0].tolist(), CHOSEN,
                                    word_weights(CHOSEN, REJECTED, 5.0)[0])
    assert slow == weights[0]
