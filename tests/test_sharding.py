"""FSDP2 over gloo, 2 processes on the CPU: one DPO step with the policy sharded per block (LoRA on language,
projector and vision) equals one unsharded process running the same global batch (the two processes'
micro-batches accumulated) by the same forward path: per-token log-probs, loss and LoRA gradients to 1e-5. One
process's micro-batch is text only while the other's has an image, so the text-only process must run the vision
tower on its blank image (without it gloo aborts on the mismatched all-gathers). Under sharding
``forward_path=auto`` takes the fast path (run as the model's forward, which gathers the parameters no block
holds), on LLaVA and Qwen2-VL. Full fine-tuning shards the frozen reference copy too (its vision tower also runs on
the blank image) and gives the loss and updated weights of one process, by either path. A sharded ``vlmdpo train``
(fast path) SIGKILLed after a checkpoint resumes exactly, and its adapter (gathered from the shards) loads with
``PeftModel.from_pretrained`` and merges."""

import math
import os
import signal
import socket
import subprocess
import sys
import time

import psutil
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from helpers import randomize_lora, rows_from
from safetensors.torch import load_file
from test_multiprocess import write_mixed_pairs
from torch.distributed.fsdp import FSDPModule
from torch.distributed.tensor import DTensor

from vlmdpo.config import LossConfig
from vlmdpo.data.collator import PreferenceCollator
from vlmdpo.eval.metrics_log import read_metrics
from vlmdpo.forward.fast import choose_forward_path
from vlmdpo.forward.idle_vision import vision_tower
from vlmdpo.model.load import is_sharded, load_model_and_processor
from vlmdpo.model.lora import apply_lora, frozen_copy, part_of
from vlmdpo.train.sharding import block_classes, full_state_dict, shard_policy, shard_reference
from vlmdpo.train.step import dpo_step, logps_function

WORLD_SIZE, TIMEOUT_S = 2, 120
PARTS = ("language", "projector", "vision")
RANK_SPECS = [  # each process's micro-batch: process 0 has an image (and a text-only row), process 1 none
    [(["square"], "describe the image.", "a large red circle.", "a small blue square."),
     ([], "is there a dog?", "no.", "yes.")],
    [([], "what colour is grass?", "it is green.", "it is a cat."),
     ([], "is the sky blue?", "yes, it is.", "no.")],
]


def _policy(model_dir):
    model, processor = load_model_and_processor(model_dir)
    model.requires_grad_(False)
    policy = randomize_lora(apply_lora(model, r=4, alpha=8, parts=PARTS), seed=1).train()
    return policy, processor, PreferenceCollator(processor)


def _lora_grads(policy) -> dict[str, torch.Tensor]:
    """Every LoRA gradient, whole (a sharded one gathered: every process calls this, in the same order)."""
    grads = {}
    for name, param in policy.named_parameters():
        if "lora_" in name and param.grad is not None:
            grad = param.grad
            grads[name] = grad.full_tensor() if hasattr(grad, "full_tensor") else grad.clone()
    return grads


def _sharded_step(rank, model_dir, images, port, out_dir, forward_path):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD_SIZE)
    try:
        policy, processor, collator = _policy(model_dir)
        pad = processor.tokenizer.pad_token_id
        shard_policy(policy, collator.blank_image_inputs())
        log = []  # the same probe batch on every process, as vlmdpo train gives them
        path = choose_forward_path(forward_path, [policy], collator(rows_from(images, RANK_SPECS[0])), pad,
                                   log=log.append)
        vision_calls = []
        vision_tower(policy).register_forward_hook(lambda *_: vision_calls.append(1))
        batch = collator(rows_from(images, RANK_SPECS[rank]))
        with torch.no_grad():
            logps = logps_function(policy, batch, pad, path)(policy)
        loss, _ = dpo_step(policy, None, batch, LossConfig(), pad_token_id=pad, forward_path=path)
        loss.backward()
        mean_loss = loss.detach().clone()
        dist.all_reduce(mean_loss)
        result = {"loss": mean_loss / WORLD_SIZE, "per_token_logps": logps["per_token_logps"],
                  "grads": _lora_grads(policy), "path": path, "log": log, "vision_calls": len(vision_calls),
                  "sharded": is_sharded(policy)}
        torch.save(result, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def _free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _launch(function, args):
    """``function(rank, *args)`` in ``WORLD_SIZE`` spawned processes; a hang fails after ``TIMEOUT_S``."""
    context = mp.start_processes(function, args=args, nprocs=WORLD_SIZE, join=False, start_method="spawn")
    deadline = time.monotonic() + TIMEOUT_S
    while not context.join(timeout=max(1.0, deadline - time.monotonic())):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            pytest.fail(f"the sharded processes did not finish in {TIMEOUT_S} s (a collective one process skipped?)")


def _unsharded_step(model_dir, images, forward_path):
    """The same global batch in one process: the two micro-batches accumulated, each loss halved."""
    policy, processor, collator = _policy(model_dir)
    pad = processor.tokenizer.pad_token_id
    losses, per_token_logps = [], []
    for specs in RANK_SPECS:
        batch = collator(rows_from(images, specs))
        with torch.no_grad():
            per_token_logps.append(logps_function(policy, batch, pad, forward_path)(policy)["per_token_logps"])
        loss, _ = dpo_step(policy, None, batch, LossConfig(), pad_token_id=pad, forward_path=forward_path)
        (loss / WORLD_SIZE).backward()
        losses.append(loss.detach())
    return {"loss": torch.stack(losses).mean(), "per_token_logps": per_token_logps, "grads": _lora_grads(policy)}


def test_block_classes_name_every_layer_of_every_part(tiny_model_and_processor):
    """The units ``shard_policy`` makes: each decoder layer and each vision-encoder layer, asked of the model."""
    model, _ = tiny_model_and_processor
    stacks = {part_of(name): type(module[0]).__name__ for name, module in model.named_modules()
              if isinstance(module, torch.nn.ModuleList) and part_of(name) in ("language", "vision")}
    assert set(stacks) == {"language", "vision"} and set(stacks.values()) <= block_classes(model)


@pytest.mark.parametrize(("family", "forward_path"), [("llava", "plain"), ("llava", "auto"), ("qwen2_vl", "auto")],
                         indirect=["family"])
def test_fsdp2_step_with_a_text_only_process_equals_one_process(family, forward_path, tiny_model_dir, images,
                                                                tmp_path):
    _launch(_sharded_step, (tiny_model_dir, images, _free_port(), str(tmp_path), forward_path))
    ranks = [torch.load(tmp_path / f"rank{rank}.pt") for rank in range(WORLD_SIZE)]
    path = "fast" if forward_path == "auto" else "plain"
    with torch.random.fork_rng():
        expected = _unsharded_step(tiny_model_dir, images, path)

    for rank, result in enumerate(ranks):
        assert result["sharded"] and result["path"] == path
        if forward_path == "auto":  # the fast path runs sharded, after agreeing with the plain one on the probe
            assert result["log"][0].startswith("forward path: fast")
        torch.testing.assert_close(result["loss"], expected["loss"], rtol=0, atol=1e-5)
        torch.testing.assert_close(result["per_token_logps"], expected["per_token_logps"][rank], rtol=0, atol=1e-5)
    assert ranks[0]["loss"] == ranks[1]["loss"]
    # the text-only process ran the vision tower in each of its forwards (log-probs, policy, reference), as the
    # process with the image did
    assert ranks[1]["vision_calls"] == ranks[0]["vision_calls"] == 3
    grads, expected_grads = ranks[0]["grads"], expected["grads"]
    assert set(grads) == set(expected_grads) and {part_of(name) for name in grads} == set(PARTS)
    for name, grad in expected_grads.items():
        torch.testing.assert_close(grads[name], grad, rtol=0, atol=1e-5, msg=name)
    for part in PARTS:
        assert any(grad.abs().max() > 0 for name, grad in grads.items() if part_of(name) == part), part


def _full_finetuning(model_dir):
    """The whole model trained, its reference a frozen copy; the policy then moved off it by a seeded amount, so
    the loss is not ``log 2`` and depends on the reference."""
    model, processor = load_model_and_processor(model_dir)
    reference = frozen_copy(model)
    generator = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for _, param in sorted(model.named_parameters()):
            param.add_(torch.randn(param.shape, generator=generator) * 0.02)
    return model.train(), reference, processor, PreferenceCollator(processor)


def _sgd_step(policy, reference, pad, batches, forward_path):
    """One SGD step on the micro-batches, each loss divided by their number (FSDP2 averages the processes'
    gradients); return their mean loss. SGD, not Adam: Adam's first step is about ``lr * sign(grad)``, which would
    blow rounding in a near-zero gradient up to the learning rate."""
    optimizer = torch.optim.SGD(policy.parameters(), lr=1.0)
    losses = []
    for batch in batches:
        loss, _ = dpo_step(policy, reference, batch, LossConfig(), pad_token_id=pad, forward_path=forward_path)
        (loss / len(batches)).backward()
        losses.append(loss.detach())
    optimizer.step()
    return torch.stack(losses).mean()


def _sharded_full_step(rank, model_dir, images, port, out_dir, forward_path):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD_SIZE)
    try:
        policy, reference, processor, collator = _full_finetuning(model_dir)
        shard_policy(policy, collator.blank_image_inputs())
        shard_reference(reference, collator.blank_image_inputs())
        reference_vision_calls = []
        vision_tower(reference).register_forward_hook(lambda *_: reference_vision_calls.append(1))
        loss = _sgd_step(policy, reference, processor.tokenizer.pad_token_id,
                         [collator(rows_from(images, RANK_SPECS[rank]))], forward_path)
        dist.all_reduce(loss)
        result = {"loss": loss / WORLD_SIZE, "reference_vision_calls": len(reference_vision_calls),
                  "reference_dtensors": all(isinstance(p, DTensor) for p in reference.parameters()),
                  "reference_units": sum(isinstance(m, FSDPModule) for m in reference.modules()),
                  "reference_local": sum(getattr(p, "_local_tensor", p).numel() for p in reference.parameters()),
                  "reference_numel": sum(p.numel() for p in reference.parameters())}
        policy_weights, reference_weights = full_state_dict(policy), full_state_dict(reference)
        if rank == 0:
            result.update(policy=policy_weights, reference=reference_weights)
        torch.save(result, os.path.join(out_dir, f"full{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("family", ["llava"], indirect=True)
@pytest.mark.parametrize("forward_path", ["plain", "fast"])
def test_fsdp2_full_finetuning_shards_the_reference_and_equals_one_process(family, forward_path, tiny_model_dir,
                                                                           images, tmp_path):
    _launch(_sharded_full_step, (tiny_model_dir, images, _free_port(), str(tmp_path), forward_path))
    ranks = [torch.load(tmp_path / f"full{rank}.pt") for rank in range(WORLD_SIZE)]
    with torch.random.fork_rng():
        policy, reference, processor, collator = _full_finetuning(tiny_model_dir)
        expected_loss = _sgd_step(policy, reference, processor.tokenizer.pad_token_id,
                                  [collator(rows_from(images, specs)) for specs in RANK_SPECS], forward_path)

    for result in ranks:
        torch.testing.assert_close(result["loss"], expected_loss, rtol=0, atol=1e-5)
        # sharded per block, and back to shards after its forward (the outermost unit too, which FSDP2 would keep
        # gathered for a backward the reference never runs): every process holds half of it
        assert result["reference_dtensors"] and result["reference_units"] > 2
        assert result["reference_local"] < 0.6 * result["reference_numel"]
        # the text-only process ran the reference's vision tower on its blank image, as the other ran it on its image
        assert result["reference_vision_calls"] == 1
    assert abs(expected_loss - math.log(2)) > 1e-3  # the reference differs from the policy
    weights = ranks[0]["policy"]
    assert set(weights) == set(policy.state_dict())
    moved = 0
    for name, value in policy.state_dict().items():
        torch.testing.assert_close(weights[name], value, rtol=0, atol=1e-5, msg=name)
        moved += not torch.equal(value, reference.state_dict()[name])
    assert moved > len(weights) // 2 and any("vision_tower" in name for name in weights)
    for name, value in reference.state_dict().items():  # the reference did not move
        assert torch.equal(ranks[0]["reference"][name], value), name


def _train_settings(model_dir, data, output_dir, forward_path="auto"):
    return [f"model.name_or_path={model_dir}", f"data.train={data}", "model.lora_parts=[language,projector,vision]",
            f"train.output_dir={output_dir}", "train.max_steps=4", "train.save_steps=2", "train.batch_size=1",
            "train.learning_rate=5e-3", "train.lr_scheduler=cosine", "train.warmup_ratio=0.2",
            "train.mixed_precision=no", "train.progress=false", "train.seed=3", f"train.forward_path={forward_path}"]


def _sharded_train(model_dir, data, output_dir, forward_path="auto"):
    """``vlmdpo train`` sharded over 2 processes under ``accelerate launch``, in its own process group."""
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               "--main_process_port", str(_free_port()), "-m", "vlmdpo.cli", "train",
               *_train_settings(model_dir, data, output_dir, forward_path), "train.sharding=fsdp2"]
    env = {**os.environ, "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.Popen(command, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)


def _finished(process) -> str:
    try:
        log = process.communicate(timeout=TIMEOUT_S)[0]
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        pytest.fail(f"the sharded run did not finish in {TIMEOUT_S} s")
    assert process.returncode == 0, log[-6000:]
    return log


@pytest.mark.parametrize("family", ["llava"], indirect=True)
@pytest.mark.parametrize("forward_path", ["plain", "auto"])
def test_sharded_vlmdpo_train_equals_one_process_with_doubled_accumulation(family, forward_path, tiny_model_dir,
                                                                          tmp_path):
    """``vlmdpo train`` with ``train.sharding=fsdp2`` on 2 processes (the 8 mixed rows: steps where both, one or
    neither process holds an image), cosine schedule, LoRA on all three parts, against ``vlmdpo train`` on one
    process with gradient accumulation 2: the same losses, learning rates and adapter, on either forward path."""
    from vlmdpo.config import load_config
    from vlmdpo.train.loop import train

    data = write_mixed_pairs(tmp_path / "data")
    log = _finished(_sharded_train(tiny_model_dir, data, tmp_path / "sharded", forward_path))
    assert f"forward path: {'fast' if forward_path == 'auto' else 'plain'}" in log
    one = train(load_config(None, [*_train_settings(tiny_model_dir, data, tmp_path / "one", forward_path),
                                   "train.gradient_accumulation_steps=2"]))
    ours, theirs = read_metrics(tmp_path / "sharded" / "metrics.jsonl"), read_metrics(one / "metrics.jsonl")
    assert [r["step"] for r in ours] == [r["step"] for r in theirs] == [1, 2, 3, 4]
    for a, b in zip(ours, theirs):
        for key in ("loss", "logps/chosen", "logps/rejected", "learning_rate"):
            assert a[key] == pytest.approx(b[key], rel=0, abs=1e-5), (a["step"], key)
    sharded, expected = load_file(str(tmp_path / "sharded" / "adapter_model.safetensors")), load_file(
        str(one / "adapter_model.safetensors"))
    assert set(sharded) == set(expected) and any("vision" in name for name in sharded)
    for name, value in expected.items():
        torch.testing.assert_close(sharded[name], value, rtol=0, atol=1e-5, msg=name)


@pytest.mark.parametrize("family", ["llava"], indirect=True)
def test_a_killed_sharded_run_resumes_exactly_and_its_adapter_merges(family, tiny_model_dir, tmp_path):
    from peft import PeftModel

    from vlmdpo.model.merge import merge_adapter

    data = write_mixed_pairs(tmp_path / "data")
    whole, out = tmp_path / "whole", tmp_path / "killed"
    _finished(_sharded_train(tiny_model_dir, data, whole))
    expected = read_metrics(whole / "metrics.jsonl")

    killed = _sharded_train(tiny_model_dir, data, out)
    deadline = time.monotonic() + TIMEOUT_S
    while killed.poll() is None and not (out / "checkpoint-2").exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    for process in [killed_launcher := psutil.Process(killed.pid), *killed_launcher.children(recursive=True)]:
        process.kill()  # the launcher and both training processes (torchrun starts them in their own sessions)
    assert killed.wait(timeout=30) == -signal.SIGKILL, "the run ended before it could be killed"
    assert not (out / "checkpoint-4").exists() and not (out / "adapter_model.safetensors").exists()
    # each process wrote its own shards
    assert {p.name for p in (out / "checkpoint-2" / "sharded").glob("*.distcp")} == {"__0_0.distcp", "__1_0.distcp"}

    log = _finished(_sharded_train(tiny_model_dir, data, out))
    assert f"resuming from {out / 'checkpoint-2'} at step 2" in log
    assert "forward path: fast" in log  # forward_path=auto, sharded
    records = read_metrics(out / "metrics.jsonl")
    assert [r["step"] for r in records] == [r["step"] for r in expected] == [1, 2, 3, 4]
    for ours, theirs in zip(records, expected):
        for key in ("loss", "logps/chosen", "logps/rejected", "learning_rate"):
            assert ours[key] == pytest.approx(theirs[key], rel=0, abs=1e-6), (ours["step"], key)
    adapter, expected_adapter = load_file(str(out / "adapter_model.safetensors")), load_file(
        str(whole / "adapter_model.safetensors"))
    assert set(adapter) == set(expected_adapter) and any("vision" in name for name in adapter)
    for name, value in expected_adapter.items():
        torch.testing.assert_close(adapter[name], value, rtol=0, atol=1e-6, msg=name)

    # the gathered adapter is whole: it loads onto the base model with peft, and merges
    base, processor = load_model_and_processor(tiny_model_dir)
    peft_model = PeftModel.from_pretrained(base, str(out)).eval()
    loaded = {name: param for name, param in peft_model.named_parameters() if "lora_" in name}
    assert len(loaded) == len(adapter)
    merged_dir = merge_adapter(str(out), str(tmp_path / "merged"))
    merged, _ = load_model_and_processor(str(merged_dir))
    ids = processor.tokenizer("is the sky blue?", return_tensors="pt").input_ids
    with torch.no_grad():
        torch.testing.assert_close(merged(input_ids=ids).logits, peft_model(input_ids=ids).logits, rtol=0, atol=1e-5)
