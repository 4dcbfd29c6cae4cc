"""Killed and damaged runs: a SIGKILLed run with LoRA dropout resumes exactly, a damaged newest checkpoint is
skipped for the previous one, other data or settings are refused, and non-finite losses stop the run."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from data_recipes.shapes import build_shapes_dataset, povid_pairs
from vlmdpo.train.checkpoints import ResumeError, step_checkpoints
from vlmdpo.config import load_config
from vlmdpo.eval.metrics_log import read_metrics
from vlmdpo.train.loop import NonFiniteError, train

COMPARED = ("loss", "rewards/chosen", "rewards/rejected", "logps/chosen", "logps/rejected", "learning_rate")


@pytest.fixture(scope="module")
def pairs_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pairs") / "povid"
    povid_pairs(build_shapes_dataset(seed=1, num_train=24, num_test=0, image_size=32)["train"]).save_to_disk(
        str(folder))
    return folder


def settings(model_dir, data, output_dir, **train_settings):
    values = {"output_dir": output_dir, "batch_size": 2, "learning_rate": 5e-3, "lr_scheduler": "cosine",
              "warmup_ratio": 0.1, "progress": "false", "mixed_precision": "no", "seed": 5, **train_settings}
    return [f"model.name_or_path={model_dir}", f"data.train={data}", "model.lora_dropout=0.1",
            *(f"train.{key}={value}" for key, value in values.items())]


def assert_same_steps(records, expected, tol=1e-7):
    assert [r["step"] for r in records] == [r["step"] for r in expected]
    for ours, theirs in zip(records, expected):
        for key in COMPARED:
            assert ours[key] == pytest.approx(theirs[key], rel=tol, abs=tol), (ours["step"], key)


def cli(args, **kwargs):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.Popen([sys.executable, "-m", "vlmdpo.cli", "train", *args], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, **kwargs)


@pytest.mark.parametrize("family", ["llava"], indirect=True)
def test_sigkill_mid_epoch_with_dropout_resumes_exactly(family, tiny_model_dir, pairs_dir, tmp_path):
    steps = 30  # 12 micro-batches an epoch: the kill lands mid-epoch, the run crosses two epoch boundaries
    args = lambda out: settings(tiny_model_dir, pairs_dir, out, max_steps=steps, save_steps=4)  # noqa: E731
    whole = cli(args(tmp_path / "whole"))
    assert whole.wait(timeout=600) == 0, whole.stdout.read()[-3000:]
    expected = read_metrics(tmp_path / "whole" / "metrics.jsonl")

    out = tmp_path / "killed"
    killed = cli(args(out))
    logged = []
    deadline = time.time() + 600
    while time.time() < deadline and killed.poll() is None:
        logged = read_metrics(out / "metrics.jsonl") if (out / "metrics.jsonl").exists() else []
        # just past checkpoint 16 or 20: mid-epoch (12 steps an epoch), where a resumed run starts a new
        # data-loader iterator that the uninterrupted run does not
        if logged and logged[-1]["step"] % 4 in (1, 2) and 16 < logged[-1]["step"] < 24:
            killed.send_signal(signal.SIGKILL)
            break
        time.sleep(0.002)
    assert killed.wait(timeout=60) == -signal.SIGKILL, "the run ended before it could be killed"
    newest = max(int(p.name.split("-")[1]) for p in step_checkpoints(out))
    at_kill = read_metrics(out / "metrics.jsonl")
    assert newest in (16, 20) and at_kill[-1]["step"] > newest and not (out / "adapter_model.safetensors").exists()

    resumed = cli(args(out))
    log = resumed.stdout.read()
    assert resumed.wait(timeout=600) == 0, log[-3000:]
    assert f"resuming from {out / f'checkpoint-{newest}'} at step {newest}" in log
    assert "rows checked before" in log  # the data check of the first start is reused
    records = read_metrics(out / "metrics.jsonl")
    assert [r["step"] for r in records] == list(range(1, steps + 1))  # each step once
    assert_same_steps(records, expected)
    ours = load_file(str(out / "adapter_model.safetensors"))
    theirs = load_file(str(tmp_path / "whole" / "adapter_model.safetensors"))
    for name, value in theirs.items():
        torch.testing.assert_close(ours[name], value, rtol=0, atol=1e-7)


# --- damaged checkpoints ------------------------------------------------------------------------

def truncate(path):
    path.write_bytes(path.read_bytes()[: max(1, path.stat().st_size // 2)])


DAMAGE = {
    "truncated optimizer": lambda c: truncate(c / "optimizer.bin"),
    "truncated model": lambda c: truncate(c / "model.safetensors"),
    "missing optimizer": lambda c: (c / "optimizer.bin").unlink(),
    "empty trainer state": lambda c: (c / "trainer_state.json").write_text(""),
}


def extendable(model, data, out, max_steps, **more):
    """Settings of a run that is extended from 3 to 4 steps: a constant rate, so that the 3-step run's
    steps are those of the 4-step one."""
    return settings(model, data, out, max_steps=max_steps, save_steps=1, save_total_limit=0,
                    lr_scheduler="constant", warmup_ratio=0.0, **more)


@pytest.fixture(scope="module")
def three_steps(tmp_path_factory, pairs_dir):
    """A run stopped after step 3 (checkpoints 1..3 kept) and the same run carried on to step 4."""
    from vlmdpo.tiny import tiny_vlm

    model = tiny_vlm("llava")
    base = tmp_path_factory.mktemp("three")
    train(load_config(None, extendable(model, pairs_dir, base / "run", 3)))
    train(load_config(None, extendable(model, pairs_dir, base / "whole", 4)))
    return model, base / "run", read_metrics(base / "whole" / "metrics.jsonl")


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_a_damaged_newest_checkpoint_falls_back_to_the_previous(damage, three_steps, pairs_dir, tmp_path, capsys):
    model, run, expected = three_steps
    out = tmp_path / "run"
    shutil.copytree(run, out)
    DAMAGE[damage](out / "checkpoint-3")
    capsys.readouterr()
    train(load_config(None, extendable(model, pairs_dir, out, 4)))
    log = capsys.readouterr().out
    assert f"skipping damaged checkpoint {out / 'checkpoint-3'}" in log
    assert f"resuming from {out / 'checkpoint-2'} at step 2" in log
    records = read_metrics(out / "metrics.jsonl")
    assert_same_steps(records, expected, tol=1e-6)  # steps 3 and 4 redone, each logged once


def test_leftovers_of_a_killed_save_and_stray_folders_do_not_stop_a_resume(three_steps, pairs_dir, tmp_path, capsys):
    model, run, expected = three_steps
    out = tmp_path / "run"
    shutil.copytree(run, out)
    shutil.copytree(out / "checkpoint-3", out / ".checkpoint-4.partial")  # a save killed before its rename
    (out / "checkpoint-best").mkdir()
    capsys.readouterr()
    train(load_config(None, extendable(model, pairs_dir, out, 4)))
    log = capsys.readouterr().out
    assert "unfinished checkpoint" in log and f"resuming from {out / 'checkpoint-3'} at step 3" in log
    assert not (out / ".checkpoint-4.partial").exists() and (out / "checkpoint-best").is_dir()
    assert_same_steps(read_metrics(out / "metrics.jsonl"), expected, tol=1e-6)


def test_other_data_or_settings_are_refused_unless_allowed(three_steps, pairs_dir, tmp_path, capsys):
    model, run, _ = three_steps
    out = tmp_path / "run"
    shutil.copytree(run, out)
    other = tmp_path / "other"
    povid_pairs(build_shapes_dataset(seed=2, num_train=24, num_test=0, image_size=32)["train"]).save_to_disk(
        str(other))
    with pytest.raises(ResumeError, match="data fingerprint") as info:
        train(load_config(None, extendable(model, other, out, 4)))
    assert "resume_with_changes" in str(info.value)
    with pytest.raises(ResumeError, match="train.learning_rate"):
        train(load_config(None, extendable(model, pairs_dir, out, 4, learning_rate=1e-3)))
    capsys.readouterr()
    train(load_config(None, extendable(model, other, out, 4, resume_with_changes="true")))
    assert "resuming with changed settings: data fingerprint" in capsys.readouterr().out
    assert [r["step"] for r in read_metrics(out / "metrics.jsonl")] == [1, 2, 3, 4]


def test_a_resumed_run_carries_on_bcos_running_reward_shift(three_steps, pairs_dir, tmp_path):
    """MPO has a BCO term, whose shift is the running mean of every reward so far: a run stopped at step 2 and
    carried on to step 4 must resume the shift from its checkpoint, not from 0."""
    model = three_steps[0]
    mpo = ["loss.losses=mpo"]
    train(load_config(None, extendable(model, pairs_dir, tmp_path / "whole", 4) + mpo))
    train(load_config(None, extendable(model, pairs_dir, tmp_path / "run", 2) + mpo))
    state = json.loads((tmp_path / "run" / "checkpoint-2" / "trainer_state.json").read_text())
    assert state["reward_count"] == 2 and state["bco_delta"] != 0.0  # one micro-batch a step
    train(load_config(None, extendable(model, pairs_dir, tmp_path / "run", 4) + mpo))
    expected = read_metrics(tmp_path / "whole" / "metrics.jsonl")
    assert_same_steps(read_metrics(tmp_path / "run" / "metrics.jsonl"), expected)
    resumed = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert [r["loss/bco_pair"] for r in resumed] == pytest.approx([r["loss/bco_pair"] for r in expected], abs=1e-7)
    final = json.loads((tmp_path / "run" / "checkpoint-4" / "trainer_state.json").read_text())
    assert final["bco_delta"] == json.loads((tmp_path / "whole" / "checkpoint-4" / "trainer_state.json").read_text())[
        "bco_delta"]


# --- non-finite losses --------------------------------------------------------------------------

def test_a_non_finite_loss_stops_the_run_naming_step_rows_and_checkpoint(three_steps, pairs_dir, tmp_path):
    model = three_steps[0]
    out = tmp_path / "nan"
    overrides = settings(model, pairs_dir, out, max_steps=3, save_steps=1) + ["loss.losses=ipo", "loss.beta=1e-40"]
    with pytest.raises(NonFiniteError) as info:
        train(load_config(None, overrides))
    message = str(info.value)
    assert message.startswith("step 1: the loss is not finite, on the batch of rows [")
    assert "no checkpoint was saved" in message and "train.on_nonfinite=skip" in message
    assert not (out / "adapter_model.safetensors").exists()


def test_skipped_non_finite_steps_leave_the_adapter_finite_and_metrics_valid_json(three_steps, pairs_dir, tmp_path):
    model = three_steps[0]
    out = tmp_path / "nan"
    train(load_config(None, settings(model, pairs_dir, out, max_steps=3, on_nonfinite="skip")
                      + ["loss.losses=ipo", "loss.beta=1e-40"]))
    lines = (out / "metrics.jsonl").read_text().splitlines()
    records = [json.loads(line, parse_constant=lambda c: pytest.fail(f"bare {c} in metrics.jsonl")) for line in lines]
    assert [r["nonfinite_skipped"] for r in records] == [1, 2, 3]
    assert all(r["loss"] is None for r in records)
    adapter = load_file(str(out / "adapter_model.safetensors"))
    assert all(torch.isfinite(v).all() for v in adapter.values())
    assert all(v.abs().max() == 0 for n, v in adapter.items() if "lora_B" in n)  # no update was applied
