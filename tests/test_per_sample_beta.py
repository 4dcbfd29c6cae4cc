"""A beta per pair or per batch: every loss takes a (B,) or 0-d tensor beta as it takes a float; beta-DPO's batch
beta, running statistics and filter (arXiv 2407.08639) and MM-DPO's margin-scaled beta (arXiv 2502.10391) worked
by hand; their refusals; and a two-step training run of each that logs the beta it used."""

import json
import math

import datasets
import pytest
import torch

import vlmdpo.train.loop as train_module
from vlmdpo.config import LossConfig, load_config
from vlmdpo.data.rows import DataError, PreferenceDataset
from vlmdpo.methods import LOSSES, combined_loss
from vlmdpo.methods.beta_dpo import BetaDPO, filter_pairs
from vlmdpo.methods.margin_beta import MarginScaledBeta, margin_scaled_beta, row_margin

B = 4


def loss_inputs(seed: int = 0):
    """Four (B,) log-probs and the per-pair keyword inputs some losses take."""
    generator = torch.Generator().manual_seed(seed)
    ref = -5.0 - 20.0 * torch.rand(2, B, generator=generator)
    policy = ref + torch.randn(2, B, generator=generator)
    extra = {"chosen_lengths": torch.tensor([3.0, 5.0, 8.0, 2.0]), "rejected_lengths": torch.tensor([4.0, 4.0, 9.0, 6.0]),
             "policy_corrupted_chosen_logps": policy[0] - 1.0, "ref_corrupted_chosen_logps": ref[0] - 0.5}
    return (policy[0], policy[1], ref[0], ref[1]), extra


@pytest.mark.parametrize("name", sorted(n for n, term in LOSSES.items() if "beta" in term.keywords))
def test_every_loss_takes_a_beta_per_pair(name):
    values, extra = loss_inputs(len(name))
    term = LOSSES[name]
    keywords = {key: value for key, value in extra.items() if key in term.keywords}
    betas = torch.tensor([0.05, 0.1, 0.3, 0.7])
    assert torch.equal(term(*values, beta=torch.tensor(0.3), **keywords), term(*values, beta=0.3, **keywords))
    if not term.per_pair:  # AOT sorts the batch: one beta only
        with pytest.raises(ValueError, match="one beta"):
            term(*values, beta=betas, **keywords)
        return
    row_by_row = torch.cat([term(*(v[i:i + 1] for v in values), beta=float(betas[i]),
                                 **{key: value[i:i + 1] for key, value in keywords.items()}) for i in range(B)])
    torch.testing.assert_close(term(*values, beta=betas, **keywords), row_by_row, rtol=1e-6, atol=1e-6)


def test_combined_loss_weighs_pairs_and_refuses_a_per_pair_beta_with_aot():
    values, _ = loss_inputs()
    weights = torch.tensor([0.0, 2.0, 1.0, 1.0])
    loss, _ = combined_loss([("sigmoid", 1.0)], *values, beta=0.1, pair_weights=weights)
    per_pair = LOSSES["sigmoid"](*values, beta=0.1)
    torch.testing.assert_close(loss, (weights * per_pair).mean())
    with pytest.raises(ValueError, match="sort the pairs"):
        combined_loss([("sigmoid", 1.0), ("aot", 1.0)], *values, beta=torch.full((B,), 0.1))
    combined_loss([("aot", 1.0)], *values, beta=torch.tensor(0.1))  # one batch beta is fine


# --- beta-DPO ------------------------------------------------------------------------------------

def outs(discrepancies):
    """Policy and reference outputs whose pairs have these reward discrepancies (the reference at 0)."""
    gaps = torch.tensor(discrepancies)
    zeros = torch.zeros_like(gaps)
    return {"chosen_logps": gaps - 10, "rejected_logps": zeros - 10}, {"chosen_logps": zeros, "rejected_logps": zeros}


PAIRS = {"rejected_input_ids": torch.zeros(1)}


def test_beta_dpo_batch_beta_and_running_statistics_hand_worked():
    method = BetaDPO(alpha=0.6, filter_ratio=0.0, momentum=0.9)
    # step 1, M = (1, 3): M_0 = 0.1 * 2 = 0.2, sigma = 0.1 * std(1, 3) = 0.1 * sqrt(2);
    # beta = 0.1 * (1 + 0.6 * (2 - 0.2)) = 0.208; nothing is filtered, so no pair weights
    changes = method.loss_changes(*outs([1.0, 3.0]), PAIRS, 0.1)
    assert "pair_weights" not in changes
    torch.testing.assert_close(changes["beta"], torch.tensor(0.208))
    torch.testing.assert_close(changes["metrics"]["beta_dpo/gap_mean"], torch.tensor(0.2))
    torch.testing.assert_close(changes["metrics"]["beta_dpo/gap_std"], torch.tensor(0.1 * math.sqrt(2)))
    # step 2, M = (0, 2): M_0 = 0.9 * 0.2 + 0.1 * 1 = 0.28, sigma = 0.9 * 0.1 sqrt(2) + 0.1 sqrt(2) = 0.19 sqrt(2);
    # beta = 0.1 * (1 + 0.6 * (1 - 0.28)) = 0.1432
    changes = method.loss_changes(*outs([0.0, 2.0]), PAIRS, 0.1)
    torch.testing.assert_close(changes["beta"], torch.tensor(0.1432))
    torch.testing.assert_close(changes["metrics"]["beta_dpo/gap_std"], torch.tensor(0.19 * math.sqrt(2)))
    assert method.state_dict() == pytest.approx({"beta_dpo_gap_mean": 0.28, "beta_dpo_gap_std": 0.19 * math.sqrt(2),
                                                 "beta_dpo_steps": 2})


def test_beta_dpo_filter_leaves_out_the_outlier_and_floors_beta():
    # weights exp(-z^2 / 2): the pair at z = 100 has weight 0 and three of four pairs are kept
    kept = filter_pairs(torch.tensor([0.0, 0.0, 100.0, 0.0]), torch.tensor(0.0), torch.tensor(1.0), 0.25)
    assert sorted(kept.tolist()) == [0, 1, 3]
    method = BetaDPO(alpha=0.6, filter_ratio=0.25)
    method.load_state_dict({"beta_dpo_gap_mean": 0.0, "beta_dpo_gap_std": 1.0})
    # M_0 = 0.1 * 25 = 2.5, sigma = 0.9 + 0.1 * std(0, 0, 0, 100) = 5.9: the outlier is at z = 16.5 (weight 0);
    # the kept mean is 0, so beta = 0.1 * (1 + 0.6 * (0 - 2.5)) < 0, floored at 1e-3
    changes = method.loss_changes(*outs([0.0, 0.0, 100.0, 0.0]), PAIRS, 0.1)
    torch.testing.assert_close(changes["pair_weights"], torch.tensor([4 / 3, 4 / 3, 0.0, 4 / 3]))
    assert float(changes["beta"]) == pytest.approx(1e-3)
    torch.testing.assert_close(changes["metrics"]["beta_dpo/gap_std"], torch.tensor(5.9))


def test_beta_dpo_with_equal_discrepancies_draws_uniformly_and_resumes_the_same_draws():
    method = BetaDPO(alpha=0.6, filter_ratio=0.5, seed=3)
    changes = method.loss_changes(*outs([0.0] * 4), PAIRS, 0.1)  # step 1 of a LoRA run: sigma = 0
    assert float(changes["beta"]) == pytest.approx(0.1) and int((changes["pair_weights"] > 0).sum()) == 2
    resumed = BetaDPO(alpha=0.6, filter_ratio=0.5, seed=3)
    resumed.load_state_dict(json.loads(json.dumps(method.state_dict())))  # what a checkpoint keeps
    first, again = (m.loss_changes(*outs([0.5, -1.0, 2.0, 0.25]), PAIRS, 0.1) for m in (method, resumed))
    assert torch.equal(first["pair_weights"], again["pair_weights"])
    torch.testing.assert_close(first["beta"], again["beta"])


def test_beta_dpo_needs_two_pairs_per_micro_batch():
    with pytest.raises(ValueError, match="train.batch_size >= 2"):
        BetaDPO().loss_changes(*outs([1.0]), PAIRS, 0.1)


# --- MM-DPO --------------------------------------------------------------------------------------

def test_margin_scaled_beta_hand_worked():
    # beta (1 + w (1 - exp(-k delta))) within [beta, (1 + w) beta], w = 0.5, k = 0.5: delta 0 -> beta;
    # delta 2 -> 0.1 (1 + 0.5 (1 - e^-1)) = 0.13161; delta -50 -> below beta, so beta; delta 1e4 -> (1 + w) beta
    betas = margin_scaled_beta(0.1, torch.tensor([0.0, 2.0, -50.0, 1e4]), weight=0.5, k=0.5)
    torch.testing.assert_close(betas, torch.tensor([0.1, 0.1 * (1 + 0.5 * (1 - math.exp(-1))), 0.1, 0.15]))
    method = MarginScaledBeta(weight=0.5, k=0.5)
    batch = {}
    method.add_to_batch(batch, [{"reward_margin": 2.0}, {"chosen_score": 7, "rejected_score": 5}], None)
    changes = method.loss_changes({"chosen_logps": torch.zeros(2)}, {}, batch, 0.1)
    torch.testing.assert_close(changes["beta"], torch.full((2,), 0.1 * (1 + 0.5 * (1 - math.exp(-1)))))


@pytest.mark.parametrize("row,problem", [
    ({"index": 3}, "neither a reward_margin"),
    ({"index": 3, "chosen_score": 1.0}, "neither a reward_margin"),
    ({"index": 3, "reward_margin": float("nan")}, "finite"),
    ({"index": 3, "chosen_score": "good", "rejected_score": 1}, "finite"),
])
def test_rows_without_a_usable_margin_are_refused(row, problem):
    with pytest.raises(DataError, match=f"row 3.*{problem}"):
        MarginScaledBeta(0.5, 0.5).check_row(row)
    assert row_margin({"reward_margin": -1.5}) == -1.5


@pytest.mark.parametrize("settings,message", [
    ({"mm_dpo_weight": 0.5, "beta_dpo": True}, "choose one"),
    ({"mm_dpo_weight": 0.5, "losses": "aot"}, "sort the pairs"),
    ({"mm_dpo_weight": -0.5}, "> 0"),
    ({"mm_dpo_weight": 0.5, "mm_dpo_k": 0.0}, "> 0"),
    ({"mm_dpo_weight": 0.5, "losses": "sft"}, "no rejected response"),
    ({"beta_dpo": True, "beta_dpo_filter": 1.0}, "\\[0, 1\\)"),
    ({"beta_dpo": True, "losses": "simpo"}, "reads none"),
    ({"beta_dpo": True, "beta_dpo_momentum": -0.1}, "\\[0, 1\\)"),
    ({"beta_dpo": True, "losses": "aot_unpaired"}, "sort the pairs"),
    ({"beta_dpo": True, "losses": "sft"}, "no rejected response"),
])
def test_settings_that_cannot_apply_are_refused(settings, message):
    with pytest.raises(ValueError, match=message):
        LossConfig(**settings)
    LossConfig(beta_dpo=True, beta_dpo_filter=0.0, losses="aot")  # a batch beta without the filter suits AOT


# --- training ------------------------------------------------------------------------------------

MARGINS = [0.5, 2.0, -1.0, 3.0]


@pytest.fixture(scope="module")
def model_and_pairs(vlmdpo_cache, tmp_path_factory):
    from data_recipes.shapes import build_shapes_dataset, povid_pairs
    from vlmdpo.tiny.models import tiny_vlm

    folder = tmp_path_factory.mktemp("beta_pairs") / "povid"
    pairs = povid_pairs(build_shapes_dataset(seed=0, num_train=4, num_test=0, image_size=32)["train"])
    pairs.add_column("reward_margin", MARGINS).save_to_disk(str(folder))
    return tiny_vlm("llava"), folder


def train_two_steps(model_dir, pairs_dir, output_dir, *settings):
    """The run's metrics and the row indices of each micro-batch."""
    batches, dpo_step = [], train_module.dpo_step

    def capture(policy, reference, batch, *args, **kwargs):
        batches.append(list(batch["index"]))
        return dpo_step(policy, reference, batch, *args, **kwargs)

    config = load_config(None, [f"model.name_or_path={model_dir}", f"data.train={pairs_dir}",
                                f"train.output_dir={output_dir}", "train.max_steps=2", "train.batch_size=2",
                                "train.learning_rate=1e-2", "train.progress=false", "train.mixed_precision=no",
                                *settings])
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(train_module, "dpo_step", capture)
        train_module.train(config)
    return [json.loads(line) for line in (output_dir / "metrics.jsonl").read_text().splitlines()], batches


def test_the_rows_keep_their_reward_margins(model_and_pairs):
    pairs = PreferenceDataset(datasets.load_from_disk(str(model_and_pairs[1])))
    assert [pairs[i]["reward_margin"] for i in range(4)] == MARGINS


def test_training_with_beta_dpo_logs_its_beta(model_and_pairs, tmp_path):
    records, _ = train_two_steps(*model_and_pairs, tmp_path / "beta_dpo", "loss.beta_dpo=true")
    # step 1: the policy is the reference, every discrepancy 0: beta stays 0.1, the loss ln 2
    assert records[0]["beta"] == pytest.approx(0.1) and records[0]["loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert records[0]["beta_dpo/gap_mean"] == records[0]["beta_dpo/gap_std"] == 0.0
    assert records[1]["beta"] != pytest.approx(0.1) and records[1]["beta_dpo/gap_std"] > 0
    assert all(math.isfinite(r["loss"]) for r in records)


def test_training_with_mm_dpo_logs_the_mean_beta_of_each_batch(model_and_pairs, tmp_path):
    records, batches = train_two_steps(*model_and_pairs, tmp_path / "mm_dpo", "loss.mm_dpo_weight=0.5")
    for record, rows in zip(records, batches):
        betas = [0.1 * max(1.0, 1 + 0.5 * (1 - math.exp(-0.5 * MARGINS[i]))) for i in rows]  # -1.0 keeps 0.1
        assert record["beta"] == pytest.approx(sum(betas) / len(betas), rel=1e-6)
    assert records[0]["loss"] == pytest.approx(math.log(2), abs=1e-6)
