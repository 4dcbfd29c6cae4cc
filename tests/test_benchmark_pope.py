"""POPE read from its published question files and scored by its script's rules; numbers worked out by hand."""

import json
from pathlib import Path

import pytest

from vlmdpo.eval.benchmarks import (
    BenchmarkFormatError,
    parse_pope_answer_official,
    read_pope,
    read_pope_answers,
    score_pope,
)
from vlmdpo.eval.pope import parse_pope_answer

FIXTURE = Path(__file__).parent / "fixtures" / "benchmarks" / "pope"

# labels: random yes, yes, no, no; adversarial yes, yes, no, no
ANSWERS = {
    "coco_random": {
        1: "Yes, there is a dining table in the image.",  # yes: TP
        2: "There is not a sandwich.",  # "not" in the first sentence: no -> FN
        3: "No, there is no tv.",  # no: TN
        4: "I don't see an orange.",  # no "no"/"not" word: yes -> FP
    },
    "coco_adversarial": {
        1: "Yes.",  # TP
        2: "NO",  # the script matches case: yes -> TP (lenient reading: no -> FN)
        3: "No",  # TN
        4: "no. There is a dog.",  # first sentence "no": TN
    },
}


def official_pope_script(answers: list[str], labels: list[str]) -> dict:
    """The POPE evaluate.py rules written out plainly: first sentence, commas removed, split on spaces."""
    predictions = []
    for text in answers:
        if text.find(".") != -1:
            text = text.split(".")[0]
        words = text.replace(",", "").split(" ")
        predictions.append(0 if ("No" in words or "not" in words or "no" in words) else 1)
    truth = [0 if label == "no" else 1 for label in labels]
    tp = sum(p == 1 and t == 1 for p, t in zip(predictions, truth))
    fp = sum(p == 1 and t == 0 for p, t in zip(predictions, truth))
    tn = sum(p == 0 and t == 0 for p, t in zip(predictions, truth))
    fn = sum(p == 0 and t == 1 for p, t in zip(predictions, truth))
    precision, recall = tp / (tp + fp), tp / (tp + fn)
    return {"accuracy": (tp + tn) / len(truth), "precision": precision, "recall": recall,
            "f1": 2 * precision * recall / (precision + recall), "yes_ratio": predictions.count(1) / len(predictions)}


def test_reads_every_split_of_the_folder():
    splits = read_pope(FIXTURE)
    assert sorted(splits) == ["coco_adversarial", "coco_random"]
    first = splits["coco_random"][0]
    assert (first.question_id, first.image, first.label) == (1, "COCO_val2014_000000000001.jpg", "yes")
    assert first.text == "Is there a dining table in the image?"
    assert [q.label for q in splits["coco_adversarial"]] == ["yes", "yes", "no", "no"]


def test_official_answer_rule():
    assert parse_pope_answer_official("No, there is no dog.") == "no"
    assert parse_pope_answer_official("There is not a dog in the image.") == "no"
    assert parse_pope_answer_official("NO") == "yes"  # case-sensitive, as published
    assert parse_pope_answer_official("No!") == "yes"  # "No!" is not the word "No"
    assert parse_pope_answer_official("Yes. There is no cat.") == "yes"  # only the first sentence counts
    assert parse_pope_answer_official("") == "yes"


def test_scores_by_hand():
    result = score_pope(read_pope(FIXTURE), ANSWERS)
    # random: TP 1, FN 1, TN 1, FP 1 -> accuracy 2/4, precision 1/2, recall 1/2, F1 1/2, yes-ratio 2/4
    random = result["coco_random"]
    assert (random["tp"], random["fn"], random["tn"], random["fp"]) == (1, 1, 1, 1)
    assert random["accuracy"] == random["precision"] == random["recall"] == random["f1"] == 0.5
    assert random["yes_ratio"] == 0.5
    # adversarial: TP 2, TN 2 -> everything 1.0, yes-ratio 2/4
    adversarial = result["coco_adversarial"]
    assert (adversarial["tp"], adversarial["tn"]) == (2, 2)
    assert adversarial["accuracy"] == adversarial["f1"] == 1.0
    assert adversarial["yes_ratio"] == 0.5


def test_lenient_reading_differs_only_where_case_matters():
    result = score_pope(read_pope(FIXTURE), ANSWERS, parse=parse_pope_answer)
    # "NO" now reads as no: TP 1, FN 1, TN 2 -> accuracy 3/4, precision 1/1, recall 1/2, F1 2/3, yes 1/4
    adversarial = result["coco_adversarial"]
    assert adversarial["accuracy"] == 0.75 and adversarial["precision"] == 1.0
    assert adversarial["recall"] == 0.5 and adversarial["f1"] == pytest.approx(2 / 3)
    assert adversarial["yes_ratio"] == 0.25
    assert result["coco_random"]["f1"] == 0.5


def test_same_numbers_as_the_official_script():
    splits = read_pope(FIXTURE)
    ours = score_pope(splits, ANSWERS)
    for split, items in splits.items():
        official = official_pope_script([ANSWERS[split][q.question_id] for q in items], [q.label for q in items])
        for metric, value in official.items():
            assert ours[split][metric] == pytest.approx(value), (split, metric)


def test_llava_merged_file_is_one_split_per_category(tmp_path):
    rows = [{"question_id": i, "image": "a.jpg", "text": "Is there a dog in the image?", "label": "yes",
             "category": category} for i, category in enumerate(["random", "popular", "popular"])]
    path = tmp_path / "llava_pope_test.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    splits = read_pope(path)
    assert {name: len(items) for name, items in splits.items()} == {"random": 1, "popular": 2}


def test_answer_files_by_id_or_by_order(tmp_path):
    questions = read_pope(FIXTURE / "coco_pope_random.json")["coco_random"]
    llava = tmp_path / "answers.jsonl"
    llava.write_text("".join(json.dumps({"question_id": i, "text": t}) + "\n" for i, t in ANSWERS["coco_random"].items()))
    assert read_pope_answers(llava) == ANSWERS["coco_random"]
    ordered = tmp_path / "pope_answers.json"
    ordered.write_text("".join(json.dumps({"question": q.text, "answer": ANSWERS["coco_random"][q.question_id]}) + "\n"
                               for q in questions))
    assert read_pope_answers(ordered, questions) == ANSWERS["coco_random"]
    with pytest.raises(BenchmarkFormatError, match="matched by order"):
        read_pope_answers(ordered)


def test_refusals(tmp_path):
    missing_label = tmp_path / "coco_pope_random.json"
    missing_label.write_text(json.dumps({"question_id": 1, "image": "a.jpg", "text": "Is there a dog?"}) + "\n")
    with pytest.raises(BenchmarkFormatError, match=r"coco_pope_random\.json has no 'label' field.*AoiDragon/POPE"):
        read_pope(missing_label)
    answer_file = tmp_path / "coco_pope_popular.json"
    answer_file.write_text(json.dumps({"question_id": 1, "image": "a.jpg", "text": "Is there a dog?",
                                       "label": "maybe"}) + "\n")
    with pytest.raises(BenchmarkFormatError, match="expected 'yes' or 'no'"):
        read_pope(answer_file)
    repeated = tmp_path / "x" / "gqa_pope_random.json"
    repeated.parent.mkdir()
    row = json.dumps({"question_id": 1, "image": "a.jpg", "text": "Is there a dog?", "label": "no"}) + "\n"
    repeated.write_text(row + row)
    with pytest.raises(BenchmarkFormatError, match="repeats a question_id"):
        read_pope(repeated)
    with pytest.raises(BenchmarkFormatError, match="holds no question file"):
        read_pope(_empty(tmp_path))
    with pytest.raises(BenchmarkFormatError, match="does not exist"):
        read_pope(tmp_path / "nowhere.json")
    with pytest.raises(ValueError, match="no answer for 1 of 4"):
        score_pope(read_pope(FIXTURE), {**ANSWERS, "coco_random": {1: "yes", 2: "yes", 3: "no"}})


def _empty(tmp_path: Path) -> Path:
    folder = tmp_path / "empty"
    folder.mkdir()
    return folder
