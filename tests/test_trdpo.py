"""TR-DPO's reference refresh (``vlmdpo.methods.trdpo``): the refreshed reference is the one built by hand from the
mixed weights, LoRA (the exact mix of the adapters' products while the reference adapter's rank allows, the best
approximation of that rank after) and full fine-tuning; before a refresh the reference is the untrained model; a
run stopped after a refresh resumes exactly; settings that cannot work are refused."""

import copy
import json

import datasets
import pytest
import torch
from safetensors.torch import load_file

import vlmdpo.train.setup as train_setup
from data_recipes.shapes import build_shapes_dataset, povid_pairs
from vlmdpo.config import load_config
from vlmdpo.data.collator import PreferenceCollator
from vlmdpo.data.rows import PreferenceDataset
from vlmdpo.eval.metrics_log import read_metrics
from vlmdpo.forward.logps import completion_logps
from vlmdpo.methods.registry import build_methods
from vlmdpo.methods.trdpo import ReferenceRefresh
from vlmdpo.model.load import load_model_and_processor
from vlmdpo.model.lora import REFERENCE_ADAPTER, apply_lora, freeze_parts, frozen_copy, part_of, reference_mode
from vlmdpo.train.loop import train

ALPHA = 0.6
COMPARED = ("loss", "rewards/chosen", "rewards/rejected", "rewards/margins", "logps/chosen", "logps/rejected")


@pytest.fixture(scope="module")
def model_dir():
    from vlmdpo.tiny import tiny_vlm

    return tiny_vlm("llava")


@pytest.fixture(scope="module")
def pairs_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pairs") / "povid"
    povid_pairs(build_shapes_dataset(seed=2, num_train=8, num_test=0, image_size=32)["train"]).save_to_disk(
        str(folder))
    return folder


@pytest.fixture(scope="module")
def probe(model_dir, pairs_dir):
    """``(collated batch of four pairs, pad id)`` for comparing models."""
    processor = load_model_and_processor(model_dir)[1]
    pairs = PreferenceDataset(datasets.load_from_disk(str(pairs_dir)))
    return PreferenceCollator(processor)([pairs[i] for i in range(4)]), processor.tokenizer.pad_token_id


def logps_of(model, probe):
    batch, pad = probe
    with torch.no_grad():
        out = completion_logps(model, batch, pad)
    return torch.cat([out["chosen_logps"], out["rejected_logps"]])


def reference_logps(policy, reference, probe):
    with reference_mode(policy, reference) as ref_model:
        return logps_of(ref_model, probe)


def close(actual, expected, tol=1e-5):
    torch.testing.assert_close(actual, expected, rtol=tol, atol=tol)


# --- LoRA: the reference adapter --------------------------------------------------------------------

def randomize_policy_adapter(policy, seed):
    """New draws for the policy's adapter only (a stand-in for training), from a local generator."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, weight in sorted(policy.named_parameters()):
            if "lora_" in name and ".default." in name:
                weight.copy_(torch.randn(weight.shape, generator=generator) * 0.05)


def deltas(policy, adapter):
    """``{base module name: s * B @ A}`` (float64) of ``adapter`` in every LoRA layer."""
    return {name.removeprefix("base_model.model."): layer.scaling[adapter] * (
        layer.lora_B[adapter].weight.detach().double() @ layer.lora_A[adapter].weight.detach().double())
        for name, layer in policy.named_modules() if hasattr(layer, "lora_A") and adapter in layer.lora_A}


def with_deltas(model_dir, weight_deltas):
    """The base model with each delta added to its linear layer's weight: a reference built by hand."""
    model = load_model_and_processor(model_dir)[0].eval()
    with torch.no_grad():
        for name, delta in weight_deltas.items():
            model.get_submodule(name).weight.add_(delta.float())
    return model


def best_of_rank(delta, rank):
    u, s, vh = torch.linalg.svd(delta, full_matrices=False)
    return (u[:, :rank] * s[:rank]) @ vh[:rank], float(s[rank:].square().sum().sqrt() / s.square().sum().sqrt())


def test_lora_refresh_mixes_the_adapters_products_exactly_while_the_rank_allows(model_dir, probe):
    base = load_model_and_processor(model_dir)[0]
    untrained = logps_of(base, probe)
    policy = apply_lora(base, r=4, alpha=8).train()
    randomize_policy_adapter(policy, 0)
    refresh = ReferenceRefresh(ALPHA, every=2, exact_syncs=2)  # a rank-8 reference adapter
    assert refresh.prepare_models(policy, None) == []
    trains = {name for name, weight in policy.named_parameters() if weight.requires_grad}
    assert trains and all(".default." in name for name in trains)
    policy_logps = logps_of(policy, probe)

    # before any refresh the reference is the untrained model, and step 1 is no refresh
    assert refresh.after_optimizer_step(1, policy, None) is None
    assert torch.equal(reference_logps(policy, None, probe), untrained)
    assert {name for name, weight in policy.named_parameters() if weight.requires_grad} == trains
    close(logps_of(policy, probe), policy_logps, tol=0)  # the policy's own adapter is back in place

    first = deltas(policy, "default")
    assert "step 2: TR-DPO refresh 1" in refresh.after_optimizer_step(2, policy, None)
    expected = {name: ALPHA * delta for name, delta in first.items()}
    close(reference_logps(policy, None, probe), logps_of(with_deltas(model_dir, expected), probe))
    assert (reference_logps(policy, None, probe) - untrained).abs().max() > 1e-2  # the refresh does matter

    randomize_policy_adapter(policy, 1)  # the second refresh needs rank 2r: still exact
    second = deltas(policy, "default")
    line = refresh.after_optimizer_step(4, policy, None)
    expected = {name: ALPHA * second[name] + (1 - ALPHA) * expected[name] for name in second}
    close(reference_logps(policy, None, probe), logps_of(with_deltas(model_dir, expected), probe))
    ours = deltas(policy, REFERENCE_ADAPTER)
    assert max(float((ours[name] - expected[name]).abs().max()) for name in ours) < 1e-6
    assert refresh.error < 1e-6 and "approximation" not in line

    randomize_policy_adapter(policy, 2)  # rank 3r would be needed: the best rank-2r approximation is kept
    third = deltas(policy, "default")
    line = refresh.after_optimizer_step(6, policy, None)
    ours, errors = deltas(policy, REFERENCE_ADAPTER), []
    for name, delta in third.items():
        best, error = best_of_rank(ALPHA * delta + (1 - ALPHA) * expected[name], 8)
        assert float((ours[name] - best).abs().max()) < 1e-6, name
        errors.append(error)
    assert refresh.error == pytest.approx(max(errors), rel=1e-6) and refresh.error > 1e-3
    assert "best approximation of its rank, relative error" in line and refresh.syncs == 3


# --- full fine-tuning: the frozen copy ----------------------------------------------------------------

def test_full_finetune_refresh_mixes_the_frozen_copy_and_keeps_frozen_parts(model_dir, probe):
    policy = load_model_and_processor(model_dir)[0].train()
    freeze_parts(policy, ("vision",))
    reference = frozen_copy(policy)
    initial = {name: weight.detach().clone() for name, weight in policy.named_parameters()}
    refresh = ReferenceRefresh(ALPHA, every=1)
    assert refresh.prepare_models(policy, reference) == [reference]  # checkpoints save the refreshed copy
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, weight in policy.named_parameters():
            if weight.requires_grad:
                weight.add_(torch.randn(weight.shape, generator=generator) * 0.02)
    refresh.after_optimizer_step(1, policy, reference)
    mixed = {}
    for name, weight in reference.named_parameters():
        if part_of(name) == "vision":
            assert torch.equal(weight, initial[name]), name
        mixed[name] = ALPHA * policy.get_parameter(name).detach() + (1 - ALPHA) * initial[name]
        close(weight, mixed[name], tol=1e-6)
    by_hand = load_model_and_processor(model_dir)[0].eval()
    by_hand.load_state_dict(mixed, strict=False)
    close(reference_logps(policy, reference, probe), logps_of(by_hand, probe))


# --- in training: the hook's step, checkpoints and resume ---------------------------------------------

def run_settings(model_dir, pairs_dir, output_dir, max_steps, *more):
    """A constant rate, so that a run stopped at step 2 and carried on to 3 is the 3-step run; a refresh at step 2."""
    train_settings = {"output_dir": output_dir, "max_steps": max_steps, "batch_size": 2, "learning_rate": 1e-2,
                      "lr_scheduler": "constant", "warmup_ratio": 0.0, "save_steps": 1, "save_total_limit": 0,
                      "progress": "false", "mixed_precision": "no", "seed": 3}
    return [f"model.name_or_path={model_dir}", f"data.train={pairs_dir}", "model.lora_r=4", "model.lora_alpha=8",
            "model.lora_dropout=0.1",
            "loss.sync_ref_model=true", f"loss.ref_model_mixup_alpha={ALPHA}", "loss.ref_model_sync_steps=2",
            *(f"train.{key}={value}" for key, value in train_settings.items()), *more]


def run_train(settings):
    """``train``, keeping hold of the policy and the reference it built."""
    built = {}
    build_policy = train_setup.build_policy

    def capture(config):
        built["policy"], built["reference"], processor = build_policy(config)
        return built["policy"], built["reference"], processor

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(train_setup, "build_policy", capture)
        built["output_dir"] = train(load_config(None, settings))
    return built


@pytest.fixture(scope="module", params=["lora", "full"])
def runs(request, model_dir, pairs_dir, tmp_path_factory):
    """A 3-step run, and the same run stopped after step 2 (just after its refresh) and carried on to 3."""
    base = tmp_path_factory.mktemp(request.param)
    finetune = f"model.finetune={request.param}"
    whole = run_train(run_settings(model_dir, pairs_dir, base / "whole", 3, finetune))
    run_train(run_settings(model_dir, pairs_dir, base / "stopped", 2, finetune))
    resumed = run_train(run_settings(model_dir, pairs_dir, base / "stopped", 3, finetune))
    return request.param, whole, resumed


def test_the_reference_is_refreshed_after_step_2_only_and_exactly(runs, model_dir, probe):
    finetune, whole, _ = runs
    out = whole["output_dir"]
    assert [json.loads((out / f"checkpoint-{step}" / "trainer_state.json").read_text())["ref_model_syncs"]
            for step in (1, 2, 3)] == [0, 1, 1]
    untrained = load_model_and_processor(model_dir)[0].eval()
    first, second = (load_file(str(out / f"checkpoint-{step}" / "model.safetensors")) for step in (1, 2))
    if finetune == "lora":
        # the reference adapter is zero (the untrained model) up to the refresh at step 2
        reference = [name for name in first if f".{REFERENCE_ADAPTER}." in name]
        assert reference and all(not first[name].any() for name in reference)
        assert all(second[name].any() for name in reference if "lora_B" in name)
        # the reference after step 3 is the base plus alpha times the policy's delta after step 2
        policy_at_2 = apply_lora(copy.deepcopy(untrained), r=4, alpha=8)
        assert not [key for key in policy_at_2.load_state_dict(second, strict=False).missing_keys if "lora_" in key]
        expected = {name: ALPHA * delta for name, delta in deltas(policy_at_2, "default").items()}
        close(reference_logps(whole["policy"], None, probe), logps_of(with_deltas(model_dir, expected), probe))
    else:
        initial = untrained.state_dict()
        mixed = {name: ALPHA * second[name] + (1 - ALPHA) * initial[name] for name in second}
        for name, weight in whole["reference"].named_parameters():
            close(weight, mixed[name], tol=1e-6)
        untrained.load_state_dict(mixed, strict=False)
        close(reference_logps(whole["policy"], whole["reference"], probe), logps_of(untrained, probe))


def test_a_run_stopped_after_a_refresh_resumes_exactly(runs):
    finetune, whole, resumed = runs
    expected = read_metrics(whole["output_dir"] / "metrics.jsonl")
    records = read_metrics(resumed["output_dir"] / "metrics.jsonl")
    assert [r["step"] for r in records] == [1, 2, 3]
    for ours, theirs in zip(records, expected):
        for key in COMPARED:
            assert ours[key] == pytest.approx(theirs[key], rel=1e-6, abs=1e-7), (ours["step"], key)
    ours, theirs = resumed["policy"].state_dict(), whole["policy"].state_dict()
    for name, value in theirs.items():
        close(ours[name], value, tol=1e-6)
    if finetune == "full":
        ours = resumed["reference"].state_dict()
        for name, value in whole["reference"].state_dict().items():
            close(ours[name], value, tol=1e-6)
    state = json.loads((resumed["output_dir"] / "checkpoint-3" / "trainer_state.json").read_text())
    assert state["ref_model_syncs"] == 1


# --- refusals -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("settings, message", [
    (["loss.ref_model_mixup_alpha=0"], r"ref_model_mixup_alpha must be in \(0, 1\]"),
    (["loss.ref_model_mixup_alpha=1.5"], r"ref_model_mixup_alpha must be in \(0, 1\]"),
    (["loss.ref_model_sync_steps=0"], "must be >= 1"),
    (["loss.ref_model_exact_syncs=0"], "must be >= 1"),
    (["loss.sync_ref_model=true", "loss.losses=sft"], "no loss of 'sft' reads one"),
    (["loss.sync_ref_model=true", "loss.losses=simpo"], "no loss of 'simpo' reads one"),
])
def test_settings_that_cannot_work_are_refused_when_the_config_loads(settings, message):
    with pytest.raises(ValueError, match=message):
        load_config(None, settings)


def test_precomputed_reference_logps_are_refused_when_the_config_loads(model_dir, pairs_dir, tmp_path):
    settings = run_settings(model_dir, pairs_dir, tmp_path / "run", 2, "train.precompute_ref_logps=true")
    with pytest.raises(ValueError, match="sync_ref_model refreshes.*precompute_ref_logps=false"):
        load_config(None, settings)


def test_the_method_is_built_only_when_asked_for():
    assert not any(isinstance(m, ReferenceRefresh) for m in build_methods(load_config(None, []).loss))
    loss = load_config(None, ["loss.sync_ref_model=true", "loss.ref_model_sync_steps=8"]).loss
    [refresh] = [m for m in build_methods(loss) if isinstance(m, ReferenceRefresh)]
    assert (refresh.alpha, refresh.every, refresh.exact_syncs, refresh.moves_reference) == (0.6, 8, 4, True)
