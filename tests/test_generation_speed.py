"""The speed settings of ``generate_responses``: the default is today's code token for token; sorting by
prompt length and the static cache return each row's own response in the caller's order."""

import pytest
import torch

from vlmdpo.data.collator import PreferenceCollator
from vlmdpo.eval.config import GenerationConfig
from vlmdpo.eval.generation import generate_responses, length_order, prompt_lengths
from vlmdpo.model.load import load_model_and_processor
from vlmdpo.tiny.models import tiny_vlm

FAMILIES = ["llava", "qwen2_vl", "idefics3", "gemma3"]
TEXTS = ["Describe.", "What is in the picture? Name every object you can see in it, one by one.", "Red circle?",
         "a", "Describe the image in detail: the colour, shape and position of each object, and what is behind."]


@pytest.fixture(scope="module", params=FAMILIES)
def model_and_processor(request, vlmdpo_cache):
    model, processor = load_model_and_processor(tiny_vlm(request.param))
    return model.requires_grad_(False).eval(), processor


@pytest.fixture(scope="module")
def rows(images):
    # prompts of 1 to 20 words over images of four sizes (Qwen2-VL gives them different token counts)
    sides = ["square", "wide", "tall", "tiny", "wide"]
    return [{"index": i, "images": [images[side]],
             "prompt": [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]}]}
            for i, (text, side) in enumerate(zip(TEXTS, sides))]


def todays_generate(model, processor, rows, *, batch_size, max_new_tokens, **sampling):
    """The ``generate`` calls of ``generate_responses`` before the speed settings, with their output tensors."""
    collator, outputs = PreferenceCollator(processor), []
    with torch.random.fork_rng(devices=[]), torch.inference_mode():
        torch.manual_seed(sampling.pop("seed", 0))
        for start in range(0, len(rows), batch_size):
            inputs = dict(collator.encode_prompts(rows[start: start + batch_size]))
            outputs.append(model.generate(**inputs, max_new_tokens=max_new_tokens, use_cache=True,
                                          pad_token_id=processor.tokenizer.pad_token_id, **sampling))
    return outputs


def recorded_generate(model, processor, rows, monkeypatch, **kwargs):
    """``generate_responses``'s texts and the output tensors of its ``generate`` calls."""
    outputs, generate = [], model.generate

    def recording(**inputs):
        outputs.append(generate(**inputs))
        return outputs[-1]

    monkeypatch.setattr(model, "generate", recording)
    texts = generate_responses(model, processor, rows, progress=False, **kwargs)
    monkeypatch.undo()
    return texts, outputs


@pytest.mark.parametrize("batch_size", [1, 2, 5])
def test_default_is_todays_code_token_for_token(model_and_processor, rows, batch_size, monkeypatch):
    model, processor = model_and_processor
    for sampling in ({"do_sample": False},
                     {"do_sample": True, "temperature": 1.5, "top_p": 0.9, "num_return_sequences": 2, "seed": 3}):
        expected = todays_generate(model, processor, rows, batch_size=batch_size, max_new_tokens=6, **sampling)
        _, got = recorded_generate(model, processor, rows, monkeypatch, batch_size=batch_size, max_new_tokens=6,
                                   **sampling)
        assert len(got) == len(expected)
        for new, old in zip(got, expected):
            assert torch.equal(new, old), sampling  # prompt and generated tokens, every position


def test_the_rows_really_get_reordered(model_and_processor, rows):
    _, processor = model_and_processor
    lengths = prompt_lengths(processor, rows, batch_size=2)
    alone = [prompt_lengths(processor, [row])[0] for row in rows]
    assert lengths == alone and len(set(lengths)) > 2
    assert length_order(lengths) != list(range(len(rows)))


@pytest.mark.parametrize("speed", [{"sort_by_length": True}, {"cache_implementation": "static"},
                                   {"sort_by_length": True, "cache_implementation": "static"}],
                         ids=["sorted", "static", "sorted-static"])
def test_each_row_gets_its_own_greedy_response_in_order(model_and_processor, rows, speed):
    model, processor = model_and_processor
    alone = [generate_responses(model, processor, [row], max_new_tokens=6, progress=False)[0] for row in rows]
    assert len(set(alone)) == len(rows)  # distinct responses: a row given another's response would show
    for batch_size in (2, 5):
        assert generate_responses(model, processor, rows, max_new_tokens=6, batch_size=batch_size,
                                  progress=False, **speed) == alone, batch_size


def test_sorted_sampling_is_seeded_and_grouped_per_row(model_and_processor, rows):
    model, processor = model_and_processor
    kwargs = {"max_new_tokens": 5, "do_sample": True, "num_return_sequences": 2, "batch_size": 2,
              "sort_by_length": True, "progress": False}
    state = torch.get_rng_state()
    first = generate_responses(model, processor, rows, temperature=1.5, seed=11, **kwargs)
    assert torch.equal(torch.get_rng_state(), state)
    assert generate_responses(model, processor, rows, temperature=1.5, seed=11, **kwargs) == first
    assert [len(group) for group in first] == [2] * len(rows)
    assert len({text for group in first for text in group}) > len(rows)  # random weights at 1.5 vary
    # a nucleus of one token samples the greedy token: each row's group must hold its own greedy response
    greedy = generate_responses(model, processor, rows, max_new_tokens=5, progress=False)
    nucleus_of_one = generate_responses(model, processor, rows, top_p=1e-6, seed=0, **kwargs)
    assert nucleus_of_one == [[text, text] for text in greedy]


def test_length_order_is_longest_first_and_stable():
    assert length_order([3, 5, 5, 1, 3]) == [1, 2, 0, 4, 3]
    assert length_order([7, 7, 7]) == [0, 1, 2]  # equal lengths: the batches of unsorted generation
    assert length_order([]) == []


def test_bad_cache_settings_are_refused(rows):
    model, processor = load_model_and_processor(tiny_vlm("llava"))
    with pytest.raises(ValueError, match="cache_implementation='static'"):
        generate_responses(model, processor, rows[:1], compile=True, progress=False)
    with pytest.raises(ValueError, match="cache_implementation must be one of"):
        generate_responses(model, processor, rows[:1], cache_implementation="paged", progress=False)
    with pytest.raises(ValueError, match="generation.compile=true"):
        GenerationConfig(compile=True)
    with pytest.raises(ValueError, match="generation.cache_implementation"):
        GenerationConfig(cache_implementation="paged")
    assert GenerationConfig(compile=True, cache_implementation="static", sort_by_length=True).compile
