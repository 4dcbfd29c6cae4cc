"""On-policy iterative DPO (``vlmdpo.train.iterative``): each round samples from the policy the previous round made,
trains an ordinary run on the new pairs with that policy as reference, and merges; a loop started again
redoes only what had not finished."""

import json
import re
import shutil

import datasets
import pytest
import torch

from data_recipes.shapes import build_shapes_dataset
from vlmdpo.config import load_config
from vlmdpo.data.rows import normalize_row
from vlmdpo.done_marker import is_done, mark_done
from vlmdpo.eval.generation import generate_responses
from vlmdpo.train.iterative import iterative_dpo
from vlmdpo.tiny.models import tiny_vlm

PROMPT = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "describe the image."}]}]


def attention_weight(model):
    """A weight LoRA adapts (the first language-model query projection), to tell policies apart."""
    return next(p for n, p in model.named_parameters() if "language_model" in n and "q_proj" in n).detach().clone()


def score(text: str) -> int:
    """A stand-in judge: any fixed function of the text ranks samples; this one is cheap and deterministic."""
    return sum(map(ord, text)) % 97


class SampledPairs:
    """Best vs worst of three sampled captions per image, from the model it is given; remembers what it saw."""

    def __init__(self, images):
        self.images, self.calls = images, []

    def __call__(self, model, processor, round_index):
        rows = [normalize_row({"images": [image], "prompt": PROMPT, "chosen": "a", "rejected": "b"}, i)
                for i, image in enumerate(self.images)]
        samples = generate_responses(model, processor, rows, max_new_tokens=6, do_sample=True,
                                     num_return_sequences=3, seed=round_index, progress=False)
        self.calls.append({"round": round_index, "weight": attention_weight(model)})
        pairs = []
        for image, texts in zip(self.images, samples):
            ranked = sorted(set(texts), key=score)
            if len(ranked) > 1 and score(ranked[-1]) > score(ranked[0]):
                pairs.append({"images": [image], "prompt": "describe the image.", "chosen": ranked[-1],
                              "rejected": ranked[0]})
        return datasets.Dataset.from_list(pairs) if pairs else datasets.Dataset.from_dict({})


@pytest.fixture(scope="module")
def images():
    return build_shapes_dataset(seed=0, num_train=6, num_test=0, image_size=32)["train"]["images"]


def config(output_dir, **more):
    settings = {"train.output_dir": output_dir, "train.max_steps": 2, "train.batch_size": 2,
                "train.learning_rate": 5e-2, "train.lr_scheduler": "constant", "train.warmup_ratio": 0.0,
                "train.progress": "false", "train.mixed_precision": "no", "model.name_or_path": tiny_vlm("llava"),
                **more}
    return load_config(None, [f"{key}={value}" for key, value in settings.items()])


def policy_weight(folder):
    from vlmdpo.model.load import load_model_and_processor

    return attention_weight(load_model_and_processor(str(folder))[0])


def test_each_round_samples_from_and_trains_on_the_previous_rounds_policy(images, tmp_path):
    builder = SampledPairs([row[0] for row in images])
    evaluations = []

    def evaluate(model, processor, round_index):
        evaluations.append(round_index)
        return {"head norm": float(model.get_output_embeddings().weight.detach().norm())}

    reports = iterative_dpo(config(tmp_path / "loop"), builder, rounds=2, evaluate=evaluate)

    assert [r["round"] for r in reports] == ["start", 0, 1] and evaluations == [-1, 0, 1]
    round0, round1 = tmp_path / "loop" / "round-0", tmp_path / "loop" / "round-1"
    adapter = json.loads((round1 / "run" / "adapter_config.json").read_text())
    assert adapter["base_model_name_or_path"] == str(round0 / "policy")
    base_weight = policy_weight(tiny_vlm("llava"))
    assert torch.equal(builder.calls[0]["weight"], base_weight)
    # round 1 sampled from round 0's merged policy, which training moved away from the base
    assert torch.equal(builder.calls[1]["weight"], policy_weight(round0 / "policy"))
    assert not torch.equal(policy_weight(round0 / "policy"), base_weight)
    assert not torch.equal(policy_weight(round1 / "policy"), policy_weight(round0 / "policy"))
    for r in reports[1:]:
        assert r["pairs"] == len(datasets.load_from_disk(str(tmp_path / "loop" / f"round-{r['round']}" / "pairs")))
        assert r["pairs"] > 0 and torch.isfinite(torch.tensor(r["last_training_record"]["loss"]))
    table = (tmp_path / "loop" / "rounds.md").read_text()
    assert "| start |" in table and "| 0 |" in table and "| 1 |" in table and "head norm" in table
    assert (tmp_path / "loop" / "rounds.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_loop_started_again_redoes_only_what_did_not_finish(images, tmp_path):
    builder = SampledPairs([row[0] for row in images[:4]])
    iterative_dpo(config(tmp_path / "loop"), builder, rounds=2)
    finished = policy_weight(tmp_path / "loop" / "round-1" / "policy")
    # as if killed during round 1's training: its run, merge and report never finished
    round1 = tmp_path / "loop" / "round-1"
    (round1 / "run" / "DONE").unlink()
    shutil.rmtree(round1 / "policy")
    (round1 / "report.json").unlink()

    again = SampledPairs(builder.images)
    reports = iterative_dpo(config(tmp_path / "loop"), again, rounds=2)
    assert again.calls == []  # both rounds' pairs were kept
    assert torch.equal(policy_weight(round1 / "policy"), finished)
    assert [r["round"] for r in reports] == [0, 1]


def test_keeping_only_the_last_policy_deletes_the_older_ones_and_a_longer_loop_goes_on(images, tmp_path):
    """``keep_policies="last"``: after two rounds only round 1's merged policy is on disk (round 0's folder keeps
    its DONE marker and a PRUNED note); asked for a third round, the loop samples from round 1's policy, and
    then deletes it."""
    builder = SampledPairs([row[0] for row in images[:4]])
    iterative_dpo(config(tmp_path / "loop"), builder, rounds=2, keep_policies="last")
    round0, round1 = (tmp_path / "loop" / f"round-{k}" / "policy" for k in (0, 1))
    assert sorted(path.name for path in round0.iterdir()) == ["DONE", "PRUNED"]
    assert str(round1) in (round0 / "PRUNED").read_text()
    last = policy_weight(round1)

    again = SampledPairs(builder.images)
    reports = iterative_dpo(config(tmp_path / "loop"), again, rounds=3, keep_policies="last")
    assert [call["round"] for call in again.calls] == [2]  # rounds 0 and 1 were done
    assert torch.equal(again.calls[0]["weight"], last)
    assert sorted(path.name for path in round1.iterdir()) == ["DONE", "PRUNED"]
    assert (tmp_path / "loop" / "round-2" / "policy" / "DONE").exists()
    assert [r["round"] for r in reports] == [0, 1, 2]
    with pytest.raises(ValueError, match="keep_policies must be one of"):
        iterative_dpo(config(tmp_path / "other"), builder, rounds=1, keep_policies="none")


def test_no_pairs_and_full_fine_tuning_are_refused_with_the_fix(tmp_path):
    def nothing(model, processor, round_index):
        return datasets.Dataset.from_dict({})

    with pytest.raises(ValueError, match="round 0: build_pairs returned no pairs.*margin"):
        iterative_dpo(config(tmp_path / "a"), nothing, rounds=1)
    with pytest.raises(ValueError, match="model.finetune=lora"):
        iterative_dpo(config(tmp_path / "b", **{"model.finetune": "full"}), nothing, rounds=1)
    with pytest.raises(ValueError, match="rounds must be >= 1"):
        iterative_dpo(config(tmp_path / "c"), nothing, rounds=0)


def cli_pairs(model, processor, round_index):
    """``--pairs`` for the command-line test: sampled pairs on four shapes images."""
    images = build_shapes_dataset(seed=1, num_train=4, num_test=0, image_size=32)["train"]["images"]
    return SampledPairs([row[0] for row in images])(model, processor, round_index)


def test_the_command_line_runs_the_rounds_and_names_a_bad_builder(tmp_path, capsys):
    from vlmdpo.cli import main

    overrides = [f"{key}={value}" for key, value in {
        "train.output_dir": tmp_path / "loop", "train.max_steps": 1, "train.batch_size": 2, "train.progress": "false",
        "train.mixed_precision": "no", "model.name_or_path": tiny_vlm("llava")}.items()]
    main(["iterate", *overrides, "--rounds", "2", "--pairs", "test_iterative:cli_pairs", "--keep-policies", "last"])
    assert "rounds written to" in capsys.readouterr().out
    assert (tmp_path / "loop" / "round-1" / "policy" / "DONE").exists()
    assert (tmp_path / "loop" / "round-0" / "policy" / "PRUNED").exists()
    assert "| 1 |" in (tmp_path / "loop" / "rounds.md").read_text()
    with pytest.raises(SystemExit):
        main(["iterate", *overrides, "--pairs", "test_iterative:no_such_builder"])
    assert "--pairs 'test_iterative:no_such_builder'" in capsys.readouterr().err


def test_the_done_marker_is_a_DONE_file_holding_the_time(tmp_path):
    """Folders finished before the marker had a module of its own stay finished: the same file, the same text."""
    assert not is_done(tmp_path)
    mark_done(tmp_path)
    assert is_done(tmp_path) and re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", (tmp_path / "DONE").read_text())
