"""DPO step throughput, peak memory and first-step loss: vlmdpo against TRL's DPOTrainer.

    python benchmarks/bench_dpo.py --image-tokens 256
    python benchmarks/bench_dpo.py --model qwen2_vl --image-tokens 1024 --json
    python benchmarks/bench_dpo.py --model qwen2_vl --device cuda --dtype bfloat16 --scale large \
        --image-tokens 2304 --gradient-checkpointing

Every runner trains, in its own process (so its peak memory is its own), the same model (``bench_setup.py``:
LLaVA or Qwen2-VL layout) with the same LoRA (r=16 on the language model's linear layers, the same seeded
start values), on the same pairs in the same order (one image each, responses of 30-300 tokens, 50-400 at
``--scale large``), 4 pairs per step:

- ``vlmdpo``: ``vlmdpo.train.train`` as a user runs it (``train.forward_path=auto``);
- ``trl``: TRL's ``DPOTrainer`` as shipped (``pip install -e .[bench]``);
- ``trl_gpu_path``: the same, made to take the branch it takes on GPUs, where its fused LM head scores only
  completion positions (on CPUs it scores every position; its kernels fold to plain torch on a CPU).

pairs/s is timed from the start of step 2 to the start of the last step (step 1 pays one-time costs). Peak
memory on a CPU is the process's peak resident set from the moment the model is built (``*_peak_mb``; loading
is not counted) and, beside it, its growth over the resident set at that moment (``*_train_mb``); on a GPU, the
peak allocated GPU memory from the first step on and its growth over what was allocated when it began.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

# the checkout this file lives in, whatever an installed vlmdpo points at; then the helpers beside it
sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parent)]
import bench_setup  # noqa: E402
from bench_clock import LIVE_MEMORY_ENV, StepClock  # noqa: E402

RUNNERS = ("vlmdpo", "vlmdpo_precomputed", "trl", "trl_gpu_path")


# --- runners (each runs in a process of its own) --------------------------------------------------------

def run_vlmdpo(args, model_dir: Path, data_dir: Path, out_dir: Path, precompute: bool) -> dict:
    import vlmdpo.train.loop as train_module
    import vlmdpo.train.setup as train_setup
    from vlmdpo.config import load_config

    clock = StepClock(args.device)
    build_policy, dpo_step = train_setup.build_policy, train_module.dpo_step
    precomputed = train_setup.precomputed_reference_logps
    precompute_seconds = []

    def timed_precompute(*precompute_args, **precompute_kwargs):
        start = time.perf_counter()
        try:
            return precomputed(*precompute_args, **precompute_kwargs)
        finally:
            precompute_seconds.append(time.perf_counter() - start)

    def build(config):
        policy, reference, processor = build_policy(config)
        bench_setup.perturb_lora(policy)
        clock.ready()
        return policy, reference, processor

    def step(*step_args, **step_kwargs):
        clock.begin()
        loss, metrics = dpo_step(*step_args, **step_kwargs)
        clock.loss(loss)
        return loss, metrics

    class InOrder(train_setup.EpochShuffleSampler):  # the runners must see the same first batch
        def __iter__(self):
            return iter(range(self.size))

    train_setup.build_policy, train_module.dpo_step = build, step
    train_setup.precomputed_reference_logps = timed_precompute
    train_setup.EpochShuffleSampler = InOrder
    overrides = [
        f"model.name_or_path={model_dir}", f"model.dtype={args.dtype}", f"model.lora_r={bench_setup.LORA['r']}",
        f"model.lora_alpha={bench_setup.LORA['alpha']}", f"data.train={data_dir}", "data.max_response_length=null",
        f"model.gradient_checkpointing={str(args.gradient_checkpointing).lower()}",
        f"train.output_dir={out_dir}", f"train.batch_size={args.batch_size}", "train.num_epochs=1",
        "train.learning_rate=1e-5", "train.lr_scheduler=constant", "train.warmup_ratio=0", "train.progress=false",
        "train.mixed_precision='no'", f"train.forward_path={args.forward_path}", "train.resume=false",
        f"train.precompute_ref_logps={str(precompute).lower()}", f"train.ref_cache_dir={out_dir / 'ref'}",
        f"loss.beta={bench_setup.BETA}",
    ]
    with _maybe_profile(args, clock):
        train_module.train(load_config(None, overrides))
    return {**clock.result(args.batch_size), "precompute_s": sum(precompute_seconds)}


def _trl_dataset(data_dir: Path, processor):
    """The pairs as TRL's standard (text) format, rendered as vlmdpo renders them: the prompt through the chat
    template's generation prompt (its image placeholder expanded by the processor), each response through the
    end-of-turn token. TRL then scores exactly vlmdpo's tokens; from the conversational format it would also
    score what a template puts after the end-of-turn token (ChatML's newline after ``<|im_end|>``)."""
    import datasets

    from vlmdpo.data.collator import PreferenceCollator
    from vlmdpo.data.rows import PreferenceDataset

    collator, raw = PreferenceCollator(processor), datasets.load_from_disk(str(data_dir))
    rendered = {"prompt": [], "chosen": [], "rejected": []}
    for row in PreferenceDataset(raw):
        rendered["prompt"].append(processor.apply_chat_template(row["prompt"], add_generation_prompt=True,
                                                                tokenize=False))
        for field in ("chosen", "rejected"):
            rendered[field].append(processor.tokenizer.decode(collator.encode_response(row, field)[0]))
    table = raw.remove_columns(list(rendered))
    for name, column in rendered.items():
        table = table.add_column(name, column)
    return table


def run_trl(args, model_dir: Path, data_dir: Path, out_dir: Path, gpu_path: bool) -> dict:
    import trl.trainer.utils as trl_utils
    from torch.utils.data import SequentialSampler
    from trl import DPOConfig, DPOTrainer

    from peft import LoraConfig

    from vlmdpo.model.load import load_model_and_processor
    from vlmdpo.model.lora import linear_module_names

    if gpu_path:  # score completion positions only, as on CUDA / XPU (the kernels still fold in torch)
        trl_utils._use_triton = lambda device: True
    clock = StepClock(args.device)
    model, processor = load_model_and_processor(str(model_dir), args.dtype)
    # TRL at its best: a new adapter from a peft_config, so its reference is the adapter disabled (given a
    # PeftModel, it would keep a second "ref" adapter and run LoRA in the reference pass too)
    lora = LoraConfig(r=bench_setup.LORA["r"], lora_alpha=bench_setup.LORA["alpha"], lora_dropout=0.0,
                      target_modules=linear_module_names(model), task_type="CAUSAL_LM")
    config = DPOConfig(
        output_dir=str(out_dir), per_device_train_batch_size=args.batch_size, num_train_epochs=1,
        learning_rate=1e-5, lr_scheduler_type="constant", warmup_steps=0, logging_steps=1, save_strategy="no",
        report_to=[], bf16=args.dtype == "bfloat16", gradient_checkpointing=args.gradient_checkpointing,
        max_length=None,
        beta=bench_setup.BETA, use_cpu=args.device == "cpu", dataloader_num_workers=0, disable_tqdm=True,
        seed=0)
    trainer = DPOTrainer(model=model, args=config, train_dataset=_trl_dataset(data_dir, processor),
                         processing_class=processor, peft_config=lora)
    bench_setup.perturb_lora(trainer.model)
    trainer._get_train_sampler = lambda *a, **k: SequentialSampler(trainer.train_dataset)
    training_step, compute_loss = trainer.training_step, trainer.compute_loss

    def timed_step(*step_args, **step_kwargs):
        clock.begin()
        return training_step(*step_args, **step_kwargs)

    def first_loss(*loss_args, **loss_kwargs):
        out = compute_loss(*loss_args, **loss_kwargs)
        clock.loss(out[0] if isinstance(out, tuple) else out)
        return out

    trainer.training_step, trainer.compute_loss = timed_step, first_loss
    clock.ready()
    trainer.train()
    return clock.result(args.batch_size)


class _maybe_profile:
    """With ``--profile``: where the time of steps 2..4 goes (vlmdpo runner), printed to stderr."""

    def __init__(self, args, clock):
        self.enabled = args.profile
        self.clock = clock

    def __enter__(self):
        if self.enabled:
            import bench_profile

            self.profile = bench_profile.StepProfile(self.clock)
            self.profile.install()
        return self

    def __exit__(self, *exc):
        if self.enabled:
            self.profile.report(sys.stderr)
        return False


# --- the comparison -------------------------------------------------------------------------------------

def run_in_subprocess(runner: str, argv: list[str], live_memory: bool = False) -> dict:
    import os

    command = [sys.executable, __file__, *argv, "--runner", runner]
    env = {**os.environ, **(LIVE_MEMORY_ENV if live_memory else {})}
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        sys.stderr.write(done.stdout[-4000:] + done.stderr[-8000:])
        raise SystemExit(f"runner {runner} failed with exit code {done.returncode}")
    if "--profile" in argv:
        sys.stderr.write(done.stderr[done.stderr.find("== where"):] if "== where" in done.stderr else "")
    return json.loads(done.stdout.strip().splitlines()[-1])


def compare(results: dict, image_tokens: int) -> dict:
    """One flat dict: each runner's figures, and vlmdpo's ratios to each TRL runner."""
    out = {"image_tokens": image_tokens}
    for name, result in results.items():
        for key in ("pairs_per_s", "peak_mb", "train_mb", "first_loss"):
            out[f"{name}_{key}"] = result[key]
    if "vlmdpo_precomputed" in results and results["vlmdpo_precomputed"]["pairs_per_s"]:
        precomputed = results["vlmdpo_precomputed"]
        out["vlmdpo_precompute_s"] = precomputed["precompute_s"]
        # one epoch over the data, the one-off reference pass included
        pairs = precomputed["pairs"]
        out["vlmdpo_precomputed_epoch_pairs_per_s"] = pairs / (pairs / precomputed["pairs_per_s"]
                                                               + precomputed["precompute_s"])
    for ours in ("vlmdpo", "vlmdpo_precomputed"):
        for other in ("trl", "trl_gpu_path"):
            if ours not in results or other not in results:
                continue
            prefix = "" if ours == "vlmdpo" else "precomputed_"
            if results[ours]["pairs_per_s"] and results[other]["pairs_per_s"]:
                out[f"{prefix}speedup_vs_{other}"] = results[ours]["pairs_per_s"] / results[other]["pairs_per_s"]
            out[f"{prefix}memory_vs_{other}"] = results[ours]["peak_mb"] / results[other]["peak_mb"]
            out[f"{prefix}train_memory_vs_{other}"] = (results[ours]["train_mb"]
                                                       / max(results[other]["train_mb"], 1))
    losses = [r["first_loss"] for r in results.values()]
    out["loss_spread"] = max(losses) - min(losses)
    out["losses_agree"] = out["loss_spread"] <= 1e-4
    return out


def flop_report(args, model_dir: Path, data_dir: Path, results: dict) -> dict:
    """FLOPs of the timed steps (exact / vlmdpo / TRL, see ``bench_flops``) and what they say about the times."""
    import bench_flops

    totals, timed_pairs = bench_flops.timed_flops(model_dir, data_dir, args.batch_size, args.image_tokens,
                                                  bench_setup.LORA["r"])
    rate = bench_flops.matmul_rate() if args.device == "cpu" else None
    out = {"matmul_gflops": rate / 1e9 if rate else None,
           "trl_over_vlmdpo_flops": totals["trl"]["total"] / totals["vlmdpo"]["total"],
           **{f"{name}_gflop_per_pair": {k: v / timed_pairs / 1e9 for k, v in total.items()}
              for name, total in totals.items()}}
    for name, result in results.items():
        if not result["pairs_per_s"]:
            continue
        flops = totals["trl" if name.startswith("trl") else name]["total"]
        seconds = timed_pairs / result["pairs_per_s"]
        out[f"{name}_gflops"] = flops / seconds / 1e9
        if rate:
            exact = totals["exact_precomputed" if name == "vlmdpo_precomputed" else "exact"]["total"]
            out[f"{name}_time_vs_exact_ideal"] = seconds / (exact / rate)
    return out


def print_flops(flops: dict) -> None:
    kinds = ("exact", "vlmdpo", "trl", "exact_precomputed", "vlmdpo_precomputed")
    print("  GFLOP per pair (matmuls)" + "".join(f"{kind:>19}" for kind in kinds))
    for part in ("vision", "decoder", "attention", "lm_head", "total"):
        print(f"    {part:<20}" + "".join(f"{flops[f'{kind}_gflop_per_pair'][part]:>19.2f}" for kind in kinds))
    print(f"  TRL / vlmdpo FLOPs: {flops['trl_over_vlmdpo_flops']:.2f}x (the speed-up a step bound by its matmuls "
          "would show)")
    if flops["matmul_gflops"]:
        print(f"  this machine's float32 matmul rate: {flops['matmul_gflops']:.0f} GFLOP/s")
    for name in RUNNERS:
        if f"{name}_gflops" in flops:
            line = f"  {name:<20}{flops[name + '_gflops']:>5.0f} GFLOP/s achieved"
            if f"{name}_time_vs_exact_ideal" in flops:
                line += f"; step time = {flops[name + '_time_vs_exact_ideal']:.2f}x an exact step's at that rate"
            print(line)


def print_table(results: dict, summary: dict, args) -> None:
    model = summary["model"]
    print(f"DPO step, {args.pairs} pairs, {args.batch_size} pairs/step, {args.image_tokens} image tokens, "
          f"{args.scale} {args.model} model ({model['parameters'] / 1e9:.3f}B parameters; {args.dtype}, "
          f"{args.device}, {torch.get_num_threads()} threads"
          f"{', gradient checkpointing' if args.gradient_checkpointing else ''}"
          f"{', live memory: glibc mmap threshold fixed' if args.live_memory else ''})")
    print(f"  {'runner':<20}{'pairs/s':>9}{'s/step':>9}{'peak MB':>10}{'train MB':>10}{'first loss':>13}")
    for name, r in results.items():
        timing = (f"{r['pairs_per_s']:>9.3f}{r['seconds_per_step']:>9.2f}" if r["pairs_per_s"]
                  else f"{'-':>9}{'-':>9}")  # fewer than 3 steps: nothing timed
        print(f"  {name:<20}{timing}{r['peak_mb']:>10.0f}{r['train_mb']:>10.0f}{r['first_loss']:>13.6f}")
    if "vlmdpo_precompute_s" in summary:
        print(f"  vlmdpo_precomputed: the one-off reference pass took {summary['vlmdpo_precompute_s']:.1f} s; "
              f"over one epoch with it: {summary['vlmdpo_precomputed_epoch_pairs_per_s']:.3f} pairs/s")
    for prefix, ours in (("", "vlmdpo"), ("precomputed_", "vlmdpo_precomputed")):
        for other in ("trl", "trl_gpu_path"):
            if f"{prefix}memory_vs_{other}" in summary:
                speedup = summary.get(f"{prefix}speedup_vs_{other}")
                print(f"  {ours} vs {other}: " + (f"{speedup:.2f}x pairs/s, " if speedup else "")
                      + f"{summary[f'{prefix}memory_vs_{other}']:.2f}x peak memory, "
                      f"{summary[f'{prefix}train_memory_vs_{other}']:.2f}x memory grown in training")
    print(f"  first-step losses agree to 1e-4: {summary['losses_agree']} (spread {summary['loss_spread']:.1e}"
          f"{'; in bfloat16 only a rough check' if args.dtype == 'bfloat16' else ''})")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    bench_setup.add_data_arguments(parser)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--runners", default=",".join(RUNNERS), help=f"comma-separated subset of {RUNNERS}")
    parser.add_argument("--gradient-checkpointing", action="store_true", help="for every runner (vlmdpo: "
                        "model.gradient_checkpointing; TRL: its default kwargs)")
    parser.add_argument("--forward-path", default="auto", choices=["auto", "fast", "plain"], help="vlmdpo's path")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads; 1 is steadiest on a shared "
                        "CPU (idle threads of a busy machine spin-wait), and every runner gets the same")
    parser.add_argument("--profile", action="store_true", help="print where vlmdpo's step time goes")
    parser.add_argument("--flops", action="store_true", help="count the steps' FLOPs (exact step, vlmdpo, TRL) "
                        "and compare with this machine's matmul rate")
    parser.add_argument("--live-memory", action="store_true", help="run every runner with glibc's mmap threshold "
                        f"fixed ({LIVE_MEMORY_ENV}), so that a CPU's peak resident set follows the peak of live "
                        "tensors, as a GPU's peak allocated memory does (freed memory is not kept); slower: for the "
                        "memory figures, not the speed")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    parser.add_argument("--runner", choices=RUNNERS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    model_dir, data_dir = bench_setup.prepare(args)

    if args.runner:  # inside a runner's own process
        import tempfile

        with tempfile.TemporaryDirectory() as out:
            if args.runner.startswith("vlmdpo"):
                result = run_vlmdpo(args, model_dir, data_dir, Path(out), args.runner == "vlmdpo_precomputed")
            else:
                result = run_trl(args, model_dir, data_dir, Path(out), gpu_path=args.runner == "trl_gpu_path")
        print(json.dumps(result))
        return result

    own_argv = [a for a in (argv if argv is not None else sys.argv[1:]) if a != "--json"]
    results = {}
    for name in args.runners.split(","):
        results[name] = run_in_subprocess(name, own_argv, args.live_memory)
        print(f"runner {name}: {json.dumps(results[name])}", file=sys.stderr, flush=True)  # kept if later ones fail
    summary = {"model": bench_setup.summary(model_dir), **compare(results, args.image_tokens)}
    if args.json:
        print(json.dumps(summary))
    else:
        print_table(results, summary, args)
        if args.flops:
            print_flops(flop_report(args, model_dir, data_dir, results))
    return summary


if __name__ == "__main__":
    main()
