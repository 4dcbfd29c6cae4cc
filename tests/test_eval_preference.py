"""Preference fit: rewards against the disabled adapter, an explicit reference, or precomputed log-probs."""

import pytest
import torch

from data_recipes.shapes import build_shapes_dataset, povid_pairs
from vlmdpo.data.collator import PreferenceCollator
from vlmdpo.data.rows import PreferenceDataset
from vlmdpo.eval.preference import preference_fit
from vlmdpo.forward.logps import completion_logps
from vlmdpo.model.load import load_model_and_processor
from vlmdpo.model.lora import apply_lora, eval_mode
from vlmdpo.tiny.models import tiny_vlm

from helpers import randomize_lora


@pytest.fixture(scope="module")
def rows():
    pairs = PreferenceDataset(povid_pairs(build_shapes_dataset(num_train=0, num_test=5, image_size=32)["test"]))
    return [pairs[i] for i in range(len(pairs))]


@pytest.fixture()
def policy(family):
    """A LoRA policy whose adapter moved away from zero, so its rewards are not all 0."""
    model, processor = load_model_and_processor(tiny_vlm(family))
    return randomize_lora(apply_lora(model, r=4), seed=0), processor


def test_fresh_adapter_has_zero_rewards(family, rows):
    model, processor = load_model_and_processor(tiny_vlm(family))
    fit = preference_fit(apply_lora(model, r=4), processor, rows, progress=False)  # lora_B == 0
    assert fit["reward_margin"] == 0.0 and fit["chosen_reward"] == 0.0
    assert fit["reward_accuracy"] == 0.0  # ties are not wins, as in TRL and the training metrics
    assert fit["policy_chosen_logps"] == fit["ref_chosen_logps"]


def test_numbers_match_a_direct_computation(policy, rows):
    model, processor = policy
    fit = preference_fit(model, processor, rows, beta=0.5, batch_size=2, progress=False)
    batch = PreferenceCollator(processor)(rows)
    pad = processor.tokenizer.pad_token_id
    with torch.no_grad():
        out = completion_logps(model.eval(), batch, pad)
        with model.disable_adapter():
            ref = completion_logps(model, batch, pad)
    chosen = 0.5 * (out["chosen_logps"] - ref["chosen_logps"])
    rejected = 0.5 * (out["rejected_logps"] - ref["rejected_logps"])
    per_pair = fit["per_pair"]
    assert [p["index"] for p in per_pair] == [row["index"] for row in rows]
    torch.testing.assert_close(torch.tensor([p["chosen_reward"] for p in per_pair]), chosen, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(torch.tensor([p["margin"] for p in per_pair]), chosen - rejected, atol=1e-4,
                               rtol=1e-4)
    assert fit["reward_accuracy"] == pytest.approx(float((chosen > rejected).float().mean()))
    assert fit["reward_margin"] == pytest.approx(float((chosen - rejected).mean()), abs=1e-5)
    assert fit["policy_rejected_logps"] == pytest.approx(float(out["rejected_logps"].mean()), abs=1e-3)
    assert fit["num_pairs"] == len(rows) and fit["reward_margin"] != 0.0


def test_reference_choices_agree(policy, family, rows):
    model, processor = policy
    disabled = preference_fit(model, processor, rows, batch_size=3, progress=False)
    base, _ = load_model_and_processor(tiny_vlm(family))
    explicit = preference_fit(model, processor, rows, batch_size=3, reference=base, progress=False)
    own = preference_fit(base, processor, rows, reference=base, progress=False)
    precomputed = preference_fit(model, processor, rows, progress=False, reference_logps={
        "chosen_logps": [p["policy_chosen_logps"] for p in own["per_pair"]],
        "rejected_logps": [p["policy_rejected_logps"] for p in own["per_pair"]]})
    for other in (explicit, precomputed):
        for a, b in zip(disabled["per_pair"], other["per_pair"]):
            assert a["margin"] == pytest.approx(b["margin"], abs=1e-4)
    # the base against itself: log-probs only, no fake zero rewards
    assert own["reward_accuracy"] is None and own["per_pair"][0]["margin"] is None
    assert own["policy_chosen_logps"] == pytest.approx(disabled["ref_chosen_logps"], abs=1e-3)


def test_mode_is_restored_and_batch_size_does_not_matter(policy, rows):
    model, processor = policy
    model.train()
    one = preference_fit(model, processor, rows, batch_size=1, progress=False)
    assert model.training
    five = preference_fit(model, processor, rows, batch_size=5, progress=False)
    for a, b in zip(one["per_pair"], five["per_pair"]):
        assert a["policy_chosen_logps"] == pytest.approx(b["policy_chosen_logps"], abs=1e-3)


def test_eval_mode_puts_back_the_training_flag_even_on_error():
    model = torch.nn.Dropout(0.5)
    with pytest.raises(RuntimeError, match="inside"), eval_mode(model):
        assert not model.training
        raise RuntimeError("inside")
    assert model.training
    with eval_mode(model.eval()):
        pass
    assert not model.training


def test_errors(policy, family, rows):
    model, processor = policy
    base, _ = load_model_and_processor(tiny_vlm(family))
    with pytest.raises(ValueError, match="no adapter"):
        preference_fit(base, processor, rows, progress=False)
    with pytest.raises(ValueError, match="reference_logps has 1 rows"):
        preference_fit(model, processor, rows, reference_logps={"chosen_logps": [0.0], "rejected_logps": [0.0]},
                       progress=False)
