"""Tiny builders of the Gemma-layout families, whose image tokens attend to each other both ways (told apart by
``token_type_ids`` or ``mm_token_type_ids``): ``gemma3`` (a sliding-window layer), ``paligemma`` (a bidirectional
prefix, a causal suffix) and ``gemma4`` (per-layer inputs, soft-capped logits, patch positions).

Every builder is ``builder(tokenizer, sizes: TinySizes) -> (model, processor)``, as in ``vlmdpo.tiny.llava``.
"""

from __future__ import annotations

from vlmdpo.tiny.configs import TinySizes, alternating_attention, text_config, vision_config
from vlmdpo.tiny.templates import message_content


def gemma_chat_template(turn_start: str, turn_end: str, image_token: str) -> str:
    """A Gemma chat template: each message as ``turn_start``, its role and a newline, its content, then
    ``turn_end`` and a newline; the assistant's role is named "model"."""
    return ("<s>{% for message in messages %}" + turn_start
            + "{{ 'model' if message['role'] == 'assistant' else message['role'] }}\n"
            + message_content(image_token)
            + turn_end + "\n{% endfor %}{% if add_generation_prompt %}" + turn_start + "model\n{% endif %}")


GEMMA3_CHAT_TEMPLATE = gemma_chat_template("<start_of_turn>", "<end_of_turn>", "<start_of_image>")


def gemma3(tokenizer, sizes: TinySizes):
    """Gemma 3: SigLIP tower, average-pooled projector, Gemma 3 text model with a sliding-window layer and
    bidirectional attention among each image's tokens (``token_type_ids``)."""
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration, Gemma3ImageProcessor, Gemma3Processor

    tokens_per_image = 4
    token = tokenizer.convert_tokens_to_ids
    config = Gemma3Config(
        vision_config=vision_config(sizes),
        text_config=text_config(tokenizer, sizes, "<end_of_turn>", head_dim=sizes.head_dim, sliding_window=512,
                                layer_types=alternating_attention(sizes.num_layers)),
        mm_tokens_per_image=tokens_per_image, image_token_index=token("<image_soft_token>"),
        boi_token_index=token("<start_of_image>"), eoi_token_index=token("<end_of_image>"),
        tie_word_embeddings=sizes.tie_word_embeddings)
    model = Gemma3ForConditionalGeneration(config)
    processor = Gemma3Processor(
        image_processor=Gemma3ImageProcessor(size={"height": sizes.image_size, "width": sizes.image_size}),
        tokenizer=tokenizer, image_seq_length=tokens_per_image, chat_template=GEMMA3_CHAT_TEMPLATE)
    return model, processor


PALIGEMMA_CHAT_TEMPLATE = (  # PaliGemma has no chat turns: the prompt is a prefix, the response its suffix
    "{% for message in messages %}"
    + message_content("<image>")
    + "{% if message['role'] == 'assistant' %}</s>{% endif %}{% endfor %}"
)


def paligemma(tokenizer, sizes: TinySizes):
    """PaliGemma: SigLIP tower, Gemma; the prompt (image tokens and text) is a bidirectional prefix and the
    response a causal suffix, told apart by ``token_type_ids`` (0 prefix, 1 suffix)."""
    from transformers import (
        PaliGemmaConfig, PaliGemmaForConditionalGeneration, PaliGemmaProcessor, SiglipImageProcessor,
    )

    tokens_per_image = (sizes.image_size // sizes.patch_size) ** 2
    image_processor = SiglipImageProcessor(size={"height": sizes.image_size, "width": sizes.image_size})
    image_processor.image_seq_length = tokens_per_image
    processor = PaliGemmaProcessor(image_processor=image_processor, tokenizer=tokenizer,
                                   chat_template=PALIGEMMA_CHAT_TEMPLATE)  # adds its <loc>/<seg> tokens
    config = PaliGemmaConfig(
        vision_config=dict(model_type="siglip_vision_model", projection_dim=sizes.hidden_size, **vision_config(sizes)),
        text_config=dict(model_type="gemma", **text_config(processor.tokenizer, sizes, "</s>",
                                                           head_dim=sizes.head_dim)),
        image_token_index=processor.tokenizer.convert_tokens_to_ids("<image>"), projection_dim=sizes.hidden_size,
        tie_word_embeddings=sizes.tie_word_embeddings)
    config.text_config.num_image_tokens = tokens_per_image
    return PaliGemmaForConditionalGeneration(config), processor


GEMMA4_CHAT_TEMPLATE = gemma_chat_template("<|turn>", "<turn|>", "<|image|>")


def gemma4(tokenizer, sizes: TinySizes):
    """Gemma 4: a ViT over patches with learned 2-D positions (``image_position_ids``), pooled 3x3 into soft
    tokens; a Gemma 4 language model with per-layer input embeddings, a sliding-window layer, a wider-headed
    proportional-rotary full-attention layer, bidirectional attention within each image (``mm_token_type_ids``)
    and soft-capped logits. Soft tokens per image come in the processor's smallest budget (70), over 4-pixel
    patches whatever ``sizes.patch_size``."""
    from transformers import (
        Gemma4AudioFeatureExtractor, Gemma4Config, Gemma4ForConditionalGeneration, Gemma4ImageProcessor,
        Gemma4Processor, Gemma4VideoProcessor,
    )

    token = tokenizer.convert_tokens_to_ids
    pooling, soft_tokens, vision_patch = 3, 70, 4
    text = text_config(tokenizer, sizes, "<turn|>", head_dim=sizes.head_dim, global_head_dim=2 * sizes.head_dim,
                       sliding_window=512, layer_types=alternating_attention(sizes.num_layers, end_with_full=True),
                       final_logit_softcapping=30.0, use_bidirectional_attention="vision",
                       vocab_size_per_layer_input=sizes.vocab(tokenizer), hidden_size_per_layer_input=8)
    vision = dict(hidden_size=sizes.vision_hidden_size, intermediate_size=sizes.vision_mlp(),
                  num_hidden_layers=sizes.vision_layers, num_attention_heads=sizes.vision_heads,
                  num_key_value_heads=sizes.vision_heads, head_dim=sizes.vision_hidden_size // sizes.vision_heads,
                  patch_size=vision_patch, pooling_kernel_size=pooling, position_embedding_size=128)
    config = Gemma4Config(text_config=text, vision_config=vision, boi_token_id=token("<|image>"),
                          eoi_token_id=token("<image|>"), image_token_id=token("<|image|>"),
                          video_token_id=token("<|video|>"), boa_token_id=token("<|audio>"),
                          eoa_token_index=token("<audio|>"), audio_token_id=token("<|audio|>"),
                          tie_word_embeddings=sizes.tie_word_embeddings)
    model = Gemma4ForConditionalGeneration(config)
    kwargs = dict(patch_size=vision_patch, max_soft_tokens=soft_tokens, pooling_kernel_size=pooling)
    processor = Gemma4Processor(feature_extractor=Gemma4AudioFeatureExtractor(),
                                image_processor=Gemma4ImageProcessor(**kwargs), tokenizer=tokenizer,
                                video_processor=Gemma4VideoProcessor(**kwargs), image_seq_length=soft_tokens,
                                chat_template=GEMMA4_CHAT_TEMPLATE)
    return model, processor


BUILDERS = {"gemma3": gemma3, "paligemma": paligemma, "gemma4": gemma4}
FAMILY_TOKENS = {
    "gemma3": (["<start_of_image>", "<end_of_image>", "<image_soft_token>", "<start_of_turn>", "<end_of_turn>"],
               {"boi_token": "<start_of_image>", "eoi_token": "<end_of_image>", "image_token": "<image_soft_token>"}),
    # Gemma 4's processor reads the audio tokens even for images only
    "gemma4": (["<|turn>", "<turn|>", "<|image>", "<image|>", "<|image|>", "<|audio>", "<audio|>", "<|audio|>",
                "<|video|>"],
               {"boi_token": "<|image>", "eoi_token": "<image|>", "image_token": "<|image|>", "boa_token": "<|audio>",
                "eoa_token": "<audio|>", "audio_token": "<|audio|>"}),
}
"""Per family: the special tokens its processor and template need beyond ``tokenizer.SPECIAL_TOKENS``, and the
named ones its processor reads from the tokenizer."""
