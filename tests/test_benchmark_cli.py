"""``vlmdpo eval benchmark=pope|chair|amber|mmhal`` end to end through the CLI, on the published-layout fixtures
(tests/fixtures/benchmarks) with the tiny random LLaVA and a random LoRA adapter; and the shapes world's held-out
set converted to the POPE and COCO layouts, which must give the numbers ``vlmdpo eval`` gives on its own rows.
"""

import json
from pathlib import Path

import pytest
import torch

from data_recipes.shapes import SHAPES_VOCABULARY, build_shapes_dataset, povid_pairs
from data_recipes.shapes.benchmark_files import load_heldout, write_coco_files, write_pope_files
from vlmdpo.cli import main
from vlmdpo.eval.benchmarks import (
    ChairWords,
    read_amber,
    read_coco_ground_truth,
    read_pope,
    read_pope_answers,
    score_amber,
    score_chair,
    score_pope,
)
from vlmdpo.eval.chair import chair
from vlmdpo.eval.checkpoints import CheckpointModels
from vlmdpo.eval.objects import ObjectVocabulary
from vlmdpo.eval.pope import parse_pope_answer, pope_metrics

FIXTURES = Path(__file__).parent / "fixtures" / "benchmarks"
COCO_IMAGES = f"data.image_root={FIXTURES / 'coco_val2014'}"  # POPE's and CHAIR's images: three of "val2014"
FAST = ["progress=false", "pope.max_new_tokens=3", "generation.max_new_tokens=6", "bench.bootstrap_resamples=200"]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A LoRA adapter with random weights, saved by peft."""
    from vlmdpo.model.load import load_model_and_processor, resolve_model_path
    from vlmdpo.model.lora import apply_lora

    root = tmp_path_factory.mktemp("benchmark_cli")
    model, _ = load_model_and_processor(resolve_model_path("tiny:llava"))
    model = apply_lora(model, r=4)
    generator = torch.Generator().manual_seed(0)  # no global RNG: the adapter is the same in any test order
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.5)
    model.save_pretrained(str(root / "lora"))
    return root


def run(workspace, benchmark: str, out: str, *extra: str) -> dict:
    main(["eval", f"benchmark={benchmark}", "base=tiny:llava", f"checkpoints=[{workspace / 'lora'}]",
          f"output_dir={workspace / out}", *FAST, *extra])
    return json.loads((workspace / out / "results.json").read_text())


def table(report: str, heading: str) -> list[list[str]]:
    block = report.split(f"### {heading}\n\n", 1)[1].split("\n\n", 1)[0]
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in block.splitlines()]


def check_report(out: Path, headings: list[str], headline: str) -> None:
    report = (out / "report.md").read_text()
    for heading in headings:
        assert [row[0] for row in table(report, heading)[2:]] == ["base", "lora"], heading
    change = table(report, "vs_base/" + headline)
    assert change[0] == ["checkpoint", "change", "low", "high"]
    assert change[2] == ["base", "", "", ""] and change[3][0] == "lora"  # the base is the reference
    assert "## Change from the base" in report and "95% interval" in report
    assert (out / "changes_from_base.png").read_bytes()[:4] == b"\x89PNG"


def never_load(*args, **kwargs):
    raise AssertionError("a finished checkpoint was evaluated again")


def test_pope(workspace, monkeypatch):
    results = run(workspace, "pope", "pope", f"data.source={FIXTURES / 'pope'}", COCO_IMAGES)
    out = workspace / "pope"
    check_report(out, ["pope/coco_random", "pope/coco_adversarial", "pope/mean"], "pope_f1")
    questions = read_pope(FIXTURES / "pope")
    for name in ("base", "lora"):
        folder = out / "checkpoints" / name / "pope_answers"
        # LLaVA's answer layout, one file per split, rescored by the official rule: the same numbers
        answers = {split: read_pope_answers(folder / f"{split}.jsonl") for split in questions}
        assert sorted(answers["coco_random"]) == [1, 2, 3, 4]
        rescored = score_pope(questions, answers)
        for split, metrics in rescored.items():
            assert results[name]["pope"][split] == metrics
            assert metrics["tp"] + metrics["fp"] + metrics["tn"] + metrics["fn"] == 4
            tp, fp, fn = metrics["tp"], metrics["fp"], metrics["fn"]
            assert metrics["f1"] == pytest.approx(2 * tp / (2 * tp + fp + fn) if tp else 0.0)
        assert results[name]["pope"]["mean"]["f1"] == pytest.approx(
            (rescored["coco_random"]["f1"] + rescored["coco_adversarial"]["f1"]) / 2)
    change = results["lora"]["vs_base"]["pope_f1"]
    means = [results[name]["pope"]["mean"]["f1"] for name in ("base", "lora")]
    assert change["change"] == pytest.approx(means[1] - means[0])
    assert change["low"] <= change["change"] <= change["high"]

    monkeypatch.setattr(CheckpointModels, "load", never_load)  # a rerun finds both finished
    assert run(workspace, "pope", "pope", f"data.source={FIXTURES / 'pope'}", COCO_IMAGES) == results


def test_chair(workspace):
    results = run(workspace, "chair", "chair", f"data.source={FIXTURES / 'chair' / 'obj_halbench_questions.jsonl'}",
                  f"bench.annotations={FIXTURES / 'chair'}", COCO_IMAGES)
    out = workspace / "chair"
    check_report(out, ["chair"], "chair_i")
    truth = read_coco_ground_truth(FIXTURES / "chair")
    for name in ("base", "lora"):
        captions = json.loads((out / "checkpoints" / name / "chair_captions.json").read_text())
        assert [sorted(c) for c in captions] == [["caption", "image_id"]] * 3
        assert [c["image_id"] for c in captions] == [1, 2, 3]
        rescored = score_chair({c["image_id"]: c["caption"] for c in captions}, truth)
        assert results[name]["chair"] == rescored.as_dict()
    change = results["lora"]["vs_base"]["chair_i"]["change"]
    assert change == pytest.approx(results["lora"]["chair"]["chair_i"] - results["base"]["chair"]["chair_i"])


def test_amber(workspace):
    results = run(workspace, "amber", "amber", f"data.source={FIXTURES / 'amber'}",
                  f"data.image_root={FIXTURES / 'amber' / 'images'}", "pope.prompt_suffix= Yes or No?")
    out = workspace / "amber"
    check_report(out, ["amber/generative", "amber/discriminative", "amber/existence", "amber/amber_score"],
                 "amber_score")
    amber = read_amber(FIXTURES / "amber")
    for name in ("base", "lora"):
        responses = json.loads((out / "checkpoints" / name / "amber_responses.json").read_text())
        assert [sorted(r) for r in responses] == [["id", "response"]] * 8  # what AMBER's inference.py reads
        rescored = score_amber(amber, {r["id"]: r["response"] for r in responses})
        assert results[name]["amber"] == rescored
        generative, yes_no = rescored["generative"], rescored["discriminative"]
        assert rescored["amber_score"]["score"] == pytest.approx((1 - generative["chair"] + yes_no["f1"]) / 2)
    records = [json.loads(line) for line in (out / "checkpoints/base/records.jsonl").read_text().splitlines()]
    assert [r["dimension"] for r in records][:3] == ["generative", "generative", "existence"]
    change = results["lora"]["vs_base"]["amber_score"]["change"]
    assert change == pytest.approx(results["lora"]["amber"]["amber_score"]["score"]
                                   - results["base"]["amber"]["amber_score"]["score"])


def length_judge(question: str, reference: str, answer: str) -> int:
    """A stand-in for the GPT-4 judge: the answer's length in characters, modulo 7."""
    return len(answer) % 7


def test_mmhal_with_and_without_a_judge(workspace):
    source = FIXTURES / "mmhal" / "response_template.json"
    unjudged = run(workspace, "mmhal", "mmhal-unjudged", f"data.source={source}",
                   "data.max_rows=8")
    assert unjudged["base"]["mmhal"] == {"answered": 8} and "vs_base" not in unjudged["lora"]
    assert "not scored: no judge" in (workspace / "mmhal-unjudged" / "report.md").read_text()

    results = run(workspace, "mmhal", "mmhal", f"data.source={source}", "data.max_rows=8",
                  "bench.judge=test_benchmark_cli:length_judge")
    template = json.loads(source.read_text())[:8]
    for name in ("base", "lora"):
        filled = json.loads((workspace / "mmhal" / "checkpoints" / name / "mmhal_responses.json").read_text())
        assert [{**row, "model_answer": ""} for row in filled] == template  # only model_answer is filled in
        ratings = [len(row["model_answer"]) % 7 for row in filled]
        mmhal = results[name]["mmhal"]
        assert mmhal["score"] == pytest.approx(sum(ratings) / 8)
        assert mmhal["hallucination_rate"] == pytest.approx(sum(r < 3 for r in ratings) / 8)
        assert mmhal["per_type"]["attribute"]["score"] == ratings[0]  # the first 8 rows: one per type
    assert results["lora"]["vs_base"]["mmhal_score"]["change"] == pytest.approx(
        results["lora"]["mmhal"]["score"] - results["base"]["mmhal"]["score"])
    check_report(workspace / "mmhal", ["mmhal"], "mmhal_score")


def test_a_missing_image_names_the_question_the_path_and_the_fix(workspace, capsys):
    empty = workspace / "no-images"
    empty.mkdir(exist_ok=True)
    with pytest.raises(SystemExit) as exit_info:
        main(["eval", "benchmark=pope", f"data.source={FIXTURES / 'pope'}", f"data.image_root={empty}",
              f"output_dir={workspace / 'missing'}", "progress=false"])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert "question coco_adversarial/1" in error and str(empty / "COCO_val2014_000000000002.jpg") in error
    assert "set data.image_root" in error
    assert not (workspace / "missing").exists()  # refused before any output or model


@pytest.mark.parametrize(("overrides", "message"), [
    (["benchmark=popee", "data.source=x"], "benchmark='popee' is not one of pope, chair, amber, mmhal"),
    (["benchmark=amber"], "benchmark=amber needs data.source"),
    (["benchmark=chair", "data.source=questions.jsonl"], "set bench.annotations"),
    (["benchmark=mmhal", "data.source=x.json", "bench.judge=gpt4"], "bench.judge must look like package.module:NAME"),
])
def test_settings_are_refused_early_naming_the_key(overrides, message, capsys):
    with pytest.raises(SystemExit):
        main(["eval", *overrides])
    assert message in capsys.readouterr().err


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    """Held-out shapes rows saved as ``vlmdpo eval`` reads them, and the same rows in POPE's and COCO's layouts."""
    root = tmp_path_factory.mktemp("shapes_benchmarks")
    data = build_shapes_dataset(num_train=1, num_test=6, image_size=32, seed=3)
    povid_pairs(data["test"]).save_to_disk(str(root / "heldout"))
    rows = load_heldout(str(root / "heldout"))
    write_pope_files(rows, root / "pope", strategies=["random", "adversarial"], questions_per_image=2)
    write_coco_files(rows, root / "coco")
    return root, rows


def test_shapes_heldout_in_the_benchmark_layouts_gives_vlmdpo_evals_numbers(shapes):
    root, _ = shapes
    vocabulary = "vocabulary=data_recipes.shapes:SHAPES_VOCABULARY"
    common = ["base=tiny:llava", *FAST, "generation.batch_size=4"]
    main(["eval", f"data.source={root / 'heldout'}", "metrics=[chair,pope]", "pope.strategies=[random,adversarial]",
          "pope.questions_per_image=2", vocabulary, f"output_dir={root / 'own'}", *common])
    main(["eval", "benchmark=pope", f"data.source={root / 'pope'}", f"data.image_root={root / 'pope' / 'images'}",
          f"output_dir={root / 'as-pope'}", *common])
    main(["eval", "benchmark=chair", f"data.source={root / 'coco' / 'chair_questions.jsonl'}",
          f"bench.annotations={root / 'coco'}", f"data.image_root={root / 'coco' / 'images'}", vocabulary,
          f"output_dir={root / 'as-chair'}", *common])
    own = json.loads((root / "own" / "results.json").read_text())["base"]
    as_pope = json.loads((root / "as-pope" / "results.json").read_text())["base"]
    as_chair = json.loads((root / "as-chair" / "results.json").read_text())["base"]

    # the same questions get the same answers, so every POPE number agrees to the last digit
    own_answers = [json.loads(line) for line in (root / "own/checkpoints/base/pope.jsonl").read_text().splitlines()]
    for strategy in ("random", "adversarial"):
        file_answers = read_pope_answers(root / "as-pope/checkpoints/base/pope_answers" / f"shapes_{strategy}.jsonl")
        assert list(file_answers.values()) == [a["answer"] for a in own_answers if a["strategy"] == strategy]
        for key in ("accuracy", "precision", "recall", "f1", "yes_ratio"):
            assert as_pope["pope"][f"shapes_{strategy}"][key] == own["pope"][strategy][key]
    # the same captions; CHAIR_i, CHAIR_s and recall agree (these captions neither negate nor repeat an object)
    captions = json.loads((root / "as-chair/checkpoints/base/chair_captions.json").read_text())
    generations = (root / "own/checkpoints/base/generations.jsonl").read_text().splitlines()
    generations = [json.loads(line) for line in generations]
    assert [c["caption"] for c in captions] == [g["response"] for g in generations]
    for key in ("chair_i", "chair_s", "recall"):
        assert as_chair["chair"][key] == own["chair"][key]


def test_the_two_chair_definitions_on_shapes_captions(shapes):
    """On the held-out rows' own captions (chosen: true; rejected: one object swapped or added) the package's
    CHAIR and the CHAIR script's rules give the same three numbers; they part on repeats and negations."""
    root, rows = shapes
    objects = ObjectVocabulary.from_dict(SHAPES_VOCABULARY)
    words = ChairWords.from_table(SHAPES_VOCABULARY)
    truth = read_coco_ground_truth(root / "coco", words=words)
    for column in ("chosen", "rejected"):
        texts = [row[column][-1]["content"][-1]["text"] for row in rows]
        ours = chair(texts, [row["objects"] for row in rows], objects).as_dict()
        script = score_chair({row["index"]: text for row, text in zip(rows, texts)}, truth, words=words).as_dict()
        assert script == ours
        if column == "chosen":
            assert ours["chair_i"] == 0.0 and ours["recall"] == 1.0
        else:
            assert ours["chair_s"] == 1.0 and ours["chair_i"] > 0
    # image 0 holds exactly rows[0]["objects"]; a caption that repeats one true object and negates a false one
    first = rows[0]["objects"][0]
    absent = next(name for name in SHAPES_VOCABULARY if name not in rows[0]["objects"])
    text = f"a {first}, another {first} and no {absent}."
    # package: claims {first} once, the negated {absent} is no claim -> CHAIR_i 0/1, CHAIR_s 0
    assert chair([text], [rows[0]["objects"]], objects).as_dict()["chair_i"] == 0.0
    # script: mentions first, first, absent (no negation rule) -> CHAIR_i 1/3, CHAIR_s 1
    scored = score_chair({rows[0]["index"]: text}, truth, words=words)
    assert scored.chair_i == pytest.approx(1 / 3) and scored.chair_s == 1.0


def test_the_two_pope_answer_rules_on_the_converted_questions(shapes):
    """The converted files hold ``vlmdpo eval``'s own questions, so given the same answers the two scorers agree
    wherever the official reading and the package's (case-insensitive, punctuation stripped) agree."""
    root, _ = shapes
    questions = read_pope(root / "pope")
    agreeing = ["Yes, there is.", "No, there is not.", "There is no such shape.", "not that I can see"]
    parting = ["NO", "No!"]  # official: "yes" (no piece is exactly No/no/not); package: "no"
    for texts, same in ((agreeing, True), (agreeing + parting, False)):
        answers = {split: {item.question_id: texts[k % len(texts)] for k, item in enumerate(items)}
                   for split, items in questions.items()}
        official = score_pope(questions, answers)
        package = {split: pope_metrics([parse_pope_answer(answers[split][item.question_id]) for item in items],
                                       [item.label for item in items]) for split, items in questions.items()}
        assert (official == package) is same
    # 24 questions per split (6 images x 2 positives x 2); with the six-text cycle, k % 6 in (4, 5) part the rules
    assert len(questions["shapes_random"]) == 24
    assert official["shapes_random"]["yes_ratio"] - package["shapes_random"]["yes_ratio"] == pytest.approx(8 / 24)


def test_chair_rules_over_another_vocabulary():
    words = ChairWords.from_table({"red circle": ["red circles"], "dog": ["puppy"]})
    # "red circles" singularises to the compound "red circle"; a bare "circle" is no object; "puppies" -> "puppy"
    assert words.objects_in("Two red circles, a circle and puppies.") == [("red circle", "red circle"),
                                                                           ("puppy", "dog")]
    with pytest.raises(ValueError, match="3 words"):
        ChairWords.from_table({"big red circle": []})
