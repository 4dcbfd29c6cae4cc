"""PreferenceCollator on real tiny LLaVA and Qwen2-VL processors: the completion mask lines up with the
response text, prompts are left-padded, responses right-padded, processor outputs come through (Gemma 4's and
Mllama's per-image and per-token outputs too)."""

import pytest
import torch

from vlmdpo.data.collator import PreferenceCollator
from vlmdpo.data.rows import DataError, normalize_row

RESPONSES = [
    ("a large red circle.", "a small blue square."),
    (" yes.", "no, there is no dog in this photo."),  # leading space, different lengths
    ("two dogs and three cats", "a green triangle at the top left corner."),
]


def make_rows(images, specs):
    """``specs``: (image names, prompt, chosen, rejected) per row; each row carries its index, as
    PreferenceDataset rows do."""
    rows = []
    for index, (names, prompt, chosen, rejected) in enumerate(specs):
        raw = {"images": [images[n] for n in names], "prompt": prompt, "chosen": chosen, "rejected": rejected}
        rows.append({**normalize_row(raw, index), "index": index})
    return rows


@pytest.fixture
def processor(tiny_model_and_processor):
    return tiny_model_and_processor[1]


@pytest.fixture
def image_token_id(tiny_model_and_processor):
    return tiny_model_and_processor[0].config.image_token_id


@pytest.fixture
def mixed_rows(images):
    """A text-only row, a one-image row and a two-image row of different sizes."""
    return make_rows(images, [
        ([], "is there a dog?", *RESPONSES[0]),
        (["square"], "describe the image.", *RESPONSES[1]),
        (["wide", "tall"], "what is in the picture? answer with yes or no.", *RESPONSES[2]),
    ])


def expected_image_tokens(family, batch):
    """Image tokens per image: LLaVA a fixed (32/8)^2; Qwen2-VL t*h*w patches merged 2x2."""
    if family == "llava":
        return [16] * batch["vision_inputs"]["pixel_values"].shape[0]
    return (batch["vision_inputs"]["image_grid_thw"].prod(dim=1) // 4).tolist()


def tokens_of(tokenizer, ids, mask):
    return tokenizer.decode(ids[mask.bool()], skip_special_tokens=False)


def test_completion_mask_covers_exactly_the_response(processor, mixed_rows, end_of_turn):
    tokenizer = processor.tokenizer
    batch = PreferenceCollator(processor)(mixed_rows)
    for field, position in (("chosen", 0), ("rejected", 1)):
        for i, row in enumerate(mixed_rows):
            response = RESPONSES[i][position]
            masked = tokens_of(tokenizer, batch[f"{field}_input_ids"][i], batch[f"{field}_completion_mask"][i])
            # plus the separator whitespace the template puts before the response (the model generates it)
            assert masked.lstrip() == response.lstrip() + end_of_turn


def test_completion_mask_starts_at_the_first_generated_token(processor, images, end_of_turn):
    """Whatever the model must generate first after the generation prompt is trained, even a separator that
    the tokenizer keeps apart from the text: LLaVA's template puts " " before the response, and a rare word
    such as "Xq." does not merge with it. Left out, greedy decoding never starts such an answer."""
    tokenizer = processor.tokenizer
    rows = make_rows(images, [(["square"], "is there a dog?", "Xq.", "Yes.")])
    batch = PreferenceCollator(processor)(rows)
    ids, mask = batch["chosen_input_ids"][0], batch["chosen_completion_mask"][0]
    assert mask[0] == 1
    assert mask.sum() == batch["chosen_attention_mask"][0].sum()  # nothing after the end of turn here
    assert tokenizer.decode(ids[mask.bool()], skip_special_tokens=False).strip() == "Xq." + end_of_turn


def test_completion_tensors_hold_the_rest_of_the_conversation(processor, mixed_rows, end_of_turn,
                                                              image_token_id):
    """Completion tokens = the chat template's text after the generation prompt, up to the end of turn;
    no prompt text and no image token ever enters them."""
    tokenizer = processor.tokenizer
    batch = PreferenceCollator(processor)(mixed_rows)
    for field in ("chosen", "rejected"):
        ids, attention = batch[f"{field}_input_ids"], batch[f"{field}_attention_mask"]
        assert not (ids == image_token_id).any()
        for i, row in enumerate(mixed_rows):
            prompt = processor.apply_chat_template(row["prompt"], add_generation_prompt=True, tokenize=False)
            full = processor.apply_chat_template(row["prompt"] + row[field], tokenize=False)
            suffix = full[len(prompt):]
            suffix = suffix[: suffix.index(end_of_turn) + len(end_of_turn)]
            assert tokens_of(tokenizer, ids[i], attention[i]) == suffix
            prompt_text = row["prompt"][0]["content"][-1]["text"]
            assert prompt_text not in tokens_of(tokenizer, ids[i], attention[i])


def test_prompts_left_padded_responses_right_padded(processor, mixed_rows):
    pad = processor.tokenizer.pad_token_id
    batch = PreferenceCollator(processor)(mixed_rows)
    prompt_mask = batch["prompt_attention_mask"]
    lengths = prompt_mask.sum(1)
    assert len(set(lengths.tolist())) == 3  # the rows really need padding
    for i, length in enumerate(lengths.tolist()):
        width = prompt_mask.shape[1]
        assert prompt_mask[i].tolist() == [0] * (width - length) + [1] * length
        assert (batch["prompt_input_ids"][i, : width - length] == pad).all()
        assert batch["prompt_input_ids"][i, width - length] != pad
    for field in ("chosen", "rejected"):
        mask, completion = batch[f"{field}_attention_mask"], batch[f"{field}_completion_mask"]
        assert len(set(mask.sum(1).tolist())) > 1
        for i, length in enumerate(mask.sum(1).tolist()):
            assert mask[i].tolist() == [1] * length + [0] * (mask.shape[1] - length)
            assert (batch[f"{field}_input_ids"][i, length:] == pad).all()
        assert ((completion == 1) <= (mask == 1)).all()  # the response mask never covers padding
        assert completion.dtype == mask.dtype == torch.long
    assert batch["index"] == [0, 1, 2]


def test_rows_collate_the_same_alone_and_in_a_mixed_batch(processor, mixed_rows):
    collator = PreferenceCollator(processor)
    together = collator(mixed_rows)
    for i, row in enumerate(mixed_rows):
        alone = collator([row])
        keep = together["prompt_attention_mask"][i].bool()
        assert torch.equal(together["prompt_input_ids"][i][keep], alone["prompt_input_ids"][0])
        for field in ("chosen", "rejected"):
            keep = together[f"{field}_attention_mask"][i].bool()
            for key in ("input_ids", "completion_mask"):
                assert torch.equal(together[f"{field}_{key}"][i][keep], alone[f"{field}_{key}"][0])


def test_image_tokens_and_vision_inputs_per_image(family, processor, mixed_rows, image_token_id):
    batch = PreferenceCollator(processor)(mixed_rows)
    vision = batch["vision_inputs"]
    per_image = expected_image_tokens(family, batch)
    assert len(per_image) == 3  # images of all rows, in row order
    image_tokens = (batch["prompt_input_ids"] == image_token_id).sum(1).tolist()
    assert image_tokens == [0, per_image[0], per_image[1] + per_image[2]]
    if family == "llava":
        assert set(vision) == {"pixel_values"}
        assert tuple(vision["pixel_values"].shape) == (3, 3, 32, 32)
        assert batch["prompt_token_types"] == {}
    else:
        assert {"pixel_values", "image_grid_thw"} <= set(vision)
        assert vision["image_grid_thw"].tolist()[0] == [1, 4, 4]  # the 32x32 image
        assert vision["pixel_values"].shape[0] == int(vision["image_grid_thw"].prod(1).sum())
        assert per_image[1] != per_image[2]  # differently sized images get different token counts
        types = batch["prompt_token_types"]["mm_token_type_ids"]
        assert types.shape == batch["prompt_input_ids"].shape
        assert torch.equal(types.bool(), batch["prompt_input_ids"] == image_token_id)


def test_text_only_batch_has_no_vision_inputs(processor, images):
    rows = make_rows(images, [([], "is there a dog?", *RESPONSES[0]), ([], "why?", *RESPONSES[1])])
    batch = PreferenceCollator(processor)(rows)
    assert batch["vision_inputs"] == {}
    assert batch["prompt_input_ids"].shape[0] == 2


def test_max_response_length_truncates_the_response_only(processor, mixed_rows):
    tokenizer = processor.tokenizer
    full = PreferenceCollator(processor)(mixed_rows)
    limit = 3
    cut = PreferenceCollator(processor, max_response_length=limit)(mixed_rows)
    assert torch.equal(cut["prompt_input_ids"], full["prompt_input_ids"])
    for field in ("chosen", "rejected"):
        counts = full[f"{field}_completion_mask"].sum(1)
        assert (counts > limit).any()
        assert cut[f"{field}_completion_mask"].sum(1).tolist() == counts.clamp(max=limit).tolist()
        for i in range(len(mixed_rows)):
            kept = cut[f"{field}_attention_mask"][i].bool()
            length = int(kept.sum())
            # the kept tokens are the untruncated completion's first tokens
            assert torch.equal(cut[f"{field}_input_ids"][i][kept], full[f"{field}_input_ids"][i][:length])
            masked = tokens_of(tokenizer, cut[f"{field}_input_ids"][i], cut[f"{field}_completion_mask"][i])
            whole = tokens_of(tokenizer, full[f"{field}_input_ids"][i], full[f"{field}_completion_mask"][i])
            assert whole.startswith(masked)


def test_max_prompt_length_raises_naming_the_row(processor, mixed_rows):
    collator = PreferenceCollator(processor)
    lengths = [collator.prompt_length(row) for row in mixed_rows]
    assert lengths == collator(mixed_rows)["prompt_attention_mask"].sum(1).tolist()
    longest = max(range(3), key=lengths.__getitem__)
    limit = sorted(lengths)[1]
    assert PreferenceCollator(processor, max_prompt_length=max(lengths))(mixed_rows) is not None
    with pytest.raises(DataError) as info:
        PreferenceCollator(processor, max_prompt_length=limit)(mixed_rows)
    message = str(info.value)
    assert info.value.index == longest and info.value.field == "prompt"
    assert f"row {longest}" in message and f"max_prompt_length={limit}" in message
    assert f"{lengths[longest]} tokens" in message and "Fix: " in message


def test_per_token_and_per_image_outputs_of_gemma4_and_mllama_processors(images, vlmdpo_cache):
    """Gemma 4's (images, patches, 2) ``image_position_ids`` are per image, whatever their shape, because its image
    processor's ``model_input_names`` list them; Mllama's 4-D ``cross_attention_mask`` is per token, and the plain
    path continues it over the responses with the last prompt position's value (what the end of the prompt sees,
    the responses see)."""
    from vlmdpo.forward.logps import concatenated_inputs
    from vlmdpo.model.load import load_processor
    from vlmdpo.tiny import tiny_vlm

    rows = make_rows(images, [(["square"], "describe the image.", *RESPONSES[1]),
                              (["wide", "tall"], "what is in the picture?", *RESPONSES[2])])
    batch = PreferenceCollator(load_processor(tiny_vlm("gemma4")))(rows)
    assert set(batch["prompt_token_types"]) == {"mm_token_type_ids"}
    assert batch["vision_inputs"]["image_position_ids"].shape[:2] == batch["vision_inputs"]["pixel_values"].shape[:2]

    batch = PreferenceCollator(load_processor(tiny_vlm("mllama")))(rows)
    mask = batch["prompt_token_types"]["cross_attention_mask"]
    assert mask.shape[:2] == batch["prompt_input_ids"].shape and mask.dim() == 4
    assert {"pixel_values", "aspect_ratio_ids", "aspect_ratio_mask"} <= set(batch["vision_inputs"])
    continued = concatenated_inputs(batch, 0)["model_inputs"]["cross_attention_mask"]
    prompt_length = mask.shape[1]
    assert torch.equal(continued[:2, :prompt_length], mask)
    assert torch.equal(continued[:2, prompt_length:], mask[:, -1:].expand_as(continued[:2, prompt_length:]))
    assert continued[1, -1, :, 0].tolist() == [1, 1]  # the two-image row's responses see both images


THINKING_TEMPLATE = (  # Qwen3's way: an empty think block in the generation prompt, none in a finished answer
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% for block in message['content'] %}{% if block['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% else %}{{ block['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n<think>\n\n</think>\n\n{% endif %}")


@pytest.mark.parametrize("family", ["qwen2_vl"], indirect=True)
def test_a_thinking_template_scores_the_response_after_the_generation_prompt(family, tiny_model_and_processor,
                                                                            mixed_rows):
    """The generation prompt (ending in an empty think block) is not a prefix of the finished conversation: the
    prompt is the generation prompt, the completion the response text and the turn's end, as generation sees it."""
    import copy

    processor = copy.deepcopy(tiny_model_and_processor[1])
    processor.chat_template = THINKING_TEMPLATE
    batch = PreferenceCollator(processor)(mixed_rows)
    tokenizer = processor.tokenizer
    for i, row in enumerate(mixed_rows):
        prompt = tokenizer.decode(batch["prompt_input_ids"][i][batch["prompt_attention_mask"][i].bool()])
        assert prompt.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n"), prompt
        ids = batch["chosen_input_ids"][i][batch["chosen_attention_mask"][i].bool()]
        text = row["chosen"][0]["content"][0]["text"]
        assert tokenizer.decode(ids) == text + "<|im_end|>"
        assert tokens_of(tokenizer, batch["chosen_input_ids"][i], batch["chosen_completion_mask"][i]) == \
            text + "<|im_end|>"
    processor.chat_template = THINKING_TEMPLATE.replace("{{ block['text'] }}", "{{ block['text'] | upper }}")
    with pytest.raises(DataError, match="the response text is not in its rendering"):
        PreferenceCollator(processor)(mixed_rows)
