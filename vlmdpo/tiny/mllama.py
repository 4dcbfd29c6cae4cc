"""The tiny builder of Llama 3.2 Vision (``mllama``), whose decoder reads the image through cross-attention
layers rather than image tokens in the sequence. ``builder(tokenizer, sizes: TinySizes) -> (model, processor)``,
as in ``vlmdpo.tiny.llava``; its forward depends on the batch's image count, so vlmdpo runs it per image count
(``vlmdpo.forward.image_groups``)."""

from __future__ import annotations

from vlmdpo.tiny.configs import TinySizes, text_config
from vlmdpo.tiny.templates import message_content

MLLAMA_CHAT_TEMPLATE = (  # Llama 3.2 Vision: header-delimited turns closed by <|eot_id|>
    "<s>{% for message in messages %}<|start_header_id|>{{ message['role'] }}<|end_header_id|>\n\n"
    + message_content("<|image|>")
    + "<|eot_id|>"
    "{% endfor %}{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)


def mllama(tokenizer, sizes: TinySizes):
    """Llama 3.2 Vision (Mllama): a tiled ViT with local and global layers, and a Llama whose cross-attention
    layers attend to the image tiles; no image tokens in the sequence but the ``<|image|>`` marker, and a
    (B, T, images, tiles) ``cross_attention_mask`` saying which tiles each token sees."""
    from transformers import MllamaConfig, MllamaForConditionalGeneration, MllamaImageProcessor, MllamaProcessor

    max_tiles, aspect_ratios = 2, [[1, 1], [1, 2], [2, 1]]
    config = MllamaConfig(
        vision_config=dict(hidden_size=sizes.vision_hidden_size, intermediate_size=sizes.vision_mlp(),
                           num_hidden_layers=sizes.vision_layers, num_global_layers=1,
                           attention_heads=sizes.vision_heads, image_size=sizes.image_size,
                           patch_size=sizes.patch_size, max_num_tiles=max_tiles,
                           supported_aspect_ratios=aspect_ratios, intermediate_layers_indices=[0],
                           vision_output_dim=sizes.vision_hidden_size * 2),
        # a self-attention layer after the cross-attention one, as in the real model, so that what the prompt
        # took from the images reaches the response through it too
        text_config=text_config(tokenizer, sizes, "<|eot_id|>", num_layers=max(sizes.num_layers, 2) + 1,
                                cross_attention_layers=[1]),
        image_token_index=tokenizer.convert_tokens_to_ids("<|image|>"), tie_word_embeddings=sizes.tie_word_embeddings)
    model = MllamaForConditionalGeneration(config)
    for name, gate in model.named_parameters():  # initialized to 0 (tanh gate closed): open them, as training does
        if name.endswith(("cross_attn_attn_gate", "cross_attn_mlp_gate")):
            gate.data.uniform_(0.5, 1.0)
    processor = MllamaProcessor(
        image_processor=MllamaImageProcessor(size={"height": sizes.image_size, "width": sizes.image_size},
                                             max_image_tiles=max_tiles),
        tokenizer=tokenizer, chat_template=MLLAMA_CHAT_TEMPLATE)
    return model, processor


BUILDERS = {"mllama": mllama}
FAMILY_TOKENS = {
    "mllama": (["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>", "<|image|>", "<|python_tag|>"], {}),
}
"""The special tokens Mllama's processor and template need beyond ``tokenizer.SPECIAL_TOKENS``."""
