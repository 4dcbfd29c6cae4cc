"""End to end: ``train(config)`` on shapes-world POVID pairs with the tiny models, on the CPU.

The learning rate is high (1e-2) and constant so a few steps move the weights visibly, and so that a run
resumed at step k must reproduce an uninterrupted run exactly.
"""

import json
import math

import datasets
import pytest
import torch

import vlmdpo.train.loop as train_module
import vlmdpo.train.setup as train_setup
from data_recipes.shapes import build_shapes_dataset, povid_pairs
from vlmdpo.data.collator import PreferenceCollator
from vlmdpo.config import load_config
from vlmdpo.data.rows import PreferenceDataset
from vlmdpo.forward.logps import completion_logps
from vlmdpo.model.load import load_model_and_processor
from vlmdpo.model.lora import reference_mode

NUM_ROWS, BATCH_SIZE, STEPS = 12, 4, 4  # 3 micro-batches an epoch: step 4 is in the second epoch
METRIC_KEYS = {"loss", "rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies",
               "logps/chosen", "logps/rejected"}


@pytest.fixture(scope="session")
def pairs_dir(tmp_path_factory):
    """POVID pairs (true caption chosen, hallucinated rewrite rejected) of 32x32 shapes images."""
    folder = tmp_path_factory.mktemp("pairs") / "povid"
    shapes = build_shapes_dataset(seed=0, num_train=NUM_ROWS, num_test=0, image_size=32)
    povid_pairs(shapes["train"]).save_to_disk(str(folder))
    return folder


def overrides(model_dir, pairs_dir, output_dir, **train):
    settings = {"output_dir": output_dir, "max_steps": STEPS, "batch_size": BATCH_SIZE, "learning_rate": 1e-2,
                "lr_scheduler": "constant", "warmup_ratio": 0.0, "progress": "false",
                "mixed_precision": "no", **train}  # float32 on a GPU too: these tests compare runs to 1e-5
    return [f"model.name_or_path={model_dir}", f"data.train={pairs_dir}",
            *(f"train.{key}={value}" for key, value in settings.items())]


def run_train(config_overrides):
    """``train(config)``, keeping hold of the policy and reference it built (with their initial weights)
    and of the dataset rows of every micro-batch it trained on."""
    built, batches = {}, []
    build_policy, dpo_step = train_setup.build_policy, train_module.dpo_step

    def capture_policy(config):
        policy, reference, processor = build_policy(config)
        built.update(policy=policy, reference=reference, initial={
            name: value.detach().clone() for name, value in policy.state_dict().items()})
        return policy, reference, processor

    def capture_batch(policy, reference, batch, *args, **kwargs):
        batches.append(list(batch["index"]))
        return dpo_step(policy, reference, batch, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(train_setup, "build_policy", capture_policy)
        patch.setattr(train_module, "dpo_step", capture_batch)
        output_dir = train_module.train(load_config(None, config_overrides))
    return {"output_dir": output_dir, "batches": batches, **built}


def read_metrics(output_dir):
    return [json.loads(line) for line in (output_dir / "metrics.jsonl").read_text().splitlines()]


def logps_of(model, batch, pad_token_id):
    with torch.no_grad():
        out = completion_logps(model, batch, pad_token_id)
    return torch.cat([out["chosen_logps"], out["rejected_logps"]])


@pytest.fixture(scope="session")
def probe_batch(tiny_model_and_processor, pairs_dir):
    """The first four pairs, collated, for comparing models."""
    processor = tiny_model_and_processor[1]
    pairs = PreferenceDataset(datasets.load_from_disk(str(pairs_dir)))
    return PreferenceCollator(processor)([pairs[i] for i in range(4)])


@pytest.fixture(scope="session")
def lora_run(tiny_model_dir, pairs_dir, tmp_path_factory):
    """An uninterrupted LoRA run of ``STEPS`` steps, checkpointing every step."""
    output_dir = tmp_path_factory.mktemp("lora_run")
    return run_train(overrides(tiny_model_dir, pairs_dir, output_dir, save_steps=1, save_total_limit=2))


def close(actual, expected, tol=1e-5):
    torch.testing.assert_close(actual, expected, rtol=tol, atol=tol)


# --- LoRA ---------------------------------------------------------------------------------------

def test_lora_weights_change_and_base_weights_do_not(lora_run):
    policy, initial = lora_run["policy"], lora_run["initial"]
    trained = policy.state_dict()
    lora = [name for name in trained if "lora_" in name]
    assert lora and all(".language_model." in name for name in lora)
    assert {n for n, p in policy.named_parameters() if p.requires_grad} == set(lora)
    for name, value in trained.items():
        if name in lora:  # lora_B starts at zero and moves at step 1; lora_A moves from step 2
            assert not torch.equal(value, initial[name]), f"{name} did not train"
        else:
            assert torch.equal(value, initial[name]), f"base weight {name} changed"
    assert lora_run["reference"] is None  # the reference is the policy with its adapter disabled


def test_reference_logps_stay_those_of_the_untrained_model(lora_run, tiny_model_and_processor, probe_batch):
    untrained, processor = tiny_model_and_processor
    pad = processor.tokenizer.pad_token_id
    expected = logps_of(untrained, probe_batch, pad)
    policy = lora_run["policy"]
    with reference_mode(policy) as reference:
        close(logps_of(reference, probe_batch, pad), expected, tol=1e-6)
    assert (logps_of(policy, probe_batch, pad) - expected).abs().max() > 1e-2  # the adapter does matter


def test_metrics_are_logged_every_step_and_finite(lora_run):
    records = read_metrics(lora_run["output_dir"])
    assert [r["step"] for r in records] == list(range(1, STEPS + 1))
    for record in records:
        assert METRIC_KEYS <= set(record)
        assert all(math.isfinite(record[key]) for key in METRIC_KEYS)
        assert 0.0 <= record["rewards/accuracies"] <= 1.0
        assert record["logps/chosen"] < 0 and record["logps/rejected"] < 0
    # step 1 trains from policy == reference (lora_B = 0): rewards 0, sigmoid loss -log s(0) = ln 2
    first = records[0]
    assert first["loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert first["rewards/chosen"] == first["rewards/rejected"] == first["rewards/margins"] == 0.0
    assert records[-1]["loss"] != pytest.approx(math.log(2), abs=1e-4)
    assert lora_run["batches"] and all(len(b) == BATCH_SIZE for b in lora_run["batches"])


def test_saved_adapter_loads_onto_a_fresh_base(lora_run, tiny_model_dir, probe_batch):
    from peft import PeftModel

    output_dir = lora_run["output_dir"]
    assert (output_dir / "adapter_config.json").exists() and (output_dir / "config.yaml").exists()
    base, processor = load_model_and_processor(tiny_model_dir)
    loaded = PeftModel.from_pretrained(base, str(output_dir)).eval()
    pad = processor.tokenizer.pad_token_id
    trained = lora_run["policy"].state_dict()
    for name, value in loaded.state_dict().items():
        if "lora_" in name:
            assert torch.equal(value, trained[name]), name
    close(logps_of(loaded, probe_batch, pad), logps_of(lora_run["policy"], probe_batch, pad))
    from transformers import AutoProcessor

    saved = AutoProcessor.from_pretrained(str(output_dir))
    assert saved.tokenizer.get_vocab() == processor.tokenizer.get_vocab()


# --- resuming -----------------------------------------------------------------------------------

def resume_and_compare(lora_run, tiny_model_dir, pairs_dir, output_dir, capsys, stop):
    """Stop at step ``stop``, rerun to ``stop + 1``: it must resume, and match the uninterrupted run."""
    first = run_train(overrides(tiny_model_dir, pairs_dir, output_dir, max_steps=stop, save_steps=1))
    assert [r["step"] for r in read_metrics(output_dir)] == list(range(1, stop + 1))
    assert (output_dir / f"checkpoint-{stop}").is_dir()
    capsys.readouterr()

    second = run_train(overrides(tiny_model_dir, pairs_dir, output_dir, max_steps=stop + 1, save_steps=1))
    log = capsys.readouterr().out
    assert f"resuming from {output_dir / f'checkpoint-{stop}'} at step {stop}" in log
    records = read_metrics(output_dir)
    assert [r["step"] for r in records] == list(range(1, stop + 2))  # appended, not started over
    state = json.loads((output_dir / f"checkpoint-{stop + 1}" / "trainer_state.json").read_text())
    assert state["step"] == stop + 1 and state["micro_batches"] == stop + 1
    assert len(second["batches"]) == 1

    # the same batches in the same order, the same metrics and the same weights as without the stop
    assert first["batches"] + second["batches"] == lora_run["batches"][: stop + 1]
    reference = read_metrics(lora_run["output_dir"])
    for ours, theirs in zip(records, reference):
        for key in METRIC_KEYS:
            assert ours[key] == pytest.approx(theirs[key], rel=1e-5, abs=1e-6), (ours["step"], key)
    uninterrupted = lora_run["policy"].state_dict() if stop + 1 == STEPS else None
    if uninterrupted is not None:
        for name, value in second["policy"].state_dict().items():
            if "lora_" in name:
                close(value, uninterrupted[name], tol=1e-6)


def test_resume_within_an_epoch(lora_run, tiny_model_dir, pairs_dir, tmp_path, capsys):
    resume_and_compare(lora_run, tiny_model_dir, pairs_dir, tmp_path / "run", capsys, stop=2)


def test_resume_across_an_epoch_boundary(lora_run, tiny_model_dir, pairs_dir, tmp_path, capsys):
    resume_and_compare(lora_run, tiny_model_dir, pairs_dir, tmp_path / "run", capsys, stop=STEPS - 1)


# --- full fine-tuning ---------------------------------------------------------------------------

@pytest.mark.parametrize("family", ["qwen2_vl"], indirect=True)
def test_full_finetune_trains_the_weights_and_keeps_the_reference(
        family, tiny_model_dir, tiny_model_and_processor, pairs_dir, probe_batch, tmp_path):
    run = run_train(overrides(tiny_model_dir, pairs_dir, tmp_path / "full", max_steps=2) + ["model.finetune=full"])
    policy, reference, initial = run["policy"], run["reference"], run["initial"]
    assert reference is not None and reference is not policy
    assert not any(p.requires_grad for p in reference.parameters())
    changed = [n for n, v in policy.state_dict().items() if not torch.equal(v, initial[n])]
    assert "lm_head.weight" in changed and len(changed) > len(initial) // 2
    for name, value in reference.state_dict().items():
        assert torch.equal(value, initial[name]), f"reference weight {name} changed"

    untrained, processor = tiny_model_and_processor
    pad = processor.tokenizer.pad_token_id
    expected = logps_of(untrained, probe_batch, pad)
    with reference_mode(policy, reference) as ref_model:
        close(logps_of(ref_model, probe_batch, pad), expected, tol=1e-6)
    assert (logps_of(policy, probe_batch, pad) - expected).abs().max() > 1e-2
    assert math.isfinite(read_metrics(run["output_dir"])[-1]["loss"])

    saved, _ = load_model_and_processor(str(run["output_dir"]))
    for name, value in saved.state_dict().items():
        assert torch.equal(value, policy.state_dict()[name]), name


def test_full_finetune_leaves_frozen_parts_unchanged(tiny_model_dir, pairs_dir, tmp_path):
    from vlmdpo.model.lora import part_of

    run = run_train(overrides(tiny_model_dir, pairs_dir, tmp_path / "full", max_steps=2)
                    + ["model.finetune=full", "model.frozen_parts=[vision]"])
    policy, initial = run["policy"], run["initial"]
    changed = {n for n, v in policy.state_dict().items() if not torch.equal(v, initial[n])}
    vision = {n for n in initial if part_of(n) == "vision"}
    assert vision and not changed & vision
    assert {part_of(n) for n in changed} >= {"projector", "language"}


@pytest.mark.parametrize("overrides_, message", [
    (["model.frozen_parts=[vision]"], "applies to model.finetune=full"),
    (["model.finetune=full", "model.frozen_parts=[eyes]"], "unknown parts"),
])
def test_frozen_parts_are_checked_when_the_config_loads(overrides_, message):
    from vlmdpo.config import load_config

    with pytest.raises(ValueError, match=message):
        load_config(None, overrides_)


# --- evaluation during training --------------------------------------------------------------------

def test_eval_during_training_is_logged_with_the_training_metrics(tiny_model_dir, pairs_dir, tmp_path):
    from vlmdpo.train.loop import train

    out = tmp_path / "run"
    train(load_config(None, overrides(tiny_model_dir, pairs_dir, out, max_steps=2, eval_steps=1,
                                      eval_vocabulary="data_recipes.shapes:SHAPES_VOCABULARY", eval_max_new_tokens=8)
                      + [f"data.eval={pairs_dir}", "data.eval_max_rows=4"]))
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in records if "eval/rewards/accuracies" in r]
    assert [r["step"] for r in evals] == [1, 2]
    for record in evals:
        assert {"eval/logps/chosen", "eval/chair_i", "eval/object_recall"} <= set(record)
        assert all(math.isfinite(v) for k, v in record.items() if k != "step")
    # a step's evaluation sees the adapter trained up to that step: the first has moved off the reference
    assert evals[0]["eval/rewards/margins"] != 0.0
