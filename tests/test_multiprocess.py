"""Two processes under a real ``accelerate launch`` (gloo on the CPU) train exactly as one process with
twice the gradient accumulation: same learning-rate schedule (cosine with warmup), same losses, same held-out
evaluation, same adapter,
on a dataset that mixes text-only and image rows with LoRA on the vision tower too (a process whose row has
no image leaves the vision LoRA without a gradient, which plain DDP refuses)."""

import json
import os
import socket
import subprocess
import sys

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from vlmdpo.train.setup import EpochShuffleSampler

NUM_ROWS, STEPS = 8, 6  # one row per process and micro-batch: 4 steps an epoch, step 5 starts the second


def write_mixed_pairs(folder):
    """Eight pairs: even rows with a 32x32 image, odd rows text only."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(NUM_ROWS):
        colour = ["red", "green", "blue", "yellow"][i % 4]
        if i % 2 == 0:
            Image.new("RGB", (32, 32), colour).save(folder / f"{i}.png")
            rows.append({"images": [f"{i}.png"], "prompt": "describe the image.",
                         "chosen": f"a {colour} square.", "rejected": f"a {colour} dog on a bench {i}."})
        else:
            rows.append({"images": [], "prompt": f"what colour is {colour} paint number {i}?",
                         "chosen": f"it is {colour}.", "rejected": "it is a cat."})
    path = folder / "pairs.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def train_command(model_dir, data, output_dir, accumulation):
    return ["-m", "vlmdpo.cli", "train", f"model.name_or_path={model_dir}", f"data.train={data}",
            "model.lora_parts=[language,projector,vision]", f"train.output_dir={output_dir}",
            f"train.max_steps={STEPS}", "train.batch_size=1", f"train.gradient_accumulation_steps={accumulation}",
            "train.learning_rate=5e-3", "train.lr_scheduler=cosine", "train.warmup_ratio=0.2",
            "train.mixed_precision=no", "train.progress=false", "train.save_steps=3", "train.seed=3",
            f"data.eval={data}", "data.eval_max_rows=4", "train.eval_steps=3"]


def run(command, **kwargs):
    env = {**os.environ, "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600, **kwargs)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-6000:]
    return done


def metrics(output_dir, evaluation=False):
    records = [json.loads(line) for line in (output_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in records if any(key.startswith("eval/") for key in r) == evaluation]


@pytest.mark.parametrize("family", ["llava"], indirect=True)
def test_two_processes_equal_one_process_with_doubled_accumulation(family, tiny_model_dir, tmp_path):
    data = write_mixed_pairs(tmp_path / "data")
    order = list(EpochShuffleSampler(NUM_ROWS, seed=3))
    steps = [order[i:i + 2] for i in range(0, NUM_ROWS, 2)]
    assert any((a % 2) != (b % 2) for a, b in steps), "the test needs a step where one process has no image"

    one, two = tmp_path / "one", tmp_path / "two"
    run([sys.executable, *train_command(tiny_model_dir, data, one, accumulation=2)])
    run([sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
         "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
         "--main_process_port", str(free_port()), *train_command(tiny_model_dir, data, two, accumulation=1)])

    single, double = metrics(one), metrics(two)
    assert [r["step"] for r in single] == [r["step"] for r in double] == list(range(1, STEPS + 1))
    for ours, theirs in zip(double, single):
        assert ours["learning_rate"] == pytest.approx(theirs["learning_rate"], rel=1e-12), ours["step"]
        for key in ("loss", "rewards/margins", "logps/chosen", "logps/rejected"):
            assert ours[key] == pytest.approx(theirs[key], abs=1e-5), (ours["step"], key)
    # the held-out evaluation (main process only, the others wait) sees the same adapter
    single_eval, double_eval = metrics(one, evaluation=True), metrics(two, evaluation=True)
    assert [r["step"] for r in single_eval] == [r["step"] for r in double_eval] == [3, 6]
    for ours, theirs in zip(double_eval, single_eval):
        for key in ("eval/rewards/margins", "eval/logps/chosen", "eval/logps/rejected"):
            assert ours[key] == pytest.approx(theirs[key], abs=1e-5), (ours["step"], key)
    # the schedule is the one sized for STEPS steps: warmup to the peak, then cosine down, never back up
    rates = [r["learning_rate"] for r in single]
    assert rates[0] < rates[1] and rates[1:] == sorted(rates[1:], reverse=True) and rates[-1] > 0
    assert single[-1]["loss"] != single[0]["loss"]

    adapter_one = load_file(str(one / "adapter_model.safetensors"))
    adapter_two = load_file(str(two / "adapter_model.safetensors"))
    assert any("vision" in name for name in adapter_one)
    for name, value in adapter_one.items():
        torch.testing.assert_close(adapter_two[name], value, rtol=1e-4, atol=1e-5)
    vision_b = [v for n, v in adapter_one.items() if "vision" in n and "lora_B" in n]
    assert vision_b and any(v.abs().max() > 0 for v in vision_b)  # the vision LoRA did train
    # one process wrote the checkpoints, each once, with both processes' RNG states
    assert sorted(p.name for p in two.glob("checkpoint-*")) == ["checkpoint-3", "checkpoint-6"]
    assert {p.name for p in (two / "checkpoint-3").glob("random_states_*")} == {
        "random_states_0.pkl", "random_states_1.pkl"}


@pytest.mark.parametrize("name, kind", [("ddp", "MULTI_GPU"), ("fsdp", "FSDP"), ("deepspeed_zero2", "DEEPSPEED"),
                                        ("deepspeed_zero3", "DEEPSPEED")])
def test_shipped_accelerate_configs_are_valid(name, kind):
    """The example launch configs in docs/accelerate load as accelerate configs of the stated kind (running
    them needs GPUs: ``ACCELERATE_USE_CPU`` turns every one into plain CPU DDP)."""
    from pathlib import Path

    from accelerate.commands.config.config_args import load_config_from_file

    path = Path(__file__).parents[1] / "docs" / "accelerate" / f"{name}.yaml"
    config = load_config_from_file(str(path))
    assert config.distributed_type.name == kind and config.num_processes > 1
    if kind == "DEEPSPEED":
        assert config.deepspeed_config["zero_stage"] == int(name[-1])
