"""Tiny builders of the families whose processor packs every image of a batch, each at a size of its own, into
one patch tensor that the model splits by a per-image index, and frames each image's variable number of tokens
between start and end markers: ``molmo2`` (overlapping crops plus a low-resolution view, attention-pooled by
``image_token_pooling``; image tokens attend to each other both ways), ``ovis2_5`` (native-resolution patches split
by ``image_grid_thw``, a visual vocabulary whose embedding rows a softmax mixes) and ``minicpmv4_7`` (a thumbnail
plus slices, NaViT-packed along the last axis and split by ``target_sizes``; canvas M-RoPE over a hybrid
linear-attention Qwen 3.5).

``minicpmv4_7`` is built but not in the family matrix: its processor stacks a batch's images along the last axis of
``pixel_values`` (always one row), and the plain path repeats per-image inputs along the first.

Every builder is ``builder(tokenizer, sizes: TinySizes) -> (model, processor)``, as in ``vlmdpo.tiny.llava``.
"""

from __future__ import annotations

from vlmdpo.tiny.configs import TinySizes, mrope, text_config, vision_config
from vlmdpo.tiny.templates import message_content


def qwen3_template(image: str, *, thinks_by_default: bool) -> str:
    """Qwen 3's ChatML turns, with the empty reasoning block Qwen 3 (and 3.5) writes before the answer to the last
    user turn. The generation prompt closes an empty block when ``enable_thinking`` is false; otherwise it opens
    ``<think>`` when ``thinks_by_default`` (Qwen 3.5), or nothing, the model opening the block itself (Qwen 3)."""
    empty_block = "<think>\n\n</think>\n\n"
    generation = ("{% if enable_thinking is defined and enable_thinking is false %}" + empty_block
                  + ("{% else %}<think>\n" if thinks_by_default else "") + "{% endif %}")
    return ("{% set ns = namespace(last_user=-1) %}{% for message in messages %}"
            "{% if message['role'] == 'user' %}{% set ns.last_user = loop.index0 %}{% endif %}{% endfor %}"
            "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
            "{% if message['role'] == 'assistant' and loop.index0 > ns.last_user %}" + empty_block + "{% endif %}"
            + message_content(image) + "<|im_end|>\n"
            "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n" + generation + "{% endif %}")


MINICPMV_CHAT_TEMPLATE = qwen3_template("<|image_pad|>", thinks_by_default=True)
"""MiniCPM-V 4.6 / 4.7: Qwen 3.5's turns; the processor puts ``<image_id>N</image_id><image>...</image>`` and the
slices' ``<slice>...</slice>`` rows where the template writes ``<|image_pad|>``."""


def minicpmv4_7(tokenizer, sizes: TinySizes):
    """MiniCPM-V 4.7 (the RLAIF-V authors' own model line): a NaViT SigLIP tower whose window-attention merger
    halves each side after its first layer, an MLP merger halving it again (16 patches per image token), a hybrid
    Qwen 3.5 decoder (gated delta-net layers before a full-attention one) with canvas M-RoPE positions; images are
    a thumbnail plus slices when larger than ``sizes.image_size`` (the matrix's 48x32 image: two slices)."""
    from transformers import (
        MiniCPMV4_6ImageProcessor, MiniCPMV4_6VideoProcessor, MiniCPMV4_7Config, MiniCPMV4_7ForConditionalGeneration,
        MiniCPMV4_7Processor,
    )

    token = tokenizer.convert_tokens_to_ids
    head_dim = 2 * sizes.head_dim
    layer_types = ["linear_attention"] * (max(sizes.num_layers, 2) - 1) + ["full_attention"]
    config = MiniCPMV4_7Config(
        text_config=dict(model_type="qwen3_5_text", **text_config(
            tokenizer, sizes, "<|im_end|>", num_layers=len(layer_types), head_dim=head_dim, layer_types=layer_types,
            linear_num_key_heads=2, linear_num_value_heads=4, linear_key_head_dim=16, linear_value_head_dim=16,
            rope_parameters=mrope(int(head_dim * 0.25), sizes.rope_theta, mrope_interleaved=True,
                                  partial_rotary_factor=0.25))),
        vision_config=vision_config(sizes), insert_layer_id=0, image_size=sizes.image_size,
        image_token_id=token("<|image_pad|>"), video_token_id=token("<|video_pad|>"), image_start_id=token("<image>"),
        image_end_id=token("</image>"), slice_start_id=token("<slice>"), slice_end_id=token("</slice>"),
        newline_id=tokenizer.encode("\n", add_special_tokens=False)[0], tie_word_embeddings=sizes.tie_word_embeddings)
    model = MiniCPMV4_7ForConditionalGeneration(config)
    slicing = dict(patch_size=sizes.patch_size, scale_resolution=sizes.image_size, max_slice_nums=4)
    processor = MiniCPMV4_7Processor(image_processor=MiniCPMV4_6ImageProcessor(**slicing),
                                     video_processor=MiniCPMV4_6VideoProcessor(**slicing), tokenizer=tokenizer,
                                     chat_template=MINICPMV_CHAT_TEMPLATE)
    return model, processor


MOLMO2_CHAT_TEMPLATE = (  # Molmo 2 (a Qwen 3 decoder): ChatML turns, a user turn's images before its text
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for block in message['content'] %}{% if block['type'] == 'image' %}<|image|>{% endif %}{% endfor %}"
    "{% for block in message['content'] %}{% if block['type'] == 'text' %}{{ block['text'] }}{% endif %}{% endfor %}"
    "{% endif %}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def molmo2(tokenizer, sizes: TinySizes):
    """Molmo 2: a ViT whose features from two layers are attention-pooled over 2x2 patch windows (the pooled
    windows are ``image_token_pooling``), a Qwen 3 style decoder; an image is a low-resolution view plus
    overlapping crops, each row of tokens closed by ``<im_col>``, and all image tokens of a sequence attend to each
    other both ways (``mm_token_type_ids``)."""
    from transformers import (
        Molmo2Config, Molmo2ForConditionalGeneration, Molmo2ImageProcessor, Molmo2Processor, Molmo2VideoProcessor,
    )

    token = tokenizer.convert_tokens_to_ids
    crop = sizes.image_size
    heads = dict(num_attention_heads=sizes.vision_heads, num_key_value_heads=sizes.vision_heads,
                 head_dim=sizes.vision_hidden_size // sizes.vision_heads)
    config = Molmo2Config(
        vision_config={**vision_config(sizes), **heads, "image_size": [crop, crop]},
        adapter_config=dict(vision_feature_layer=[-1, 0], hidden_size=sizes.vision_hidden_size, **heads,
                            intermediate_size=sizes.intermediate_size, text_hidden_size=sizes.hidden_size),
        text_config=text_config(tokenizer, sizes, "<|im_end|>", head_dim=sizes.head_dim, additional_vocab_size=0,
                                rope_parameters={"rope_type": "default", "rope_theta": sizes.rope_theta}),
        image_start_token_id=token("<im_start>"), low_res_image_start_token_id=token("<low_res_im_start>"),
        image_end_token_id=token("<im_end>"), image_patch_id=token("<im_patch>"),
        frame_start_token_id=token("<frame_start>"), frame_end_token_id=token("<frame_end>"),
        tie_word_embeddings=sizes.tie_word_embeddings)
    model = Molmo2ForConditionalGeneration(config)
    image_processor = Molmo2ImageProcessor(size={"height": crop, "width": crop}, patch_size=sizes.patch_size,
                                           max_crops=2, overlap_margins=[1, 1])
    video_processor = Molmo2VideoProcessor(size={"height": crop, "width": crop}, patch_size=sizes.patch_size)
    processor = Molmo2Processor(image_processor=image_processor, video_processor=video_processor,
                                tokenizer=tokenizer, chat_template=MOLMO2_CHAT_TEMPLATE)
    return model, processor


OVIS2_5_CHAT_TEMPLATE = qwen3_template("<|image_pad|>", thinks_by_default=False)
"""Ovis 2.5 (a Qwen 3 decoder): Qwen 3's turns; the processor frames the ``<|image_pad|>`` tokens of each image
between ``<ovis_image_start>`` and ``<ovis_image_end>``."""


def ovis2_5(tokenizer, sizes: TinySizes):
    """Ovis 2.5: a NaViT SigLIP tower with 2-D rotary positions at each image's own resolution, a visual
    tokenizer (2x2 patches -> a softmax over a visual vocabulary -> the mixed rows of its embedding table), a
    Qwen 3 decoder with 1-D positions; learned embeddings replace the image start and end markers."""
    from transformers import (
        Ovis2_5Config, Ovis2_5ForConditionalGeneration, Ovis2_5ImageProcessor, Ovis2_5Processor,
        Ovis2_5VideoProcessor,
    )

    token = tokenizer.convert_tokens_to_ids
    config = Ovis2_5Config(
        vision_config=dict(**vision_config(sizes), spatial_merge_size=2, vocab_size=64, num_visual_indicator_tokens=4),
        text_config=dict(model_type="qwen3", **text_config(tokenizer, sizes, "<|im_end|>", head_dim=sizes.head_dim,
                                                           rope_parameters={"rope_type": "default",
                                                                            "rope_theta": sizes.rope_theta})),
        image_token_id=token("<|image_pad|>"), video_token_id=token("<|video_pad|>"),
        image_start_token_id=token("<ovis_image_start>"), image_end_token_id=token("<ovis_image_end>"),
        video_start_token_id=token("<ovis_video_start>"), video_end_token_id=token("<ovis_video_end>"),
        tie_word_embeddings=sizes.tie_word_embeddings)
    model = Ovis2_5ForConditionalGeneration(config)
    factor = 2 * sizes.patch_size  # a patch side times the 2x2 merge
    size = {"shortest_edge": factor * factor, "longest_edge": 4 * sizes.image_size * sizes.image_size}
    grid = dict(patch_size=sizes.patch_size, merge_size=2, temporal_patch_size=1, size=size)
    processor = Ovis2_5Processor(image_processor=Ovis2_5ImageProcessor(**grid), tokenizer=tokenizer,
                                 video_processor=Ovis2_5VideoProcessor(**grid), chat_template=OVIS2_5_CHAT_TEMPLATE)
    return model, processor


BUILDERS = {"minicpmv4_7": minicpmv4_7, "molmo2": molmo2, "ovis2_5": ovis2_5}
FAMILY_TOKENS = {
    "minicpmv4_7": (["<think>", "</think>", "</image>", "<slice>", "</slice>", "<image_id>", "</image_id>"],
                    {"image_token": "<|image_pad|>", "video_token": "<|video_pad|>", "image_start_token": "<image>",
                     "image_end_token": "</image>", "slice_start_token": "<slice>", "slice_end_token": "</slice>",
                     "image_id_start_token": "<image_id>", "image_id_end_token": "</image_id>"}),
    "molmo2": (["<|image|>", "<|video|>", "<im_patch>", "<im_col>", "<im_start>", "<low_res_im_start>",
                "<frame_start>", "<im_end>", "<frame_end>", "<im_low>"],
               {"image_token": "<|image|>", "video_token": "<|video|>"}),
    "ovis2_5": (["<think>", "</think>", "<ovis_image_start>", "<ovis_image_end>", "<ovis_video_start>",
                 "<ovis_video_end>"],
                {"image_token": "<|image_pad|>", "video_token": "<|video_pad|>",
                 "image_start_token": "<ovis_image_start>", "image_end_token": "<ovis_image_end>",
                 "video_start_token": "<ovis_video_start>", "video_end_token": "<ovis_video_end>"}),
}
"""Per family: the special tokens its processor and template need beyond ``tokenizer.SPECIAL_TOKENS``, and the
named ones its processor reads from the tokenizer."""
