"""The per-model metrics (CHAIR, repetition, lengths, CLIPScore, POPE) and evaluation from inside a training loop."""

import json

import open_clip
import pytest
import torch

from data_recipes.shapes import SHAPES_VOCABULARY, build_shapes_dataset, povid_pairs
from vlmdpo.data.rows import PreferenceDataset
from vlmdpo.eval import ObjectVocabulary, pope_metrics, suite
from vlmdpo.eval.during_training import evaluate_during_training
from vlmdpo.eval.preference import preference_fit
from vlmdpo.eval.report import comparison_tables
from data_recipes.shapes.judge import TINY_CLIP_CONFIG
from vlmdpo.eval.judge import ClipJudge
from vlmdpo.model.load import load_model_and_processor
from vlmdpo.model.lora import apply_lora
from vlmdpo.tiny.models import tiny_vlm


@pytest.fixture(scope="module")
def vocabulary():
    return ObjectVocabulary.from_dict(SHAPES_VOCABULARY)


@pytest.fixture(scope="module")
def rows():
    test = build_shapes_dataset(num_train=0, num_test=4, image_size=32)["test"]
    pairs = PreferenceDataset(povid_pairs(test))
    return [{**pairs[i], "objects": test[i]["objects"]} for i in range(len(pairs))]


@pytest.fixture(scope="module")
def llava():
    return load_model_and_processor(tiny_vlm("llava"))


def test_caption_metrics_by_hand(vocabulary, rows):
    rows = [{"index": 0, "objects": ["red circle", "blue square"]}, {"index": 1, "objects": ["green diamond"]}]
    responses = ["a large red circle and a small green triangle.", "a green diamond, no red circle."]
    numbers, details = suite.caption_metrics(responses, rows, vocabulary)
    # claimed: {red circle, green triangle} + {green diamond} (the red circle is negated) -> 1 of 3 hallucinated;
    # 1 of 2 captions hallucinates; recalled: red circle + green diamond of 3 ground-truth objects.
    # No object is named twice: repetition 0 of 3 mentions, 0 of 2 captions.
    assert numbers == pytest.approx({"chair_i": 1 / 3, "chair_s": 1 / 2, "recall": 2 / 3, "repetition": 0.0,
                                     "repetition_s": 0.0})
    assert details[0] == {"mentioned": ["red circle", "green triangle"], "hallucinated": ["green triangle"],
                          "missed": ["blue square"], "repeated": []}


def test_caption_metrics_count_repeats_that_chair_does_not(vocabulary):
    rows = [{"index": 0, "objects": ["yellow square"]}, {"index": 1, "objects": ["red circle"]}]
    responses = ["a large yellow square and a large yellow square and a large yellow square.", "two red circles."]
    numbers, details = suite.caption_metrics(responses, rows, vocabulary)
    # CHAIR sees {yellow square} and {red circle}: nothing hallucinated, everything recalled. Repetition sees
    # 3 + 1 mentions, of which 2 repeat the yellow square: 2/4; 1 of 2 captions repeats.
    assert numbers == pytest.approx({"chair_i": 0.0, "chair_s": 0.0, "recall": 1.0, "repetition": 2 / 4,
                                     "repetition_s": 1 / 2})
    assert [d["repeated"] for d in details] == [["yellow square", "yellow square"], []]
    table = comparison_tables({"base": {"chair": numbers}})  # the report shows them beside CHAIR
    assert "| checkpoint | chair_i | chair_s | recall | repetition | repetition_s |" in table
    assert "| base | 0 | 0 | 1 | 0.5 | 0.5 |" in table


def test_caption_metrics_need_objects(vocabulary):
    with pytest.raises(ValueError, match="objects_column"):
        suite.caption_metrics(["a red circle."], [{"index": 7, "objects": None}], vocabulary)


def test_length_stats(llava):
    _, processor = llava
    stats = suite.length_stats(["one two three", "", "four five six seven eight"], processor.tokenizer)
    assert stats["mean_words"] == pytest.approx(8 / 3) and stats["median_words"] == 3.0
    assert stats["max_words"] == 5 and stats["empty_fraction"] == pytest.approx(1 / 3)
    assert stats["max_tokens"] >= 5 and stats["mean_tokens"] > 0


def test_clip_scores_match_the_judge(tmp_path, rows):
    config = tmp_path / "eval-suite-clip.json"
    config.write_text(json.dumps(TINY_CLIP_CONFIG))
    open_clip.add_model_config(config)
    judge = ClipJudge.from_pretrained("eval-suite-clip")
    captions = ["a red circle.", "a blue square.", "", "a green diamond."]
    numbers, scores = suite.clip_scores(judge, rows, captions)
    expected = judge.score([row["images"][0] for row in rows], captions)
    assert scores == pytest.approx(expected.tolist())
    assert numbers["mean"] == pytest.approx(float(expected.mean()))
    assert all(0.0 <= s <= 2.5 for s in scores)


def test_pope_asks_each_question_once_and_scores_every_split(llava, rows, vocabulary, monkeypatch):
    model, processor = llava
    asked, generate = [], suite.generate_responses

    def counting(model, processor, prompts, **kwargs):
        asked.extend((id(p["images"][0]), p["prompt"][0]["content"][-1]["text"]) for p in prompts)
        return generate(model, processor, prompts, **kwargs)

    monkeypatch.setattr(suite, "generate_responses", counting)
    metrics, records = suite.pope_eval(model, processor, rows, vocabulary, questions_per_image=2, max_new_tokens=3,
                                       prompt_suffix=" Answer yes or no.", progress=False)
    assert set(metrics) == {"random", "popular", "adversarial"}
    assert len(asked) == len(set(asked)) < len(records)  # an image's positives are shared by all splits
    assert all(text.endswith(" Answer yes or no.") for _, text in asked)
    for strategy, numbers in metrics.items():
        mine = [r for r in records if r["strategy"] == strategy]
        assert sum(r["label"] == "yes" for r in mine) == sum(r["label"] == "no" for r in mine) > 0
        assert numbers == pope_metrics([r["prediction"] for r in mine], [r["label"] for r in mine])
    assert {r["index"] for r in records} == {row["index"] for row in rows}


def test_evaluate_during_training(llava, rows):
    model, processor = llava
    policy = apply_lora(model, r=4)
    try:
        with torch.no_grad():
            for name, weight in policy.named_parameters():
                if "lora_B" in name:
                    weight.fill_(0.01)
        policy.train()
        state = torch.get_rng_state()
        metrics = evaluate_during_training(policy, processor, rows, beta=0.2, vocabulary="data_recipes.shapes:SHAPES_VOCABULARY",
                                           max_new_tokens=4, prompt="Describe the image.")
        assert policy.training and torch.equal(torch.get_rng_state(), state)
        assert set(metrics) == {f"eval/{k}" for k in (
            "rewards/accuracies", "rewards/margins", "rewards/chosen", "rewards/rejected", "logps/chosen",
            "logps/rejected", "chair_i", "chair_s", "object_recall", "repetition", "response_words")}
        fit = preference_fit(policy, processor, rows, beta=0.2, progress=False)
        assert metrics["eval/rewards/margins"] == pytest.approx(fit["reward_margin"], abs=1e-6)
        assert all(isinstance(v, float) for v in metrics.values())
        # without a vocabulary only the preference fit runs; objects may also come as an argument
        plain = evaluate_during_training(policy, processor, [dict(r, objects=None) for r in rows], prefix="val/")
        assert set(plain) == {f"val/{k}" for k in ("rewards/accuracies", "rewards/margins", "rewards/chosen",
                                                    "rewards/rejected", "logps/chosen", "logps/rejected")}
        with pytest.raises(ValueError, match="object lists"):
            evaluate_during_training(policy, processor, rows, vocabulary="data_recipes.shapes:SHAPES_VOCABULARY", objects=[["red circle"]])
    finally:
        policy.unload()


def test_objects_outside_the_vocabulary_fail_before_any_model_runs():
    """``vocabulary=coco`` on rows with objects COCO does not name used to fail after generating captions."""
    from PIL import Image

    rows = [{"index": 0, "images": [Image.new("RGB", (8, 8))], "prompt": [], "objects": ["dog"]},
            {"index": 1, "images": [Image.new("RGB", (8, 8))], "prompt": [], "objects": ["red circle", "dog"]}]
    suite.check_rows(rows, ["chair"])  # without a vocabulary only the column is checked
    with pytest.raises(ValueError, match=r"1 ground-truth object name\(s\).*'red circle' \(row 1\).*vocabulary="):
        suite.check_rows(rows, ["chair"], ObjectVocabulary.coco())
    with pytest.raises(ValueError, match="not in the object vocabulary"):
        suite.evaluate_model(None, None, rows, metrics=["pope"], vocabulary=ObjectVocabulary.coco(), generation={})
    suite.check_rows(rows[:1], ["chair", "pope"], ObjectVocabulary.coco())


def test_pope_takes_the_generation_speed_settings(llava, rows, vocabulary, monkeypatch):
    """``evaluate_model`` hands ``generation.sort_by_length`` (and the cache settings) to POPE's questions too,
    and sorted greedy answers are the unsorted ones."""
    model, processor = llava
    seen, generate = [], suite.generate_responses

    def recording(model, processor, prompts, **kwargs):
        seen.append(kwargs.get("sort_by_length", False))
        return generate(model, processor, prompts, **kwargs)

    monkeypatch.setattr(suite, "generate_responses", recording)
    answers = {}
    for sort in (False, True):
        _, records = suite.evaluate_model(model, processor, rows, metrics=["pope"], vocabulary=vocabulary,
                                          generation={"batch_size": 3, "sort_by_length": sort},
                                          pope={"questions_per_image": 2, "max_new_tokens": 3}, progress=False)
        answers[sort] = [r["answer"] for r in records["pope"]]
    assert seen == [False, True]
    assert answers[True] == answers[False]
