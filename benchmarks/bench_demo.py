"""The shapes-world demo over seeds and torch thread counts, first run on a fresh cache:
python benchmarks/bench_demo.py --seeds 0 1 2 --threads 1 2.

Each (seed, threads) runs ``vlmdpo demo`` as its own process with its own cache folder, empty on a first run, so
every stage (data, judge, base model, pairs, DPO, SFT control, evaluation) is built and timed as a user's first
run would be. A different thread count sums in another order, which stands in for another CPU. The table
shows, run by run, the aligned model against the SFT control (CHAIR_i change with its 95% paired bootstrap
interval), then against the base, and whether the acceptance checks hold: one favourable run is not evidence
that the recipe works.

A cache folder under ``--out`` that already holds finished stages (an earlier run's) is reused, and the time
column names the stages that were cached. Wall times are honest only when nothing else runs; ``--jobs 2`` runs
two at once (give them one thread each).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path


def run_one(seed: int, threads: int, out: Path, overrides: list[str], reuse_cache: bool) -> dict:
    folder = out / f"seed{seed}-threads{threads}"
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    cached = []
    if not reuse_cache:
        cache = out / f"cache-seed{seed}-threads{threads}"
        env["VLMDPO_CACHE"] = str(cache)
        # stages an earlier run left in this folder are reused: the time is then a rerun's, and the table says so
        cached = sorted({stage.name.split("-")[0] for stage in (cache / "shapes-demo").glob("*-*")
                         if (stage / "DONE").exists()})
    command = [sys.executable, "-m", "vlmdpo.cli", "demo", "--out", str(folder), f"seed={seed}",
               "progress=false", *overrides]
    start = time.perf_counter()
    with open(out / f"seed{seed}-threads{threads}.log", "w") as log:
        code = subprocess.run(command, env=env, stdout=log, stderr=subprocess.STDOUT).returncode
    seconds = time.perf_counter() - start
    if code != 0:  # one failed run should not cost the others' results
        tail = (out / f"seed{seed}-threads{threads}.log").read_text().splitlines()[-5:]
        return {"seed": seed, "threads": threads, "seconds": seconds, "error": f"exit {code}: " + " / ".join(tail)}
    return {"seed": seed, "threads": threads, "seconds": seconds, "cached_stages": cached,
            "metrics": json.loads((folder / "metrics.json").read_text())}


def table(results: list[dict]) -> str:
    from data_recipes.shapes.demo_report import acceptance_checks

    head = ("| seed | threads | time | CHAIR_i base / control / aligned | aligned - control [95%] | recall control -> "
            "aligned | POPE F1 base -> aligned [95% change] | words control / aligned | well-formed control / aligned "
            "| checks |")
    lines = [head, "|---|---|---|---|---|---|---|---|---|---|"]
    for result in results:
        cached = f" ({', '.join(result['cached_stages'])} cached)" if result.get("cached_stages") else ""
        where = f"| {result['seed']} | {result['threads']} | {result['seconds'] / 60:.1f} min{cached}"
        if "error" in result:
            lines.append(f"{where} | failed: {result['error']} | | | | | | |")
            continue
        m = result["metrics"]
        base, aligned, control = m["base"], m["aligned"], m["sft_control"]
        checks = "".join("P" if ok else "F" for _, ok in acceptance_checks(m))
        vs_control, pope = aligned["vs_control"]["chair_i"], aligned["pope_f1_change"]
        lines.append(
            f"{where} | {base['chair_i']:.3f} / {control['chair_i']:.3f} / {aligned['chair_i']:.3f} "
            f"| {vs_control['change']:+.3f} [{vs_control['low']:+.3f}, {vs_control['high']:+.3f}] "
            f"| {control['recall']:.3f} -> {aligned['recall']:.3f} "
            f"| {base['pope_f1']:.3f} -> {aligned['pope_f1']:.3f} [{pope['low']:+.3f}, {pope['high']:+.3f}] "
            f"| {control['mean_words']:.1f} / {aligned['mean_words']:.1f} "
            f"| {control['well_formed']:.3f} / {aligned['well_formed']:.3f} | {checks} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--threads", type=int, nargs="+", default=[2], help="torch thread counts, each a run")
    parser.add_argument("--out", default="outputs/bench_demo")
    parser.add_argument("--jobs", type=int, default=1, help="runs at once")
    parser.add_argument("--reuse-cache", action="store_true", help="use the normal cache (not a first run)")
    parser.add_argument("overrides", nargs="*", help="demo key=value settings, e.g. align.steps=200 (see vlmdpo demo --help)")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    runs = [(seed, threads) for seed in args.seeds for threads in args.threads]
    with ThreadPoolExecutor(args.jobs) as pool:
        results = list(pool.map(lambda run: run_one(*run, out, args.overrides, args.reuse_cache), runs))
    print(f"demo, first run per seed and thread count on a fresh cache, {args.jobs} at a time")
    print("checks: CHAIR_i below the control's beyond the interval / recall at most 2 points below the control's"
          " / POPE F1 not below the base's beyond the interval (P pass, F fail)")
    print(table(results))
    (out / "results.json").write_text(json.dumps(results, indent=1))
    return results


if __name__ == "__main__":
    main()
