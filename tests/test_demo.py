"""The shapes-world demo: the quick configuration end to end, its cache, and its recipe pieces."""

import copy
import json

import datasets
import pytest
import torch

from data_recipes.shapes.yes_no_probe import KINDS
from vlmdpo.cli import main

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
DEMO_KEYS = {"chair_i", "chair_s", "recall", "pope_f1", "pope_accuracy", "clipscore", "pref_accuracy", "well_formed"}


@pytest.fixture(scope="module")
def quick_demo(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    cache, out = root / "cache", root / "out"
    args = ["demo", "--quick", "--out", str(out), f"cache={cache}", "progress=false"]
    main(args)
    return args, cache, out


def test_quick_demo_writes_report_metrics_and_plots(quick_demo):
    _, _, out = quick_demo
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics) == {"base", "aligned", "sft_control"}
    for name, values in metrics.items():
        assert DEMO_KEYS <= set(values), name
        assert 0.0 <= values["pope_accuracy"] <= 1.0 and 0.0 <= values["well_formed"] <= 1.0
    report = (out / "report.md").read_text()
    assert "| aligned |" in report and "| sft_control |" in report and "## Acceptance" in report
    # the preference method against imitation first: headline, then its table, then against the base
    for metric in ("chair_i", "pope_f1"):
        change = metrics["aligned"]["vs_control"][metric]
        assert change["low"] <= change["change"] <= change["high"]
    headline = report.split("\n\n")[1]
    assert "the SFT control" in headline and f"{metrics['sft_control']['chair_i']:.3f}" in headline
    sections = [report.index(s) for s in ("## Aligned against the SFT control", "## Aligned against the base",
                                          "## Acceptance", "## Every model")]
    assert sections == sorted(sections)
    assert "CHAIR_i below the SFT control's beyond the 95% paired bootstrap interval" in report
    pngs = sorted(out.glob("*.png"))
    assert any(p.name == "training_curves.png" for p in pngs)
    for png in pngs:
        assert png.read_bytes()[:8] == PNG_MAGIC, png
        assert f"({png.name})" in report  # every plot is shown in the report
    for run in ("dpo", "sft_control"):
        assert (out / "runs" / run / "adapter_model.safetensors").exists()
    results = json.loads((out / "results.json").read_text())
    for name in metrics:  # the yes/no probe, per kind of question, for every model
        assert list(results[name]["yes_rate_by_question"]) == list(KINDS)
    assert "yes_rate_by_question" in report
    assert "| well-formed captions |" in report
    from data_recipes.shapes.captions import well_formed
    for name in metrics:  # the captions behind a well-formed share below 1 are there to read
        ill_formed = results[name]["generation"]["ill_formed"]
        assert all(not well_formed(record["response"]) for record in ill_formed), name
        assert (len(ill_formed) == 0) == (metrics[name]["well_formed"] == 1.0), name
        assert all(record["response"] in report for record in ill_formed), name


def test_ill_formed_captions_are_listed_per_model_and_their_absence_said():
    from data_recipes.shapes.demo_report import ill_formed_text

    def result(share, captions):
        return {"length": {"well_formed": share},
                "generation": {"ill_formed": [{"index": i, "response": text} for i, text in enumerate(captions)]}}

    text = ill_formed_text({"base": result(1.0, []), "aligned": result(0.98, ["a small red circle, a blue square."])})
    assert "- aligned (well-formed share 0.980): `a small red circle, a blue square.`" in text
    assert "base" not in text
    assert ill_formed_text({"base": result(1.0, []), "aligned": result(1.0, [])}) == (
        "Every held-out caption of every model is in the world's grammar.")


def test_well_formed_captions_follow_the_worlds_grammar():
    from data_recipes.shapes.captions import describe, well_formed
    from data_recipes.shapes.world import POSITIONS, ShapeObject

    objects = [ShapeObject("red", "circle", "large", POSITIONS[0]), ShapeObject("blue", "square", "small", POSITIONS[1]),
               ShapeObject("green", "diamond", "large", POSITIONS[2])]
    for count in (1, 2, 3):
        assert well_formed(describe(objects[:count])) and well_formed(describe(objects[:count], with_size=False))
    for degenerate in ("a large green diamondNoNoNoNo", "a large red circle, a small blue square.",  # no "and"
                       "a large red circle and a large", "", "No.", "a large red circle and a small red triangle"):
        assert not well_formed(degenerate), degenerate


def test_second_run_reuses_cached_stages(quick_demo, capsys):
    args, cache, out = quick_demo
    stages = sorted(p for p in (cache / "shapes-demo").iterdir())
    assert {p.name.split("-")[0] for p in stages} == {"data", "judge", "base", "pairs"}
    stamps = {p: (p / "DONE").stat().st_mtime_ns for p in stages}
    model_files = {f: f.stat().st_mtime_ns for p in stages for f in p.rglob("*.safetensors")}
    main(args)
    assert {p: (p / "DONE").stat().st_mtime_ns for p in stages} == stamps
    assert {f: f.stat().st_mtime_ns for f in model_files} == model_files
    assert json.loads((out / "metrics.json").read_text()).keys() == {"base", "aligned", "sft_control"}


def test_open_clip_vision_tower_maps_exactly_onto_llava(tmp_path):
    from data_recipes.shapes.base_model import build_base_vlm
    from data_recipes.shapes.judge import TINY_CLIP_CONFIG
    from vlmdpo.eval.judge import ClipJudge

    config = copy.deepcopy(TINY_CLIP_CONFIG)
    config["vision_cfg"].update(patch_size=16)
    (tmp_path / "map-test-clip.json").write_text(json.dumps(config))
    import open_clip

    open_clip.add_model_config(str(tmp_path / "map-test-clip.json"))
    judge = ClipJudge.from_pretrained("map-test-clip")
    model, processor = build_base_vlm(judge, hidden_size=32, num_layers=1)
    pixels = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = judge.model.encode_image(pixels)
        tower = model.model.vision_tower.eval()
        got = tower(pixel_values=pixels).pooler_output @ judge.model.visual.proj
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    # the processor's images are what the judge sees: same size, same normalisation
    assert processor.image_processor.crop_size["height"] == config["vision_cfg"]["image_size"]


def test_a_stage_version_bump_invalidates_that_stage_and_every_later_one(monkeypatch):
    from data_recipes.shapes import demo

    before = demo.stage_keys(demo.DemoConfig())
    monkeypatch.setitem(demo.STAGE_VERSIONS, "base", demo.STAGE_VERSIONS["base"] + 1)
    after = demo.stage_keys(demo.DemoConfig())
    assert [stage for stage in demo.CACHED_STAGES if before[stage] != after[stage]] == ["base", "pairs"]


VALID_CHANGES = {"caption_regime": lambda value: "ground_truth" if value == "habit" else "habit",
                 "chosen_hallucination_rate": lambda value: value / 2,
                 "yes_no_objects": lambda value: "uniform" if value == "popular" else "popular",
                 "rlaif_max_length_gap": lambda value: 2 if value is None else None}
"""Settings whose values are checked: a different valid value."""


def _changed(value, name=""):
    """A different value of the same type (for every settings field of the demo)."""
    if name in VALID_CHANGES:
        return VALID_CHANGES[name](value)
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float)):
        return value + 1
    if isinstance(value, list):
        return value[:-1]
    return value + "x"


@pytest.mark.parametrize("stage", ["data", "judge", "base", "pairs"])
def test_every_setting_of_a_stage_is_in_its_key_and_every_later_ones(stage):
    """The stage keys hash whole settings objects: changing any field of a stage's settings (say
    pairs.rlaif_max_new_tokens, which a hand-kept key list once missed) redoes that stage and the later ones,
    and leaves the earlier ones cached."""
    from dataclasses import fields, replace

    from data_recipes.shapes import demo

    config = demo.DemoConfig()
    before = demo.stage_keys(config)
    settings = getattr(config, stage)
    later = demo.CACHED_STAGES[demo.CACHED_STAGES.index(stage):]
    assert fields(settings)
    for f in fields(settings):
        changed = replace(config, **{stage: replace(settings, **{f.name: _changed(getattr(settings, f.name), f.name)})})
        after = demo.stage_keys(changed)
        assert [s for s in demo.CACHED_STAGES if before[s] != after[s]] == list(later), f"{stage}.{f.name}"


def test_run_wide_settings_are_in_every_key_and_report_settings_in_none():
    from dataclasses import replace

    from data_recipes.shapes import demo

    config = demo.DemoConfig()
    keys = demo.stage_keys(config)
    for name, value in (("seed", 1), ("mixed_precision", "no")):
        changed = demo.stage_keys(replace(config, **{name: value}))
        assert all(changed[s] != keys[s] for s in demo.CACHED_STAGES), name
    for name, value in (("out", "elsewhere"), ("progress", False)):
        assert demo.stage_keys(replace(config, **{name: value})) == keys, name


def test_yes_no_pairs_choose_the_true_answer_and_ask_about_popular_absent_objects():
    from data_recipes.shapes import build_shapes_dataset
    from data_recipes.shapes.captions import POPULARITY
    from data_recipes.shapes.world import Scene
    from data_recipes.shapes.question_rows import yes_no_pairs

    split = build_shapes_dataset(seed=3, num_train=60, num_test=0, image_size=16)["train"]
    pairs = yes_no_pairs(split, seed=0)
    assert len(pairs) == 2 * len(split)  # one yes and one no question per image
    assert pairs["prompt"] == yes_no_pairs(split, seed=0)["prompt"]
    for i, pair in enumerate(pairs):
        scene = Scene.from_json(split[i // 2]["scene"])
        colour, shape = pair["prompt"].removeprefix("Is there a ").removesuffix(" in the image?").split()
        assert pair["chosen"] == ("Yes." if scene.has(colour, shape) else "No.") == ("Yes.", "No.")[i % 2]
        assert {pair["chosen"], pair["rejected"]} == {"Yes.", "No."}
    # negatives follow the popularity of caption noise: Zipf weights give the 3 most popular objects about
    # 1.83 / 3.78 = 48% of the draws and the 12 least popular about 17% (less where an object is present)
    asked = [" ".join(p.split()[3:5]) for p in pairs["prompt"][1::2]]
    ranks = [POPULARITY.index(tuple(name.split())) for name in asked]
    assert sum(rank < 3 for rank in ranks) > 2 * sum(rank >= 12 for rank in ranks)


def test_popular_present_objects_are_drawn_by_the_same_weights_as_absent_ones():
    """Two objects of popularity ranks a and b are drawn in the ratio 1/(a+1) : 1/(b+1)."""
    import random

    from data_recipes.shapes.captions import POPULARITY, popular_present_object
    from data_recipes.shapes.world import POSITIONS, Scene, ShapeObject

    (c0, s0), (c1, s1) = POPULARITY[0], POPULARITY[3]  # weights 1 and 1/4: the first drawn 4/5 of the time
    scene = Scene((ShapeObject(c0, s0, "small", POSITIONS[0]), ShapeObject(c1, s1, "large", POSITIONS[1])))
    rng = random.Random(0)
    draws = [popular_present_object(scene, rng).name for _ in range(4000)]
    assert draws.count(f"{c0} {s0}") / len(draws) == pytest.approx(0.8, abs=0.02)


def test_popular_yes_questions_ask_about_the_habits_objects_when_present():
    from data_recipes.shapes import build_shapes_dataset
    from data_recipes.shapes.captions import POPULARITY
    from data_recipes.shapes.world import Scene
    from data_recipes.shapes.question_rows import yes_no_pairs

    split = build_shapes_dataset(seed=3, num_train=200, num_test=0, image_size=16)["train"]
    ranks = {}
    for objects in ("popular", "uniform"):
        pairs = yes_no_pairs(split, seed=0, objects=objects)
        asked = [p.removeprefix("Is there a ").removesuffix(" in the image?") for p in pairs["prompt"][0::2]]
        assert all(Scene.from_json(split[i]["scene"]).has(*name.split()) for i, name in enumerate(asked))
        assert pairs["chosen"][0::2] == ["Yes."] * len(split)
        ranks[objects] = [POPULARITY.index(tuple(name.split())) for name in asked]
    # popular: a present object's rank decides its weight, so the asked ones rank higher than a uniform pick's
    mean = {key: sum(value) / len(value) for key, value in ranks.items()}
    assert mean["popular"] < mean["uniform"] - 2


def test_binding_yes_no_pairs_add_an_absent_object_of_a_present_colour_and_stay_balanced():
    from data_recipes.shapes import build_shapes_dataset
    from data_recipes.shapes.world import Scene
    from data_recipes.shapes.question_rows import yes_no_pairs

    split = build_shapes_dataset(seed=3, num_train=60, num_test=0, image_size=16)["train"]
    plain, bound = yes_no_pairs(split, seed=0), yes_no_pairs(split, seed=0, binding=True)
    extra, at = [], 0
    for i in range(len(split)):  # each image's first two questions are the plain recipe's, unchanged
        scene = Scene.from_json(split[i]["scene"])
        assert bound["prompt"][at:at + 2] == plain["prompt"][2 * i:2 * i + 2]
        if at + 2 < len(bound) and bound["chosen"][at + 2] == "No.":  # the next image starts with "Yes."
            unbound, present = (bound["prompt"][at + k].split()[3:5] for k in (2, 3))
            assert not scene.has(*unbound) and any(o.colour == unbound[0] for o in scene.objects)
            assert bound["prompt"][at + 2] != bound["prompt"][at + 1]  # not the popular absent object again
            assert scene.has(*present)
            assert [bound["chosen"][at + k] for k in (2, 3)] == ["No.", "Yes."]
            extra.append(i)
            at += 2
        at += 2
    assert at == len(bound) and len(extra) > len(split) // 2
    assert bound["chosen"].count("Yes.") == bound["chosen"].count("No.")


def test_pairs_need_at_least_one_recipe(tmp_path):
    from data_recipes.shapes import build_shapes_dataset
    from data_recipes.shapes.demo import load_config
    from data_recipes.shapes.stages import build_pairs

    data = build_shapes_dataset(seed=0, num_train=12, num_test=0, image_size=32)
    small = ["data.num_train=12", "base.images=8", "pairs.caption_pairs=0", "pairs.rlaif_images=0"]
    config = load_config(small + ["pairs.yes_no_images=0"])
    with pytest.raises(ValueError, match="set at least one above 0"):
        build_pairs(config, data, None, None, tmp_path)
    config = load_config(small)
    pairs = datasets.load_from_disk(str(build_pairs(config, data, None, None, tmp_path)))
    assert set(pairs["source"]) == {"yes_no"} and len(pairs) == 8  # 4 alignment images, 2 questions each


@pytest.mark.parametrize("family", ["llava", "qwen2_vl"])
def test_tied_embeddings_share_one_matrix_and_survive_save_and_load(family, tmp_path):
    from vlmdpo.model.load import load_model_and_processor
    from vlmdpo.tiny.models import build_tiny_vlm

    model, processor = build_tiny_vlm(family, tie_word_embeddings=True)
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    loaded, _ = load_model_and_processor(str(tmp_path))
    assert loaded.get_output_embeddings().weight is loaded.get_input_embeddings().weight
    torch.testing.assert_close(loaded.get_input_embeddings().weight, model.get_input_embeddings().weight)
    untied, _ = build_tiny_vlm(family)
    assert untied.get_output_embeddings().weight is not untied.get_input_embeddings().weight


def test_mixed_precision_no_survives_yaml_reading_it_as_false():
    from vlmdpo.config import load_config
    from data_recipes.shapes.demo import load_config as load_demo_config

    assert load_config(None, ["train.mixed_precision=no"]).train.mixed_precision == "no"
    assert load_demo_config(["mixed_precision=no"]).mixed_precision == "no"
    with pytest.raises(ValueError, match="auto, no, bf16 or fp16"):
        load_config(None, ["train.mixed_precision=fp8"])


def test_base_images_must_leave_alignment_images():
    from data_recipes.shapes.demo import load_config

    with pytest.raises(ValueError, match="base.images=48 must be between 0 and data.num_train=48"):
        load_config(["data.num_train=48", "base.images=48"])


def test_uncertain_yes_no_pairs_ask_about_the_least_firm_present_and_absent_answers(tiny_model_and_processor):
    """Per image one "Yes." pair about a present object and one "No." pair about an absent one, each the
    question whose true answer the model holds by the smallest log-prob margin (recomputed here one row at a
    time, so batching cannot be what decides)."""
    from data_recipes.shapes import build_shapes_dataset
    from data_recipes.shapes.question_rows import uncertain_yes_no_pairs
    from data_recipes.shapes.world import COLOURS, SHAPES, Scene
    from vlmdpo.data.rows import normalize_row
    from vlmdpo.eval.pope import pope_question_text
    from vlmdpo.eval.preference import preference_fit

    model, processor = tiny_model_and_processor
    split = build_shapes_dataset(seed=5, num_train=2, num_test=0, image_size=32)["train"]
    pairs = uncertain_yes_no_pairs(model, processor, split, batch_size=16, progress=False)
    assert len(pairs) == 2 * len(split) and pairs["chosen"] == ["Yes.", "No."] * len(split)
    for index in range(len(split)):
        scene = Scene.from_json(split[index]["scene"])
        margins = {}
        for colour in COLOURS:
            for shape in SHAPES:
                truth = ("Yes.", "No.") if scene.has(colour, shape) else ("No.", "Yes.")
                question = pope_question_text(f"{colour} {shape}")
                row = normalize_row({"images": split[index]["images"], "prompt": question, "chosen": truth[0],
                                     "rejected": truth[1]}, 0)
                fit = preference_fit(model, processor, [row], reference=model, batch_size=1, progress=False)
                pair = fit["per_pair"][0]
                margins[question] = (truth[0], pair["policy_chosen_logps"] - pair["policy_rejected_logps"])
        for k, answer in ((2 * index, "Yes."), (2 * index + 1, "No.")):
            asked = pairs[k]["prompt"]
            assert margins[asked][0] == answer
            least = min(m for a, m in margins.values() if a == answer)
            assert margins[asked][1] == pytest.approx(least, abs=1e-5)
