"""DeepSpeed ZeRO-2 and ZeRO-3 over gloo, 2 processes on the CPU (``tests/deepspeed_worker.py`` under
``torch.distributed.run``, as a stand-in for ``accelerate``'s DeepSpeed plugin, which does not run on a CPU): 3 DPO
steps of a tiny LLaVA with LoRA on language, projector and vision, one process's micro-batch text only at the first
two steps, give the losses and the LoRA weights of one unsharded process that accumulates both micro-batches of
each step, with the same optimizer (vlmdpo's torch AdamW; DeepSpeed steps it on its flat partitions). Without the
blank-image rule (``vlmdpo.forward.idle_vision``) the text-only process skips the vision tower and the job
aborts at the first step, ZeRO-3 in its parameter all-gathers, ZeRO-2 in its gradient reduction."""

import os
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
import torch
from deepspeed_worker import (
    STEPS,
    WORLD_SIZE,
    images,
    lora_weights,
    optimizer_of,
    policy_and_collator,
)
from helpers import rows_from

from vlmdpo.config import LossConfig
from vlmdpo.model.lora import part_of
from vlmdpo.train.step import dpo_step

WORKER = Path(__file__).with_name("deepspeed_worker.py")
TIMEOUT_S, FAILURE_TIMEOUT_S = 120, 60


def _run(model_dir, stage, out, *flags, timeout_s):
    """The worker on ``WORLD_SIZE`` processes: ``(exit code, log)``, the exit code ``None`` when the run was killed
    after ``timeout_s`` (a hang)."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(WORLD_SIZE),
               str(WORKER), model_dir, str(stage), str(out), *flags]
    process = subprocess.Popen(command, env={**os.environ, "OMP_NUM_THREADS": "1"}, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        log = process.communicate(timeout=timeout_s)[0]
        return process.returncode, log
    except subprocess.TimeoutExpired:
        launcher = psutil.Process(process.pid)
        for child in [*launcher.children(recursive=True), launcher]:  # torchrun starts its workers in new sessions
            child.kill()
        return None, process.communicate()[0]


@pytest.fixture(scope="module")
def one_process(tiny_model_dir):
    """Losses and LoRA weights of one unsharded process that accumulates both processes' micro-batches of each step
    (each loss halved, as DeepSpeed averages the processes' gradients), and the weights it started from."""
    with torch.random.fork_rng():  # peft draws lora_A from the global RNG (then overwritten from a local one)
        policy, pad, collator = policy_and_collator(tiny_model_dir)
    start, optimizer, pictures, losses = lora_weights(policy), optimizer_of(policy), images(), []
    for micro_batches in STEPS:
        step_losses = []
        for rows in micro_batches:
            loss, _ = dpo_step(policy, None, collator(rows_from(pictures, rows)), LossConfig(), pad_token_id=pad,
                               forward_path="plain")
            (loss / len(micro_batches)).backward()
            step_losses.append(loss.detach())
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(torch.stack(step_losses).mean())
    return {"losses": torch.stack(losses), "weights": lora_weights(policy), "start": start}


@pytest.mark.parametrize("family", ["llava"], indirect=True)
@pytest.mark.parametrize("stage", [2, 3])
def test_zero_with_a_text_only_process_equals_one_process(family, stage, tiny_model_dir, one_process, tmp_path):
    code, log = _run(tiny_model_dir, stage, tmp_path / "result.pt", timeout_s=TIMEOUT_S)
    assert code == 0, f"ZeRO-{stage} exit code {code} (None: killed after {TIMEOUT_S} s)\n{log[-6000:]}"
    result = torch.load(tmp_path / "result.pt")
    assert result["stage"] == stage
    assert result["partitioned"] == (stage == 3)  # ZeRO-3 splits the parameters themselves (vlmdpo's is_sharded)
    # every forward (policy and reference, 3 steps) ran the vision tower on both processes, on the text-only
    # micro-batches too (on the blank image)
    assert result["vision_calls"] == [2 * len(STEPS)] * WORLD_SIZE
    torch.testing.assert_close(result["losses"], one_process["losses"], rtol=0, atol=1e-5)
    weights, expected = result["weights"], one_process["weights"]
    assert set(weights) == set(expected) and len(expected) == 56
    for name, value in expected.items():
        torch.testing.assert_close(weights[name], value, rtol=0, atol=1e-5, msg=name)
    moved = {part_of(name) for name, value in weights.items() if not torch.equal(value, one_process["start"][name])}
    assert moved == {"language", "projector", "vision"}


@pytest.mark.parametrize("family", ["llava"], indirect=True)
@pytest.mark.parametrize("stage", [2, 3])
def test_zero_without_the_blank_image_rule_fails_at_the_text_only_step(family, stage, tiny_model_dir, tmp_path):
    code, log = _run(tiny_model_dir, stage, tmp_path / "result.pt", "--no-blank-image", timeout_s=FAILURE_TIMEOUT_S)
    assert all(f"rank {rank}: ZeRO-{stage} engine ready" in log for rank in range(WORLD_SIZE)), log[-6000:]
    assert code != 0 and "step 0 done" not in log and not (tmp_path / "result.pt").exists(), log[-6000:]
    # gloo reports the mismatched collective (NCCL would hang, which the timeout stands for)
    assert code is None or "Received data size doesn't match expected size" in log, log[-6000:]
