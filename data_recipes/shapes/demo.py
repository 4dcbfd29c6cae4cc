"""The shapes-world demo, the project's main job (``vlmdpo demo``): data -> CLIP judge -> base VLM ->
preference pairs -> DPO (and an SFT-only control) -> evaluation of base vs aligned on held-out images -> report.

Everything runs offline on a CPU. The base model is trained from scratch on captions of which a share
carries an extra object that is not in the image (as noisy web captions do), so it hallucinates at a
measurable rate, and on yes/no questions. DPO on pairs from images the base never saw (ground truth vs
hallucinated rewrites, POVID-style; true vs opposite yes/no answers; judge-ranked samples, RLAIF-style)
should remove that habit without losing recall.

Settings are typed, one dataclass per stage (``data_recipes.shapes.settings``). Each cached stage (data, judge, base, pairs) is stored under a
hash of its own settings, every earlier stage's settings, the run-wide ones and the stage code versions
(``stage_keys``), so changing any setting redoes exactly the stages it can change. What was measured with
settings that no longer exist is in ``docs/shapes_world.md``.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import asdict
from pathlib import Path

from data_recipes.shapes.settings import QUICK, DemoConfig, config_table, load_config


CACHED_STAGES = ("data", "judge", "base", "pairs")
"""The stages whose outputs are cached, in the order they run."""

RUN_WIDE = ("seed", "mixed_precision")
"""Top-level settings every cached stage's key holds (``out``, ``cache`` and ``progress`` change no result)."""

STAGE_VERSIONS = {"data": 2, "judge": 1, "base": 6, "pairs": 9}
"""Bumped when a stage's code changes what it produces, so caches written by older code are not reused
(data 2, base 2: popular-object caption noise; base 3: one yes and one no question per image; base 4: the
separator token before each answer is trained; pairs 2: the insert_object rewrite; pairs 5: yes/no pairs;
pairs 6: their hard negatives; base 5: questions written from noisy captions; pairs 7: popular negatives;
base 6, pairs 8: settings by stage; pairs 9: imperfect-chosen caption pairs)."""


def stage_keys(config: DemoConfig) -> dict[str, str]:
    """``{stage: key}``: a hash of the stage's settings, every earlier stage's, the run-wide settings and the
    code versions of the stage and those before it. A field added to a settings class is in the key."""
    values: dict = {name: getattr(config, name) for name in RUN_WIDE}
    keys = {}
    for stage in CACHED_STAGES:
        values[stage] = asdict(getattr(config, stage))
        values[f"{stage}_version"] = STAGE_VERSIONS[stage]
        keys[stage] = hashlib.sha256(json.dumps(values, sort_keys=True).encode()).hexdigest()[:12]
    return keys


def cache_root(config: DemoConfig) -> Path:
    """Where the cached stages live: ``<cache>/shapes-demo``."""
    root = config.cache or os.environ.get("VLMDPO_CACHE") or Path.home() / ".cache" / "vlmdpo"
    return Path(root) / "shapes-demo"


def stage_folders(config: DemoConfig) -> dict[str, Path]:
    """``{stage: folder}`` of the cached stages (data, judge, base, pairs) for ``config``."""
    keys, root = stage_keys(config), cache_root(config)
    return {stage: root / f"{stage}-{keys[stage]}" for stage in CACHED_STAGES}


def run_demo(out: str = "outputs/demo", quick: bool = False, overrides: list[str] | tuple = ()) -> dict:
    """Run every stage (reusing cached ones) and write the report; return ``metrics.json``'s content."""
    from data_recipes.shapes.demo_report import write_demo_report
    from data_recipes.shapes.stages import align, build_data, build_pairs, evaluate_all, train_base, train_judge

    config = load_config(overrides, quick=quick, out=out)
    cache = stage_folders(config)
    timings: dict[str, float] = {}

    def timed(name, fn, *args):
        start = time.perf_counter()
        result = fn(*args)
        timings[name] = round(time.perf_counter() - start, 1)
        print(f"[demo] {name}: {timings[name]} s", flush=True)
        return result

    data = timed("data", build_data, config, cache["data"])
    judge = timed("judge", train_judge, config, data, cache["judge"])
    base = timed("base model", train_base, config, data, judge, cache["base"])
    pairs = timed("pairs", build_pairs, config, data, base, judge, cache["pairs"])
    runs = Path(config.out) / "runs"
    aligned = timed("dpo", align, config, base, pairs, runs / "dpo", config.align.losses)
    control = timed("sft control", align, config, base, pairs, runs / "sft_control", "sft")
    results = timed("evaluation", evaluate_all, config, data, base, judge,
                    {"aligned": aligned, "sft_control": control})
    metrics = write_demo_report(config, results, timings, runs)
    print(f"[demo] report: {Path(config.out) / 'report.md'}")
    return metrics


__all__ = ["DemoConfig", "QUICK", "config_table", "load_config", "run_demo", "stage_folders", "stage_keys"]
