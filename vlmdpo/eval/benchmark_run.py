"""``vlmdpo eval benchmark=pope|chair|amber|mmhal``: a base model and its checkpoints on a published benchmark.

The benchmark's files are read unchanged (:mod:`vlmdpo.eval.benchmarks`) and every image is checked before a
model loads. Each checkpoint answers every question with the batched generation of ``vlmdpo eval``, its answers
are scored by the benchmark's rules and saved in the layout the benchmark's own script reads, and its result is
written to ``<output_dir>/checkpoints/<name>/result.json`` with a hash of every setting it depends on, so a rerun
skips finished checkpoints as :mod:`vlmdpo.eval.runner` does. The report gives one row per checkpoint in the
benchmark's columns and each checkpoint's change of the headline number from the base, with a 95% paired
bootstrap interval.
"""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from pathlib import Path

from tqdm.auto import tqdm

from vlmdpo.eval.benchmarks.tasks import BenchmarkQuestion
from vlmdpo.eval.checkpoints import (
    CheckpointModels, checkpoint_dir, finished_checkpoints, resolve_checkpoints, training_metrics_files,
)
from vlmdpo.eval.config import EvalConfig, config_dict, save_eval_config
from vlmdpo.eval.report import write_report
from vlmdpo.eval.store import WEIGHT_SUFFIXES, fingerprint, write_json, write_jsonl

SPEED_SETTINGS = ("sort_by_length", "cache_implementation", "compile")
"""``generation.*`` keys that change how fast answers come, not what they are asked: they apply to every question."""
BENCHMARK_VERSION = 1
"""Bumped when scoring code changes what a result holds, so older results are recomputed."""
HEADLINES = {"pope_f1": "POPE F1 (mean over splits)", "chair_i": "CHAIR_i", "amber_score": "AMBER score",
             "amber_chair": "AMBER CHAIR", "amber_f1": "AMBER yes/no F1", "mmhal_score": "MMHal-Bench score"}
"""Headline number of each task, as the report names it."""


def _image_root(config: EvalConfig) -> Path:
    if config.data.image_root:
        return Path(config.data.image_root)
    source = Path(config.data.source)
    return source if source.is_dir() else source.parent


def chair_words(vocabulary: str):
    """The CHAIR paper's synonym list for ``coco``; otherwise CHAIR's rules over the ``{name: [forms]}`` table a
    json file or ``package.module:NAME`` gives (:meth:`ChairWords.from_table`)."""
    from vlmdpo.eval.benchmarks.chair import ChairWords
    from vlmdpo.names import resolve_name

    if vocabulary == "coco":
        return ChairWords.coco()
    if Path(vocabulary).is_file():
        table = json.loads(Path(vocabulary).read_text(encoding="utf-8"))
        table = table.get("objects", table) if isinstance(table.get("objects"), dict) else table
    else:
        table = resolve_name(vocabulary, "vocabulary", dict)
    return ChairWords.from_table(table)


def read_task(config: EvalConfig):
    """The task of ``config.benchmark`` (:mod:`vlmdpo.eval.benchmarks.tasks`), its files read and images checked."""
    from vlmdpo.eval.benchmarks.open_tasks import ChairTask, MMHalTask
    from vlmdpo.eval.benchmarks.tasks import AmberTask, PopeTask

    source, root, max_rows, bench = config.data.source, _image_root(config), config.data.max_rows, config.bench
    if config.benchmark == "pope":
        return PopeTask(source, root, suffix=config.pope.prompt_suffix, max_rows=max_rows)
    if config.benchmark == "amber":
        return AmberTask(source, root, query_file=bench.query_file, suffix=config.pope.prompt_suffix,
                         prompt=bench.prompt, max_rows=max_rows)
    if config.benchmark == "chair":
        return ChairTask(source, root, annotations=bench.annotations, words=chair_words(config.vocabulary),
                         prompt=bench.prompt, default_prompt=config.generation.prompt, max_rows=max_rows)
    from vlmdpo.names import resolve_name

    judge = resolve_name(bench.judge, "bench.judge", callable) if bench.judge else None
    return MMHalTask(source, root, judge=judge, max_rows=max_rows)


def _load_image(image: Path | bytes):
    from PIL import Image

    with Image.open(io.BytesIO(image) if isinstance(image, bytes) else image) as opened:
        return opened.convert("RGB")


def answer_questions(model, processor, questions: Sequence[BenchmarkQuestion], *, generation: dict,
                     yes_no_tokens: int, progress: bool = True) -> dict[str, str]:
    """``{key: answer}``: yes/no questions greedy within ``yes_no_tokens``, open ones with ``generation``
    (``generate_responses`` keyword arguments). A prompt asked twice (POPE splits share their positives) is
    generated once; images are opened a chunk at a time, so a benchmark never sits in memory whole."""
    from vlmdpo.eval.generation import generate_responses, with_prompt

    batch_size = generation["batch_size"]
    speed = {key: generation[key] for key in SPEED_SETTINGS if key in generation}  # off unless asked
    groups = {True: {"max_new_tokens": yes_no_tokens, "batch_size": batch_size, **speed},
              False: {key: generation[key] for key in ("max_new_tokens", "batch_size", "do_sample", "temperature",
                                                        "top_p", "seed") + SPEED_SETTINGS if key in generation}}
    unique = list(dict.fromkeys((q.image, q.text, q.yes_no) for q in questions))
    answers: dict[tuple, str] = {}
    chunk = batch_size * 8  # a multiple of the batch size: the batches are those of one call over everything
    with tqdm(total=len(unique), desc="answers", unit="prompt", disable=not progress, leave=False,
              dynamic_ncols=True) as bar:
        for yes_no, settings in groups.items():
            prompts = [p for p in unique if p[2] == yes_no]
            for start in range(0, len(prompts), chunk):
                part = prompts[start:start + chunk]
                rows = [with_prompt({"images": [_load_image(image)]}, text) for image, text, _ in part]
                texts = generate_responses(model, processor, rows, progress=False, **settings)
                answers.update(zip(part, texts))
                bar.update(len(part))
    return {q.key: answers[q.image, q.text, q.yes_no] for q in questions}


def benchmark_settings(config: EvalConfig, base_path: str) -> dict:
    """Everything a checkpoint's benchmark numbers depend on, except the checkpoint itself."""
    cfg = config_dict(config)
    settings = {key: cfg[key] for key in ("benchmark", "dtype", "generation")}
    settings["bench"] = {k: v for k, v in cfg["bench"].items() if k != "bootstrap_resamples"}  # report-time only
    settings.update(version=BENCHMARK_VERSION, base=config.base, base_files=fingerprint(base_path, WEIGHT_SUFFIXES),
                    data={"source": config.data.source, "image_root": config.data.image_root,
                          "max_rows": config.data.max_rows, "files": fingerprint(config.data.source)},
                    yes_no={k: cfg["pope"][k] for k in ("prompt_suffix", "max_new_tokens")})
    if config.benchmark == "chair":
        settings["vocabulary"] = config.vocabulary
        settings["vocabulary_files"] = fingerprint(config.vocabulary) if Path(config.vocabulary).is_file() else None
        settings["annotation_files"] = fingerprint(config.bench.annotations) if config.bench.annotations else None
    return settings


def _records(folder: Path) -> list[dict] | None:
    path = folder / "records.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else None


def evaluate_benchmark(config: EvalConfig, log=tqdm.write) -> dict[str, dict]:
    """Evaluate every checkpoint of ``config`` on ``config.benchmark`` (skipping finished ones), write the
    report; return ``{checkpoint name: result}``."""
    from vlmdpo.model.load import resolve_model_path

    task = read_task(config)  # before any model loads: a wrong file or a missing image fails now
    out = Path(config.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_eval_config(config, str(out / "eval_config.yaml"))
    base_path = resolve_model_path(config.base)
    checkpoints = resolve_checkpoints(config.checkpoints, config.include_base)
    settings = benchmark_settings(config, base_path)
    hashes, results, records = finished_checkpoints(out, checkpoints, settings, log, load_extra=_records)
    todo = [c for c in checkpoints if c.name not in results]
    models = CheckpointModels(base_path, config.dtype, config.device)
    bar = tqdm(todo, desc=f"{config.benchmark} checkpoints", disable=not config.progress, dynamic_ncols=True)
    for checkpoint in bar:
        bar.set_postfix_str(checkpoint.name)
        with models.load(checkpoint) as (model, processor):
            answers = answer_questions(model, processor, task.questions, generation=config_dict(config)["generation"],
                                       yes_no_tokens=config.pope.max_new_tokens, progress=config.progress)
        result, records[checkpoint.name] = task.score(answers)
        result["settings"] = {"checkpoint": checkpoint.path or config.base, "kind": checkpoint.kind,
                              "benchmark": config.benchmark, "questions": len(task.questions),
                              "max_new_tokens": config.generation.max_new_tokens,
                              "yes_no_max_new_tokens": config.pope.max_new_tokens,
                              "yes_no_suffix": config.pope.prompt_suffix, "do_sample": config.generation.do_sample}
        folder = checkpoint_dir(out, checkpoint)
        task.write_answers(folder, answers)
        write_jsonl(folder / "records.jsonl", records[checkpoint.name])
        result["settings_hash"] = hashes[checkpoint.name]
        write_json(folder / "result.json", result)  # last: marks it finished
        results[checkpoint.name] = result
    results = {c.name: results[c.name] for c in checkpoints}
    intervals = _changes_from_base(task, records, config.bench.bootstrap_resamples)
    for name, change in intervals.items():
        results[name] = {**results[name], "vs_base": {task.headline: change}}
    write_report(out, results, training_metrics=training_metrics_files(checkpoints),
                 title=f"{config.title}: {config.benchmark}", notes=_notes(config, task),
                 intervals={HEADLINES[task.headline]: intervals} if intervals else None)
    return results


def _changes_from_base(task, records: dict[str, list[dict]], num_resamples: int) -> dict[str, dict]:
    if "base" not in records:
        return {}
    changes = {name: task.change(records["base"], own, num_resamples) for name, own in records.items()
               if name != "base"}
    return {name: change for name, change in changes.items() if change is not None}


_ANSWER_FILES = {"pope": "pope_answers/<split>.jsonl (LLaVA's layout: question_id, text)",
                 "chair": "chair_captions.json (image_id, caption)",
                 "amber": "amber_responses.json (id, response; AMBER's inference.py --inference_data)",
                 "mmhal": "mmhal_responses.json (the response template with model_answer filled in)"}


def _notes(config: EvalConfig, task) -> str:
    notes = (f"{config.benchmark} read from {config.data.source}, scored by the benchmark's own rules "
             f"(docs/benchmarks.md). Each checkpoint's answers, in the layout the official script reads, are in "
             f"checkpoints/<name>/{_ANSWER_FILES[config.benchmark]}; per-question scoring in records.jsonl. "
             f"vs_base: the change of {HEADLINES[task.headline]} from the base, with a 95% paired bootstrap "
             f"interval over {'questions' if config.benchmark == 'mmhal' else 'images'}.")
    if config.benchmark == "mmhal" and task.judge is None:
        notes += (" MMHal-Bench is not scored: no judge was given. Set bench.judge=package.module:NAME to a "
                  "judge(question, reference, answer) -> 0-6, or rate the response files with LLaVA-RLHF's "
                  "eval_gpt_mmhal.py.")
    return notes
