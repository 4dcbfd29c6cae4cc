"""Tiny builders of the mixture-of-experts VLMs: ``qwen3_vl_moe`` (Qwen3-VL-30B-A3B's layout: every decoder
layer routes each token to its top 2 of 4 experts) and ``glm4v_moe`` (GLM-4.5V's: a dense first layer, then
4 routed experts, top 2, beside a shared expert every token runs).

Both keep their dense sibling's vision tower, processor and M-RoPE (``vlmdpo.tiny.mrope``); only the language
model's MLPs become experts, which transformers stores fused, one 3-D parameter per projection for all experts.
The configs keep the hub checkpoints' routing settings: no router logits asked for (``output_router_logits``
false, so no load-balancing loss; ``vlmdpo.model.routers`` adds it when a run turns it on) and the family's own
``router_aux_loss_coef``.

Every builder is ``builder(tokenizer, sizes: TinySizes) -> (model, processor)``, as in ``vlmdpo.tiny.llava``.
"""

from __future__ import annotations

from vlmdpo.tiny.configs import TinySizes, mrope, text_config
from vlmdpo.tiny.mrope import FAMILY_TOKENS as DENSE_FAMILY_TOKENS
from vlmdpo.tiny.mrope import (
    glm4v_processor,
    glm4v_rope,
    glm4v_token_ids,
    glm4v_vision_config,
    qwen3_vision_config,
    qwen_processor,
    qwen_vision_token_ids,
)

NUM_EXPERTS, EXPERTS_PER_TOKEN = 4, 2
GLM4V_TOKENS = DENSE_FAMILY_TOKENS["glm4v"]  # GLM-4.5V's template and processor are GLM-4.1V's


def _experts(sizes: TinySizes) -> dict:
    """The routing fields both families share: 4 experts, top 2, each expert half the dense MLP's width."""
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


BUILDERS = {"qwen3_vl_moe": qwen3_vl_moe, "glm4v_moe": glm4v_moe}
FAMILY_TOKENS = {"glm4v_moe": GLM4V_TOKENS}
"""Per family: the special tokens its processor and template need beyond ``tokenizer.SPECIAL_TOKENS``."""
