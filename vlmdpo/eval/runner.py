"""``vlmdpo eval``: one base model and any number of adapters or merged checkpoints, on the same rows.

Each checkpoint's result is written to ``<output_dir>/checkpoints/<name>/result.json`` as soon as it is done,
with a hash of every setting the numbers depend on (the config's data, generation, POPE, CLIP, vocabulary
and metric choices, plus the sizes and times of the checkpoint's weight files). A rerun loads results whose
hash matches instead of recomputing them, so an interrupted batch resumes where it stopped and a glob over a
growing run folder only evaluates the new checkpoints. The base model is loaded once, and only if
something is left to do; adapters are attached to it and removed again (``peft`` ``unload``).
"""

from __future__ import annotations

from pathlib import Path

import torch
from tqdm.auto import tqdm

from vlmdpo.eval.checkpoints import (
    Checkpoint,
    CheckpointModels,
    checkpoint_dir,
    finished_checkpoints,
    resolve_checkpoints,
    training_metrics_files,
)
from vlmdpo.eval.config import EvalConfig, config_dict, load_eval_config, save_eval_config
from vlmdpo.eval.report import write_report
from vlmdpo.eval.rows import load_eval_rows, load_vocabulary
from vlmdpo.eval.store import (
    ReferenceLogps,
    eval_settings,
    settings_hash,
    write_json,
    write_jsonl,
)
from vlmdpo.eval.suite import check_rows, evaluate_model

REFERENCE_FILE = "reference_logps.json"


def evaluate(config: EvalConfig, log=tqdm.write) -> dict[str, dict]:
    """Evaluate every checkpoint of ``config`` (skipping finished ones), write the report; return results."""
    from vlmdpo.model.load import resolve_model_path

    out = Path(config.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_eval_config(config, str(out / "eval_config.yaml"))
    base_path = resolve_model_path(config.base)
    checkpoints = resolve_checkpoints(config.checkpoints, config.include_base)
    settings = eval_settings(config, base_path)
    hashes, results, _ = finished_checkpoints(out, checkpoints, settings, log)
    todo = [c for c in checkpoints if c.name not in results]
    if todo:
        session = _Session(config, base_path, settings, out)
        bar = tqdm(todo, desc="checkpoints", disable=not config.progress, dynamic_ncols=True)
        for checkpoint in bar:
            bar.set_postfix_str(checkpoint.name)
            result = session.evaluate(checkpoint)
            result["settings_hash"] = hashes[checkpoint.name]
            write_json(checkpoint_dir(out, checkpoint) / "result.json", result)  # last: marks it finished
            results[checkpoint.name] = result
    results = {c.name: results[c.name] for c in checkpoints}
    notes = ("Rewards are beta * (checkpoint - base) response log-probs on the held-out pairs; the base row is "
             "the reference itself, so its rewards are n/a. Per-row generations and POPE answers are in "
             "checkpoints/<name>/.")
    write_report(out, results, training_metrics=training_metrics_files(checkpoints), title=config.title, notes=notes)
    return results


class _Session:
    """What every checkpoint of one run shares: rows, vocabulary, CLIP judge, base model, reference log-probs."""

    def __init__(self, config: EvalConfig, base_path: str, settings: dict, out: Path):
        self.config, self.out = config, out
        self.models = CheckpointModels(base_path, config.dtype, config.device)
        data = config.data
        self.rows = load_eval_rows(
            data.source, data.split, max_rows=data.max_rows, image_root=data.image_root,
            images_column=data.images_column, prompt_column=data.prompt_column,
            objects_column=data.objects_column, chosen_column=data.chosen_column,
            rejected_column=data.rejected_column, default_prompt=config.generation.prompt)
        needs_objects = "chair" in config.metrics or "pope" in config.metrics
        self.vocabulary = load_vocabulary(config.vocabulary) if needs_objects else None
        check_rows(self.rows, config.metrics, self.vocabulary)
        self.judge = _load_judge(config, self.models.device) if "clipscore" in config.metrics else None
        reference_settings = {k: settings[k] for k in ("base", "base_files", "dtype", "data", "beta")}
        self.reference = ReferenceLogps(out / REFERENCE_FILE, settings_hash(reference_settings))

    def evaluate(self, checkpoint: Checkpoint) -> dict:
        """Run the metrics on one checkpoint, save its per-row records, return its result."""
        config, is_base = self.config, checkpoint.kind == "base"
        reference_logps = None
        if "preference" in config.metrics and not is_base:
            reference_logps = self.reference.get(self._base_fit)
        with self.models.load(checkpoint) as (model, processor):
            result, records = evaluate_model(
                model, processor, self.rows, metrics=config.metrics, generation=config_dict(config)["generation"],
                pope=config_dict(config)["pope"], vocabulary=self.vocabulary, judge=self.judge, beta=config.beta,
                preference_batch_size=config.preference_batch_size,
                max_response_length=config.data.max_response_length,
                reference=model if is_base else None, reference_logps=reference_logps, progress=config.progress)
        if is_base and "preference" in result:
            self.reference.put(result["preference"])
        generation = config.generation
        result["settings"] = {"checkpoint": checkpoint.path or config.base, "kind": checkpoint.kind,
                              "prompt": generation.prompt, "max_new_tokens": generation.max_new_tokens,
                              "do_sample": generation.do_sample, "vocabulary": config.vocabulary,
                              **({"clip_model": self.judge.name} if self.judge is not None else {})}
        folder = checkpoint_dir(self.out, checkpoint)
        write_jsonl(folder / "generations.jsonl", records["generations"])
        write_jsonl(folder / "pope.jsonl", records["pope"])
        return result

    def _base_fit(self) -> dict:
        from vlmdpo.eval.preference import preference_fit

        model, processor = self.models.base
        config = self.config
        return preference_fit(model, processor, [row for row in self.rows if "chosen" in row], beta=config.beta,
                              batch_size=config.preference_batch_size, reference=model,
                              max_response_length=config.data.max_response_length, progress=config.progress)


def _load_judge(config: EvalConfig, device: torch.device):
    from vlmdpo.eval.judge import ClipJudge

    if Path(config.clip.model).is_dir():
        return ClipJudge.load(config.clip.model, device=device)
    return ClipJudge.from_pretrained(config.clip.model, config.clip.pretrained, device=device)


def run_eval(path: str | None = None, overrides: list[str] | tuple = ()) -> Path:
    """``vlmdpo eval [CONFIG.yaml] [key=value ...]``: evaluate (the package's rows, or a published benchmark with
    ``benchmark=...``) and return the report's path."""
    config = load_eval_config(path, overrides)
    if config.benchmark:
        from vlmdpo.eval.benchmark_run import evaluate_benchmark

        evaluate_benchmark(config)
    else:
        evaluate(config)
    return Path(config.output_dir) / "report.md"
