"""vlmdpo.tiny: the builders behind ``tiny:<family>`` names, seeded without touching the global RNG, and the sizes
they take."""

import ast
import random
from pathlib import Path

import numpy as np
import pytest
import torch

import vlmdpo.tiny
from vlmdpo.tiny.configs import TinySizes
from vlmdpo.tiny.models import FAMILIES, build_tiny_vlm


@pytest.mark.parametrize("family", ["llava", "qwen2_vl"])
def test_the_same_seed_builds_the_same_weights_and_leaves_the_callers_rng_alone(family):
    state = torch.get_rng_state()
    first, _ = build_tiny_vlm(family, seed=3)
    assert torch.equal(torch.get_rng_state(), state)
    torch.rand(5)  # whatever the caller drew in between does not change the model
    again, _ = build_tiny_vlm(family, seed=3)
    other, _ = build_tiny_vlm(family, seed=4)
    weights = dict(first.named_parameters())
    assert all(torch.equal(weights[name], value) for name, value in again.named_parameters())
    assert any(not torch.equal(weights[name], value) for name, value in other.named_parameters())


def test_training_leaves_the_callers_rng_as_it_was(tmp_path, images):
    """``train`` seeds the run from ``train.seed``; the caller's Python, NumPy and torch streams come back."""
    from vlmdpo.config import load_config
    from vlmdpo.train.loop import train

    rows = tmp_path / "pairs.jsonl"
    images["square"].save(tmp_path / "square.png")
    rows.write_text('{"images": ["square.png"], "prompt": "describe the image.", "chosen": "a red square.", '
                    '"rejected": "a blue circle."}\n' * 2)
    states = random.getstate(), np.random.get_state()[1].copy(), torch.get_rng_state()
    train(load_config(None, [f"data.train={rows}", f"train.output_dir={tmp_path / 'run'}", "train.max_steps=1",
                             "train.batch_size=2", "train.progress=false", "train.mixed_precision=no"]))
    assert random.getstate() == states[0]
    assert np.array_equal(np.random.get_state()[1], states[1])
    assert torch.equal(torch.get_rng_state(), states[2])


def test_the_sizes_reach_the_config():
    """The decoder's heads, MLP width, vocabulary and rotary base, and the vision tower's heads, as asked."""
    model, processor = build_tiny_vlm("llava", hidden_size=96, num_heads=6, num_kv_heads=3, intermediate_size=200,
                                      vocab_size=700, rope_theta=5e5, vision_hidden_size=48, vision_heads=3)
    text, vision = model.config.text_config, model.config.vision_config
    assert (text.num_attention_heads, text.num_key_value_heads, text.intermediate_size) == (6, 3, 200)
    assert text.rope_parameters["rope_theta"] == 5e5
    assert model.get_input_embeddings().weight.shape == (700, 96) and len(processor.tokenizer) < 700
    assert (vision.num_attention_heads, vision.intermediate_size) == (3, 4 * 48)  # CLIP's MLP: 4x by default
    qwen, _ = build_tiny_vlm("qwen2_vl", vision_hidden_size=32, vision_intermediate_size=128, rope_theta=1e6)
    assert qwen.config.vision_config.mlp_ratio == 4 and qwen.config.text_config.rope_parameters["rope_theta"] == 1e6


def test_sizes_that_cannot_build_are_refused_up_front():
    with pytest.raises(ValueError, match="multiple of its heads"):
        TinySizes(hidden_size=64, num_heads=5)
    with pytest.raises(ValueError, match="num_kv_heads"):
        TinySizes(num_heads=4, num_kv_heads=3)
    with pytest.raises(ValueError, match="smaller than the tokenizer"):
        build_tiny_vlm("llava", vocab_size=10)
    assert TinySizes(hidden_size=48).intermediate_size == 96


@pytest.mark.parametrize("family", ["aya_vision", "gemma3", "gemma4"])
def test_families_with_sliding_window_layers_build_at_any_depth(family):
    """Their ``layer_types`` alternate sliding and full attention for as many layers as asked."""
    model, _ = build_tiny_vlm(family, num_layers=3)
    assert model.config.text_config.num_hidden_layers == len(model.config.text_config.layer_types) == 3
    assert "full_attention" in model.config.text_config.layer_types


def test_no_tiny_module_imports_another_ones_private_name():
    """Helpers shared across the family modules are public names of ``configs`` and ``templates``."""
    folder = Path(vlmdpo.tiny.__file__).parent
    private = [f"{path.name}: {node.module}.{alias.name}" for path in folder.glob("*.py")
               for node in ast.walk(ast.parse(path.read_text())) if isinstance(node, ast.ImportFrom)
               for alias in node.names if alias.name.startswith("_")]
    assert private == []
    assert set(FAMILIES) >= {"llava", "qwen2_vl"}
