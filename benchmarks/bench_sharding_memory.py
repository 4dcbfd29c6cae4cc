"""Per-process memory of full fine-tuning sharded with FSDP2 over 2 CPU processes, against DDP over 2 processes.

    python benchmarks/bench_sharding_memory.py                  # 228M-parameter LLaVA layout, 3 steps (~2.5 min)
    python benchmarks/bench_sharding_memory.py --live-memory    # resident set = live tensors (freed memory returned)
    python benchmarks/bench_sharding_memory.py --layers 2 --hidden 256 --vision-layers 2 --steps 2   # quick look

One random-weight model of the LLaVA layout (``vlmdpo.tiny``'s builder at larger ``TinySizes``: CLIP vision tower,
MLP projector, Llama decoder with GQA, 32064-token vocabulary), saved in float32 to a temporary folder, is trained
with ``model.finetune=full`` for ``--steps`` optimizer steps by ``vlmdpo train`` under ``accelerate launch
--num_processes 2`` (gloo, ``ACCELERATE_USE_CPU``, one torch thread a process), once with ``train.sharding=fsdp2``
and once with ``train.sharding=none`` (DDP), one pair per process a step, ``train.forward_path=plain`` for both.

Each process reports, at its last optimizer step (after ``optimizer.step()``, before the gradients are freed), the
bytes it holds of the policy's parameters, gradients and AdamW state, counted from the tensors' local shards
(``DTensor.to_local()``), and of the frozen reference copy that full fine-tuning keeps; and its resident set: its
peak before step 1 (loading, the reference copy, sharding), the set at the start of step 1, its peak over the
training steps (counted from the start of step 1) and over the whole process (the final save included). DDP's
gradient buckets (one more copy of the gradients) are in the resident set but not in the counted tensors.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

# the checkout this file lives in, whatever an installed vlmdpo points at; then the helpers beside it
sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parent)]
import bench_setup
from bench_clock import LIVE_MEMORY_ENV, _reset_peak_rss, _status_mb

SHARDINGS = ("fsdp2", "none")
NUM_PROCESSES = 2
MB = 2**20
ROWS = [  # (key, label) of the per-process figures, in the table's order
    ("params_mb", "parameters (local shards)"),
    ("grads_mb", "gradients (local shards)"),
    ("optimizer_mb", "AdamW state (local shards)"),
    ("trained_state_mb", "  sum: trained model state"),
    ("reference_mb", "frozen reference copy"),
    ("imports_mb", "resident before the model loads"),
    ("setup_peak_mb", "peak resident, load + setup"),
    ("start_rss_mb", "resident at step 1"),
    ("train_peak_mb", "peak resident, training steps"),
    ("process_peak_mb", "peak resident, whole process"),
    ("seconds_per_step", "seconds per step"),
]


# --- inside each training process -------------------------------------------------------------------------

def _local_mb(tensors) -> float:
    """MB of the tensors this process holds: a ``DTensor``'s local shard only."""
    total = 0
    for tensor in tensors:
        local = tensor.to_local() if hasattr(tensor, "to_local") else tensor
        total += local.numel() * local.element_size()
    return total / MB


def _held(policy, reference, optimizer) -> dict:
    params = list(policy.parameters())
    state = [value for per_param in optimizer.state.values() for value in per_param.values()
             if isinstance(value, torch.Tensor)]
    figures = {"params_mb": _local_mb(params), "grads_mb": _local_mb(p.grad for p in params if p.grad is not None),
               "optimizer_mb": _local_mb(state),
               "reference_mb": _local_mb(reference.parameters()) if reference is not None else 0.0}
    figures["trained_state_mb"] = figures["params_mb"] + figures["grads_mb"] + figures["optimizer_mb"]
    return figures


def run_worker(args) -> None:
    """``vlmdpo.train.train`` as a user runs it, watched: the policy and reference as built, the start of each
    step, and what is held at each optimizer step; one JSON file per process in ``--out``."""
    from torch.optim.optimizer import register_optimizer_step_post_hook

    import vlmdpo.train.loop as train_module
    import vlmdpo.train.setup as train_setup
    from vlmdpo.config import load_config

    torch.set_num_threads(1)
    watched = {"step_starts": [], "imports_mb": _status_mb("VmRSS")}
    build_policy, dpo_step = train_setup.build_policy, train_module.dpo_step

    def build(config):
        policy, reference, processor = build_policy(config)
        watched.update(policy=policy, reference=reference)
        return policy, reference, processor

    def step(*step_args, **step_kwargs):
        if not watched["step_starts"]:  # the training peak is counted from here on
            watched["start_rss_mb"], watched["setup_peak_mb"] = _status_mb("VmRSS"), _status_mb("VmHWM")
            watched["peak_reset"] = _reset_peak_rss()
        watched["step_starts"].append(time.perf_counter())
        return dpo_step(*step_args, **step_kwargs)

    def after_optimizer_step(optimizer, *_):
        watched.update(_held(watched["policy"], watched["reference"], optimizer), train_peak_mb=_status_mb("VmHWM"))
        watched["last_step_end"] = time.perf_counter()

    train_setup.build_policy, train_module.dpo_step = build, step
    register_optimizer_step_post_hook(after_optimizer_step)
    overrides = [
        f"model.name_or_path={args.model_dir}", "model.finetune=full", "model.dtype=float32",
        f"data.train={args.data_dir}", "data.max_response_length=null", f"train.output_dir={args.train_dir}",
        f"train.max_steps={args.steps}", "train.batch_size=1", "train.learning_rate=1e-6",
        "train.lr_scheduler=constant", "train.warmup_ratio=0", "train.progress=false", "train.mixed_precision=no",
        "train.forward_path=plain", "train.resume=false", f"train.sharding={args.sharding}", "train.seed=0",
    ]
    train_module.train(load_config(None, overrides))
    starts = watched["step_starts"]
    result = {key: value for key, value in watched.items() if key.endswith("_mb") or key == "peak_reset"}
    # resetting VmHWM resets ru_maxrss too: the whole process's peak is the larger of the two spans
    result.update(process_peak_mb=max(watched["setup_peak_mb"], _status_mb("VmHWM")),
                  seconds_per_step=(watched["last_step_end"] - starts[0]) / len(starts),
                  sharded=type(watched["policy"]).__name__.startswith("FSDP"))
    rank = int(os.environ.get("RANK", "0"))
    (Path(args.out) / f"{args.sharding}-rank{rank}.json").write_text(json.dumps(result))


# --- the comparison ---------------------------------------------------------------------------------------

def _sizes(args) -> dict:
    return {"image_size": bench_setup.image_size(args.image_tokens), "patch_size": bench_setup.PATCH,
            "vocab_size": bench_setup.VOCAB, "hidden_size": args.hidden, "num_layers": args.layers,
            "num_heads": args.hidden // 64, "num_kv_heads": max(1, args.hidden // 256),
            "intermediate_size": args.hidden * 11 // 4, "vision_hidden_size": args.vision_hidden,
            "vision_layers": args.vision_layers, "vision_heads": args.vision_hidden // 64,
            "max_position_embeddings": 4096}


def prepare(args, root: Path) -> tuple[Path, Path, int]:
    """The float32 model and the pairs in ``root``; return their folders and the model's parameter count."""
    from vlmdpo.tiny.models import build_tiny_vlm

    model, processor = build_tiny_vlm("llava", seed=0, **_sizes(args))
    parameters = sum(p.numel() for p in model.parameters())
    model_dir = root / "model"
    model.save_pretrained(model_dir)
    processor.save_pretrained(model_dir)
    del model
    data_dir = bench_setup.build_pairs(root / "pairs", processor, bench_setup.image_size(args.image_tokens),
                                       NUM_PROCESSES * args.steps, response_tokens=(20, 60))
    return model_dir, data_dir, parameters


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch(args, sharding: str, model_dir: Path, data_dir: Path, root: Path) -> tuple[list[dict], float]:
    """Both processes of one run under ``accelerate launch``; their figures, and the run's wall time."""
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes",
               str(NUM_PROCESSES), "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               "--main_process_port", str(_free_port()), __file__, "--worker", "--sharding", sharding,
               "--model-dir", str(model_dir), "--data-dir", str(data_dir), "--train-dir", str(root / sharding),
               "--out", str(root), "--steps", str(args.steps)]
    env = {**os.environ, "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
           **(LIVE_MEMORY_ENV if args.live_memory else {})}
    start = time.perf_counter()
    done = subprocess.run(command, check=False, env=env, capture_output=True, text=True, timeout=args.timeout)
    if done.returncode != 0:
        sys.stderr.write(done.stdout[-4000:] + done.stderr[-8000:])
        raise SystemExit(f"train.sharding={sharding} failed with exit code {done.returncode}")
    ranks = [json.loads((root / f"{sharding}-rank{rank}.json").read_text()) for rank in range(NUM_PROCESSES)]
    return ranks, time.perf_counter() - start


def _losses(train_dir: Path) -> list[float]:
    from vlmdpo.eval.metrics_log import read_metrics

    return [record["loss"] for record in read_metrics(train_dir / "metrics.jsonl")]


def print_table(args, parameters: int, results: dict, walls: dict, losses: dict) -> None:
    live = ", live memory (glibc mmap threshold fixed)" if args.live_memory else ""
    print(f"Full fine-tuning (model.finetune=full), LLaVA layout, {parameters / 1e6:.1f}M parameters, float32, "
          f"{NUM_PROCESSES} CPU processes (gloo, 1 torch thread each), {args.steps} optimizer steps, 1 pair per "
          f"process a step, {args.image_tokens} image tokens{live}; figures per process, in MB, the larger of the "
          f"{NUM_PROCESSES} processes")
    print(f"  model weights alone: {parameters * 4 / MB:.0f} MB")
    print(f"  {'':<34}{'FSDP2':>10}{'DDP':>10}{'FSDP2/DDP':>11}")
    for key, label in ROWS:
        ours, theirs = (max(rank[key] for rank in results[name]) for name in SHARDINGS)
        ratio = f"{ours / theirs:>10.2f}x" if theirs else f"{'-':>11}"
        digits = 1 if key == "seconds_per_step" else 0
        print(f"  {label:<34}{ours:>10.{digits}f}{theirs:>10.{digits}f}{ratio}")
    print(f"  {'wall time of the launch, s':<34}{walls['fsdp2']:>10.0f}{walls['none']:>10.0f}")
    spread = max(abs(a - b) for a, b in zip(losses["fsdp2"], losses["none"]))
    print(f"  losses of the {args.steps} steps, FSDP2: {[round(x, 6) for x in losses['fsdp2']]}, DDP: "
          f"{[round(x, 6) for x in losses['none']]} (max difference {spread:.1e})")
    if not all(rank["peak_reset"] for name in SHARDINGS for rank in results[name]):
        print("  (the OS did not allow resetting the peak: the training peak counts loading too)")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=12, help="decoder layers")
    parser.add_argument("--hidden", type=int, default=1024, help="decoder width (heads of 64; MLP 11/4 as wide)")
    parser.add_argument("--vision-layers", type=int, default=8, help="CLIP encoder layers")
    parser.add_argument("--vision-hidden", type=int, default=512, help="CLIP width (heads of 64, MLP 4x)")
    parser.add_argument("--image-tokens", type=int, default=64, help="a square number: 64 is a 112-px image")
    parser.add_argument("--steps", type=int, default=3, help="optimizer steps of each run")
    parser.add_argument("--timeout", type=int, default=600, help="seconds each run may take")
    parser.add_argument("--live-memory", action="store_true", help="run both with glibc's mmap threshold fixed "
                        f"({LIVE_MEMORY_ENV}), so that the resident set follows the live tensors (freed memory is "
                        "returned to the OS, as a GPU's allocated memory counts it); slower")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    for hidden in ("--sharding", "--model-dir", "--data-dir", "--train-dir", "--out"):
        parser.add_argument(hidden, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        run_worker(args)
        return {}

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="bench_sharding_") as tmp:
        root = Path(tmp)
        model_dir, data_dir, parameters = prepare(args, root)
        results, walls, losses = {}, {}, {}
        for sharding in SHARDINGS:
            results[sharding], walls[sharding] = launch(args, sharding, model_dir, data_dir, root)
            losses[sharding] = _losses(root / sharding)
            print(f"train.sharding={sharding}: {json.dumps(results[sharding])}", file=sys.stderr, flush=True)
    summary = {"parameters": parameters, "results": results, "wall_s": walls, "losses": losses}
    if args.json:
        print(json.dumps(summary))
    else:
        print_table(args, parameters, results, walls, losses)
    return summary


if __name__ == "__main__":
    main()
