"""DAMA (arXiv 2502.01943): the data-aware scale from a pair's CLIP score gap, the model-aware scale from the batch's
reward gaps and their running mean, the filter and the floor, worked by hand; the refusals of rows and settings; and a
two-step training run that logs the beta it used."""

import json
import math

import pytest
import torch

import vlmdpo.train.loop as train_module
from vlmdpo.config import LossConfig, load_config
from vlmdpo.data.rows import DataError
from vlmdpo.methods import build_methods
from vlmdpo.methods.dama import DAMA, data_aware_scale, row_clip_gap


def sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def outs(gaps):
    """Policy and reference outputs whose pairs have these reward gaps (the reference at 0)."""
    gaps = torch.tensor(gaps)
    zeros = torch.zeros_like(gaps)
    return {"chosen_logps": gaps - 10, "rejected_logps": zeros - 10}, {"chosen_logps": zeros, "rejected_logps": zeros}


def batch(clip_gaps):
    return {"rejected_input_ids": torch.zeros(1), "clip_score_gap": torch.tensor(clip_gaps)}


def test_data_aware_scale_hand_worked():
    # alpha_D = sigmoid(delta) / sigmoid(delta_bar); delta_bar = 0 gives sigmoid(0) = 0.5:
    # delta 0 -> 1; delta 2 -> 0.880797 / 0.5 = 1.761594; delta -1 -> 0.268941 / 0.5 = 0.537883
    torch.testing.assert_close(data_aware_scale(torch.tensor([0.0, 2.0, -1.0]), 0.0),
                               torch.tensor([1.0, 1.761594, 0.537883]))
    # delta_bar = 1: a pair of average hardness gets 1, an easier one more, a harder one less
    torch.testing.assert_close(data_aware_scale(torch.tensor([1.0, 3.0]), 1.0),
                               torch.tensor([1.0, sigmoid(3) / sigmoid(1)]))


def test_model_aware_scale_running_mean_and_combined_beta_hand_worked():
    method = DAMA(clip_gap_mean=0.0, filter_ratio=0.0, momentum=0.9)
    # step 1, R = (1, 3), R_bar = 0: alpha_M = mean(sigmoid(1), sigmoid(3)) / sigmoid(0)
    #   = (0.731059 + 0.952574) / 2 / 0.5 = 1.683633; clip gaps 0 give alpha_D = 1, so beta = 0.1 * 1.683633;
    #   then R_bar = 0.9 * 0 + 0.1 * mean(1, 3) = 0.2; nothing is filtered, so no pair weights
    changes = method.loss_changes(*outs([1.0, 3.0]), batch([0.0, 0.0]), 0.1)
    assert "pair_weights" not in changes
    torch.testing.assert_close(changes["beta"], torch.full((2,), 0.1683633))
    torch.testing.assert_close(changes["metrics"]["dama/alpha_model"], torch.tensor(1.683633))
    torch.testing.assert_close(changes["metrics"]["dama/gap_mean"], torch.tensor(0.2))
    # step 2, R = (0, 2), R_bar = 0.2: alpha_M = (0.5 + 0.880797) / 2 / sigmoid(0.2) = 0.690399 / 0.549834 = 1.255649;
    #   clip gaps (2, -1): alpha_D = (1.761594, 0.537883); beta = 0.1 * alpha_D * alpha_M = (0.221194, 0.067539);
    #   then R_bar = 0.9 * 0.2 + 0.1 * 1 = 0.28
    changes = method.loss_changes(*outs([0.0, 2.0]), batch([2.0, -1.0]), 0.1)
    torch.testing.assert_close(changes["beta"], torch.tensor([0.221194, 0.067539]))
    torch.testing.assert_close(changes["metrics"]["dama/alpha_data"], torch.tensor((1.761594 + 0.537883) / 2))
    assert method.state_dict() == pytest.approx({"dama_gap_mean": 0.28, "dama_steps": 2})


def test_filter_leaves_out_the_outlier_and_beta_is_floored():
    method = DAMA(clip_gap_mean=0.0, filter_ratio=0.25)
    # weights exp(-(R - 0)^2 / 2): the pair at R = 100 has weight 0; floor(4 * 0.75) = 3 pairs are kept, each weighing
    # 4 / 3; the kept gaps are 0, so alpha_M = sigmoid(0) / sigmoid(0) = 1; R_bar = 0.1 * mean(0, 0, 100, 0) = 2.5.
    # Clip gaps (0, 0, 0, -50): beta = 0.1 for three pairs, 0.1 * 2 * sigmoid(-50) ~ 4e-23 floored at 1e-3
    changes = method.loss_changes(*outs([0.0, 0.0, 100.0, 0.0]), batch([0.0, 0.0, 0.0, -50.0]), 0.1)
    torch.testing.assert_close(changes["pair_weights"], torch.tensor([4 / 3, 4 / 3, 0.0, 4 / 3]))
    torch.testing.assert_close(changes["beta"], torch.tensor([0.1, 0.1, 0.1, 1e-3]))
    torch.testing.assert_close(changes["metrics"]["dama/gap_mean"], torch.tensor(2.5))


def test_a_resumed_run_draws_the_same_pairs():
    method = DAMA(clip_gap_mean=0.0, filter_ratio=0.5, seed=3)
    method.loss_changes(*outs([0.0] * 4), batch([0.0] * 4), 0.1)
    resumed = DAMA(clip_gap_mean=0.0, filter_ratio=0.5, seed=3)
    resumed.load_state_dict(json.loads(json.dumps(method.state_dict())))  # what a checkpoint keeps
    first, again = (m.loss_changes(*outs([0.5, -1.0, 2.0, 0.25]), batch([0.0] * 4), 0.1) for m in (method, resumed))
    assert torch.equal(first["pair_weights"], again["pair_weights"])
    torch.testing.assert_close(first["beta"], again["beta"])


def test_rows_give_their_clip_gap_or_are_refused():
    assert row_clip_gap({"clip_score_gap": -0.5}) == -0.5
    # per-sub-sentence scores are summed: (0.2 + 0.3) - 0.1 = 0.4
    assert row_clip_gap({"chosen_clip_score": [0.2, 0.3], "rejected_clip_score": 0.1}) == pytest.approx(0.4)
    for row, problem in [({"index": 3}, "neither a clip_score_gap"),
                         ({"index": 3, "chosen_clip_score": 1.0}, "neither a clip_score_gap"),
                         ({"index": 3, "clip_score_gap": float("nan")}, "finite"),
                         ({"index": 3, "clip_score_gap": [1.0]}, "finite"),
                         ({"index": 3, "chosen_clip_score": [], "rejected_clip_score": 0.0}, "finite"),
                         ({"index": 3, "chosen_clip_score": "high", "rejected_clip_score": 0.0}, "finite")]:
        with pytest.raises(DataError, match=f"row 3.*{problem}.*Fix: ") as error:
            DAMA(0.0).check_row(row)
        assert error.value.field in ("clip_score_gap", "chosen_clip_score")
    with pytest.raises(ValueError, match="MethodCollator"):
        DAMA(0.0).loss_changes(*outs([0.0]), {"rejected_input_ids": torch.zeros(1)}, 0.1)


@pytest.mark.parametrize("settings,message", [
    ({"beta_dpo": True}, "choose one"),
    ({"mm_dpo_weight": 0.5}, "choose one"),
    ({"dama_clip_gap_mean": None}, "needs loss.dama_clip_gap_mean"),
    ({"dama_clip_gap_mean": float("inf")}, "needs loss.dama_clip_gap_mean"),
    ({"dama_filter": 1.0}, "\\[0, 1\\)"),
    ({"dama_momentum": -0.1}, "\\[0, 1\\)"),
    ({"losses": "sft"}, "no rejected response or no reference"),
    ({"losses": "simpo"}, "no rejected response or no reference"),
    ({"losses": "aot"}, "sort the pairs"),
])
def test_settings_that_cannot_apply_are_refused(settings, message):
    with pytest.raises(ValueError, match=message):
        LossConfig(**{"dama": True, "dama_clip_gap_mean": 0.0, **settings})
    config = LossConfig(dama=True, dama_clip_gap_mean=0.05, losses="sigmoid+sft")
    assert [method.name for method in build_methods(config)] == ["dama"]


# --- training ------------------------------------------------------------------------------------

CLIP_GAPS = [0.5, -1.0, 2.0, 0.0]


@pytest.fixture(scope="module")
def model_and_pairs(vlmdpo_cache, tmp_path_factory):
    from data_recipes.shapes import build_shapes_dataset, povid_pairs
    from vlmdpo.tiny.models import tiny_vlm

    folder = tmp_path_factory.mktemp("dama_pairs") / "povid"
    pairs = povid_pairs(build_shapes_dataset(seed=0, num_train=4, num_test=0, image_size=32)["train"])
    pairs.add_column("clip_score_gap", CLIP_GAPS).save_to_disk(str(folder))
    return tiny_vlm("llava"), folder


def test_training_logs_the_beta_of_each_step(model_and_pairs, tmp_path):
    model_dir, pairs_dir = model_and_pairs
    batches, dpo_step = [], train_module.dpo_step

    def capture(policy, reference, batch, *args, **kwargs):
        batches.append(list(batch["index"]))
        return dpo_step(policy, reference, batch, *args, **kwargs)

    config = load_config(None, [f"model.name_or_path={model_dir}", f"data.train={pairs_dir}",
                                f"train.output_dir={tmp_path}", "train.max_steps=2", "train.batch_size=2",
                                "train.learning_rate=1e-2", "train.progress=false", "train.mixed_precision=no",
                                "loss.dama=true", "loss.dama_clip_gap_mean=0.0"])
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(train_module, "dpo_step", capture)
        train_module.train(config)
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert len(records) == len(batches) == 2
    # step 1: the policy is the reference, every reward gap 0: alpha_M = sigmoid(0) / sigmoid(0) = 1, the loss ln 2,
    # and the running mean stays 0
    assert records[0]["dama/alpha_model"] == pytest.approx(1.0) and records[0]["dama/gap_mean"] == 0.0
    assert records[0]["loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert records[1]["dama/alpha_model"] != pytest.approx(1.0)
    for record, rows in zip(records, batches):
        # each pair's beta is 0.1 * alpha_D * alpha_M, alpha_D = sigmoid(delta) / sigmoid(0); the log has their mean
        alpha_data = [sigmoid(CLIP_GAPS[i]) / 0.5 for i in rows]
        assert record["dama/alpha_data"] == pytest.approx(sum(alpha_data) / len(rows), rel=1e-6)
        assert record["beta"] == pytest.approx(0.1 * record["dama/alpha_model"] * sum(alpha_data) / len(rows),
                                               rel=1e-5)
        assert math.isfinite(record["loss"])
