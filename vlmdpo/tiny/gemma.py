"""Tiny builders of the Gemma-layout families for ``vlmdpo.tiny.models``: Gemma 3, PaliGemma and Gemma 4, whose
image tokens attend to each other both ways (told apart by ``token_type_ids`` or ``mm_token_type_ids``). The same
builder signature and ``FAMILY_TOKENS`` as ``vlmdpo.tiny.families``.
"""

from __future__ import annotations

from vlmdpo.tiny.families import _text_config, _vision_config, message_content


def gemma_chat_template(turn_start: str, turn_end: str, image_token: str) -> str:
    """A Gemma chat template: each message as ``turn_start``, its role and a newline, its content, then
    ``turn_end`` and a newline; the assistant's role is named "model"."""
    return ("<s>{% for message in messages %}" + turn_start
            + "{{ 'model' if message['role'] == 'assistant' else message['role'] }}\n"
            + message_content(image_token)
            + turn_end + "\n{% endfor %}{% if add_generation_prompt %}" + turn_start + "model\n{% endif %}")


GEMMA3_CHAT_TEMPLATE = gemma_chat_template("<start_of_turn>", "<end_of_turn>", "<start_of_image>")


def gemma3(tokenizer, image_size, patch_size, hidden_size, num_layers, vision_hidden_size, vision_layers,
           tie_word_embeddings=False):
    """Gemma 3: SigLIP tower, average-pooled projector, Gemma 3 text model with a sliding-window layer and
    bidirectional attention among each image's tokens (``token_type_ids``)."""
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration, Gemma3ImageProcessor, Gemma3Processor

    tokens_per_image = 4
    token = tokenizer.convert_tokens_to_ids
    config = Gemma3Config(
        vision_config=_vision_config(image_size, patch_size, vision_hidden_size, vision_layers),
        text_config=_text_config(tokenizer, hidden_size, num_layers, "<end_of_turn>", tie_word_embeddings,
                                 head_dim=hidden_size // 4, sliding_window=512,
                                 layer_types=["sliding_attention", "full_attention"][:num_layers]),
        mm_tokens_per_image=tokens_per_image, image_token_index=token("<image_soft_token>"),
        boi_token_index=token("<start_of_image>"), eoi_token_index=token("<end_of_image>"),
        tie_word_embeddings=tie_word_embeddings)
    model = Gemma3ForConditionalGeneration(config)
    processor = Gemma3Processor(image_processor=Gemma3ImageProcessor(size={"height": image_size, "width": image_size}),
                                tokenizer=tokenizer, image_seq_length=tokens_per_image,
                                chat_template=GEMMA3_CHAT_TEMPLATE)
    return model, processor


PALIGEMMA_CHAT_TEMPLATE = (  # PaliGemma has no chat turns: the prompt is a prefix, the response its suffix
    "{% for message in messages %}"
    + message_content("<image>")
    + "{% if message['role'] == 'assistant' %}</s>{% endif %}{% endfor %}"
)


def paligemma(tokenizer, image_size, patch_size, hidden_size, num_layers, vision_hidden_size, vision_layers,
              tie_word_embeddings=False):
    """PaliGemma: SigLIP tower, Gemma; the prompt (image tokens and text) is a bidirectional prefix and the
    response a causal suffix, told apart by ``token_type_ids`` (0 prefix, 1 suffix)."""
    from transformers import PaliGemmaConfig, PaliGemmaForConditionalGeneration, PaliGemmaProcessor, SiglipImageProcessor

    tokens_per_image = (image_size // patch_size) ** 2
    image_processor = SiglipImageProcessor(size={"height": image_size, "width": image_size})
    image_processor.image_seq_length = tokens_per_image
    processor = PaliGemmaProcessor(image_processor=image_processor, tokenizer=tokenizer,
                                   chat_template=PALIGEMMA_CHAT_TEMPLATE)  # adds its <loc>/<seg> tokens
    config = PaliGemmaConfig(
        vision_config=dict(model_type="siglip_vision_model", projection_dim=hidden_size,
                           **_vision_config(image_size, patch_size, vision_hidden_size, vision_layers)),
        text_config=dict(model_type="gemma", **_text_config(processor.tokenizer, hidden_size, num_layers, "</s>",
                                                            tie_word_embeddings, head_dim=hidden_size // 4)),
        image_token_index=processor.tokenizer.convert_tokens_to_ids("<image>"), projection_dim=hidden_size,
        tie_word_embeddings=tie_word_embeddings)
    config.text_config.num_image_tokens = tokens_per_image
    return PaliGemmaForConditionalGeneration(config), processor


GEMMA4_CHAT_TEMPLATE = gemma_chat_template("<|turn>", "<turn|>", "<|image|>")


def gemma4(tokenizer, image_size, patch_size, hidden_size, num_layers, vision_hidden_size, vision_layers,
           tie_word_embeddings=False):
    """Gemma 4: a ViT over patches with learned 2-D positions (``image_position_ids``), pooled 3x3 into soft
    tokens; a Gemma 4 language model with per-layer input embeddings, a sliding-window layer, a wider-headed
    proportional-rotary full-attention layer, bidirectional attention within each image (``mm_token_type_ids``)
    and soft-capped logits. Soft tokens per image come in the processor's smallest budget (70)."""
    from transformers import (
        Gemma4AudioFeatureExtractor, Gemma4Config, Gemma4ForConditionalGeneration, Gemma4ImageProcessor,
        Gemma4Processor, Gemma4VideoProcessor,
    )

    token = tokenizer.convert_tokens_to_ids
    pooling, soft_tokens, vision_patch = 3, 70, 4
    text = dict(vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=hidden_size * 2,
                num_hidden_layers=num_layers, num_attention_heads=4, num_key_value_heads=2, head_dim=hidden_size // 4,
                global_head_dim=hidden_size // 2, max_position_embeddings=1024,
                pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                eos_token_id=token("<turn|>"), tie_word_embeddings=tie_word_embeddings,
                sliding_window=512, layer_types=["sliding_attention", "full_attention"][-num_layers:],
                final_logit_softcapping=30.0, use_bidirectional_attention="vision",
                vocab_size_per_layer_input=len(tokenizer), hidden_size_per_layer_input=8)
    vision = dict(hidden_size=vision_hidden_size, intermediate_size=vision_hidden_size * 2,
                  num_hidden_layers=vision_layers, num_attention_heads=2, num_key_value_heads=2,
                  head_dim=vision_hidden_size // 2, patch_size=vision_patch, pooling_kernel_size=pooling,
                  position_embedding_size=128)
    config = Gemma4Config(text_config=text, vision_config=vision, boi_token_id=token("<|image>"),
                          eoi_token_id=token("<image|>"), image_token_id=token("<|image|>"),
                          video_token_id=token("<|video|>"), boa_token_id=token("<|audio>"),
                          eoa_token_index=token("<audio|>"), audio_token_id=token("<|audio|>"),
                          tie_word_embeddings=tie_word_embeddings)
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
