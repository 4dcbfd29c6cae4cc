"""On-policy iterative DPO (RLAIF-V's loop, Yu et al. 2024, arXiv:2405.17220): K rounds of sample -> score ->
pair -> DPO, each round starting from the policy the previous one produced.

Round ``k`` lives in ``<train.output_dir>/round-<k>/``:

- ``pairs/``: the preference pairs ``build_pairs(model, processor, k)`` made from the round's starting policy
  (usually: sample several responses per prompt, score them, keep best vs worst above a margin;
  ``data_recipes.pair_builders.ai_feedback`` does this for any model and judge);
- ``run/``: an ordinary ``vlmdpo.train.train`` run on those pairs (adapter, ``metrics.jsonl``, checkpoints);
  its reference is the round's starting policy, as in RLAIF-V;
- ``policy/``: the round's starting policy with the adapter merged in (a plain checkpoint): the next round
  samples from it and trains on it;
- ``report.json``: the round's pair count, its last logged training metrics and, when ``evaluate`` is given,
  ``evaluate(model, processor, k)``'s numbers for the new policy (the starting policy's, ``evaluate(model,
  processor, -1)``, are in ``start_report.json``).

Every finished part writes a ``DONE`` marker last, so a killed loop started again with the same arguments
redoes only what did not finish (a killed training run resumes from its last checkpoint, as any run does).
Each ``policy/`` is a full checkpoint; ``keep_policies="last"`` deletes a round's merged weights once the next
round's policy is merged and reported (the folder keeps its ``DONE`` marker and a ``PRUNED`` note), so the disk
holds one merged policy at a time, not one per round.
``rounds.json`` and ``rounds.md`` gather the rounds' reports, ``rounds.png`` plots the evaluated numbers by
round.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from vlmdpo.config import Config, ConfigError
from vlmdpo.done_marker import MARKER, is_done, mark_done
from vlmdpo.names import resolve_name

PairBuilder = Callable[[object, object, int], "datasets.Dataset"]  # noqa: F821
"""``build_pairs(model, processor, round) -> datasets.Dataset`` of preference rows (any format ``data.format``
reads), made from ``model``, the round's starting policy."""

Evaluator = Callable[[object, object, int], dict]
"""``evaluate(model, processor, round) -> {name: number}``, for the policy a round produced."""


def named_callable(spec: str, what: str) -> Callable:
    """The callable ``package.module:NAME`` names (for the command line)."""
    return resolve_name(spec, what, callable, error=ConfigError)


KEEP_POLICIES = ("all", "last")


def iterative_dpo(config: Config, build_pairs: PairBuilder, rounds: int, *,
                  evaluate: Evaluator | None = None, keep_policies: str = "all") -> list[dict]:
    """Run ``rounds`` rounds of on-policy DPO from ``config.model.name_or_path``; return the reports (the
    starting policy's first when ``evaluate`` is given, then one per round).

    ``keep_policies``: ``"all"`` keeps every round's merged policy; ``"last"`` only the newest one (an 8B model
    merged in bfloat16 is about 16 GB a round).

    ``config`` is an ordinary training config; per round, ``model.name_or_path`` becomes the round's starting
    policy, ``data.train`` its pairs, ``train.output_dir`` its ``run/`` folder and ``train.seed`` the seed plus
    the round index. ``config.train.output_dir`` holds the rounds.
    """
    from vlmdpo.model.load import load_model_and_processor

    if rounds < 1:
        raise ConfigError(f"rounds must be >= 1, got {rounds}")
    if keep_policies not in KEEP_POLICIES:
        raise ConfigError(f"keep_policies must be one of {KEEP_POLICIES}, got {keep_policies!r}")
    if config.model.finetune != "lora":
        raise ConfigError("iterative DPO merges each round's LoRA adapter into the next round's policy: "
                         f"set model.finetune=lora (got {config.model.finetune!r})")
    root = Path(config.train.output_dir)
    policy = config.model.name_or_path
    reports = []
    if evaluate is not None:  # the starting point, so each round's numbers have something to move from
        reports.append(_start_report(root, policy, evaluate, config.model.dtype))
    for index in range(rounds):
        folder = root / f"round-{index}"
        pairs = _round_pairs(folder / "pairs", lambda: build_pairs(*load_model_and_processor(
            policy, config.model.dtype), index), index)
        run = _round_run(config, policy, pairs, folder / "run", index)
        merged = _merged_policy(run, policy, folder / "policy", config.model.dtype)
        report = _round_report(folder, index, policy, pairs, run, merged, evaluate, config.model.dtype)
        reports.append(report)
        if keep_policies == "last" and index > 0:
            _prune_policy(root / f"round-{index - 1}" / "policy", successor=merged)
        policy = str(merged)
    write_rounds_report(root, reports)
    return reports


def _round_pairs(folder: Path, build: Callable, index: int) -> Path:
    import datasets

    if not is_done(folder):
        pairs = build()
        if not isinstance(pairs, datasets.Dataset):
            raise TypeError(f"round {index}: build_pairs must return a datasets.Dataset, got {type(pairs).__name__}")
        if len(pairs) == 0:
            raise ConfigError(f"round {index}: build_pairs returned no pairs (every candidate pair was dropped: "
                             "lower the judge margin or sample more responses per prompt)")
        pairs.save_to_disk(str(folder))
        mark_done(folder)
    return folder


def _round_run(config: Config, policy: str, pairs: Path, folder: Path, index: int) -> Path:
    from vlmdpo.train.loop import train

    if not is_done(folder):
        round_config = replace(config, model=replace(config.model, name_or_path=policy),
                               data=replace(config.data, train=str(pairs)),
                               train=replace(config.train, output_dir=str(folder), seed=config.train.seed + index))
        train(round_config)
        mark_done(folder)
    return folder


def _merged_policy(run: Path, policy: str, folder: Path, dtype: str) -> Path:
    from vlmdpo.model.merge import merge_adapter

    if not is_done(folder):
        merge_adapter(str(run), str(folder), base=policy, dtype=dtype)
        mark_done(folder)
    return folder


def _prune_policy(folder: Path, successor: Path) -> None:
    """Delete a merged policy's files, keeping its ``DONE`` marker (a restarted loop does not merge it again:
    the rounds after it are done) and a ``PRUNED`` note that says which policy replaced it."""
    if not (folder / "PRUNED").exists():
        for path in folder.iterdir():
            if path.name != MARKER:
                shutil.rmtree(path) if path.is_dir() else path.unlink()
        (folder / "PRUNED").write_text(f"deleted (keep_policies=last); the newest policy is {successor}\n")


def _round_report(folder: Path, index: int, policy: str, pairs: Path, run: Path, merged: Path,
                  evaluate: Evaluator | None, dtype: str) -> dict:
    import datasets

    from vlmdpo.eval.metrics_log import read_metrics
    from vlmdpo.model.load import load_model_and_processor

    path = folder / "report.json"
    if path.exists():
        return json.loads(path.read_text())
    training = [r for r in read_metrics(run / "metrics.jsonl") if "loss" in r]
    report = {"round": index, "start_policy": policy, "policy": str(merged),
              "pairs": len(datasets.load_from_disk(str(pairs))),
              "last_training_record": training[-1] if training else None}
    if evaluate is not None:
        model, processor = load_model_and_processor(str(merged), dtype)
        report["eval"] = evaluate(model.eval(), processor, index)
    path.write_text(json.dumps(report, indent=2, default=float))
    return report


def _start_report(root: Path, policy: str, evaluate: Evaluator, dtype: str) -> dict:
    from vlmdpo.model.load import load_model_and_processor

    path = root / "start_report.json"
    if not path.exists():
        root.mkdir(parents=True, exist_ok=True)
        model, processor = load_model_and_processor(policy, dtype)
        report = {"round": "start", "policy": policy, "pairs": None, "last_training_record": None,
                  "eval": evaluate(model.eval(), processor, -1)}
        path.write_text(json.dumps(report, indent=2, default=float))
    return json.loads(path.read_text())


def write_rounds_report(root: Path, reports: list[dict]) -> None:
    """``rounds.json``, ``rounds.md`` (a table of pairs, loss, reward accuracy and evaluated numbers per round)
    and, when rounds were evaluated, ``rounds.png`` (each number by round)."""
    root = Path(root)
    (root / "rounds.json").write_text(json.dumps(reports, indent=2, default=float))
    names = sorted({k for r in reports for k, v in (r.get("eval") or {}).items() if isinstance(v, (int, float))})
    head = ["round", "pairs", "last loss", "reward accuracy", *names]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in reports:
        last = r.get("last_training_record") or {}
        cells = [r["round"], "" if r["pairs"] is None else r["pairs"], last.get("loss"), last.get("rewards/accuracies"),
                 *[(r.get("eval") or {}).get(n) for n in names]]
        lines.append("| " + " | ".join("" if c is None else f"{c:.4g}" if isinstance(c, float) else str(c)
                                       for c in cells) + " |")
    (root / "rounds.md").write_text("# Iterative DPO rounds\n\n" + "\n".join(lines) + "\n")
    if names:
        _plot_rounds(root / "rounds.png", reports, names)


def _plot_rounds(path: Path, reports: list[dict], names: list[str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(names), figsize=(3.2 * len(names), 3), squeeze=False)
    positions = [0 if r["round"] == "start" else r["round"] + 1 for r in reports]
    labels = ["start" if r["round"] == "start" else f"after {r['round'] + 1}" for r in reports]
    for axis, name in zip(axes[0], names):
        axis.plot(positions, [(r.get("eval") or {}).get(name, float("nan")) for r in reports], marker="o")
        axis.set_title(name)
        axis.set_xlabel("rounds of DPO")
        axis.set_ylabel(name)
        axis.set_xticks(positions, labels)
    figure.suptitle("policy after each round of on-policy DPO")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
