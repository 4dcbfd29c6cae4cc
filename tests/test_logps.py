"""completion_logps against a plain reference implementation, padding invariance, and the chunked
selective log-softmax."""

import pytest
import torch

import vlmdpo.forward.logps as logps_module
from vlmdpo.data.collator import PreferenceCollator
from vlmdpo.data.rows import normalize_row
from vlmdpo.forward.logps import completion_logps, selective_log_softmax

from helpers import LONGER, ONE_IMAGE, SHORT, rows_from


def close(actual, expected, tol=1e-5):
    torch.testing.assert_close(actual, expected, rtol=tol, atol=tol)


def reference_logps(model, batch, field):
    """Summed and per-token log-probs of ``batch[field]`` the plain way: one forward over [prompt; response]
    with every logit, float32 log-softmax over the whole vocabulary, gather, mask."""
    prompt_ids, completion_ids = batch["prompt_input_ids"], batch[f"{field}_input_ids"]
    inputs = {
        "input_ids": torch.cat([prompt_ids, completion_ids], dim=1),
        "attention_mask": torch.cat([batch["prompt_attention_mask"], batch[f"{field}_attention_mask"]], dim=1),
        **batch["vision_inputs"],
    }
    for key, value in batch["prompt_token_types"].items():
        inputs[key] = torch.cat([value, torch.zeros_like(completion_ids)], dim=1)
    with torch.no_grad():
        logits = model(**inputs).logits
    assert logits.shape[1] == inputs["input_ids"].shape[1]  # really every position
    log_probs = torch.log_softmax(logits.float(), dim=-1)
    # position t predicts token t + 1: the response tokens are predicted from positions P - 1 ... P + C - 2
    prompt_len = prompt_ids.shape[1]
    predicted = log_probs[:, prompt_len - 1: -1]
    per_token = predicted.gather(-1, completion_ids.unsqueeze(-1)).squeeze(-1)
    per_token = per_token * batch[f"{field}_completion_mask"]
    return per_token.sum(1), per_token


@pytest.fixture
def model_and_collator(tiny_model_and_processor):
    model, processor = tiny_model_and_processor
    return model, PreferenceCollator(processor), processor.tokenizer.pad_token_id


@pytest.fixture
def mixed_batch(images, model_and_collator):
    rows = rows_from(images, [SHORT, ONE_IMAGE, *LONGER])
    return model_and_collator[1](rows)


def test_matches_plain_reference_implementation(model_and_collator, mixed_batch):
    model, _, pad = model_and_collator
    with torch.no_grad():
        out = completion_logps(model, mixed_batch, pad)
    batch_size = mixed_batch["prompt_input_ids"].shape[0]
    width = out["per_token_logps"].shape[1]
    for field, rows in (("chosen", slice(0, batch_size)), ("rejected", slice(batch_size, None))):
        expected, per_token = reference_logps(model, mixed_batch, field)
        assert out[f"{field}_logps"].dtype == torch.float32
        close(out[f"{field}_logps"], expected)
        padded = torch.nn.functional.pad(per_token, (0, width - per_token.shape[1]))
        close(out["per_token_logps"][rows], padded)
        assert out[f"{field}_lengths"].tolist() == mixed_batch[f"{field}_completion_mask"].sum(1).tolist()
    assert (out["chosen_logps"] < 0).all() and (out["rejected_logps"] < 0).all()


def test_per_token_logps_are_zero_outside_the_response(model_and_collator, mixed_batch):
    model, _, pad = model_and_collator
    with torch.no_grad():
        out = completion_logps(model, mixed_batch, pad)
    per_token = out["per_token_logps"]
    width = per_token.shape[1]
    mask = torch.cat([torch.nn.functional.pad(mixed_batch[f"{f}_completion_mask"],
                                              (0, width - mixed_batch[f"{f}_completion_mask"].shape[1]))
                      for f in ("chosen", "rejected")])
    assert (per_token[mask == 0] == 0).all() and (per_token[mask == 1] < 0).all()
    close(torch.cat([out["chosen_logps"], out["rejected_logps"]]), per_token.sum(1))


@pytest.mark.parametrize("position", [0, 1])
def test_logps_do_not_change_when_padded_into_a_batch(model_and_collator, images, position):
    """The same example alone and next to longer prompts, more images and longer responses."""
    model, collator, pad = model_and_collator
    examples = [SHORT, ONE_IMAGE]
    rows = rows_from(images, [*LONGER[:position], *examples, *LONGER[position:]])
    with torch.no_grad():
        together = completion_logps(model, collator(rows), pad)
        for i, row in enumerate(rows):
            alone = completion_logps(model, collator([row]), pad)
            for field in ("chosen", "rejected"):
                close(together[f"{field}_logps"][i: i + 1], alone[f"{field}_logps"])
                length = int(alone[f"{field}_lengths"][0])
                assert int(together[f"{field}_lengths"][i]) == length


def test_padding_tokens_do_not_contribute(model_and_collator, mixed_batch):
    """Whatever sits in the prompt's left padding or after a response cannot change any log-prob."""
    model, _, pad = model_and_collator
    changed = {**mixed_batch}
    filler = 42  # an ordinary text token, not pad and not an image token
    prompt_ids = mixed_batch["prompt_input_ids"].clone()
    prompt_ids[mixed_batch["prompt_attention_mask"] == 0] = filler
    changed["prompt_input_ids"] = prompt_ids
    for field in ("chosen", "rejected"):
        ids = mixed_batch[f"{field}_input_ids"].clone()
        padding = mixed_batch[f"{field}_attention_mask"] == 0
        assert padding.any() and (mixed_batch["prompt_attention_mask"] == 0).any()
        ids[padding] = filler
        changed[f"{field}_input_ids"] = ids
    with torch.no_grad():
        before = completion_logps(model, mixed_batch, pad)
        after = completion_logps(model, changed, pad)
    for key in ("chosen_logps", "rejected_logps", "per_token_logps"):
        close(after[key], before[key], tol=1e-6)


def test_prompt_tokens_only_condition_the_response(model_and_collator, mixed_batch):
    """A different prompt changes the response's log-prob but adds no term of its own: the per-token
    log-probs stay on the response positions (same count) and sum to the totals."""
    model, _, pad = model_and_collator
    changed = {**mixed_batch}
    prompt_ids = mixed_batch["prompt_input_ids"].clone()
    last = prompt_ids.shape[1] - 2
    prompt_ids[:, last] = 42
    changed["prompt_input_ids"] = prompt_ids
    with torch.no_grad():
        before = completion_logps(model, mixed_batch, pad)
        after = completion_logps(model, changed, pad)
    assert not torch.allclose(after["chosen_logps"], before["chosen_logps"])
    assert torch.equal((after["per_token_logps"] != 0), (before["per_token_logps"] != 0))


def test_each_row_sees_its_own_images(model_and_collator, images):
    """Recolouring one row's image changes that row's log-probs only (images stay paired with their rows
    when the prompts are repeated for chosen and rejected)."""
    model, collator, pad = model_and_collator
    specs = [SHORT, ONE_IMAGE, LONGER[0]]
    recoloured = {**images, "square": images["square"].point(lambda v: 255 - v)}
    with torch.no_grad():
        before = completion_logps(model, collator(rows_from(images, specs)), pad)
        after = completion_logps(model, collator(rows_from(recoloured, specs)), pad)
    for field in ("chosen", "rejected"):
        delta = (after[f"{field}_logps"] - before[f"{field}_logps"]).abs()
        assert delta[1] > 1e-4 and delta[0] < 1e-5 and delta[2] < 1e-5


def test_small_chunks_give_the_same_logps(model_and_collator, mixed_batch, monkeypatch):
    model, _, pad = model_and_collator
    with torch.no_grad():
        expected = completion_logps(model, mixed_batch, pad)
        monkeypatch.setattr(logps_module, "_LOGSOFTMAX_CHUNK", 3)
        chunked = completion_logps(model, mixed_batch, pad)
    close(chunked["per_token_logps"], expected["per_token_logps"], tol=1e-6)


# --- selective_log_softmax ----------------------------------------------------------------------

def reference_selective(logits, labels):
    return torch.log_softmax(logits.float(), dim=-1).gather(-1, labels.unsqueeze(-1)).squeeze(-1)


@pytest.mark.parametrize("chunk", [1, 4, 7, 37, 1024])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_selective_log_softmax_across_chunk_boundaries(monkeypatch, chunk, dtype):
    monkeypatch.setattr(logps_module, "_LOGSOFTMAX_CHUNK", chunk)
    generator = torch.Generator().manual_seed(0)
    logits = (torch.randn(37, 50, generator=generator) * 5).to(dtype)
    labels = torch.randint(0, 50, (37,), generator=generator)
    out = selective_log_softmax(logits, labels)
    assert out.dtype == torch.float32 and out.shape == (37,)
    close(out, reference_selective(logits, labels), tol=1e-6)


def test_selective_log_softmax_empty():
    out = selective_log_softmax(torch.zeros(0, 11), torch.zeros(0, dtype=torch.long))
    assert out.shape == (0,) and out.dtype == torch.float32


def test_selective_log_softmax_gradient_matches(monkeypatch):
    monkeypatch.setattr(logps_module, "_LOGSOFTMAX_CHUNK", 5)
    logits = torch.randn(12, 9, generator=torch.Generator().manual_seed(1))
    labels = torch.arange(12) % 9
    ours, theirs = logits.clone().requires_grad_(), logits.clone().requires_grad_()
    selective_log_softmax(ours, labels).sum().backward()
    reference_selective(theirs, labels).sum().backward()
    close(ours.grad, theirs.grad, tol=1e-6)
