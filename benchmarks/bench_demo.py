"""The shapes-world demo over several seeds, first run on a fresh cache: python benchmarks/bench_demo.py.

Each seed runs ``vlmdpo demo`` as its own process with its own empty cache, so every stage (data, judge,
base model, pairs, DPO, SFT control, evaluation) is built and timed as a user's first run would be. The
table shows base vs aligned vs SFT control and whether the acceptance checks hold, seed by seed: one
favourable seed is not evidence that the recipe works.

Wall times are honest only when nothing else runs; ``--jobs 2`` runs two seeds at once with one torch thread
each (faster overall on 2 cores, slower per seed).
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


def run_seed(seed: int, out: Path, threads: int, overrides: list[str], reuse_cache: bool) -> dict:
    folder = out / f"seed{seed}"
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    if not reuse_cache:
        env["VLMDPO_CACHE"] = str(out / f"cache-seed{seed}")
    command = [sys.executable, "-m", "vlmdpo.cli", "demo", "--out", str(folder), f"seed={seed}",
               "progress=false", *overrides]
    start = time.perf_counter()
    with open(out / f"seed{seed}.log", "w") as log:
        code = subprocess.run(command, env=env, stdout=log, stderr=subprocess.STDOUT).returncode
    seconds = time.perf_counter() - start
    if code != 0:  # one failed seed should not cost the others' results
        tail = (out / f"seed{seed}.log").read_text().splitlines()[-5:]
        return {"seed": seed, "seconds": seconds, "error": f"exit {code}: " + " / ".join(tail)}
    return {"seed": seed, "seconds": seconds, "metrics": json.loads((folder / "metrics.json").read_text())}


def table(results: list[dict]) -> str:
    from data_recipes.shapes.demo_report import acceptance_checks

    head = ("| seed | time | CHAIR_i base -> aligned (control) | cut | recall base -> aligned (control) "
            "| POPE F1 base -> aligned (control) | checks |")
    lines = [head, "|---|---|---|---|---|---|---|"]
    for result in results:
        if "error" in result:
            lines.append(f"| {result['seed']} | {result['seconds'] / 60:.1f} min | failed: {result['error']} "
                         "| | | | |")
            continue
        m = result["metrics"]
        base, aligned, control = m["base"], m["aligned"], m["sft_control"]
        cut = 1 - aligned["chair_i"] / base["chair_i"] if base["chair_i"] else float("nan")
        checks = "".join("P" if ok else "F" for _, ok in acceptance_checks(m))

        def trio(key):
            return f"{base[key]:.3f} -> {aligned[key]:.3f} ({control[key]:.3f})"

        interval = aligned.get("pope_f1_change_ci")  # paired bootstrap over held-out images, 95%
        pope = trio("pope_f1") + (f" [change {interval[0]:+.3f} to {interval[1]:+.3f}]" if interval else "")
        lines.append(f"| {result['seed']} | {result['seconds'] / 60:.1f} min | {trio('chair_i')} | {cut:.0%} "
                     f"| {trio('recall')} | {pope} | {checks} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", default="outputs/bench_demo")
    parser.add_argument("--jobs", type=int, default=1, help="seeds run at once")
    parser.add_argument("--threads", type=int, default=None, help="torch threads per run (default: 2 // jobs)")
    parser.add_argument("--reuse-cache", action="store_true", help="use the normal cache (not a first run)")
    parser.add_argument("overrides", nargs="*", help="demo key=value settings, e.g. align.steps=200 (see vlmdpo demo --help)")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    threads = args.threads or max(1, 2 // args.jobs)
    with ThreadPoolExecutor(args.jobs) as pool:
        results = list(pool.map(lambda seed: run_seed(seed, out, threads, args.overrides, args.reuse_cache),
                                args.seeds))
    print(f"demo, first run per seed on a fresh cache, {args.jobs} at a time, {threads} torch thread(s) each")
    print("checks: CHAIR_i halved / recall within 5 points / POPE F1 not lower (P pass, F fail)")
    print(table(results))
    (out / "results.json").write_text(json.dumps(results, indent=1))
    return results


if __name__ == "__main__":
    main()
