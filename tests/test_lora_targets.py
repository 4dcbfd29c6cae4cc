"""LoRA targets are found by module role: the language model through ``get_decoder()`` whatever its attribute
name, the vision tower and projector by part, and never a mixture-of-experts router."""

import pytest
import torch.nn as nn

from vlmdpo.model.load import load_model_and_processor
from vlmdpo.model.lora import is_router, linear_module_names
from vlmdpo.tiny import tiny_vlm


@pytest.mark.parametrize("family, language_prefix", [("llava", "model.language_model."),
                                                     ("qwen2_vl", "model.language_model."),
                                                     ("smolvlm", "model.text_model."),
                                                     ("gemma3", "model.language_model."),
                                                     ("aya_vision", "model.language_model."),
                                                     ("glm4v", "model.language_model."),
                                                     ("gemma4", "model.language_model.")])
def test_language_targets_are_the_decoders_linear_layers(family, language_prefix, vlmdpo_cache):
    model, _ = load_model_and_processor(tiny_vlm(family))
    decoder = model.get_decoder()
    expected = {f"{language_prefix}{name}" for name, m in decoder.named_modules() if isinstance(m, nn.Linear)}
    assert set(linear_module_names(model)) == expected and expected
    vision = linear_module_names(model, ("vision",))
    assert vision and not set(vision) & expected and all("lm_head" not in n for n in vision)
    # the three parts together cover every linear layer but the LM head (Gemma 4's embed_vision is the projector)
    parts = set(linear_module_names(model, ("language", "projector", "vision")))
    every = {name for name, m in model.named_modules() if isinstance(m, nn.Linear)}
    assert every - parts == {"lm_head"}, every - parts


def test_a_mixture_of_experts_router_is_never_a_target():
    from transformers import Qwen3MoeConfig, Qwen3MoeForCausalLM

    config = Qwen3MoeConfig(vocab_size=64, hidden_size=32, intermediate_size=32, moe_intermediate_size=16,
                            num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1, num_experts=4,
                            num_experts_per_tok=2, head_dim=16)
    model = Qwen3MoeForCausalLM(config)
    # transformers 5 writes this router as its own module; an nn.Linear onto the 4 experts is one too
    model.model.layers[0].mlp.linear_gate = nn.Linear(32, 4, bias=False)
    names = linear_module_names(model)
    assert "model.layers.0.mlp.linear_gate" not in names
    assert not any(n.endswith(".gate") for n in names)
    assert any(n.endswith("self_attn.q_proj") for n in names) and not any("lm_head" in n for n in names)

    class Llama4LikeRouter(nn.Linear):
        pass

    assert is_router("feed_forward.router", Llama4LikeRouter(32, 16), set())
    assert not is_router("mlp.gate_proj", nn.Linear(32, 64), {4})


@pytest.mark.parametrize("config_class", ["Llama4Config", "Gemma3nConfig", "Phi4MultimodalConfig"])
def test_families_with_a_broken_forward_are_refused_before_their_weights_load(config_class, tmp_path):
    import transformers

    config = getattr(transformers, config_class)()
    config.save_pretrained(tmp_path)  # a config and no weights: the refusal must come first
    with pytest.raises(ValueError, match=f"is a {config.model_type} model, which vlmdpo refuses: .*batch"):
        load_model_and_processor(str(tmp_path))
