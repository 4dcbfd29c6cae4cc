"""Tiny builders of more VLM families for ``vlmdpo.tiny.models``: the real ``transformers`` model and processor
classes, random weights, a chat template shaped like the real model's.

Each entry of ``FAMILY_TOKENS`` lists the special tokens the family's processor and template need (and the named
ones its processor reads from the tokenizer, such as Gemma 3's ``boi_token``); ``BUILDERS`` maps the family to
``builder(tokenizer, image_size, patch_size, hidden_size, num_layers, vision_hidden_size, vision_layers,
tie_word_embeddings) -> (model, processor)``.
"""

from __future__ import annotations


def message_content(image: str) -> str:
    """The chat-template fragment every tiny family shares: a message's content as a string, or as blocks
    where each ``{"type": "image"}`` becomes ``image`` (the family's image marker) and text blocks their text."""
    return ("{% if message['content'] is string %}{{ message['content'] }}{% else %}"
            "{% for block in message['content'] %}{% if block['type'] == 'image' %}" + image +
            "{% elif block['type'] == 'text' %}{{ block['text'] }}{% endif %}{% endfor %}{% endif %}")


LLAVA_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}USER: {% elif message['role'] == 'assistant' %}ASSISTANT: "
    "{% else %}SYSTEM: {% endif %}"
    + message_content("<image>\n")
    + "{% if message['role'] == 'assistant' %}</s>{% else %} {% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)

CHATML_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    + message_content("<|vision_start|><|image_pad|><|vision_end|>")
    + "<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

SMOLVLM_CHAT_TEMPLATE = (
    "<|im_start|>{% for message in messages %}{{ message['role'] | capitalize }}:"
    + message_content("<image>")
    + "<end_of_utterance>\n{% endfor %}{% if add_generation_prompt %}Assistant:{% endif %}"
)

CHATML_IMAGE_CHAT_TEMPLATE = (  # Qwen-style turns with an image placeholder the processor expands
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    + message_content("IMAGE_PLACEHOLDER")
    + "<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

FAMILY_TOKENS = {
    "llava_onevision": (["<video>"], {}),
    "mistral3": (["[IMG]", "[IMG_BREAK]", "[IMG_END]"], {}),
    "idefics3": (["<fake_token_around_image>", "<global-img>", "<end_of_utterance>"], {}),
    "internvl": (["<img>", "</img>", "<IMG_CONTEXT>"],
                 {"start_image_token": "<img>", "end_image_token": "</img>", "context_image_token": "<IMG_CONTEXT>",
                  "video_token": "<|video_pad|>"}),
    "smolvlm": (["<fake_token_around_image>", "<global-img>", "<end_of_utterance>"], {}),
    "mllama": (["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>", "<|image|>", "<|python_tag|>"], {}),
    "aya_vision": (["<|START_OF_TURN_TOKEN|>", "<|END_OF_TURN_TOKEN|>", "<|USER_TOKEN|>", "<|CHATBOT_TOKEN|>",
                    "<|SYSTEM_TOKEN|>", "<|START_OF_IMG|>", "<|END_OF_IMG|>", "<|IMG_PATCH|>", "<|IMG_LINE_BREAK|>"],
                   {}),
}


def _text_config(tokenizer, hidden_size: int, num_layers: int, eos: str, tie_word_embeddings: bool, **extra) -> dict:
    return dict(vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=hidden_size * 2,
                num_hidden_layers=num_layers, num_attention_heads=4, num_key_value_heads=2,
                max_position_embeddings=1024, pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                eos_token_id=tokenizer.convert_tokens_to_ids(eos), tie_word_embeddings=tie_word_embeddings, **extra)


def _vision_config(image_size: int, patch_size: int, vision_hidden_size: int, vision_layers: int) -> dict:
    return dict(hidden_size=vision_hidden_size, intermediate_size=vision_hidden_size * 2,
                num_hidden_layers=vision_layers, num_attention_heads=2, image_size=image_size, patch_size=patch_size)


def _idefics3_layout(classes, tokenizer, image_size, patch_size, hidden_size, num_layers, vision_hidden_size,
                     vision_layers, tie_word_embeddings, **processor_kwargs):
    """SigLIP tower, pixel-shuffle connector, Llama; images passed per row, no splitting, ``image_seq_len`` tokens
    per image between ``<fake_token_around_image><global-img>``. ``classes``: config, model, image processor,
    processor."""
    config_class, model_class, image_processor_class, processor_class = classes
    scale_factor = 2
    config = config_class(
        vision_config=_vision_config(image_size, patch_size, vision_hidden_size, vision_layers),
        text_config=_text_config(tokenizer, hidden_size, num_layers, "<end_of_utterance>", tie_word_embeddings),
        scale_factor=scale_factor, image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=tie_word_embeddings)
    image_processor = image_processor_class(do_image_splitting=False, size={"longest_edge": image_size},
                                            max_image_size={"longest_edge": image_size})
    processor = processor_class(image_processor=image_processor, tokenizer=tokenizer,
                                image_seq_len=(image_size // patch_size) ** 2 // scale_factor ** 2,
                                chat_template=SMOLVLM_CHAT_TEMPLATE, **processor_kwargs)
    return model_class(config), processor


def smolvlm(tokenizer, image_size, patch_size, hidden_size, num_layers, vision_hidden_size, vision_layers,
            tie_word_embeddings=False):
    """SmolVLM: the Idefics3 layout with SmolVLM's classes (and its video processor)."""
    from transformers import (
        SmolVLMConfig, SmolVLMForConditionalGeneration, SmolVLMImageProcessor, SmolVLMProcessor, SmolVLMVideoProcessor,
    )

    return _idefics3_layout((SmolVLMConfig, SmolVLMForConditionalGeneration, SmolVLMImageProcessor, SmolVLMProcessor),
                            tokenizer, image_size, patch_size, hidden_size, num_layers, vision_hidden_size,
                            vision_layers, tie_word_embeddings, video_processor=SmolVLMVideoProcessor())


def idefics3(tokenizer, image_size, patch_size, hidden_size, num_layers, vision_hidden_size, vision_layers,
             tie_word_embeddings=False):
    """Idefics3: SmolVLM's predecessor, with its own classes."""
    from transformers import Idefics3Config, Idefics3ForConditionalGeneration, Idefics3ImageProcessor, Idefics3Processor

    return _idefics3_layout((Idefics3Config, Idefics3ForConditionalGeneration, Idefics3ImageProcessor,
                             Idefics3Processor), tokenizer, image_size, patch_size, hidden_size, num_layers,
                            vision_hidden_size, vision_layers, tie_word_embeddings)


def llava_next(tokenizer, image_size, patch_size, hidden_size, num_layers, vision_hidden_size, vision_layers,
               tie_word_embeddings=False):
    """LLaVA-NeXT: any-resolution tiles (``image_sizes``), a base image plus tiles per image, newline tokens."""
    from transformers import (
        CLIPVisionConfig, LlamaConfig, LlavaNextConfig, LlavaNextForConditionalGeneration, LlavaNextImageProcessor,
        LlavaNextProcessor,
    )

    pinpoints = [[image_size, image_size], [image_size, 2 * image_size], [2 * image_size, image_size]]
    vision = CLIPVisionConfig(image_size=image_size, patch_size=patch_size, hidden_size=vision_hidden_size,
                              intermediate_size=vision_hidden_size * 2, num_hidden_layers=vision_layers,
                              num_attention_heads=2, projection_dim=vision_hidden_size)
    text = LlamaConfig(**_text_config(tokenizer, hidden_size, num_layers, "</s>", tie_word_embeddings))
    config = LlavaNextConfig(vision_config=vision, text_config=text, image_grid_pinpoints=pinpoints,
                             image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
                             vision_feature_select_strategy="default", vision_feature_layer=-1,
                             tie_word_embeddings=tie_word_embeddings)
    model = LlavaNextForConditionalGeneration(config)
    image_processor = LlavaNextImageProcessor(size={"shortest_edge": image_size}, image_grid_pinpoints=pinpoints,
                                              crop_size={"height": image_size, "width": image_size})
    processor = LlavaNextProcessor(image_processor=image_processor, tokenizer=tokenizer, patch_size=patch_size,
                                   vision_feature_select_strategy="default", num_additional_image_tokens=1,
                                   chat_template=LLAVA_CHAT_TEMPLATE)
    return model, processor


def internvl(tokenizer, image_size, patch_size, hidden_size, num_layers, vision_hidden_size, vision_layers,
             tie_word_embeddings=False):
    """InternVL 3: InternViT tower, pixel-shuffle MLP projector, Qwen2 language model, ``<img>...</img>``."""
    from transformers import (
        GotOcr2ImageProcessor, InternVLConfig, InternVLForConditionalGeneration, InternVLProcessor,
        InternVLVideoProcessor,
    )

    config = InternVLConfig(
        vision_config=dict(hidden_size=vision_hidden_size, intermediate_size=vision_hidden_size * 2,
                           num_hidden_layers=vision_layers, num_attention_heads=2, image_size=[image_size, image_size],
                           patch_size=[patch_size, patch_size]),
        text_config=dict(model_type="qwen2", **_text_config(tokenizer, hidden_size, num_layers, "<|im_end|>",
                                                            tie_word_embeddings)),
        image_token_id=tokenizer.convert_tokens_to_ids("<IMG_CONTEXT>"), downsample_ratio=0.5,
        tie_word_embeddings=tie_word_embeddings)
    model = InternVLForConditionalGeneration(config)
    tokens = (image_size // patch_size) ** 2 // 4
    processor = InternVLProcessor(
        image_processor=GotOcr2ImageProcessor(size={"height": image_size, "width": image_size}, crop_to_patches=False),
        tokenizer=tokenizer, video_processor=InternVLVideoProcessor(), image_seq_length=tokens,
        chat_template=CHATML_IMAGE_CHAT_TEMPLATE.replace("IMAGE_PLACEHOLDER", "<IMG_CONTEXT>"))
    return model, processor


def mistral3(tokenizer, image_size, patch_size, hidden_size, num_layers, vision_hidden_size, vision_layers,
             tie_word_embeddings=False):
    """Mistral 3 (Pixtral vision): variable image sizes, a break token per patch row, patch merging."""
    from transformers import Mistral3Config, Mistral3ForConditionalGeneration, PixtralImageProcessor, PixtralProcessor

    config = Mistral3Config(
        vision_config=dict(model_type="pixtral", hidden_size=vision_hidden_size, intermediate_size=vision_hidden_size * 2,
                           num_hidden_layers=vision_layers, num_attention_heads=2, image_size=image_size,
                           patch_size=patch_size, head_dim=vision_hidden_size // 2),
        text_config=dict(model_type="mistral", **_text_config(tokenizer, hidden_size, num_layers, "</s>",
                                                              tie_word_embeddings, head_dim=hidden_size // 4)),
        image_token_index=tokenizer.convert_tokens_to_ids("[IMG]"), spatial_merge_size=2, vision_feature_layer=-1,
        tie_word_embeddings=tie_word_embeddings)
    model = Mistral3ForConditionalGeneration(config)
    processor = PixtralProcessor(
        image_processor=PixtralImageProcessor(size={"longest_edge": image_size}, patch_size=patch_size),
        tokenizer=tokenizer, patch_size=patch_size, spatial_merge_size=2, image_token="[IMG]",
        image_break_token="[IMG_BREAK]", image_end_token="[IMG_END]",
        chat_template=LLAVA_CHAT_TEMPLATE.replace("<image>\n", "[IMG]"))
    return model, processor


def llava_onevision(tokenizer, image_size, patch_size, hidden_size, num_layers, vision_hidden_size, vision_layers,
                    tie_word_embeddings=False):
    """LLaVA-OneVision: SigLIP tower, any-resolution tiles with ``image_sizes``, Qwen2 language model."""
    from transformers import (
        LlavaOnevisionConfig, LlavaOnevisionForConditionalGeneration, LlavaOnevisionImageProcessor,
        LlavaOnevisionProcessor, LlavaOnevisionVideoProcessor,
    )

    pinpoints = [[image_size, image_size], [image_size, 2 * image_size], [2 * image_size, image_size]]
    config = LlavaOnevisionConfig(
        vision_config=dict(model_type="siglip_vision_model", **_vision_config(image_size, patch_size, vision_hidden_size,
                                                                              vision_layers)),
        text_config=dict(model_type="qwen2", **_text_config(tokenizer, hidden_size, num_layers, "<|im_end|>",
                                                            tie_word_embeddings)),
        image_grid_pinpoints=pinpoints, image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        video_token_index=tokenizer.convert_tokens_to_ids("<video>"), vision_feature_select_strategy="full",
        vision_feature_layer=-1, vision_aspect_ratio="anyres_max_9", tie_word_embeddings=tie_word_embeddings)
    model = LlavaOnevisionForConditionalGeneration(config)
    processor = LlavaOnevisionProcessor(
        image_processor=LlavaOnevisionImageProcessor(size={"height": image_size, "width": image_size},
                                                     image_grid_pinpoints=pinpoints),
        tokenizer=tokenizer, video_processor=LlavaOnevisionVideoProcessor(), num_image_tokens=(image_size // patch_size) ** 2,
        vision_feature_select_strategy="full", vision_aspect_ratio="anyres_max_9",
        chat_template=CHATML_IMAGE_CHAT_TEMPLATE.replace("IMAGE_PLACEHOLDER", "<image>"))
    return model, processor


AYA_VISION_CHAT_TEMPLATE = (  # Cohere's turns: <|START_OF_TURN_TOKEN|><|USER_TOKEN|>...<|END_OF_TURN_TOKEN|>
    "<s>{% for message in messages %}<|START_OF_TURN_TOKEN|>"
    "{{ {'user': '<|USER_TOKEN|>', 'assistant': '<|CHATBOT_TOKEN|>'}.get(message['role'], '<|SYSTEM_TOKEN|>') }}"
    + message_content("<image>")
    + "<|END_OF_TURN_TOKEN|>{% endfor %}{% if add_generation_prompt %}<|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|>{% endif %}"
)


def aya_vision(tokenizer, image_size, patch_size, hidden_size, num_layers, vision_hidden_size, vision_layers,
               tie_word_embeddings=False):
    """Aya Vision: SigLIP tower, pixel-shuffle SwiGLU projector, Cohere 2 language model (a sliding-window layer,
    scaled logits); images cut into tiles plus a global view (``crop_to_patches``), tokens between
    ``<|START_OF_IMG|>`` and ``<|END_OF_IMG|>``."""
    from transformers import (
        AyaVisionConfig, AyaVisionForConditionalGeneration, AyaVisionProcessor, GotOcr2ImageProcessor,
    )

    config = AyaVisionConfig(
        vision_config=dict(model_type="siglip_vision_model", vision_use_head=False,
                           **_vision_config(image_size, patch_size, vision_hidden_size, vision_layers)),
        text_config=dict(model_type="cohere2", **_text_config(
            tokenizer, hidden_size, num_layers, "<|END_OF_TURN_TOKEN|>", tie_word_embeddings, sliding_window=512,
            layer_types=["sliding_attention", "full_attention"][-num_layers:])),
        downsample_factor=2, image_token_index=tokenizer.convert_tokens_to_ids("<|IMG_PATCH|>"),
        vision_feature_select_strategy="full", vision_feature_layer=-1, tie_word_embeddings=tie_word_embeddings)
    model = AyaVisionForConditionalGeneration(config)
    processor = AyaVisionProcessor(
        image_processor=GotOcr2ImageProcessor(size={"height": image_size, "width": image_size}, crop_to_patches=True,
                                              max_patches=2),
        tokenizer=tokenizer, patch_size=patch_size, img_size=image_size, downsample_factor=2,
        chat_template=AYA_VISION_CHAT_TEMPLATE)
    return model, processor


MLLAMA_CHAT_TEMPLATE = (  # Llama 3.2 Vision: header-delimited turns closed by <|eot_id|>
    "<s>{% for message in messages %}<|start_header_id|>{{ message['role'] }}<|end_header_id|>\n\n"
    + message_content("<|image|>")
    + "<|eot_id|>"
    "{% endfor %}{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)


def mllama(tokenizer, image_size, patch_size, hidden_size, num_layers, vision_hidden_size, vision_layers,
           tie_word_embeddings=False):
    """Llama 3.2 Vision (Mllama): a tiled ViT with local and global layers, and a Llama whose cross-attention
    layers attend to the image tiles; no image tokens in the sequence but the ``<|image|>`` marker, and a
    (B, T, images, tiles) ``cross_attention_mask`` saying which tiles each token sees."""
    from transformers import MllamaConfig, MllamaForConditionalGeneration, MllamaImageProcessor, MllamaProcessor

    max_tiles, aspect_ratios = 2, [[1, 1], [1, 2], [2, 1]]
    config = MllamaConfig(
        vision_config=dict(hidden_size=vision_hidden_size, intermediate_size=vision_hidden_size * 2,
                           num_hidden_layers=vision_layers, num_global_layers=1, attention_heads=2,
                           image_size=image_size, patch_size=patch_size, max_num_tiles=max_tiles,
                           supported_aspect_ratios=aspect_ratios, intermediate_layers_indices=[0],
                           vision_output_dim=vision_hidden_size * 2),
        # a self-attention layer after the cross-attention one, as in the real model, so that what the prompt
        # took from the images reaches the response through it too
        text_config=_text_config(tokenizer, hidden_size, max(num_layers, 2) + 1, "<|eot_id|>", tie_word_embeddings,
                                 cross_attention_layers=[1]),
        image_token_index=tokenizer.convert_tokens_to_ids("<|image|>"), tie_word_embeddings=tie_word_embeddings)
    model = MllamaForConditionalGeneration(config)
    for name, gate in model.named_parameters():  # initialized to 0 (tanh gate closed): open them, as training does
        if name.endswith(("cross_attn_attn_gate", "cross_attn_mlp_gate")):
            gate.data.uniform_(0.5, 1.0)
    processor = MllamaProcessor(
        image_processor=MllamaImageProcessor(size={"height": image_size, "width": image_size},
                                             max_image_tiles=max_tiles),
        tokenizer=tokenizer, chat_template=MLLAMA_CHAT_TEMPLATE)
    return model, processor


BUILDERS = {"smolvlm": smolvlm, "idefics3": idefics3, "llava_next": llava_next, "internvl": internvl,
            "mistral3": mistral3, "llava_onevision": llava_onevision, "aya_vision": aya_vision, "mllama": mllama}
