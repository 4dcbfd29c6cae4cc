"""Where processor output becomes model input: floating inputs in the model's dtype, processor labels dropped,
per-token outputs continued over the responses by kind (2-D type ids with 0, N-D masks with the last prompt
position)."""

import copy

import pytest
import torch
from PIL import Image

from helpers import ONE_IMAGE, SHORT, rows_from
from vlmdpo.data.collator import PreferenceCollator
from vlmdpo.eval.generation import generate_responses
from vlmdpo.forward.fast import fast_completion_logps
from vlmdpo.forward.logps import completion_logps, concatenated_inputs, extend_per_token


@pytest.mark.parametrize("family", ["llava"], indirect=True)
def test_bfloat16_processor_outputs_reach_a_float32_model_as_float32(family, tiny_model_and_processor, images):
    """Llama 4's processor emits bfloat16 pixels whatever the model's dtype, and its forward does not cast them.
    The four tiny families cast inside their own forward, so this checks the whole path, and
    ``test_cast_floating`` the cast itself."""
    model, processor = tiny_model_and_processor
    batch = PreferenceCollator(processor)(rows_from(images, [ONE_IMAGE, SHORT]))
    as_bf16 = copy.deepcopy(batch)
    as_bf16["vision_inputs"]["pixel_values"] = batch["vision_inputs"]["pixel_values"].to(torch.bfloat16)
    rounded = copy.deepcopy(batch)
    rounded["vision_inputs"]["pixel_values"] = as_bf16["vision_inputs"]["pixel_values"].float()
    pad = processor.tokenizer.pad_token_id
    with torch.no_grad():
        torch.testing.assert_close(completion_logps(model, as_bf16, pad)["chosen_logps"],
                                   completion_logps(model, rounded, pad)["chosen_logps"], rtol=0, atol=0)
        torch.testing.assert_close(fast_completion_logps(model, as_bf16)["chosen_logps"],
                                   fast_completion_logps(model, rounded)["chosen_logps"], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("family", ["llava"], indirect=True)
def test_a_bfloat16_model_takes_the_processors_float32_pixels(family, tiny_model_and_processor, images):
    model, processor = tiny_model_and_processor
    model = copy.deepcopy(model).to(torch.bfloat16)
    rows = rows_from(images, [ONE_IMAGE, SHORT])
    batch = PreferenceCollator(processor)(rows)
    assert batch["vision_inputs"]["pixel_values"].dtype == torch.float32
    with torch.no_grad():
        out = completion_logps(model, batch, processor.tokenizer.pad_token_id)
    assert torch.isfinite(out["chosen_logps"]).all()
    assert len(generate_responses(model, processor, rows, max_new_tokens=3, progress=False)) == 2


class LabelledProcessor:
    """A real processor whose outputs also carry ``labels`` and a 4-D per-token mask, as PaliGemma's (with a
    suffix) and Mllama's do."""

    def __init__(self, processor):
        self.inner = processor
        self.tokenizer = processor.tokenizer

    def apply_chat_template(self, *args, **kwargs):
        return self.inner.apply_chat_template(*args, **kwargs)

    def __call__(self, **kwargs):
        out = self.inner(**kwargs)
        out["labels"] = out["input_ids"].clone()
        batch, length = out["input_ids"].shape
        out["cross_attention_mask"] = torch.arange(batch * length * 2).reshape(batch, length, 2, 1) % 3
        return out


@pytest.mark.parametrize("family", ["llava"], indirect=True)
def test_labels_are_dropped_and_a_4d_mask_continues_with_the_last_prompt_position(family, tiny_model_and_processor,
                                                                                    images):
    _, processor = tiny_model_and_processor
    batch = PreferenceCollator(LabelledProcessor(processor))(rows_from(images, [ONE_IMAGE, SHORT]))
    assert "labels" not in batch["vision_inputs"] and "labels" not in batch["prompt_token_types"]
    mask = batch["prompt_token_types"]["cross_attention_mask"]
    inputs = concatenated_inputs(batch, processor.tokenizer.pad_token_id)["model_inputs"]
    extended = inputs["cross_attention_mask"]
    prompt_length = batch["prompt_input_ids"].shape[1]
    assert extended.shape[:2] == inputs["input_ids"].shape and extended.shape[2:] == mask.shape[2:]
    assert torch.equal(extended[:2, :prompt_length], mask)
    assert torch.equal(extended[:2, prompt_length:], mask[:, -1:].expand(-1, extended.shape[1] - prompt_length, 2, 1))


def test_cast_floating():
    from vlmdpo.forward.logps import cast_floating

    inputs = {"pixel_values": torch.ones(2, dtype=torch.bfloat16), "image_grid_thw": torch.ones(2, dtype=torch.long),
              "image_sizes": [(3, 4)]}
    out = cast_floating(inputs, torch.float32)
    assert out["pixel_values"].dtype == torch.float32 and out["image_grid_thw"].dtype == torch.long
    assert out["image_sizes"] == [(3, 4)]


def test_extend_per_token_rules():
    types = torch.tensor([[0, 1, 1], [1, 0, 0]])
    assert extend_per_token(types, 2, 2).tolist() == [[0, 1, 1, 0, 0], [1, 0, 0, 0, 0]] * 2
    assert extend_per_token(types, 1, 2, fill=1).tolist() == [[0, 1, 1, 1, 1], [1, 0, 0, 1, 1]]
    mask = torch.tensor([[[1, 0], [0, 1]]])  # (1, 2, 2)
    assert extend_per_token(mask, 1, 3)[0].tolist() == [[1, 0], [0, 1], [0, 1], [0, 1], [0, 1]]


def test_causality_probe_catches_responses_that_attend_both_ways(vlmdpo_cache, images, monkeypatch):
    """Gemma 3 gives tokens of type 1 bidirectional attention (its images). Continued with 0 over the responses
    (the rule) they are scored causally; continued with 1, as a wrong rule would, they are not, and the probe
    that every training run makes says so."""
    import vlmdpo.forward.logps as logps
    from vlmdpo.model.load import load_model_and_processor
    from vlmdpo.forward.probes import causality_problem
    from vlmdpo.tiny import tiny_vlm

    model, processor = load_model_and_processor(tiny_vlm("gemma3"))
    batch = PreferenceCollator(processor)(rows_from(images, [ONE_IMAGE, SHORT]))
    pad = processor.tokenizer.pad_token_id
    assert causality_problem(model, batch, pad) is None
    rule = logps.extend_per_token

    def as_images(value, copies, length, fill=0):
        out = rule(value, copies, length, fill)
        out[:, value.shape[1]:] = 1
        return out

    monkeypatch.setattr(logps, "extend_per_token", as_images)
    problem = causality_problem(model, batch, pad)
    assert problem is not None and problem.startswith("changing the last token of a response moved")
