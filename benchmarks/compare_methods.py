"""Preference methods against the SFT control on the shapes world, when the chosen responses are the base
model's own best samples rather than ground truth: python benchmarks/compare_methods.py --seeds 0 1 2

The demo's stages build the data, the CLIP judge and the base model (cached as the demo caches them). The
pairs are RLAIF-style only (``pairs.caption_pairs=0 pairs.yes_no_images=0``): the base samples captions of
alignment images it never saw, the judge ranks them, best vs worst above a margin. Imitating the chosen
captions copies whatever they still get wrong; the preference between them points away from it. On those
pairs, from the same base and with the same adapter, steps and learning rate:

- ``base``: the base model itself (no alignment), for scale;
- ``sft_control``: loss ``sft`` on the chosen captions (the control);
- ``dpo``: sigmoid DPO; ``dpo_sft``: DPO + the SFT term (the demo's default recipe);
- ``mdpo_sft``: mDPO (DPO + conditional term on crop-resized images + anchor) + SFT (arXiv 2406.11839);
- ``dense_sft``: DPO + SFT with RLHF-V's dense token weights (gamma 5 on words that differ, weighted sums;
  arXiv 2312.00849);
- ``iterative_sft``: ``--rounds`` rounds of on-policy DPO + SFT (RLAIF-V, arXiv 2405.17220): each round
  samples pairs from the current policy on its own share of the alignment images and trains its share of the
  steps (``vlmdpo.train.iterative``).

Each is evaluated on the held-out images (CHAIR_i, recall, POPE F1), and compared with the control by a paired
bootstrap over images (``chair_i_change``, ``pope_f1_change``, 95%). A method "beats the control" on a seed
when either interval lies wholly on the better side of zero and its recall is at most 2 points lower.

``--world shortcut`` appends a phrase to every rejected caption, so that the pairs can be told apart from the
text alone: plain DPO can then fit them without looking at the image, and mDPO's conditional term is what
should still make the model use it.

``pairs.caption_pairs=1000 pairs.yes_no_images=500`` (overrides go last) gives the demo's own pairs instead: the
imperfect-chosen caption pairs (``data_recipes.shapes.habit_pairs``), yes/no and RLAIF pairs; the record of both
is ``docs/preference_methods.md``.

Results accumulate in ``--out`` (one JSON per seed, world and method; a finished one is not rerun), and the
table is printed and written to ``<out>/comparison.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

METHODS = {
    "base": {"train": False},
    "sft_control": {"losses": "sft"},
    "dpo": {"losses": "sigmoid"},
    "dpo_sft": {"losses": "sigmoid:1+sft:1"},
    "mdpo_sft": {"losses": "sigmoid:1+mdpo_conditional:1+mdpo_anchor:1+sft:1"},
    "dense_sft": {"losses": "sigmoid:1+sft:1", "extra": ["loss.dense_gamma=5", "loss.dense_normalize=false"]},
    "iterative_sft": {"losses": "sigmoid:1+sft:1", "iterative": True},
}
SHORTCUT = " that is all."
"""What ``--world shortcut`` appends to every rejected caption."""


def prepare(seed: int, overrides: list[str]):
    """The demo config for ``seed`` with RLAIF pairs only, and its cached stages (data, judge, base, pairs)."""
    from data_recipes.shapes.demo import stage_folders
    from data_recipes.shapes.settings import load_config
    from data_recipes.shapes.stages import build_data, build_pairs, train_base, train_judge

    config = load_config([f"seed={seed}", "pairs.caption_pairs=0", "pairs.yes_no_images=0", "progress=false",
                          *overrides])
    cache = stage_folders(config)
    data = build_data(config, cache["data"])
    judge = train_judge(config, data, cache["judge"])
    base = train_base(config, data, judge, cache["base"])
    pairs = build_pairs(config, data, base, judge, cache["pairs"])
    return config, data, judge, base, pairs


def shortcut_pairs(pairs: Path, out: Path) -> Path:
    """``pairs`` with ``SHORTCUT`` appended to every rejected caption."""
    import datasets

    if not (out / "dataset_info.json").exists():
        datasets.load_from_disk(str(pairs)).map(lambda row: {"rejected": row["rejected"] + SHORTCUT}).save_to_disk(
            str(out))
    return out


def iterative_run(config, data, judge, base: Path, rounds: int, losses: str, folder: Path) -> Path:
    """``rounds`` rounds of sample -> judge -> pair -> DPO from ``base``; returns the last merged policy."""
    from data_recipes.shapes.rlaif import rlaif_pairs
    from data_recipes.shapes.stages import _device, _plain, align_overrides
    from vlmdpo.config import load_config
    from vlmdpo.train.iterative import iterative_dpo

    settings = config.pairs
    train = data["train"]
    images = train.select(range(max(config.base.images, len(train) - settings.rlaif_images), len(train)))
    share = len(images) // rounds

    def build_pairs(model, processor, round_index):
        part = images.select(range(round_index * share, (round_index + 1) * share))
        pairs = rlaif_pairs(model.to(_device()), processor, judge, part, num_samples=settings.rlaif_samples,
                            margin=settings.rlaif_margin, max_new_tokens=settings.rlaif_max_new_tokens,
                            seed=config.seed + round_index, max_length_gap=settings.rlaif_max_length_gap,
                            progress=False)
        return _plain(pairs, "rlaif")

    overrides = align_overrides(config, base, folder / "unused", folder, losses)
    overrides.append(f"train.max_steps={max(1, config.align.steps // rounds)}")
    iterative_dpo(load_config(None, overrides), build_pairs, rounds)
    return folder / f"round-{rounds - 1}" / "policy"


def evaluate(config, data, model_path: Path, adapter: Path | None) -> dict:
    """CHAIR, recall and POPE of one model on the held-out images, with the per-image records."""
    from peft import PeftModel

    from data_recipes.shapes import SHAPES_VOCABULARY, povid_pairs
    from data_recipes.shapes.stages import _device
    from vlmdpo.eval.objects import ObjectVocabulary
    from vlmdpo.eval.rows import eval_row
    from vlmdpo.eval.suite import evaluate_model
    from vlmdpo.model.load import load_model_and_processor

    test = povid_pairs(data["test"], seed=config.seed + 1)
    rows = [eval_row(test[i], i) for i in range(len(test))]
    model, processor = load_model_and_processor(str(model_path))
    if adapter is not None:
        model = PeftModel.from_pretrained(model, str(adapter))
    result, records = evaluate_model(
        model.to(_device()).eval(), processor, rows, metrics=["chair", "pope", "length"],
        vocabulary=ObjectVocabulary.from_dict(SHAPES_VOCABULARY), progress=False,
        generation={"max_new_tokens": config.eval.max_new_tokens, "batch_size": 50})
    return {"chair_i": result["chair"]["chair_i"], "recall": result["chair"]["recall"],
            "pope_f1": statistics.fmean(split["f1"] for split in result["pope"].values()),
            "mean_words": result["length"]["mean_words"],
            "captions": [{k: r[k] for k in ("index", "mentioned", "hallucinated", "response")}
                         for r in records["generations"]],
            "pope": records["pope"]}


def run_method(name: str, seed: int, world: str, prepared, out: Path, rounds: int) -> dict:
    from data_recipes.shapes.stages import align

    path = out / f"seed{seed}" / world / f"{name}.json"
    if path.exists():
        return json.loads(path.read_text())
    config, data, judge, base, pairs = prepared
    if world == "shortcut":
        pairs = shortcut_pairs(pairs, out / f"seed{seed}" / "shortcut_pairs")
    method, folder = METHODS[name], out / f"seed{seed}" / world / name
    start = time.perf_counter()
    if not method.get("train", True):
        model_path, adapter = base, None
    elif method.get("iterative"):
        if world == "shortcut":
            raise ValueError("iterative DPO samples its own pairs: it has no shortcut world")
        model_path, adapter = iterative_run(config, data, judge, base, rounds, method["losses"], folder), None
    else:
        model_path, adapter = base, align(config, base, pairs, folder, method["losses"], tuple(method.get("extra", ())))
    train_seconds = time.perf_counter() - start
    result = {"method": name, "seed": seed, "world": world, "train_seconds": round(train_seconds, 1),
              **evaluate(config, data, model_path, adapter)}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result))
    return result


def against_control(result: dict, control: dict, seed: int) -> dict:
    from vlmdpo.eval.chair import chair_i_change
    from vlmdpo.eval.pope import pope_f1_change

    chair = chair_i_change(control["captions"], result["captions"], seed=seed)
    pope = pope_f1_change(control["pope"], result["pope"], seed=seed)
    recall_drop = control["recall"] - result["recall"]
    beats = recall_drop <= 0.02 and (chair["high"] < 0 or pope["low"] > 0)
    return {"chair_i_change": chair, "pope_f1_change": pope, "recall_drop": recall_drop, "beats_control": beats}


def table(results: dict, seeds: list[int], methods: list[str], world: str) -> str:
    lines = [f"World `{world}`, seeds {seeds}: each cell is seed by seed; the interval is the 95% paired bootstrap "
             "of the change from the SFT control.", "",
             "| method | CHAIR_i | change vs control [95%] | recall | POPE F1 | change vs control [95%] | "
             "beats control |", "|---|---|---|---|---|---|---|"]
    for name in methods:
        per_seed = [results.get((seed, world, name)) for seed in seeds]
        if any(r is None for r in per_seed):
            lines.append(f"| {name} | (not run on every seed) | | | | | |")
            continue
        plain = name in ("sft_control", "base")  # the control itself, and the untrained base beside it
        comparisons = [None if plain else against_control(r, results[(seed, world, "sft_control")], seed)
                       for seed, r in zip(seeds, per_seed)]

        def cells(key):
            return " / ".join(f"{r[key]:.3f}" for r in per_seed)

        def changes(key):
            if plain:
                return "-"
            return " / ".join(f"{c[key]['change']:+.3f} [{c[key]['low']:+.3f}, {c[key]['high']:+.3f}]"
                              for c in comparisons)

        beats = "-" if plain else " / ".join("yes" if c["beats_control"] else "no"
                                                             for c in comparisons)
        lines.append(f"| {name} | {cells('chair_i')} | {changes('chair_i_change')} | {cells('recall')} | "
                     f"{cells('pope_f1')} | {changes('pope_f1_change')} | {beats} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", nargs="+", default=["0", "1", "2"])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), help=f"any of {list(METHODS)}")
    parser.add_argument("--world", default="self", choices=["self", "shortcut"])
    parser.add_argument("--rounds", type=int, default=2, help="rounds of iterative_sft")
    parser.add_argument("--out", default="outputs/compare_methods")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="demo settings (vlmdpo config demo), "
                        "e.g. pairs.rlaif_images=1000 align.steps=400")
    args = parser.parse_args(argv)
    # key=value settings written after --seeds or --methods land in those lists: move them back
    for name in ("seeds", "methods"):
        values = getattr(args, name)
        args.overrides += [v for v in values if "=" in v]
        setattr(args, name, [v for v in values if "=" not in v])
    unknown = [m for m in args.methods if m not in METHODS]
    if unknown or not all(seed.isdigit() for seed in args.seeds):
        parser.error(f"unknown methods {unknown} (known: {list(METHODS)})" if unknown else
                     f"--seeds takes whole numbers, got {args.seeds}")
    args.seeds = [int(seed) for seed in args.seeds]
    import torch

    torch.set_num_threads(args.threads)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    out = Path(args.out)
    methods = ["base", "sft_control"] + [m for m in args.methods if m not in ("base", "sft_control")]
    if args.world == "shortcut":
        methods = [m for m in methods if not METHODS[m].get("iterative")]
    results = {}
    for seed in args.seeds:
        start = time.perf_counter()
        prepared = prepare(seed, args.overrides)
        print(f"[compare] seed {seed}: stages ready in {time.perf_counter() - start:.0f} s", flush=True)
        for name in methods:
            start = time.perf_counter()
            results[(seed, args.world, name)] = run_method(name, seed, args.world, prepared, out, args.rounds)
            r = results[(seed, args.world, name)]
            print(f"[compare] seed {seed} {name}: CHAIR_i {r['chair_i']:.3f} recall {r['recall']:.3f} "
                  f"POPE F1 {r['pope_f1']:.3f} ({time.perf_counter() - start:.0f} s)", flush=True)
    text = table(results, args.seeds, methods, args.world)
    (out / f"comparison-{args.world}.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
