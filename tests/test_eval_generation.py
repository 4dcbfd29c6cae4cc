"""Batched generation on both tiny families: batching and left padding do not change greedy outputs."""

import pytest
import torch

from data_recipes.shapes import build_shapes_dataset, povid_pairs
from vlmdpo.data.collator import PreferenceCollator
from vlmdpo.data.rows import PreferenceDataset
from vlmdpo.eval.generation import generate_responses, with_prompt
from vlmdpo.model.load import load_model_and_processor
from vlmdpo.model.lora import apply_lora
from vlmdpo.tiny.models import tiny_vlm


@pytest.fixture(scope="module")
def rows():
    # 1-4 objects per scene give captions of different lengths, so the prompts really are padded
    pairs = PreferenceDataset(povid_pairs(build_shapes_dataset(num_train=0, num_test=5, image_size=32)["test"]))
    return [pairs[i] for i in range(len(pairs))]


@pytest.fixture(scope="module", params=["llava", "qwen2_vl"])
def model_and_processor(request):
    return load_model_and_processor(tiny_vlm(request.param))


def test_batched_greedy_equals_one_row_at_a_time(model_and_processor, rows):
    model, processor = model_and_processor
    # different prompts per row give different prompt lengths: left padding is exercised
    rows = [with_prompt(row, text) for row, text in zip(rows, ["Describe the image.", "what is in the picture?",
                                                             "is there a red circle in the image?", "a", "b"])]
    batched = generate_responses(model, processor, rows, max_new_tokens=6, batch_size=5, progress=False)
    single = generate_responses(model, processor, rows, max_new_tokens=6, batch_size=1, progress=False)
    assert batched == single
    assert len(batched) == len(rows) and all(isinstance(text, str) for text in batched)


def test_only_new_tokens_are_decoded(model_and_processor, rows):
    model, processor = model_and_processor
    row = rows[0]
    inputs = PreferenceCollator(processor).encode_prompts([row])
    output = model.generate(**inputs, max_new_tokens=5, do_sample=False)
    tokenizer = processor.tokenizer
    expected = tokenizer.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True).strip()
    assert output.shape[1] <= inputs["input_ids"].shape[1] + 5
    assert generate_responses(model, processor, [row], max_new_tokens=5, progress=False) == [expected]


def test_prompt_override_replaces_every_prompt(rows):
    row = with_prompt(rows[0], "Is there a dog?")
    assert row["prompt"] == [{"role": "user", "content": [{"type": "image"}, {"type": "text",
                                                                               "text": "Is there a dog?"}]}]
    assert row["images"] is rows[0]["images"] and rows[0]["prompt"][0]["content"][1]["text"] != "Is there a dog?"


def test_sampling_is_seeded_grouped_and_keeps_the_callers_rng(model_and_processor, rows):
    model, processor = model_and_processor
    kwargs = dict(max_new_tokens=4, do_sample=True, temperature=1.5, top_p=0.9, num_return_sequences=3,
                  progress=False)
    state = torch.get_rng_state()
    first = generate_responses(model, processor, rows[:2], seed=7, **kwargs)
    assert torch.equal(torch.get_rng_state(), state)
    assert generate_responses(model, processor, rows[:2], seed=7, **kwargs) == first
    assert [len(group) for group in first] == [3, 3]
    assert len({text for group in first for text in group}) > 1  # random weights at temperature 1.5 vary


def test_lora_model_in_train_mode(model_and_processor, rows):
    model, processor = model_and_processor
    expected = generate_responses(model, processor, rows[:3], max_new_tokens=5, progress=False)
    policy = apply_lora(model, r=4)  # lora_B starts at zero: the adapter does not change the outputs yet
    try:
        policy.train()
        got = generate_responses(policy, processor, rows[:3], max_new_tokens=5, batch_size=2, progress=False)
        assert got == expected
        assert policy.training  # mode restored
    finally:
        policy.unload()


def test_rejects_bad_settings(model_and_processor, rows):
    model, processor = model_and_processor
    with pytest.raises(ValueError, match="do_sample"):
        generate_responses(model, processor, rows[:1], num_return_sequences=2, progress=False)
    with pytest.raises(ValueError, match="temperature"):
        generate_responses(model, processor, rows[:1], do_sample=True, temperature=0, progress=False)
