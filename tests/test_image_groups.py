"""Mllama run per image count (``vlmdpo.forward.image_groups``): its own forward is batch-dependent, vlmdpo's is not,
and a lone row keeps exactly the numbers of the model's own forward."""

import pytest
import torch
from test_families import matrix_rows

from vlmdpo.data.collator import PreferenceCollator
from vlmdpo.forward.image_groups import image_counts, rows_with_images
from vlmdpo.forward.logps import _completion_logps, completion_logps
from vlmdpo.model.load import load_model_and_processor
from vlmdpo.tiny.models import tiny_vlm


@pytest.fixture(scope="module")
def mllama(vlmdpo_cache):
    model, processor = load_model_and_processor(tiny_vlm("mllama"))
    return model.requires_grad_(False).eval(), processor


def own_forward_chosen_logps(model, batch, pad):
    """The plain path as it was before the grouping: one model forward on the whole batch."""
    return _completion_logps(model, batch, pad)["chosen_logps"]


def test_rows_differing_in_image_count_run_apart_and_equal_each_row_alone(mllama):
    model, processor = mllama
    rows, collator, pad = matrix_rows(), PreferenceCollator(processor), processor.tokenizer.pad_token_id
    batch = collator(rows)
    assert image_counts(batch) == [1, 2, 0, 1]
    with torch.no_grad():
        alone = [completion_logps(model, collator([row]), pad) for row in rows]
        together = completion_logps(model, batch, pad)
        own = own_forward_chosen_logps(model, batch, pad)
        own_alone = torch.stack([own_forward_chosen_logps(model, collator([row]), pad)[0] for row in rows])
    # the model's own forward: the text-only row and the one-image rows move with the two-image row's padding
    # slots (if transformers fixes this, the grouping can go)
    assert (own - own_alone).abs().max() > 1e-3
    for i, row_alone in enumerate(alone):
        # a lone row is one image count: the model's own forward, bit for bit
        assert torch.equal(row_alone["chosen_logps"][0], own_alone[i])
        for key in ("chosen_logps", "rejected_logps", "chosen_lengths", "rejected_lengths"):
            torch.testing.assert_close(together[key][i], row_alone[key][0], rtol=1e-5, atol=1e-5)
        width = row_alone["per_token_logps"].shape[1]
        for copy in range(2):
            torch.testing.assert_close(together["per_token_logps"][copy * len(rows) + i, :width],
                                       row_alone["per_token_logps"][copy], rtol=1e-5, atol=1e-5)


def test_a_group_is_what_the_processor_gives_those_rows_alone(mllama):
    _, processor = mllama
    rows, collator = matrix_rows(), PreferenceCollator(processor)
    batch = collator(rows)
    one_image = rows_with_images(batch, [0, 3], 1)
    expected = collator([rows[0], rows[3]])
    assert one_image["index"] == [0, 3]
    for key, value in expected["vision_inputs"].items():
        assert torch.equal(one_image["vision_inputs"][key], value), key
    mask = one_image["prompt_token_types"]["cross_attention_mask"]
    expected_mask = expected["prompt_token_types"]["cross_attention_mask"]
    assert torch.equal(mask[:, -expected_mask.shape[1]:], expected_mask)  # left padding: the ends line up
    text_only = rows_with_images(batch, [2], 0)
    assert text_only["vision_inputs"] == {} and text_only["prompt_token_types"] == {}
    assert torch.equal(text_only["chosen_input_ids"], batch["chosen_input_ids"][2:3])


def test_gradients_reach_every_group(mllama):
    model, processor = mllama
    rows, pad = matrix_rows(), processor.tokenizer.pad_token_id
    head = model.get_output_embeddings().weight
    head.requires_grad_(True)
    try:
        out = completion_logps(model, PreferenceCollator(processor)(rows), pad)
        grads = torch.autograd.grad(out["chosen_logps"][2], head)  # the text-only row, run on its own
    finally:
        head.requires_grad_(False)
    assert grads[0].abs().sum() > 0


@pytest.mark.parametrize("family, pads", [("mllama", True), ("llava", False), ("qwen2_vl", False)])
def test_the_collator_says_which_processors_pad_images_per_row(family, pads, vlmdpo_cache):
    """What ``train.sharding=fsdp2`` refuses (a group per image count differs between processes)."""
    from vlmdpo.data.collator import PreferenceCollator
    from vlmdpo.model.load import load_processor
    from vlmdpo.tiny.models import tiny_vlm

    assert PreferenceCollator(load_processor(tiny_vlm(family))).pads_images_per_row() is pads
