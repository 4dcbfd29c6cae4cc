"""Command line: ``vlmdpo train``, ``vlmdpo iterate``, ``vlmdpo validate``, ``vlmdpo data``, ``vlmdpo eval``,
``vlmdpo merge``, ``vlmdpo demo``, ``vlmdpo tiny-model``, ``vlmdpo config``.

``vlmdpo train [CONFIG.yaml] [section.key=value ...]`` runs DPO; under ``accelerate launch -m vlmdpo.cli``
the same command runs on several GPUs or machines.
"""

from __future__ import annotations

import argparse
import sys


def _config_items(items: list[str]) -> tuple[str | None, list[str]]:
    """``[CONFIG.yaml] key=value ...`` (``train``, ``iterate``, ``validate``, ``eval``): the YAML file, or
    ``None`` when the first item is already an override, and the overrides."""
    if items and "=" not in items[0]:
        return items[0], list(items[1:])
    return None, list(items)


def _pairs(items: list[str], what: str) -> dict:
    """Repeated ``KEY=VALUE`` options (``--option``, ``--column``) as a dict."""
    bad = [item for item in items if "=" not in item]
    if bad:
        raise SystemExit(f"vlmdpo: {what} must look like key=value, got {bad}")
    return dict(item.split("=", 1) for item in items)


def _train(args) -> None:
    from vlmdpo.config import load_config
    from vlmdpo.train.loop import train

    output = train(load_config(*_config_items(args.items)))
    print(f"adapter and metrics written to {output}")


def _iterate(args) -> None:
    from vlmdpo.config import load_config
    from vlmdpo.train.iterative import iterative_dpo, named_callable

    config = load_config(*_config_items(args.items))
    evaluate = named_callable(args.evaluate, "--evaluate") if args.evaluate else None
    iterative_dpo(config, named_callable(args.pairs, "--pairs"), args.rounds, evaluate=evaluate,
                  keep_policies=args.keep_policies)
    print(f"rounds written to {config.train.output_dir} (rounds.md)")


def _validate(args) -> None:
    from vlmdpo.config import load_config
    from vlmdpo.train.run_data import validate_training_data

    report, written = validate_training_data(load_config(*_config_items(args.items)), out=args.out)
    print(report.summary())
    if written is not None:
        print(f"bad rows listed in {written}")
    if report.bad:
        raise SystemExit(1)


def _data(args) -> None:
    from vlmdpo.data import tools as dataset_tools
    from vlmdpo.data.formats import known_formats

    if args.action == "formats":
        for name, row_format in sorted(known_formats().items()):
            options = f"; options {row_format.options}" if row_format.options else ""
            print(f"{name:22} {row_format.description} (needs {', '.join(sorted(row_format.required))}{options})")
        return
    if args.source is None:
        raise SystemExit(f"vlmdpo: data {args.action} needs SOURCE")
    common = {"split": args.split, "format": args.format, "options": _pairs(args.option, "--option"),
              "columns": _pairs(args.column, "--column"), "image_root": args.image_root}
    if args.action == "inspect":
        report = dataset_tools.inspect_dataset(args.source, sample=args.sample, plot=args.plot, **common)
        print(report.summary())
        print(f"length histogram: {args.plot}" if args.plot else "length histogram: add --plot PATH to write one")
    else:
        if args.out is None:
            raise SystemExit("vlmdpo: data convert needs OUT (a .jsonl file or a folder)")
        out, skipped = dataset_tools.convert_dataset(args.source, args.out, skip_bad=args.skip_bad, **common)
        print(f"wrote {out}" + (f"; skipped {len(skipped)} bad rows" if skipped else ""))
        for entry in skipped:
            print(f"  {entry['message']}")


def _eval(args) -> None:
    from vlmdpo.eval.runner import run_eval

    print(f"report written to {run_eval(*_config_items(args.items))}")


def _merge(args) -> None:
    from vlmdpo.model.merge import merge_adapter

    print(f"merged model written to {merge_adapter(args.adapter, args.out, args.base, args.dtype)}")


def _tiny_model(args) -> None:
    from vlmdpo.tiny.models import tiny_vlm

    print(tiny_vlm(args.family, path=args.out, image_size=args.image_size))


def _demo(args) -> None:
    from data_recipes.shapes.demo import run_demo  # the recipe, loaded only when asked for

    run_demo(args.out, quick=args.quick, overrides=args.overrides)


def _config(args) -> None:
    from vlmdpo.config_reference import config_reference

    if args.which == "eval":
        from vlmdpo.eval.config import EvalConfig as schema
    elif args.which == "demo":
        from data_recipes.shapes.settings import DemoConfig as schema  # the recipe, loaded only when asked for
    else:
        from vlmdpo.config import Config as schema
    print(config_reference(schema))


KEYS_HELP = {"train": "vlmdpo config", "iterate": "vlmdpo config", "validate": "vlmdpo config",
             "eval": "vlmdpo config eval", "demo": "vlmdpo config demo"}


def _subcommand(commands, name: str, help: str):
    epilog = f"Every key, its default and what it does: {KEYS_HELP[name]}" if name in KEYS_HELP else None
    return commands.add_parser(name, help=help, description=help, epilog=epilog,
                               formatter_class=argparse.RawDescriptionHelpFormatter)


def _config_subcommand(commands, name: str, help: str, items_help: str, func):
    """A subcommand that takes ``[CONFIG.yaml] key=value ...`` as ``items`` (split by :func:`_config_items`)."""
    command = _subcommand(commands, name, help)
    command.add_argument("items", nargs="*", metavar="CONFIG.yaml | key=value", help=items_help)
    command.set_defaults(func=func)
    return command


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vlmdpo", description="DPO for vision-language models: LoRA, response-only log-probs.",
        epilog="Config keys are documented by `vlmdpo config` (train), `vlmdpo config eval` and "
               "`vlmdpo config demo`.", formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    _config_subcommand(commands, "train", "DPO-train a LoRA adapter (or the full model)",
                       "an optional YAML config, then overrides such as train.learning_rate=1e-5", _train)
    iterate = _config_subcommand(commands, "iterate", "on-policy iterative DPO: rounds of sample, score, pair, train",
                                 "the training config each round uses (data.train is set per round)", _iterate)
    iterate.add_argument("--rounds", type=int, default=3)
    iterate.add_argument("--keep-policies", choices=["all", "last"], default="all",
                         help="every round's merged policy (default), or only the newest one on disk")
    iterate.add_argument("--pairs", required=True, metavar="package.module:NAME",
                         help="build_pairs(model, processor, round) -> datasets.Dataset of preference rows")
    iterate.add_argument("--evaluate", default=None, metavar="package.module:NAME",
                         help="evaluate(model, processor, round) -> {name: number} for each round's policy")
    validate = _config_subcommand(commands, "validate",
                                  "check every training row as training will read it, before training",
                                  "the training config (and overrides) whose data.train to check", _validate)
    validate.add_argument("--out", default=None, help="where to list the bad rows (default: "
                          "<train.output_dir>/bad_rows.jsonl)")
    data = _subcommand(commands, "data", "look at a dataset in any known layout, or convert it to the package's")
    data.add_argument("action", choices=["inspect", "convert", "formats"])
    data.add_argument("source", nargs="?", help="a data file, save_to_disk folder or hub name")
    data.add_argument("out", nargs="?", help="convert: a .jsonl file (images beside it) or a save_to_disk folder")
    data.add_argument("--format", default="auto", help="a format name (vlmdpo data formats) or auto")
    data.add_argument("--option", action="append", default=[], metavar="KEY=VALUE", help="a reader option")
    data.add_argument("--column", action="append", default=[], metavar="SOURCE=TARGET", help="rename a column")
    data.add_argument("--split", default="train")
    data.add_argument("--image-root", default=None, help="folder image paths are relative to")
    data.add_argument("--sample", type=int, default=2000, help="inspect: rows read, spread over the dataset")
    data.add_argument("--plot", default=None, metavar="PATH", help="inspect: write a histogram of response "
                      "lengths to this PNG (without it, the summary gives the lengths' percentiles)")
    data.add_argument("--skip-bad", action="store_true", help="convert: leave bad rows out (and list them)")
    data.set_defaults(func=_data)
    _config_subcommand(commands, "eval", "evaluate a base model and its adapters or merged checkpoints",
                       "an optional YAML eval config, then overrides such as 'checkpoints=[runs/*]'", _eval)
    merge = _subcommand(commands, "merge", "merge an adapter into its base model")
    merge.add_argument("adapter", help="folder with adapter_config.json (a train output_dir)")
    merge.add_argument("out", help="where to write the merged model")
    merge.add_argument("--base", default=None, help="base model (default: the one the adapter records)")
    merge.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    merge.set_defaults(func=_merge)
    tiny = _subcommand(commands, "tiny-model", "write a random-weight tiny VLM for offline experiments")
    from vlmdpo.tiny.models import FAMILIES

    tiny.add_argument("family", choices=sorted(FAMILIES))
    tiny.add_argument("out")
    tiny.add_argument("--image-size", type=int, default=32)
    tiny.set_defaults(func=_tiny_model)
    demo = _subcommand(commands, "demo", "the offline shapes-world demo: data, DPO, evaluation, report")
    demo.add_argument("--out", default="outputs/demo", help="report folder")
    demo.add_argument("--quick", action="store_true", help="a small, fast configuration (for tests)")
    demo.add_argument("overrides", nargs="*", metavar="key=value",
                      help="demo settings, e.g. align.steps=300 align.beta=0.2 seed=1")
    demo.set_defaults(func=_demo)
    config = _subcommand(commands, "config", "print every config key with its default and what it does")
    config.add_argument("which", nargs="?", default="train", choices=["train", "eval", "demo"])
    config.set_defaults(func=_config)
    return parser


def main(argv: list[str] | None = None) -> None:
    from vlmdpo.config import ConfigError
    from vlmdpo.data.formats import FormatError
    from vlmdpo.data.rows import DataError
    from vlmdpo.data.validate import BadRowsError
    from vlmdpo.eval.benchmarks import BenchmarkFormatError
    from vlmdpo.train.checkpoints import ResumeError

    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except (ConfigError, DataError, FormatError, BadRowsError, ResumeError,
            BenchmarkFormatError) as error:  # the user can act on these
        print(f"vlmdpo: {error}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main(sys.argv[1:])
