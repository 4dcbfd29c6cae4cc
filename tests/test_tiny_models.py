"""vlmdpo.tiny.models: the builders behind ``tiny:<family>`` names, seeded without touching the global RNG."""

import random

import numpy as np
import pytest
import torch

from vlmdpo.tiny.models import build_tiny_vlm


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
