"""Families with a tiny builder that are refused at load (``vlmdpo.model.load.BROKEN_FAMILIES``): loading one
raises with the reason, which names the transformers code at fault, and that code still does what the reason
says (when a transformers release fixes it, these fail: re-run the family matrix and lift the refusal)."""

import pytest
import torch

from vlmdpo.model.load import BROKEN_FAMILIES, load_model_and_processor
from vlmdpo.tiny.models import build_tiny_vlm, tiny_vlm

# family -> the transformers file and function its refusal names
REFUSED = {
    "florence2": "modeling_florence2.py, Florence2Model.forward",
    "cohere2_vision": "modeling_cohere2_vision.py, Cohere2VisionForConditionalGeneration.forward",
}


@pytest.mark.parametrize("family", sorted(REFUSED))
def test_loading_is_refused_with_the_reason(family):
    with pytest.raises(ValueError, match=f"is a {family} model, which vlmdpo refuses") as refused:
        load_model_and_processor(tiny_vlm(family))
    assert BROKEN_FAMILIES[family] in str(refused.value)
    assert REFUSED[family] in str(refused.value)


def _prompt_ids(processor):
    return processor.tokenizer(" is there a red circle?", add_special_tokens=False, return_tensors="pt")["input_ids"]


def test_florence2_gives_logits_for_its_decoder_tokens_only():
    model, processor = build_tiny_vlm("florence2")
    ids = _prompt_ids(processor)
    with torch.no_grad():
        logits = model(input_ids=ids).logits
    assert ids.shape[1] > 1 and logits.shape[1] == 1  # the decoder's start token, whatever input_ids holds


def test_cohere2_vision_leaves_out_its_decoders_logit_scale():
    model, processor = build_tiny_vlm("cohere2_vision")
    ids = _prompt_ids(processor)
    assert model.config.text_config.logit_scale != 1.0
    with torch.no_grad():
        logits = model(input_ids=ids).logits
        unscaled = model.lm_head(model.model(input_ids=ids).last_hidden_state)
    torch.testing.assert_close(logits, unscaled, rtol=0, atol=0)
