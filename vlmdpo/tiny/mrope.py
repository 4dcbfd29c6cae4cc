"""Tiny builders of the families with Qwen-VL's multimodal rotary positions (M-RoPE: a time, height and width
index per token, from ``image_grid_thw``) and dynamic image resolution: ``qwen2_vl``, ``qwen2_5_vl``,
``qwen3_vl`` (DeepStack), ``qwen3_5`` (linear-attention layers, a thinking chat template) and ``glm4v``
(half-rotary M-RoPE, turns no token closes).

Every builder is ``builder(tokenizer, sizes: TinySizes) -> (model, processor)``, as in ``vlmdpo.tiny.llava``.
The processors keep an image at its own size between one image token and ``2 * sizes.image_size`` a side.
"""

from __future__ import annotations

from vlmdpo.tiny.configs import TinySizes, mrope, text_config
from vlmdpo.tiny.templates import CHATML_CHAT_TEMPLATE, message_content


def qwen_vision_token_ids(tokenizer) -> dict:
    token = tokenizer.convert_tokens_to_ids
    return dict(image_token_id=token("<|image_pad|>"), video_token_id=token("<|video_pad|>"),
                vision_start_token_id=token("<|vision_start|>"), vision_end_token_id=token("<|vision_end|>"))


def qwen_processor(processor_class, video_processor_class, tokenizer, sizes: TinySizes,
                    chat_template: str = CHATML_CHAT_TEMPLATE):
    """A Qwen-VL processor: dynamic resolution with 2x2 merging, images between ``<|vision_start|>`` and
    ``<|vision_end|>``."""
    from transformers import Qwen2VLImageProcessor

    patch_size = sizes.patch_size
    image_processor = Qwen2VLImageProcessor(patch_size=patch_size, merge_size=2, temporal_patch_size=2,
                                            min_pixels=(patch_size * 2) ** 2,
                                            max_pixels=4 * sizes.image_size * sizes.image_size)
    return processor_class(
        image_processor=image_processor, tokenizer=tokenizer,
        video_processor=video_processor_class(patch_size=patch_size, merge_size=2, temporal_patch_size=2, size={
            "shortest_edge": (patch_size * 2) ** 2, "longest_edge": 2 * sizes.image_size * sizes.image_size}),
        chat_template=chat_template)


def qwen2_vl(tokenizer, sizes: TinySizes):
    """Qwen2-VL: a vision tower with 2-D rotary positions and 2x2 patch merging, a Qwen2 decoder with 3-D
    (M-RoPE) positions; a dynamic number of image tokens per image (``image_grid_thw``)."""
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration, Qwen2VLProcessor, Qwen2VLVideoProcessor

    mlp_ratio, rest = divmod(sizes.vision_mlp(), sizes.vision_hidden_size)
    if rest:
        raise ValueError("Qwen2-VL's vision MLP is a whole multiple (mlp_ratio) of vision_hidden_size, "
                         f"not {sizes.vision_intermediate_size}")
    config = Qwen2VLConfig(
        text_config=text_config(tokenizer, sizes, "<|im_end|>",
                                rope_parameters=mrope(sizes.head_dim, sizes.rope_theta)),
        vision_config=dict(depth=sizes.vision_layers, embed_dim=sizes.vision_hidden_size, hidden_size=sizes.hidden_size,
                           num_heads=sizes.vision_heads, mlp_ratio=mlp_ratio, patch_size=sizes.patch_size,
                           spatial_merge_size=2, temporal_patch_size=2),
        tie_word_embeddings=sizes.tie_word_embeddings, **qwen_vision_token_ids(tokenizer))
    model = Qwen2VLForConditionalGeneration(config)
    return model, qwen_processor(Qwen2VLProcessor, Qwen2VLVideoProcessor, tokenizer, sizes)


def qwen2_5_vl(tokenizer, sizes: TinySizes):
    """Qwen2.5-VL: windowed-attention vision tower, dynamic image tokens, 3-D (M-RoPE) positions."""
    from transformers import (
        Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLProcessor, Qwen2VLVideoProcessor,
    )

    config = Qwen2_5_VLConfig(
        text_config=text_config(tokenizer, sizes, "<|im_end|>",
                                rope_parameters=mrope(sizes.head_dim, sizes.rope_theta)),
        vision_config=dict(depth=sizes.vision_layers, hidden_size=sizes.vision_hidden_size,
                           intermediate_size=sizes.vision_mlp(), num_heads=sizes.vision_heads,
                           out_hidden_size=sizes.hidden_size, patch_size=sizes.patch_size, spatial_merge_size=2,
                           temporal_patch_size=2, window_size=sizes.patch_size * 4,
                           fullatt_block_indexes=[sizes.vision_layers - 1]),
        tie_word_embeddings=sizes.tie_word_embeddings, **qwen_vision_token_ids(tokenizer))
    model = Qwen2_5_VLForConditionalGeneration(config)
    return model, qwen_processor(Qwen2_5_VLProcessor, Qwen2VLVideoProcessor, tokenizer, sizes)


def qwen3_vision_config(sizes: TinySizes, **extra) -> dict:
    """Qwen3-VL's vision tower (Qwen3.5's too): learned positions for up to twice ``image_size`` a side."""
    return dict(depth=sizes.vision_layers, hidden_size=sizes.vision_hidden_size, intermediate_size=sizes.vision_mlp(),
                num_heads=sizes.vision_heads, out_hidden_size=sizes.hidden_size, patch_size=sizes.patch_size,
                spatial_merge_size=2, temporal_patch_size=2,
                num_position_embeddings=(sizes.image_size // sizes.patch_size) ** 2 * 4, **extra)


def qwen3_vl(tokenizer, sizes: TinySizes):
    """Qwen3-VL: learned vision positions, DeepStack features added into early language layers, interleaved
    M-RoPE."""
    from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration, Qwen3VLProcessor, Qwen3VLVideoProcessor

    config = Qwen3VLConfig(
        text_config=text_config(tokenizer, sizes, "<|im_end|>", head_dim=sizes.head_dim,
                                rope_parameters=mrope(sizes.head_dim, sizes.rope_theta, mrope_interleaved=True)),
        vision_config=qwen3_vision_config(sizes, deepstack_visual_indexes=[0]),
        tie_word_embeddings=sizes.tie_word_embeddings, **qwen_vision_token_ids(tokenizer))
    model = Qwen3VLForConditionalGeneration(config)
    return model, qwen_processor(Qwen3VLProcessor, Qwen3VLVideoProcessor, tokenizer, sizes)


QWEN3_5_CHAT_TEMPLATE = (  # Qwen 3.5 thinks by default: the generation prompt opens <think>, and the answer after
    # the last user turn carries its (here empty) reasoning; enable_thinking=false closes the block at once
    "{% set ns = namespace(last_user=-1) %}{% for message in messages %}"
    "{% if message['role'] == 'user' %}{% set ns.last_user = loop.index0 %}{% endif %}{% endfor %}"
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['role'] == 'assistant' and loop.index0 > ns.last_user %}<think>\n\n</think>\n\n{% endif %}"
    + message_content("<|vision_start|><|image_pad|><|vision_end|>")
    + "<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n"
    "{% if enable_thinking is defined and enable_thinking is false %}<think>\n\n</think>\n\n"
    "{% else %}<think>\n{% endif %}{% endif %}"
)


def qwen3_5(tokenizer, sizes: TinySizes):
    """Qwen3.5: Qwen3-VL's vision tower (no DeepStack) and a hybrid language model, gated delta-net linear
    attention layers before a full-attention one, with partial interleaved M-RoPE and heads twice the usual
    width; the processor is Qwen3-VL's, as on the hub."""
    from transformers import Qwen3_5Config, Qwen3_5ForConditionalGeneration, Qwen3VLProcessor, Qwen3VLVideoProcessor

    head_dim, rotary_fraction = 2 * sizes.head_dim, 0.25
    layer_types = ["linear_attention"] * (max(sizes.num_layers, 2) - 1) + ["full_attention"]
    rope = mrope(int(head_dim * rotary_fraction), sizes.rope_theta, mrope_interleaved=True,
                 partial_rotary_factor=rotary_fraction)
    config = Qwen3_5Config(
        text_config=text_config(tokenizer, sizes, "<|im_end|>", num_layers=len(layer_types), head_dim=head_dim,
                                layer_types=layer_types, linear_num_key_heads=2, linear_num_value_heads=4,
                                linear_key_head_dim=16, linear_value_head_dim=16, rope_parameters=rope),
        vision_config=qwen3_vision_config(sizes),
        tie_word_embeddings=sizes.tie_word_embeddings, **qwen_vision_token_ids(tokenizer))
    model = Qwen3_5ForConditionalGeneration(config)
    return model, qwen_processor(Qwen3VLProcessor, Qwen3VLVideoProcessor, tokenizer, sizes, QWEN3_5_CHAT_TEMPLATE)


GLM4V_CHAT_TEMPLATE = (  # GLM-4.1V: [gMASK]<sop>, role tokens open each turn and nothing closes one (the model
    # ends its answer with EOS, or starts the next <|user|>)
    "[gMASK]<sop>{% for message in messages %}<|{{ message['role'] }}|>\n"
    + message_content("<|begin_of_image|><|image|><|end_of_image|>")
    + "{% endfor %}{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


def glm4v_vision_config(sizes: TinySizes) -> dict:
    """GLM-4.1V's vision tower (GLM-4.5V's too), whose MLP is as wide as its decoder's."""
    return dict(depth=sizes.vision_layers, hidden_size=sizes.vision_hidden_size,
                intermediate_size=sizes.vision_intermediate_size or sizes.intermediate_size,
                num_heads=sizes.vision_heads, out_hidden_size=sizes.hidden_size, image_size=sizes.image_size,
                patch_size=sizes.patch_size, spatial_merge_size=2, temporal_patch_size=2)


def glm4v_token_ids(tokenizer) -> dict:
    """The image and video token ids of GLM-4.1V's config (GLM-4.5V's too)."""
    token = tokenizer.convert_tokens_to_ids
    return dict(image_token_id=token("<|image|>"), video_token_id=token("<|video|>"),
                image_start_token_id=token("<|begin_of_image|>"), image_end_token_id=token("<|end_of_image|>"),
                video_start_token_id=token("<|begin_of_video|>"), video_end_token_id=token("<|end_of_video|>"))


def glm4v_rope(sizes: TinySizes) -> dict:
    """GLM-4.1V's half-rotary M-RoPE (GLM-4.5V's too)."""
    rotary_fraction = 0.5
    return mrope(int(sizes.head_dim * rotary_fraction), sizes.rope_theta, partial_rotary_factor=rotary_fraction)


def glm4v_processor(tokenizer, sizes: TinySizes):
    """GLM-4.1V's processor (GLM-4.5V uses the same): dynamic resolution with 2x2 merging."""
    from transformers import Glm4vImageProcessor, Glm4vProcessor, Glm4vVideoProcessor

    patch_size = sizes.patch_size
    size = {"shortest_edge": (patch_size * 2) ** 2, "longest_edge": 4 * sizes.image_size * sizes.image_size}
    return Glm4vProcessor(
        image_processor=Glm4vImageProcessor(patch_size=patch_size, merge_size=2, temporal_patch_size=2, size=size),
        tokenizer=tokenizer, chat_template=GLM4V_CHAT_TEMPLATE,
        video_processor=Glm4vVideoProcessor(patch_size=patch_size, merge_size=2, temporal_patch_size=2, size=size))


def glm4v(tokenizer, sizes: TinySizes):
    """GLM-4.1V: a ViT with interpolated learned positions and 2-D rotary, a conv downsample and merger; a GLM-4
    language model with half-rotary M-RoPE, whose image tokens are told apart by ``mm_token_type_ids``."""
    from transformers import Glm4vConfig, Glm4vForConditionalGeneration

    config = Glm4vConfig(
        text_config=text_config(tokenizer, sizes, "</s>", rope_parameters=glm4v_rope(sizes)),
        vision_config=glm4v_vision_config(sizes), **glm4v_token_ids(tokenizer),
        tie_word_embeddings=sizes.tie_word_embeddings)
    return Glm4vForConditionalGeneration(config), glm4v_processor(tokenizer, sizes)


BUILDERS = {"qwen2_vl": qwen2_vl, "qwen2_5_vl": qwen2_5_vl, "qwen3_vl": qwen3_vl, "qwen3_5": qwen3_5, "glm4v": glm4v}
FAMILY_TOKENS = {"qwen3_5": (["<think>", "</think>"], {}),
                 "glm4v": (["[gMASK]", "<sop>", "<|system|>", "<|user|>", "<|assistant|>", "<|begin_of_image|>",
                            "<|end_of_image|>", "<|image|>", "<|begin_of_video|>", "<|end_of_video|>", "<|video|>"],
                           {})}
"""Per family: the special tokens its processor and template need beyond ``tokenizer.SPECIAL_TOKENS``."""
