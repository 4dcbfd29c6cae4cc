"""Tiny builders of the families that keep LLaVA's splice (an image's features replace its placeholder tokens in a
decoder-only language model, 1-D positions) and vary the encoder side: ``deepseek_vl`` (SigLIP, a two-layer MLP
aligner), ``deepseek_vl_hybrid`` (two encoders on one image: SigLIP, and SAM at twice the resolution, fused per
token by the aligner) and ``cohere2_vision`` (SigLIP over tiles plus a thumbnail, a pixel-shuffle SwiGLU projector,
a Cohere 2 decoder: Aya Vision's sibling).

Two are built only as the record of what was tried, and ``vlmdpo.model.load`` refuses them (``BROKEN_FAMILIES``
says why): ``cohere2_vision``, whose forward leaves out its decoder's logit scale, and ``florence2``, which does not
share the layout at all: an encoder-decoder (DaViT vision encoder, BART) whose prompt runs through a bidirectional
text encoder and whose logits come from a separate decoder.

Every builder is ``builder(tokenizer, sizes: TinySizes) -> (model, processor)``, as in ``vlmdpo.tiny.llava``.
"""

from __future__ import annotations

from vlmdpo.tiny.configs import TinySizes, alternating_attention, text_config, vision_config
from vlmdpo.tiny.templates import message_content

DEEPSEEK_END = "<｜end▁of▁sentence｜>"

DEEPSEEK_VL_CHAT_TEMPLATE = (  # BOS, then DeepSeek's turns: "User: ...\n\n", "Assistant: ...<end of sentence>"
    "<s>{% for message in messages %}"
    "{% if message['role'] == 'user' %}User: {% elif message['role'] == 'assistant' %}Assistant: {% endif %}"
    + message_content("<image_placeholder>")
    + "{% if message['role'] == 'assistant' %}" + DEEPSEEK_END + "{% else %}{{ '\\n\\n' }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}Assistant:{% endif %}"
)

COHERE2_VISION_CHAT_TEMPLATE = (  # Command A's turns, the response between <|START_RESPONSE|> and <|END_RESPONSE|>
    "<s>{% for message in messages %}<|START_OF_TURN_TOKEN|>"
    "{{ {'user': '<|USER_TOKEN|>', 'assistant': '<|CHATBOT_TOKEN|><|START_RESPONSE|>'}.get(message['role'], "
    "'<|SYSTEM_TOKEN|>') }}"
    + message_content("<|IMG_PATCH|>")
    + "{% if message['role'] == 'assistant' %}<|END_RESPONSE|>{% endif %}<|END_OF_TURN_TOKEN|>{% endfor %}"
    "{% if add_generation_prompt %}<|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|><|START_RESPONSE|>{% endif %}"
)


def _llama(tokenizer, sizes: TinySizes) -> dict:
    return dict(model_type="llama", **text_config(tokenizer, sizes, DEEPSEEK_END))


def deepseek_vl(tokenizer, sizes: TinySizes):
    """DeepSeek-VL (1.3B layout): SigLIP tower, MLP aligner, Llama; ``(image_size / patch_size) ** 2`` image tokens
    per image, each image padded to a square."""
    from transformers import (
        DeepseekVLConfig, DeepseekVLForConditionalGeneration, DeepseekVLImageProcessor, DeepseekVLProcessor,
    )

    config = DeepseekVLConfig(
        vision_config=dict(model_type="siglip_vision_model", vision_use_head=False, **vision_config(sizes)),
        text_config=_llama(tokenizer, sizes), image_token_id=tokenizer.convert_tokens_to_ids("<image_placeholder>"),
        tie_word_embeddings=sizes.tie_word_embeddings)
    model = DeepseekVLForConditionalGeneration(config)
    processor = DeepseekVLProcessor(
        image_processor=DeepseekVLImageProcessor(size={"height": sizes.image_size, "width": sizes.image_size}),
        tokenizer=tokenizer, num_image_tokens=(sizes.image_size // sizes.patch_size) ** 2,
        chat_template=DEEPSEEK_VL_CHAT_TEMPLATE)
    return model, processor


def deepseek_vl_hybrid(tokenizer, sizes: TinySizes):
    """DeepSeek-VL (7B layout): DeepSeek-VL's SigLIP at ``image_size`` and a SAM encoder at twice it
    (``high_res_pixel_values``), whose features the aligner concatenates per image token."""
    from transformers import (
        DeepseekVLHybridConfig, DeepseekVLHybridForConditionalGeneration, DeepseekVLHybridImageProcessor,
        DeepseekVLHybridProcessor,
    )

    high_res = 2 * sizes.image_size
    sam = dict(model_type="sam_vision_model", hidden_size=sizes.vision_hidden_size, output_channels=16,
               num_hidden_layers=sizes.vision_layers, num_attention_heads=sizes.vision_heads,
               mlp_dim=sizes.vision_mlp(), image_size=high_res, patch_size=sizes.patch_size, window_size=4,
               global_attn_indexes=[sizes.vision_layers - 1])
    config = DeepseekVLHybridConfig(
        vision_config=dict(model_type="siglip_vision_model", vision_use_head=False, **vision_config(sizes)),
        high_res_vision_config=sam, text_config=_llama(tokenizer, sizes),
        image_token_id=tokenizer.convert_tokens_to_ids("<image_placeholder>"),
        tie_word_embeddings=sizes.tie_word_embeddings)
    model = DeepseekVLHybridForConditionalGeneration(config)
    image_processor = DeepseekVLHybridImageProcessor(size={"height": sizes.image_size, "width": sizes.image_size},
                                                     high_res_size={"height": high_res, "width": high_res})
    processor = DeepseekVLHybridProcessor(
        image_processor=image_processor, tokenizer=tokenizer,
        num_image_tokens=(sizes.image_size // sizes.patch_size) ** 2, chat_template=DEEPSEEK_VL_CHAT_TEMPLATE)
    return model, processor


def cohere2_vision(tokenizer, sizes: TinySizes):
    """Command A Vision: SigLIP tower over tiles plus a thumbnail (``crop_to_patches``), pixel shuffle (2x2 patches
    per token) and a SwiGLU projector, Cohere 2 decoder; each tile's tokens end with ``<|IMG_LINE_BREAK|>``, the
    image between ``<|START_OF_IMG|>`` and ``<|END_OF_IMG|>``."""
    from transformers import (
        Cohere2VisionConfig, Cohere2VisionForConditionalGeneration, Cohere2VisionImageProcessor, Cohere2VisionProcessor,
    )

    downsample = 2
    config = Cohere2VisionConfig(
        vision_config=dict(model_type="siglip_vision_model", vision_use_head=False, **vision_config(sizes)),
        text_config=dict(model_type="cohere2", **text_config(
            tokenizer, sizes, "<|END_RESPONSE|>", sliding_window=512,
            layer_types=alternating_attention(sizes.num_layers, end_with_full=True))),
        downsample_factor=downsample, alignment_intermediate_size=2 * sizes.hidden_size,
        image_token_id=tokenizer.convert_tokens_to_ids("<|IMG_PATCH|>"), tie_word_embeddings=sizes.tie_word_embeddings)
    model = Cohere2VisionForConditionalGeneration(config)
    image_processor = Cohere2VisionImageProcessor(  # its patch_size: image tokens per tile side
        size={"height": sizes.image_size, "width": sizes.image_size}, crop_to_patches=True, max_patches=2,
        patch_size=sizes.image_size // sizes.patch_size // downsample)
    processor = Cohere2VisionProcessor(image_processor=image_processor, tokenizer=tokenizer,
                                       chat_template=COHERE2_VISION_CHAT_TEMPLATE)
    return model, processor


def florence2(tokenizer, sizes: TinySizes):
    """Florence-2: DaViT vision encoder (two stages here), BART encoder-decoder; the processor puts one image's
    tokens and ``<s>`` before the prompt text and ``</s>`` after it. The real model has no chat template (its prompts
    are task tokens such as ``<CAPTION>``): this one is the bare text, the response ending with ``</s>``."""
    from transformers import CLIPImageProcessor, Florence2Config, Florence2ForConditionalGeneration, Florence2Processor

    width = sizes.hidden_size
    vision = dict(depths=[1, 1], patch_size=[7, 3], patch_stride=[4, 2], patch_padding=[3, 1],
                  patch_prenorm=[False, True], embed_dim=[16, 32], num_heads=[1, 2], num_groups=[1, 2],
                  window_size=2, projection_dim=width, max_position_embeddings=8)
    text = dict(model_type="bart", vocab_size=sizes.vocab(tokenizer), d_model=width,
                encoder_layers=sizes.num_layers, decoder_layers=sizes.num_layers,
                encoder_attention_heads=sizes.num_heads, decoder_attention_heads=sizes.num_heads,
                encoder_ffn_dim=sizes.intermediate_size, decoder_ffn_dim=sizes.intermediate_size,
                max_position_embeddings=sizes.max_position_embeddings, pad_token_id=tokenizer.pad_token_id,
                bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                decoder_start_token_id=tokenizer.eos_token_id, forced_eos_token_id=None)
    config = Florence2Config(vision_config=vision, text_config=text,
                             image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
                             tie_word_embeddings=sizes.tie_word_embeddings)
    model = Florence2ForConditionalGeneration(config)
    grid = sizes.image_size // 8  # the two stages' strides
    image_processor = CLIPImageProcessor(size={"height": sizes.image_size, "width": sizes.image_size},
                                         do_center_crop=False, image_seq_length=grid * grid + 1)
    processor = Florence2Processor(image_processor=image_processor, tokenizer=tokenizer,
                                   chat_template="{% for message in messages %}" + message_content("")
                                   + "{% if message['role'] == 'assistant' %}</s>{% endif %}{% endfor %}")
    return model, processor


BUILDERS = {"deepseek_vl": deepseek_vl, "deepseek_vl_hybrid": deepseek_vl_hybrid, "cohere2_vision": cohere2_vision,
            "florence2": florence2}
_COHERE_TURNS = ["<|START_OF_TURN_TOKEN|>", "<|END_OF_TURN_TOKEN|>", "<|USER_TOKEN|>", "<|CHATBOT_TOKEN|>",
                 "<|SYSTEM_TOKEN|>", "<|START_RESPONSE|>", "<|END_RESPONSE|>"]
_COHERE_IMAGE = {"image_token": "<|IMG_PATCH|>", "boi_token": "<|START_OF_IMG|>", "eoi_token": "<|END_OF_IMG|>",
                 "img_line_break_token": "<|IMG_LINE_BREAK|>"}
FAMILY_TOKENS = {
    "deepseek_vl": (["<image_placeholder>", DEEPSEEK_END], {"image_token": "<image_placeholder>"}),
    "deepseek_vl_hybrid": (["<image_placeholder>", DEEPSEEK_END], {"image_token": "<image_placeholder>"}),
    "cohere2_vision": (_COHERE_TURNS + list(_COHERE_IMAGE.values()), _COHERE_IMAGE),
    "florence2": ([], {"image_token": "<image>"}),
}
"""Per family: the special tokens its processor and template need beyond ``tokenizer.SPECIAL_TOKENS``, and the
named ones its processor reads from the tokenizer."""
