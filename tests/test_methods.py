"""The methods' own hooks and state: BCO's running reward shift worked by hand, the collator a run's methods
build, and the training loop's metric window (one reduction per logged step)."""

import math

import pytest
import torch

from vlmdpo.config import LossConfig
from vlmdpo.methods import LOSS_KEYWORDS, METHODS, MethodCollator, build_methods
from vlmdpo.methods.bco import RewardShift
from vlmdpo.methods.beta_dpo import BetaDPO
from vlmdpo.methods.dama import DAMA
from vlmdpo.methods.dense import DenseWeights
from vlmdpo.methods.length_desensitised import LengthDesensitised
from vlmdpo.methods.margin_beta import MarginScaledBeta
from vlmdpo.methods.mdpo import CorruptedImages
from vlmdpo.methods.trdpo import ReferenceRefresh
from vlmdpo.methods.wpo import WPOWeights
from vlmdpo.train.metric_window import MetricWindow


def rewards(chosen, rejected):
    return {"rewards/chosen": torch.tensor(chosen), "rewards/rejected": torch.tensor(rejected)}


def test_reward_shift_is_the_running_mean_of_finite_batch_rewards():
    shift = RewardShift()
    assert shift.loss_inputs({}, None) == {"bco_delta": 0.0}
    shift.observe(rewards(1.0, 0.0))            # batch mean 0.5 -> delta 0.5
    shift.observe(rewards(float("nan"), 2.0))   # not finite: left out
    shift.observe({"loss": torch.tensor(3.0)})  # a supervised batch: no rewards, nothing changes
    shift.observe(rewards(2.0, 1.0))            # batch mean 1.5 -> delta (0.5 + 1.5) / 2 = 1.0
    shift.observe(rewards(-1.0, -3.0))          # batch mean -2 -> delta (0.5 + 1.5 - 2) / 3 = 0.0
    assert shift.state_dict() == {"bco_delta": 0.0, "reward_count": 3}
    shift.observe(rewards(4.0, 4.0))            # -> (0 * 3 + 4) / 4 = 1.0
    assert shift.state_dict() == {"bco_delta": 1.0, "reward_count": 4}
    assert float(shift.loss_inputs({}, None)["bco_delta"]) == 1.0


def test_reward_shift_resumes_from_its_state():
    shift = RewardShift()
    for chosen in (0.3, 0.7, 1.9):
        shift.observe(rewards(chosen, 0.1))
    again = RewardShift()
    again.load_state_dict({"step": 3, **shift.state_dict()})
    for method in (shift, again):
        method.observe(rewards(0.25, -0.5))
    assert again.state_dict() == shift.state_dict()
    assert shift.state_dict()["reward_count"] == 4
    # batch means 0.2, 0.4, 1.0, -0.125 (float32 rewards)
    assert math.isclose(shift.state_dict()["bco_delta"], (0.2 + 0.4 + 1.0 - 0.125) / 4, rel_tol=1e-6)


@pytest.mark.parametrize("settings,expected", [
    ({}, []),
    ({"losses": "mpo"}, [RewardShift]),
    ({"losses": "mdpo"}, [CorruptedImages]),
    ({"losses": "mdpo_conditional+bco_pair", "dense_gamma": 5.0}, [DenseWeights, CorruptedImages, RewardShift]),
    ({"losses": "mpo", "sync_ref_model": True}, [RewardShift, ReferenceRefresh]),
    ({"ld_alpha": 0.5, "use_weighting": True, "beta_dpo": True}, [LengthDesensitised, BetaDPO, WPOWeights]),
    ({"losses": "bco_pair", "mm_dpo_weight": 0.5}, [RewardShift, MarginScaledBeta]),
    ({"losses": "bco_pair", "dama": True, "dama_clip_gap_mean": 0.0, "use_weighting": True},
     [RewardShift, DAMA, WPOWeights]),
])
def test_a_run_builds_the_methods_its_loss_settings_need(settings, expected):
    assert [type(method) for method in build_methods(LossConfig(**settings), seed=1)] == expected
    assert len(METHODS) == 9


def test_loss_settings_handed_to_the_losses_are_the_config_fields_they_take():
    settings = LossConfig(losses="mpo", beta=0.2, simpo_gamma=0.7).settings()
    assert settings == {"anchor_margin": 0.0, "beta": 0.2, "discopop_tau": 0.05, "f_divergence": "reverse_kl",
                        "f_divergence_alpha": 0.5, "label_smoothing": 0.0, "simpo_gamma": 0.7}
    assert set(settings) <= LOSS_KEYWORDS


def test_the_method_collator_adds_to_the_batch_and_checks_rows():
    class Collator:
        tokenizer, max_response_length = "tok", 7

        def __call__(self, rows):
            return {"index": [row["index"] for row in rows]}

        def measure(self, row):
            return {"prompt": 1}

    collate = MethodCollator(Collator(), build_methods(LossConfig(losses="mdpo")))
    assert collate.tokenizer == "tok" and collate.max_response_length == 7
    with pytest.raises(ValueError, match="no image"):  # vlmdpo.data.DataError, named before training
        collate.measure({"index": 4, "images": [], "prompt": "p", "chosen": "c"})
    assert MethodCollator(Collator())([{"index": 2}]) == {"index": [2]}


def test_the_metric_window_means_over_micro_batches_and_restarts():
    class OneProcess:
        reduced = 0

        def reduce(self, tensor, reduction):
            assert reduction == "mean"
            self.reduced += 1
            return tensor

    window, accelerator = MetricWindow(), OneProcess()
    assert window.mean(accelerator) == {}
    for loss, accuracy in ((1.0, 0.0), (2.0, 1.0), (4.5, 0.5)):
        window.add({"loss": torch.tensor(loss), "rewards/accuracies": torch.tensor(accuracy)})
    assert window.mean(accelerator) == {"loss": 2.5, "rewards/accuracies": 0.5}
    assert accelerator.reduced == 1  # one collective for the whole window
    window.add({"rewards/accuracies": torch.tensor(1.0), "loss": torch.tensor(0.25)})
    assert list(window.mean(accelerator)) == ["loss", "rewards/accuracies"]  # the first batch's order, kept
    with pytest.raises(ValueError, match="differ"):
        window.add({"loss": torch.tensor(1.0)})
        window.add({"loss": torch.tensor(1.0), "extra": torch.tensor(0.0)})
