"""``vlmdpo eval`` end to end: two trained adapters and a merged model, report, resume and skip."""

import json
import os
from pathlib import Path

import open_clip
import pytest
import yaml

from data_recipes.shapes import build_shapes_dataset, povid_pairs
from vlmdpo.cli import main
from vlmdpo.config import Config, DataConfig, ModelConfig, TrainConfig
from vlmdpo.eval import runner
from vlmdpo.eval.config import EvalConfig, load_eval_config
from vlmdpo.eval.runner import evaluate, resolve_checkpoints
from vlmdpo.eval.store import eval_settings, settings_hash
from data_recipes.shapes.judge import TINY_CLIP_CONFIG
from vlmdpo.model.merge import merge_adapter
from vlmdpo.train.loop import train


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """Held-out pairs, two LoRA adapters trained for one step each, and an eval config using them."""
    root = tmp_path_factory.mktemp("eval")
    data = build_shapes_dataset(num_train=4, num_test=4, image_size=32)
    povid_pairs(data["train"]).save_to_disk(str(root / "train"))
    povid_pairs(data["test"]).save_to_disk(str(root / "heldout"))
    for seed in (0, 1):
        train(Config(model=ModelConfig(name_or_path="tiny:llava", lora_r=4),
                     data=DataConfig(train=str(root / "train"), max_response_length=32),
                     train=TrainConfig(output_dir=str(root / "runs" / f"run{seed}"), max_steps=1, batch_size=2,
                                       seed=seed, learning_rate=1e-2, progress=False)))
    clip_config = root / "eval-runner-clip.json"
    clip_config.write_text(json.dumps(TINY_CLIP_CONFIG))
    open_clip.add_model_config(clip_config)  # a random-weight open_clip model, registered by name
    config = {
        "base": "tiny:llava", "checkpoints": [str(root / "runs" / "*")],
        "data": {"source": str(root / "heldout")},
        "generation": {"max_new_tokens": 6, "batch_size": 8},
        "pope": {"strategies": ["random", "adversarial"], "questions_per_image": 2, "max_new_tokens": 3},
        "vocabulary": "data_recipes.shapes:SHAPES_VOCABULARY", "clip": {"model": "eval-runner-clip"},
        "metrics": ["preference", "chair", "pope", "clipscore", "length"], "progress": False,
    }
    (root / "eval.yaml").write_text(yaml.safe_dump(config))
    return root


def table(report: str, heading: str) -> list[list[str]]:
    block = report.split(f"### {heading}\n\n", 1)[1].split("\n\n", 1)[0]
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in block.splitlines()]


def test_cli_evaluates_all_checkpoints_then_skips_them(workspace, monkeypatch):
    out = workspace / "out"
    main(["eval", str(workspace / "eval.yaml"), f"output_dir={out}"])

    report = (out / "report.md").read_text()
    preference = table(report, "preference")
    assert [row[0] for row in preference[2:]] == ["base", "run0", "run1"]  # one row per checkpoint
    accuracy = preference[0].index("reward_accuracy")
    assert preference[2][accuracy] == "n/a" and preference[3][accuracy] != "n/a"
    for heading in ("chair", "pope/random", "pope/adversarial", "clipscore", "length"):
        assert [row[0] for row in table(report, heading)[2:]] == ["base", "run0", "run1"]
    for png in ("metrics_preference.png", "metrics_chair.png", "reward_margins.png", "training_curves.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG"
    assert '- `max_new_tokens`: `6`' in report and '- `prompt`: `"Describe the image."`' in report

    results = json.loads((out / "results.json").read_text())
    assert results["run0"]["settings"]["clip_model"] == "eval-runner-clip"
    assert len(results["run1"]["preference"]["per_pair"]) == 4
    generations = [json.loads(line) for line in (out / "checkpoints/run0/generations.jsonl").read_text().splitlines()]
    assert [g["index"] for g in generations] == [0, 1, 2, 3]
    assert {"response", "mentioned", "hallucinated", "clipscore"} <= set(generations[0])
    pope = [json.loads(line) for line in (out / "checkpoints/base/pope.jsonl").read_text().splitlines()]
    assert {p["strategy"] for p in pope} == {"random", "adversarial"}

    # a rerun with the same settings loads every result and never builds a model
    def fail(*args, **kwargs):
        raise AssertionError("a finished checkpoint was evaluated again")

    monkeypatch.setattr(runner, "_Session", fail)
    main(["eval", str(workspace / "eval.yaml"), f"output_dir={out}"])
    assert json.loads((out / "results.json").read_text()) == results


def test_resume_evaluates_only_what_is_missing_or_changed(workspace, monkeypatch):
    config = load_eval_config(str(workspace / "eval.yaml"), [f"output_dir={workspace / 'resume'}",
                                                           "metrics=[preference,length]"])
    evaluate(config, log=lambda *_: None)
    evaluated, original = [], runner._Session.evaluate

    def recording(self, checkpoint):
        evaluated.append(checkpoint.name)
        return original(self, checkpoint)

    monkeypatch.setattr(runner._Session, "evaluate", recording)
    (workspace / "resume/checkpoints/run1/result.json").unlink()  # as if the run had stopped during run1
    evaluate(config, log=lambda *_: None)
    assert evaluated == ["run1"]

    weights = workspace / "runs/run0/adapter_model.safetensors"
    stat = weights.stat()
    evaluated.clear()
    try:
        weights.touch()  # retrained in place: a new fingerprint
        evaluate(config, log=lambda *_: None)
    finally:
        os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert evaluated == ["run0"]


def test_merged_checkpoint_matches_its_adapter(workspace):
    merged = merge_adapter(str(workspace / "runs/run0"), str(workspace / "merged/run0-merged"))
    config = load_eval_config(str(workspace / "eval.yaml"), [
        f"output_dir={workspace / 'merged-eval'}", "include_base=false", "metrics=[preference]",
        f"checkpoints=[{workspace / 'runs/run0'},{merged}]"])
    results = evaluate(config, log=lambda *_: None)
    assert list(results) == ["run0", "run0-merged"]
    assert results["run0-merged"]["settings"]["kind"] == "model"
    assert (workspace / "merged-eval/reference_logps.json").exists()  # base log-probs, computed once
    for a, b in zip(results["run0"]["preference"]["per_pair"], results["run0-merged"]["preference"]["per_pair"]):
        assert a["margin"] == pytest.approx(b["margin"], abs=1e-3)


def test_resolve_checkpoints(tmp_path):
    for run in ("a", "b"):
        (tmp_path / run / "final").mkdir(parents=True)
        (tmp_path / run / "final" / "adapter_config.json").write_text("{}")
    (tmp_path / "a" / "checkpoint-5" / "adapter").mkdir(parents=True)
    (tmp_path / "a" / "checkpoint-5" / "adapter" / "adapter_config.json").write_text("{}")
    (tmp_path / "merged").mkdir()
    (tmp_path / "merged" / "config.json").write_text("{}")
    found = resolve_checkpoints([str(tmp_path / "*" / "final"), str(tmp_path / "a" / "checkpoint-5"),
                                 str(tmp_path / "merged")])
    assert [(c.name, c.kind) for c in found] == [("base", "base"), ("a/final", "adapter"), ("b/final", "adapter"),
                                                 ("checkpoint-5", "adapter"), ("merged", "model")]
    assert found[3].path == str(tmp_path / "a" / "checkpoint-5" / "adapter")
    with pytest.raises(FileNotFoundError, match="matched no folder"):
        resolve_checkpoints([str(tmp_path / "nothing-*")])
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="adapter_config.json"):
        resolve_checkpoints([str(tmp_path / "empty")])


def test_config_validation_and_settings_hash(tmp_path):
    config = load_eval_config(None, ["generation.max_new_tokens=12", "checkpoints=[x]", "vocabulary=data_recipes.shapes:SHAPES_VOCABULARY"])
    assert config.generation.max_new_tokens == 12 and config.checkpoints == ["x"]
    other = load_eval_config(None, ["generation.max_new_tokens=13", "checkpoints=[x]", "vocabulary=data_recipes.shapes:SHAPES_VOCABULARY"])
    assert settings_hash(eval_settings(config, "b")) != settings_hash(eval_settings(other, "b"))
    assert settings_hash(eval_settings(config, "b")) == settings_hash(eval_settings(config, "b"))


def test_a_metrics_version_bump_changes_the_settings_hash(monkeypatch):
    from vlmdpo.eval import store

    config = load_eval_config(None, ["checkpoints=[x]", "vocabulary=data_recipes.shapes:SHAPES_VOCABULARY"])
    before = settings_hash(eval_settings(config, "b"))
    monkeypatch.setattr(store, "METRICS_VERSION", store.METRICS_VERSION + 1)
    assert settings_hash(eval_settings(config, "b")) != before
    with pytest.raises(ValueError, match="clip.model is empty"):
        EvalConfig(metrics=["clipscore"])
    with pytest.raises(ValueError, match="unknown entries"):
        EvalConfig(metrics=["bleu"])
    with pytest.raises(ValueError, match="pope.strategies"):
        load_eval_config(None, ["pope.strategies=[hard]"])
    with pytest.raises(ValueError, match="key=value"):
        load_eval_config(None, ["generation.max_new_tokens"])


def test_missing_objects_fail_before_any_model_runs(workspace, tmp_path):
    config = load_eval_config(str(workspace / "eval.yaml"), [
        f"output_dir={tmp_path}", "data.objects_column=no_such_column", "metrics=[chair]", "checkpoints=[]"])
    with pytest.raises(ValueError, match="data.objects_column"):
        evaluate(config, log=lambda *_: None)
    assert not Path(tmp_path / "checkpoints" / "base" / "result.json").exists()
