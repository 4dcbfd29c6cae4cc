"""Captions per second of ``generate_responses`` by batch size: today's defaults against the speed settings.

    python benchmarks/bench_generation.py                 # tiny llava and qwen2_vl, the ~100M llava; batch 1 8 32
    python benchmarks/bench_generation.py --models tiny:llava --batch-sizes 1 8 32 --runners today,sorted

Runners, each ``generate_responses`` on the same model and rows, greedy, in this process, taking turns:

- ``today``: the defaults (plain batches in row order, the model's dynamic cache): the code path before the
  speed settings, token for token (``tests/test_generation_speed.py``).
- ``sorted``: ``sort_by_length=True`` (longest prompt first: less padding; one more processor pass).
- ``static``: ``cache_implementation="static"``.
- ``compiled``: ``sort_by_length=True, cache_implementation="static", compile=True``; its compilation is paid
  in an untimed warm-up over the same rows and reported apart (with an empty inductor cache, as a first run).

Models: ``tiny:<family>`` (the test models, 0.2M parameters), and ``100m:<family>``: the same builder at
``LARGER`` sizes (a 768-wide, 8-layer decoder with a 32064-token vocabulary, bench_setup's small vision tower),
about 100M parameters. Rows: the shapes world's held-out images (32 px) under prompts of 1 to 40 words, so
that batches are padded. Every runner's captions are compared with ``today``'s at the same batch size.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import torch

RUNNERS = {
    "today": {},
    "sorted": {"sort_by_length": True},
    "static": {"cache_implementation": "static"},
    "compiled": {"sort_by_length": True, "cache_implementation": "static", "compile": True},
}
LARGER = {"hidden_size": 768, "num_layers": 8, "num_heads": 12, "num_kv_heads": 4, "intermediate_size": 2048,
          "vocab_size": 32064, "vision_hidden_size": 128, "vision_layers": 4, "vision_heads": 2}
PROMPTS = [
    "Describe.",
    "Describe the image.",
    "What objects are in this picture?",
    "Is there a red circle in the image? Answer yes or no.",
    "List every shape you can see, with its colour, and say roughly where it is in the picture.",
    ("Write a detailed caption of this image. Mention each object, its colour and its shape, where it sits "
     "relative to the others, and anything about the background; do not mention objects that are not there."),
    "Caption.",
    ("Look carefully at the image and tell me how many objects there are and which colours appear more than "
     "once, then describe the largest one in a full sentence and the smallest one in another sentence, please."),
]


def _rows(num_rows: int) -> list[dict]:
    from data_recipes.shapes import build_shapes_dataset, povid_pairs
    from vlmdpo.data.rows import PreferenceDataset
    from vlmdpo.eval.generation import with_prompt

    test = build_shapes_dataset(num_train=0, num_test=num_rows, image_size=32)["test"]
    pairs = PreferenceDataset(povid_pairs(test))
    return [with_prompt(pairs[i], PROMPTS[3 * i % len(PROMPTS)]) for i in range(len(pairs))]


def _model(name: str):
    from vlmdpo.model.load import load_model_and_processor
    from vlmdpo.tiny.models import build_tiny_vlm, tiny_vlm

    scale, family = name.split(":")
    if scale == "tiny":
        return load_model_and_processor(tiny_vlm(family))
    if scale == "100m":
        return build_tiny_vlm(family, seed=0, **LARGER)
    raise SystemExit(f"unknown model {name!r}: tiny:<family> or 100m:<family>")


def bench_model(name: str, batch_sizes: list[int], runners: list[str], args) -> list[dict]:
    """One line per (batch size, runner): captions/s and its ratio to ``today`` at the same batch size. The
    runners take turns, ``repeats`` rounds, best round kept: a busy machine's slow spells hit them alike."""
    from vlmdpo.eval.generation import generate_responses, prompt_lengths

    model, processor = _model(name)
    large = name.startswith("100m")
    lines = []
    for batch_size in batch_sizes:
        num_rows = args.rows_at_batch_1 if batch_size == 1 else args.rows
        num_rows = max(num_rows // (4 if large else 1), 2 * batch_size)  # two batches at least: sorting has a choice
        rows = _rows(num_rows)

        def run(runner: str, rows=rows, batch_size=batch_size) -> tuple[float, list[str]]:
            start = time.perf_counter()
            captions = generate_responses(model, processor, rows, batch_size=batch_size,
                                          max_new_tokens=args.max_new_tokens, progress=False, **RUNNERS[runner])
            return time.perf_counter() - start, captions

        run("today")  # warm-up
        warm_up = {runner: run(runner)[0] if RUNNERS[runner].get("compile") else 0.0 for runner in runners}
        seconds, captions = dict.fromkeys(runners, float("inf")), {}
        for _ in range(args.repeats):
            for runner in runners:
                took, captions[runner] = run(runner)
                seconds[runner] = min(seconds[runner], took)
        for runner in runners:
            lines.append({
                "model": name, "batch_size": batch_size, "runner": runner, "rows": len(rows),
                "captions_per_s": len(rows) / seconds[runner], "vs_today": seconds["today"] / seconds[runner],
                "same_as_today": sum(a == b for a, b in zip(captions[runner], captions["today"])),
                "warm_up_s": warm_up[runner]})
            print(_line(lines[-1]), flush=True)
    lengths = prompt_lengths(processor, _rows(8))
    params = sum(p.numel() for p in model.parameters()) / 1e6
    print(f"  {name}: {params:.1f}M parameters, prompts of {min(lengths)}-{max(lengths)} tokens", flush=True)
    return lines


def _line(line: dict) -> str:
    warm = f"{line['warm_up_s']:.0f}" if line["warm_up_s"] else ""
    return (f"| {line['model']} | {line['batch_size']} | {line['runner']} | {line['rows']} | "
            f"{line['captions_per_s']:.2f} | {line['vs_today']:.2f}x | {line['same_as_today']}/{line['rows']} | "
            f"{warm} |")


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="tiny:llava,tiny:qwen2_vl,100m:llava",
                        help="comma-separated tiny:<family> or 100m:<family>")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--runners", default=",".join(RUNNERS), help=f"comma-separated, from {list(RUNNERS)}; "
                        "today first (the others' ratios are to it)")
    parser.add_argument("--rows", type=int, default=64, help="rows per run (a quarter for 100m models, "
                        "two batches at least)")
    parser.add_argument("--rows-at-batch-1", type=int, default=32, help="rows per run at batch size 1")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=2, help="rounds of every runner, best kept")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 is steadiest on a shared CPU)")
    args = parser.parse_args(argv)
    runners = args.runners.split(",")
    if runners[0] != "today" or set(runners) - set(RUNNERS):
        raise SystemExit(f"--runners must start with today and come from {list(RUNNERS)}")

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(args.threads)
    print(f"CPU, {args.threads} thread(s), greedy, max_new_tokens={args.max_new_tokens}, float32")
    print("| model | batch | runner | rows | captions/s | vs today | same captions as today | compile s |")
    print("|---|---|---|---|---|---|---|---|")
    # an empty inductor cache: the compile column is what a first run pays, not a reuse of an earlier run's kernels
    with tempfile.TemporaryDirectory(prefix="bench_generation_inductor_") as cache:
        os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", cache)
        return [line for name in args.models.split(",") for line in bench_model(name, args.batch_sizes, runners, args)]


if __name__ == "__main__":
    main()
