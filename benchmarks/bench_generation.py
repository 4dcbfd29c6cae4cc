"""Batched vs one-row-at-a-time generation on the same tiny VLM: python benchmarks/bench_generation.py.

Both runs produce the same greedy responses (checked), so the ratio of their wall times is the speed-up that
left-padded batching with the KV cache buys. Offline: the model is a random-weight ``vlmdpo.tiny.models`` VLM.
"""

from __future__ import annotations

import argparse
import time

import torch


def _rows(num_rows: int, image_size: int) -> list[dict]:
    from data_recipes.shapes import build_shapes_dataset, povid_pairs
    from vlmdpo.data.rows import PreferenceDataset

    test = build_shapes_dataset(num_train=0, num_test=num_rows, image_size=image_size)["test"]
    pairs = PreferenceDataset(povid_pairs(test))
    return [pairs[i] for i in range(len(pairs))]


def _timed(fn, repeats: int) -> tuple[float, list]:
    best, out = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return best, out


def main(argv: list[str] | None = None) -> float:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--family", default="llava", choices=["llava", "qwen2_vl"])
    parser.add_argument("--rows", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=2, help="best of N runs each")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 is steadiest on a shared CPU)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)

    from vlmdpo.eval.generation import generate_responses
    from vlmdpo.model.load import load_model_and_processor
    from vlmdpo.tiny.models import tiny_vlm

    torch.set_num_threads(args.threads)
    model, processor = load_model_and_processor(tiny_vlm(args.family))
    model.to(args.device)
    rows = _rows(args.rows, image_size=32)
    settings = dict(max_new_tokens=args.max_new_tokens, progress=False)
    generate_responses(model, processor, rows[:2], batch_size=2, **settings)  # warm-up

    batched_s, batched = _timed(
        lambda: generate_responses(model, processor, rows, batch_size=args.batch_size, **settings), args.repeats)
    single_s, single = _timed(
        lambda: generate_responses(model, processor, rows, batch_size=1, **settings), args.repeats)
    if batched != single:
        raise SystemExit("batched and one-at-a-time greedy outputs differ: left padding is broken")
    ratio = single_s / batched_s
    print(f"{args.family} on {args.device} ({args.threads} thread(s)), {len(rows)} rows, "
          f"max_new_tokens={args.max_new_tokens}")
    print(f"  one row at a time: {single_s:.3f} s ({len(rows) / single_s:.1f} rows/s)")
    print(f"  batch of {args.batch_size}:       {batched_s:.3f} s ({len(rows) / batched_s:.1f} rows/s)")
    print(f"  speed-up (one-at-a-time time / batched time): {ratio:.2f}x")
    return ratio


if __name__ == "__main__":
    main()
