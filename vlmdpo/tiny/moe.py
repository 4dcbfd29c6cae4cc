"""Tiny builders of the mixture-of-experts VLMs: ``qwen3_vl_moe`` (Qwen3-VL-30B-A3B's layout: every decoder
layer routes each token to its top 2 of 4 experts), ``glm4v_moe`` (GLM-4.5V's: a dense first layer, then
4 routed experts, top 2, beside a shared expert every token runs), ``qwen3_5_moe`` (Qwen3.5-35B-A3B's: dense
Qwen3.5's hybrid of linear and full attention, every MLP 4 routed experts, top 2, plus a gated shared expert) and
``ernie4_5_vl_moe`` (ERNIE-4.5-VL-28B-A3B's: a dense first layer, then modality-isolated experts: text tokens
route to 4 text experts, image tokens to 4 narrower vision experts, top 2 each, beside shared experts).

The first three keep their dense sibling's vision tower, processor and M-RoPE (``vlmdpo.tiny.mrope``); only the
language model's MLPs become experts, which transformers stores fused, one 3-D parameter per projection for all
experts. ERNIE 4.5 VL has no dense sibling here: its own vision tower, resampler, processor and chat template.
The configs keep the hub checkpoints' routing settings: no router logits asked for (``output_router_logits``
false, so no load-balancing loss; ``vlmdpo.model.routers`` adds it when a run turns it on) and the family's own
``router_aux_loss_coef``.

Every builder is ``builder(tokenizer, sizes: TinySizes) -> (model, processor)``, as in ``vlmdpo.tiny.llava``.
"""

from __future__ import annotations

from vlmdpo.tiny.configs import TinySizes, mrope, text_config
from vlmdpo.tiny.mrope import FAMILY_TOKENS as DENSE_FAMILY_TOKENS
from vlmdpo.tiny.mrope import (
    QWEN3_5_CHAT_TEMPLATE,
    glm4v_processor,
    glm4v_rope,
    glm4v_token_ids,
    glm4v_vision_config,
    qwen3_vision_config,
    qwen_processor,
    qwen_vision_token_ids,
)
from vlmdpo.tiny.templates import message_content

NUM_EXPERTS, EXPERTS_PER_TOKEN = 4, 2
GLM4V_TOKENS = DENSE_FAMILY_TOKENS["glm4v"]  # GLM-4.5V's template and processor are GLM-4.1V's


def _experts(sizes: TinySizes) -> dict:
    """The routing fields the families share: top 2 (of 4 experts), each expert half the dense MLP's width."""
    return dict(num_experts_per_tok=EXPERTS_PER_TOKEN, moe_intermediate_size=sizes.intermediate_size // 2)


def qwen3_vl_moe(tokenizer, sizes: TinySizes):
    """Qwen3-VL-MoE: Qwen3-VL (DeepStack, interleaved M-RoPE) whose every decoder MLP is a sparse block, a
    softmax top-2 router over 4 experts."""
    from transformers import (
        Qwen3VLMoeConfig,
        Qwen3VLMoeForConditionalGeneration,
        Qwen3VLProcessor,
        Qwen3VLVideoProcessor,
    )

    config = Qwen3VLMoeConfig(
        text_config=text_config(tokenizer, sizes, "<|im_end|>", head_dim=sizes.head_dim,
                                rope_parameters=mrope(sizes.head_dim, sizes.rope_theta, mrope_interleaved=True),
                                num_experts=NUM_EXPERTS, decoder_sparse_step=1, **_experts(sizes)),
        vision_config=qwen3_vision_config(sizes, deepstack_visual_indexes=[0]),
        tie_word_embeddings=sizes.tie_word_embeddings, **qwen_vision_token_ids(tokenizer))
    model = Qwen3VLMoeForConditionalGeneration(config)
    return model, qwen_processor(Qwen3VLProcessor, Qwen3VLVideoProcessor, tokenizer, sizes)


def glm4v_moe(tokenizer, sizes: TinySizes):
    """GLM-4.5V: GLM-4.1V's vision tower and processor; a language model whose first layer is dense and whose
    later layers add 4 sigmoid-routed experts (top 2) to one shared expert."""
    from transformers import Glm4vMoeConfig, Glm4vMoeForConditionalGeneration

    num_layers = max(sizes.num_layers, 2)  # one dense layer, then at least one with experts
    config = Glm4vMoeConfig(
        text_config=text_config(tokenizer, sizes, "</s>", num_layers=num_layers, rope_parameters=glm4v_rope(sizes),
                                n_routed_experts=NUM_EXPERTS, n_shared_experts=1, first_k_dense_replace=1,
                                n_group=1, topk_group=1, **_experts(sizes)),
        vision_config=glm4v_vision_config(sizes), **glm4v_token_ids(tokenizer),
        tie_word_embeddings=sizes.tie_word_embeddings)
    return Glm4vMoeForConditionalGeneration(config), glm4v_processor(tokenizer, sizes)


def qwen3_5_moe(tokenizer, sizes: TinySizes):
    """Qwen3.5-MoE: dense Qwen3.5's vision tower, processor, template and hybrid language model (gated delta-net
    linear attention before a full-attention layer, partial interleaved M-RoPE), whose every MLP is a softmax
    top-2 router over 4 experts plus a shared expert scaled by its own sigmoid gate."""
    from transformers import (
        Qwen3_5MoeConfig,
        Qwen3_5MoeForConditionalGeneration,
        Qwen3VLProcessor,
        Qwen3VLVideoProcessor,
    )

    head_dim, rotary_fraction = 2 * sizes.head_dim, 0.25  # as dense Qwen3.5 (vlmdpo.tiny.mrope.qwen3_5)
    layer_types = ["linear_attention"] * (max(sizes.num_layers, 2) - 1) + ["full_attention"]
    rope = mrope(int(head_dim * rotary_fraction), sizes.rope_theta, mrope_interleaved=True,
                 partial_rotary_factor=rotary_fraction)
    experts = _experts(sizes)
    shared = experts["moe_intermediate_size"]  # the shared expert as wide as a routed one, as on the hub
    config = Qwen3_5MoeConfig(
        text_config=text_config(tokenizer, sizes, "<|im_end|>", num_layers=len(layer_types), head_dim=head_dim,
                                # 8 value heads, not 4: in_proj_a and in_proj_b map onto them, and a linear layer
                                # onto as many outputs as there are experts is taken for a router (never LoRA-wrapped)
                                layer_types=layer_types, linear_num_key_heads=2, linear_num_value_heads=8,
                                linear_key_head_dim=16, linear_value_head_dim=16, rope_parameters=rope,
                                num_experts=NUM_EXPERTS, shared_expert_intermediate_size=shared, **experts),
        vision_config=qwen3_vision_config(sizes),
        tie_word_embeddings=sizes.tie_word_embeddings, **qwen_vision_token_ids(tokenizer))
    model = Qwen3_5MoeForConditionalGeneration(config)
    return model, qwen_processor(Qwen3VLProcessor, Qwen3VLVideoProcessor, tokenizer, sizes, QWEN3_5_CHAT_TEMPLATE)


ERNIE_VISION_TOKENS = {  # the tokenizer attributes Ernie4_5_VLMoeProcessor reads (``image_token`` and its id...)
    "image_token": "<|IMAGE_PLACEHOLDER|>", "image_start_token": "<|IMAGE_START|>",
    "image_end_token": "<|IMAGE_END|>", "video_token": "<|VIDEO_PLACEHOLDER|>",
    "video_start_token": "<|VIDEO_START|>", "video_end_token": "<|VIDEO_END|>"}
ERNIE_CHAT_TEMPLATE = (  # ERNIE 4.5 VL's turns: "User: " and "\nAssistant: " prefixes, numbered pictures, the
    # answer closed by <|end_of_sentence|>, a system message ended by a newline. Its generation prompt closes an
    # empty <think> block unless enable_thinking is true; the answer after the last user turn carries that block
    # too, so that the generation prompt is a prefix of the conversation (the hub template renders it only in the
    # generation prompt)
    "{% set ns = namespace(last_user=-1, images=0, videos=0) %}{% for message in messages %}"
    "{% if message['role'] == 'user' %}{% set ns.last_user = loop.index0 %}{% endif %}{% endfor %}"
    "<|begin_of_sentence|>{% for message in messages %}"
    "{% if message['role'] == 'user' %}User: {% elif message['role'] == 'assistant' %}{{ '\\n' }}Assistant: "
    "{% if loop.index0 > ns.last_user %}<think>\n\n</think>\n\n{% endif %}{% endif %}"
    + message_content("{% set ns.images = ns.images + 1 %}Picture {{ ns.images }}:"
                      "<|IMAGE_START|><|IMAGE_PLACEHOLDER|><|IMAGE_END|>",
                      "{% set ns.videos = ns.videos + 1 %}Video {{ ns.videos }}:"
                      "<|VIDEO_START|><|VIDEO_PLACEHOLDER|><|VIDEO_END|>")
    + "{% if message['role'] == 'system' %}{{ '\\n' }}"
    "{% elif message['role'] == 'assistant' %}<|end_of_sentence|>{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}{{ '\\n' }}Assistant: "
    "{% if enable_thinking is defined and enable_thinking is true %}<think>{% else %}<think>\n\n</think>\n\n"
    "{% endif %}{% endif %}"
)


def ernie4_5_vl_moe(tokenizer, sizes: TinySizes):
    """ERNIE 4.5 VL: a ViT with 2-D rotary positions, a resampler merging 2x2 patches (and frame pairs of a video)
    into one token; a language model with 3-D rotary positions whose first layer is dense and whose later layers
    send text tokens to 4 text experts and image tokens (markers included) to 4 vision experts half as wide, top 2,
    softmax routers, beside 2 shared experts every token runs."""
    from transformers import (
        Ernie4_5_VLMoeConfig,
        Ernie4_5_VLMoeForConditionalGeneration,
        Ernie4_5_VLMoeImageProcessor,
        Ernie4_5_VLMoeProcessor,
        Ernie4_5_VLMoeVideoProcessor,
    )

    half = sizes.head_dim // 2  # frequencies split (height, width, time), height and width alike: the hub's 22, 22, 20
    spatial = -(-half // 3)
    rope = {"rope_type": "default", "rope_theta": sizes.rope_theta,
            "mrope_section": [spatial, spatial, half - 2 * spatial]}
    width = _experts(sizes)["moe_intermediate_size"]
    num_layers = max(sizes.num_layers, 2)  # one dense layer, then at least one with experts
    token = tokenizer.convert_tokens_to_ids
    config = Ernie4_5_VLMoeConfig(
        text_config=text_config(tokenizer, sizes, "<|end_of_sentence|>", num_layers=num_layers, rope_parameters=rope,
                                mlp_layer_types=["dense"] + ["sparse"] * (num_layers - 1),
                                moe_num_experts=NUM_EXPERTS, moe_k=EXPERTS_PER_TOKEN, moe_num_shared_experts=2,
                                moe_intermediate_size=[width, width // 2]),
        vision_config=dict(depth=sizes.vision_layers, hidden_size=sizes.vision_hidden_size,
                           intermediate_size=sizes.vision_mlp(4), num_heads=sizes.vision_heads,
                           patch_size=sizes.patch_size, spatial_merge_size=2, temporal_merge_size=2),
        **{f"{name}_id": token(text) for name, text in ERNIE_VISION_TOKENS.items()},  # image_token_id...
        tie_word_embeddings=sizes.tie_word_embeddings)
    patch_size = sizes.patch_size
    size = {"shortest_edge": (patch_size * 2) ** 2, "longest_edge": 4 * sizes.image_size * sizes.image_size}
    processor = Ernie4_5_VLMoeProcessor(
        image_processor=Ernie4_5_VLMoeImageProcessor(patch_size=patch_size, merge_size=2, size=size),
        video_processor=Ernie4_5_VLMoeVideoProcessor(patch_size=patch_size, merge_size=2, size=size,
                                                     draw_on_frames=False),  # no font file offline
        tokenizer=tokenizer, chat_template=ERNIE_CHAT_TEMPLATE)
    return Ernie4_5_VLMoeForConditionalGeneration(config), processor


BUILDERS = {"qwen3_vl_moe": qwen3_vl_moe, "glm4v_moe": glm4v_moe, "qwen3_5_moe": qwen3_5_moe,
            "ernie4_5_vl_moe": ernie4_5_vl_moe}
FAMILY_TOKENS = {"glm4v_moe": GLM4V_TOKENS, "qwen3_5_moe": DENSE_FAMILY_TOKENS["qwen3_5"],
                 "ernie4_5_vl_moe": (["<|begin_of_sentence|>", "<|end_of_sentence|>", *ERNIE_VISION_TOKENS.values(),
                                      "<think>", "</think>"], ERNIE_VISION_TOKENS)}
"""Per family: the special tokens its processor and template need beyond ``tokenizer.SPECIAL_TOKENS``."""
