"""Tiny builders of the LLaVA-layout families: a vision tower, a projector and a decoder, the image's tokens
spliced into the text where its marker is. ``llava`` (LLaVA-1.5: a fixed number of tokens per image, 1-D
positions), ``llava_next`` and ``llava_onevision`` (any-resolution tiles, ``image_sizes``), ``llava_next_video`` (and
pooled video frames) and ``mistral3``
(Pixtral's variable image sizes and patch merging).

Every builder is ``builder(tokenizer, sizes: TinySizes) -> (model, processor)``: the real ``transformers``
classes, random weights, a chat template shaped like the real model's.
"""

from __future__ import annotations

from vlmdpo.tiny.configs import TinySizes, text_config, vision_config
from vlmdpo.tiny.templates import LLAVA_CHAT_TEMPLATE, chatml_template, llava_template


def llava(tokenizer, sizes: TinySizes):
    """LLaVA-1.5: CLIP vision tower (CLS token dropped), MLP projector, Llama; ``(image_size / patch_size) ** 2``
    image tokens per image."""
    from transformers import (
        CLIPImageProcessor, CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration,
        LlavaProcessor,
    )

    image_size, patch_size = sizes.image_size, sizes.patch_size
    vision = CLIPVisionConfig(
        image_size=image_size, patch_size=patch_size, hidden_size=sizes.vision_hidden_size,
        intermediate_size=sizes.vision_mlp(4), num_hidden_layers=sizes.vision_layers,
        num_attention_heads=sizes.vision_heads, projection_dim=sizes.vision_hidden_size,
        hidden_act="gelu",  # open_clip's ViT layout, so its weights load
    )
    text = LlamaConfig(**text_config(tokenizer, sizes, "</s>",
                                     rope_parameters={"rope_type": "default", "rope_theta": sizes.rope_theta}))
    config = LlavaConfig(
        vision_config=vision, text_config=text, image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        vision_feature_select_strategy="default", vision_feature_layer=-1,
        tie_word_embeddings=sizes.tie_word_embeddings,
    )
    model = LlavaForConditionalGeneration(config)
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size},
    )
    processor = LlavaProcessor(
        image_processor=image_processor, tokenizer=tokenizer, patch_size=patch_size,
        vision_feature_select_strategy="default", num_additional_image_tokens=1,
        chat_template=LLAVA_CHAT_TEMPLATE,
    )
    return model, processor


def llava_next(tokenizer, sizes: TinySizes):
    """LLaVA-NeXT: any-resolution tiles (``image_sizes``), a base image plus tiles per image, newline tokens."""
    from transformers import (
        CLIPVisionConfig, LlamaConfig, LlavaNextConfig, LlavaNextForConditionalGeneration, LlavaNextImageProcessor,
        LlavaNextProcessor,
    )

    image_size, patch_size = sizes.image_size, sizes.patch_size
    pinpoints = [[image_size, image_size], [image_size, 2 * image_size], [2 * image_size, image_size]]
    vision = CLIPVisionConfig(image_size=image_size, patch_size=patch_size, hidden_size=sizes.vision_hidden_size,
                              intermediate_size=sizes.vision_mlp(), num_hidden_layers=sizes.vision_layers,
                              num_attention_heads=sizes.vision_heads, projection_dim=sizes.vision_hidden_size)
    text = LlamaConfig(**text_config(tokenizer, sizes, "</s>"))
    config = LlavaNextConfig(vision_config=vision, text_config=text, image_grid_pinpoints=pinpoints,
                             image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
                             vision_feature_select_strategy="default", vision_feature_layer=-1,
                             tie_word_embeddings=sizes.tie_word_embeddings)
    model = LlavaNextForConditionalGeneration(config)
    image_processor = LlavaNextImageProcessor(size={"shortest_edge": image_size}, image_grid_pinpoints=pinpoints,
                                              crop_size={"height": image_size, "width": image_size})
    processor = LlavaNextProcessor(image_processor=image_processor, tokenizer=tokenizer, patch_size=patch_size,
                                   vision_feature_select_strategy="default", num_additional_image_tokens=1,
                                   chat_template=LLAVA_CHAT_TEMPLATE)
    return model, processor


def llava_onevision(tokenizer, sizes: TinySizes):
    """LLaVA-OneVision: SigLIP tower, any-resolution tiles with ``image_sizes``, Qwen2 language model."""
    from transformers import (
        LlavaOnevisionConfig, LlavaOnevisionForConditionalGeneration, LlavaOnevisionImageProcessor,
        LlavaOnevisionProcessor, LlavaOnevisionVideoProcessor,
    )

    image_size = sizes.image_size
    pinpoints = [[image_size, image_size], [image_size, 2 * image_size], [2 * image_size, image_size]]
    config = LlavaOnevisionConfig(
        vision_config=dict(model_type="siglip_vision_model", **vision_config(sizes)),
        text_config=dict(model_type="qwen2", **text_config(tokenizer, sizes, "<|im_end|>")),
        image_grid_pinpoints=pinpoints, image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        video_token_index=tokenizer.convert_tokens_to_ids("<video>"), vision_feature_select_strategy="full",
        vision_feature_layer=-1, vision_aspect_ratio="anyres_max_9", tie_word_embeddings=sizes.tie_word_embeddings)
    model = LlavaOnevisionForConditionalGeneration(config)
    processor = LlavaOnevisionProcessor(
        image_processor=LlavaOnevisionImageProcessor(size={"height": image_size, "width": image_size},
                                                     image_grid_pinpoints=pinpoints),
        tokenizer=tokenizer,
        video_processor=LlavaOnevisionVideoProcessor(size={"height": image_size, "width": image_size}),
        num_image_tokens=(image_size // sizes.patch_size) ** 2, vision_feature_select_strategy="full",
        vision_aspect_ratio="anyres_max_9", chat_template=chatml_template("<image>", "<video>"))
    return model, processor


def llava_next_video(tokenizer, sizes: TinySizes):
    """LLaVA-NeXT-Video: LLaVA-NeXT's any-resolution images, and videos as frames whose patch grids are pooled
    (stride 2) and spliced in where the ``<video>`` marker is."""
    from transformers import (
        CLIPVisionConfig, LlamaConfig, LlavaNextImageProcessor, LlavaNextVideoConfig,
        LlavaNextVideoForConditionalGeneration, LlavaNextVideoProcessor, LlavaNextVideoVideoProcessor,
    )

    image_size, patch_size = sizes.image_size, sizes.patch_size
    pinpoints = [[image_size, image_size], [image_size, 2 * image_size], [2 * image_size, image_size]]
    vision = CLIPVisionConfig(image_size=image_size, patch_size=patch_size, hidden_size=sizes.vision_hidden_size,
                              intermediate_size=sizes.vision_mlp(), num_hidden_layers=sizes.vision_layers,
                              num_attention_heads=sizes.vision_heads, projection_dim=sizes.vision_hidden_size)
    grid = image_size // patch_size
    config = LlavaNextVideoConfig(
        vision_config=vision, text_config=LlamaConfig(**text_config(tokenizer, sizes, "</s>")),
        image_grid_pinpoints=pinpoints, image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        video_token_index=tokenizer.convert_tokens_to_ids("<video>"), vision_feature_select_strategy="default",
        vision_feature_layer=-1, spatial_pool_stride=2, image_seq_length=grid * grid,
        video_seq_length=(grid // 2) ** 2, tie_word_embeddings=sizes.tie_word_embeddings)
    model = LlavaNextVideoForConditionalGeneration(config)
    crop = {"height": image_size, "width": image_size}
    processor = LlavaNextVideoProcessor(
        image_processor=LlavaNextImageProcessor(size={"shortest_edge": image_size}, image_grid_pinpoints=pinpoints,
                                                crop_size=crop),
        video_processor=LlavaNextVideoVideoProcessor(size={"shortest_edge": image_size}, crop_size=crop),
        tokenizer=tokenizer, patch_size=patch_size, vision_feature_select_strategy="default",
        num_additional_image_tokens=1, chat_template=llava_template(video="<video>\n"))
    return model, processor


def mistral3(tokenizer, sizes: TinySizes):
    """Mistral 3 (Pixtral vision): variable image sizes, a break token per patch row, patch merging."""
    from transformers import Mistral3Config, Mistral3ForConditionalGeneration, PixtralImageProcessor, PixtralProcessor

    image_size, patch_size = sizes.image_size, sizes.patch_size
    config = Mistral3Config(
        vision_config=dict(model_type="pixtral", hidden_size=sizes.vision_hidden_size,
                           intermediate_size=sizes.vision_mlp(), num_hidden_layers=sizes.vision_layers,
                           num_attention_heads=sizes.vision_heads, image_size=image_size, patch_size=patch_size,
                           head_dim=sizes.vision_hidden_size // sizes.vision_heads),
        text_config=dict(model_type="mistral", **text_config(tokenizer, sizes, "</s>", head_dim=sizes.head_dim)),
        image_token_index=tokenizer.convert_tokens_to_ids("[IMG]"), spatial_merge_size=2, vision_feature_layer=-1,
        tie_word_embeddings=sizes.tie_word_embeddings)
    model = Mistral3ForConditionalGeneration(config)
    processor = PixtralProcessor(
        image_processor=PixtralImageProcessor(size={"longest_edge": image_size}, patch_size=patch_size),
        tokenizer=tokenizer, patch_size=patch_size, spatial_merge_size=2, image_token="[IMG]",
        image_break_token="[IMG_BREAK]", image_end_token="[IMG_END]", chat_template=llava_template("[IMG]"))
    return model, processor


BUILDERS = {"llava": llava, "llava_next": llava_next, "llava_onevision": llava_onevision,
            "llava_next_video": llava_next_video, "mistral3": mistral3}
FAMILY_TOKENS = {
    "llava_next_video": (["<video>"], {}),
    "llava_onevision": (["<video>"], {}),
    "mistral3": (["[IMG]", "[IMG_BREAK]", "[IMG_END]"], {}),
}
"""Per family: the special tokens its processor and template need beyond ``tokenizer.SPECIAL_TOKENS``, and the
named ones its processor reads from the tokenizer."""
