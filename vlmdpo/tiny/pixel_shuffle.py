"""Tiny builders of the families whose connector folds each 2x2 block of vision patches into one image token
(pixel shuffle) before a projector: ``idefics3`` and ``smolvlm`` (images per row, between
``<fake_token_around_image><global-img>``), ``internvl`` (``<img>...</img>``) and ``aya_vision`` (tiles plus a
global view, a Cohere 2 decoder with scaled logits).

Every builder is ``builder(tokenizer, sizes: TinySizes) -> (model, processor)``, as in ``vlmdpo.tiny.llava``.
"""

from __future__ import annotations

from vlmdpo.tiny.configs import TinySizes, alternating_attention, text_config, vision_config
from vlmdpo.tiny.templates import chatml_template, message_content

SMOLVLM_CHAT_TEMPLATE = (
    "<|im_start|>{% for message in messages %}{{ message['role'] | capitalize }}:"
    + message_content("<image>")
    + "<end_of_utterance>\n{% endfor %}{% if add_generation_prompt %}Assistant:{% endif %}"
)


def _idefics3_layout(classes, tokenizer, sizes: TinySizes, **processor_kwargs):
    """SigLIP tower, pixel-shuffle connector, Llama; images passed per row, no splitting, ``image_seq_len`` tokens
    per image between ``<fake_token_around_image><global-img>``. ``classes``: config, model, image processor,
    processor."""
    config_class, model_class, image_processor_class, processor_class = classes
    scale_factor = 2
    config = config_class(
        vision_config=vision_config(sizes),
        text_config=text_config(tokenizer, sizes, "<end_of_utterance>"),
        scale_factor=scale_factor, image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=sizes.tie_word_embeddings)
    image_processor = image_processor_class(do_image_splitting=False, size={"longest_edge": sizes.image_size},
                                            max_image_size={"longest_edge": sizes.image_size})
    processor = processor_class(image_processor=image_processor, tokenizer=tokenizer,
                                image_seq_len=(sizes.image_size // sizes.patch_size) ** 2 // scale_factor ** 2,
                                chat_template=SMOLVLM_CHAT_TEMPLATE, **processor_kwargs)
    return model_class(config), processor


def smolvlm(tokenizer, sizes: TinySizes):
    """SmolVLM: the Idefics3 layout with SmolVLM's classes (and its video processor)."""
    from transformers import (
        SmolVLMConfig, SmolVLMForConditionalGeneration, SmolVLMImageProcessor, SmolVLMProcessor, SmolVLMVideoProcessor,
    )

    return _idefics3_layout((SmolVLMConfig, SmolVLMForConditionalGeneration, SmolVLMImageProcessor, SmolVLMProcessor),
                            tokenizer, sizes, video_processor=SmolVLMVideoProcessor())


def idefics3(tokenizer, sizes: TinySizes):
    """Idefics3: SmolVLM's predecessor, with its own classes."""
    from transformers import Idefics3Config, Idefics3ForConditionalGeneration, Idefics3ImageProcessor, Idefics3Processor

    return _idefics3_layout((Idefics3Config, Idefics3ForConditionalGeneration, Idefics3ImageProcessor,
                             Idefics3Processor), tokenizer, sizes)


def internvl(tokenizer, sizes: TinySizes):
    """InternVL 3: InternViT tower, pixel-shuffle MLP projector, Qwen2 language model, ``<img>...</img>``."""
    from transformers import (
        GotOcr2ImageProcessor, InternVLConfig, InternVLForConditionalGeneration, InternVLProcessor,
        InternVLVideoProcessor,
    )

    image_size, patch_size = sizes.image_size, sizes.patch_size
    config = InternVLConfig(
        vision_config=dict(hidden_size=sizes.vision_hidden_size, intermediate_size=sizes.vision_mlp(),
                           num_hidden_layers=sizes.vision_layers, num_attention_heads=sizes.vision_heads,
                           image_size=[image_size, image_size], patch_size=[patch_size, patch_size]),
        text_config=dict(model_type="qwen2", **text_config(tokenizer, sizes, "<|im_end|>")),
        image_token_id=tokenizer.convert_tokens_to_ids("<IMG_CONTEXT>"), downsample_ratio=0.5,
        tie_word_embeddings=sizes.tie_word_embeddings)
    model = InternVLForConditionalGeneration(config)
    processor = InternVLProcessor(
        image_processor=GotOcr2ImageProcessor(size={"height": image_size, "width": image_size}, crop_to_patches=False),
        tokenizer=tokenizer, video_processor=InternVLVideoProcessor(),
        image_seq_length=(image_size // patch_size) ** 2 // 4, chat_template=chatml_template("<IMG_CONTEXT>"))
    return model, processor


AYA_VISION_CHAT_TEMPLATE = (  # Cohere's turns: <|START_OF_TURN_TOKEN|><|USER_TOKEN|>...<|END_OF_TURN_TOKEN|>
    "<s>{% for message in messages %}<|START_OF_TURN_TOKEN|>"
    "{{ {'user': '<|USER_TOKEN|>', 'assistant': '<|CHATBOT_TOKEN|>'}.get(message['role'], '<|SYSTEM_TOKEN|>') }}"
    + message_content("<image>")
    + "<|END_OF_TURN_TOKEN|>{% endfor %}"
    "{% if add_generation_prompt %}<|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|>{% endif %}"
)


def aya_vision(tokenizer, sizes: TinySizes):
    """Aya Vision: SigLIP tower, pixel-shuffle SwiGLU projector, Cohere 2 language model (a sliding-window layer,
    scaled logits); images cut into tiles plus a global view (``crop_to_patches``), tokens between
    ``<|START_OF_IMG|>`` and ``<|END_OF_IMG|>``."""
    from transformers import (
        AyaVisionConfig, AyaVisionForConditionalGeneration, AyaVisionProcessor, GotOcr2ImageProcessor,
    )

    config = AyaVisionConfig(
        vision_config=dict(model_type="siglip_vision_model", vision_use_head=False, **vision_config(sizes)),
        text_config=dict(model_type="cohere2", **text_config(
            tokenizer, sizes, "<|END_OF_TURN_TOKEN|>", sliding_window=512,
            layer_types=alternating_attention(sizes.num_layers, end_with_full=True))),
        downsample_factor=2, image_token_index=tokenizer.convert_tokens_to_ids("<|IMG_PATCH|>"),
        vision_feature_select_strategy="full", vision_feature_layer=-1, tie_word_embeddings=sizes.tie_word_embeddings)
    model = AyaVisionForConditionalGeneration(config)
    processor = AyaVisionProcessor(
        image_processor=GotOcr2ImageProcessor(size={"height": sizes.image_size, "width": sizes.image_size},
                                              crop_to_patches=True, max_patches=2),
        tokenizer=tokenizer, patch_size=sizes.patch_size, img_size=sizes.image_size, downsample_factor=2,
        chat_template=AYA_VISION_CHAT_TEMPLATE)
    return model, processor


BUILDERS = {"smolvlm": smolvlm, "idefics3": idefics3, "internvl": internvl, "aya_vision": aya_vision}
FAMILY_TOKENS = {
    "idefics3": (["<fake_token_around_image>", "<global-img>", "<end_of_utterance>"], {}),
    "internvl": (["<img>", "</img>", "<IMG_CONTEXT>"],
                 {"start_image_token": "<img>", "end_image_token": "</img>", "context_image_token": "<IMG_CONTEXT>",
                  "video_token": "<|video_pad|>"}),
    "smolvlm": (["<fake_token_around_image>", "<global-img>", "<end_of_utterance>"], {}),
    "aya_vision": (["<|START_OF_TURN_TOKEN|>", "<|END_OF_TURN_TOKEN|>", "<|USER_TOKEN|>", "<|CHATBOT_TOKEN|>",
                    "<|SYSTEM_TOKEN|>", "<|START_OF_IMG|>", "<|END_OF_IMG|>", "<|IMG_PATCH|>", "<|IMG_LINE_BREAK|>"],
                   {}),
}
"""Per family: the special tokens its processor and template need beyond ``tokenizer.SPECIAL_TOKENS``, and the
named ones its processor reads from the tokenizer."""
