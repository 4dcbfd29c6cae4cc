"""data_recipes.pair_builders: hallucination injection, AI-feedback ranking with a real tiny policy and
judge, mDPO conditional rows; then each builder's rows collated by the tiny models' processors."""

import random

import datasets
import pytest
import torch
from PIL import Image, ImageDraw

from data_recipes.pair_builders import (COCO_OBJECTS, COCO_STYLE_OBJECT_SETS, ai_feedback_pairs, conditional_pairs,
                                        cooccurrence, hallucinate_caption, hallucination_pairs, judge_scores,
                                        mentions, plural)
from vlmdpo.data.collator import PreferenceCollator
from vlmdpo.data.rows import normalize_row


def scene(seed: int, size=(48, 40)) -> Image.Image:
    """A small image with a few coloured boxes, so crops and masks change it."""
    rng = random.Random(seed)
    image = Image.new("RGB", size, (240, 240, 240))
    draw = ImageDraw.Draw(image)
    for _ in range(3):
        x, y = rng.randrange(size[0] - 8), rng.randrange(size[1] - 8)
        draw.rectangle((x, y, x + 8, y + 8), fill=tuple(rng.randrange(256) for _ in range(3)))
    return image


@pytest.fixture(scope="module")
def captioned():
    """COCO-style rows: one image each, a caption and the image's object list."""
    return datasets.Dataset.from_dict({
        "images": [[scene(0)], [scene(1, (32, 56))], [scene(2)], [scene(3)]],
        "caption": ["A man sits at a dining table with a pizza.", "Two dogs play with a frisbee in the park.",
                    "An apple and a banana in a bowl.", ""],
        "objects": [["person", "dining table", "pizza"], ["dog", "frisbee"], ["apple", "banana", "bowl"], ["cat"]],
        "id": [10, 11, 12, 13],
    }).cast_column("images", datasets.List(datasets.Image()))


# --- hallucination -----------------------------------------------------------------------------------

def test_coco_vocabulary():
    assert len(COCO_OBJECTS) == len(set(COCO_OBJECTS)) == 80
    assert all(o in COCO_OBJECTS for objects in COCO_STYLE_OBJECT_SETS for o in objects)


def test_cooccurrence_counts_pairs_once_per_set():
    table = cooccurrence([("dog", "cat", "dog"), ("dog", "cat"), ("dog", "bed")])
    assert table["dog"] == {"cat": 2, "bed": 1} and table["cat"] == {"dog": 2} and table["bed"] == {"dog": 1}


def test_plural_and_mentions():
    assert [plural(n) for n in ("dog", "bus", "wine glass", "person", "knife", "skis")] == \
        ["dogs", "buses", "wine glasses", "people", "knives", "skis"]
    caption = "A man and two dogs next to a hot dog on a table."
    assert [(caption[s:e], name, p) for s, e, name, p in mentions(caption, COCO_OBJECTS)] == [
        ("man", "person", False), ("dogs", "dog", True), ("hot dog", "hot dog", False),
        ("table", "dining table", False)]


def test_replace_swaps_in_an_absent_object_that_co_occurs():
    table = cooccurrence([("dog", "cat")] * 5 + [("cat", "bed")])
    out, new = hallucinate_caption("A dog on the grass.", ["dog"], table, random.Random(0),
                                   vocabulary=("dog", "cat", "bed", "apple"), mode="replace")
    assert (out, new) == ("A cat on the grass.", "cat")  # cat is the only absent object seen with a dog
    out, new = hallucinate_caption("Two dogs.", ["dog"], table, random.Random(0), vocabulary=("dog", "cat"),
                                   mode="replace")
    assert (out, new) == ("Two cats.", "cat")
    out, _ = hallucinate_caption("An apple.", ["apple"], {}, random.Random(0), vocabulary=("apple", "cat"),
                                 mode="replace")
    assert out == "A cat."  # the article follows the new word


def test_insert_names_an_absent_object_and_keeps_the_caption():
    table = cooccurrence([("dog", "frisbee", "person")] * 3)
    out, new = hallucinate_caption("Two dogs play.", ["dog", "frisbee"], table, random.Random(1),
                                   vocabulary=("dog", "frisbee", "person", "toaster"), mode="insert")
    assert new == "person" and out.startswith("Two dogs play. ") and "person" in out
    assert hallucinate_caption("A dog.", ["dog"], table, random.Random(0), vocabulary=("dog",)) is None
    with pytest.raises(ValueError, match="mode"):
        hallucinate_caption("A dog.", [], table, random.Random(0), mode="swap")


def test_hallucination_pairs_rows(captioned):
    pairs = hallucination_pairs(captioned, seed=3, keep_columns=("id",))
    assert pairs.column_names == ["images", "prompt", "chosen", "rejected", "hallucinated_object", "id"]
    assert pairs["id"] == [10, 11, 12]  # the empty caption gives no pair
    for pair, source in zip(pairs, captioned):
        assert pair["hallucinated_object"] not in source["objects"]
        assert pair["hallucinated_object"] in pair["rejected"][0]["content"][0]["text"].lower() or \
            plural(pair["hallucinated_object"]) in pair["rejected"][0]["content"][0]["text"].lower()
        assert pair["chosen"][0]["content"][0]["text"] == source["caption"]
        assert pair["chosen"] != pair["rejected"]
        assert pair["images"][0].size == source["images"][0].size
    again = hallucination_pairs(captioned, seed=3, keep_columns=("id",))
    assert again["rejected"] == pairs["rejected"]
    other_seeds = [hallucination_pairs(captioned, seed=s)["rejected"] for s in range(4, 8)]
    assert any(rejected != pairs["rejected"] for rejected in other_seeds)


# --- AI feedback --------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def qwen():
    from vlmdpo.model.load import load_model_and_processor
    from vlmdpo.tiny import tiny_vlm

    model, processor = load_model_and_processor(tiny_vlm("qwen2_vl"))
    return model.eval(), processor


def test_judge_scores_batched_or_callable():
    class Batched:
        def score(self, images, texts):
            return torch.tensor([float(len(t)) for t in texts])

    assert judge_scores(Batched(), [None, None], ["ab", "abcd"]) == [2.0, 4.0]
    assert judge_scores(lambda image, text: text.count("a"), [None, None], ["a", "aaa"]) == [1.0, 3.0]
    with pytest.raises(TypeError, match="judge"):
        judge_scores(3, [None], ["a"])


def test_ai_feedback_keeps_best_and_worst_by_the_judge(qwen, captioned):
    model, processor = qwen
    seen = []

    def judge(image, text):  # any callable: here, longer is better
        seen.append((image.size, text))
        return float(len(text))

    rows = captioned.select(range(2))
    pairs = ai_feedback_pairs(model, processor, rows, judge, num_samples=3, max_new_tokens=6, margin=0.5,
                              seed=0, keep_columns=("id",), progress=False)
    assert len(seen) == 2 * 3 and {size for size, _ in seen} == {(48, 40), (32, 56)}
    assert set(pairs.column_names) == {"images", "prompt", "chosen", "rejected", "chosen_score",
                                       "rejected_score", "id"}
    assert len(pairs) >= 1
    by_row = {size: [text for s, text in seen if s == size] for size in {(48, 40), (32, 56)}}
    for pair in pairs:
        chosen, rejected = pair["chosen"][0]["content"][0]["text"], pair["rejected"][0]["content"][0]["text"]
        samples = by_row[pair["images"][0].size]
        assert chosen in samples and rejected in samples
        assert pair["chosen_score"] == max(len(t) for t in samples) == len(chosen)
        assert pair["rejected_score"] == min(len(t) for t in samples) == len(rejected)
        assert pair["chosen_score"] - pair["rejected_score"] >= 0.5
    again = ai_feedback_pairs(model, processor, rows, lambda image, text: float(len(text)), num_samples=3,
                              max_new_tokens=6, margin=0.5, seed=0, keep_columns=("id",), progress=False)
    assert again["chosen"] == pairs["chosen"] and again["rejected"] == pairs["rejected"]
    none = ai_feedback_pairs(model, processor, rows, lambda image, text: 1.0, num_samples=2, max_new_tokens=4,
                             margin=0.1, progress=False)
    assert len(none) == 0  # a judge that cannot tell the samples apart gives no pairs


def test_ranked_pair_within_a_length_gap_takes_the_widest_score_gap():
    from data_recipes.pair_builders.ai_feedback import _ranked_pair

    texts = ["a b", "a b c d", "x y", "", "p q r"]
    scores = [0.1, 0.9, 0.5, 0.0, 0.3]
    assert _ranked_pair(texts, scores, None) == (1, 3)  # best against worst, whatever their lengths
    assert _ranked_pair(texts, scores, 0) == (2, 0)  # two words each: 0.5 against 0.1
    assert _ranked_pair(texts, scores, 1) == (1, 4)  # four words (0.9) against three (0.3): 0.6
    assert _ranked_pair(texts, scores, 2) == (1, 0)  # four words against two: 0.9 against 0.1
    assert _ranked_pair(["a b", "a b c d"], [0.1, 0.9], 0) == (0, 0)  # nothing within the gap: no pair


def test_ai_feedback_with_a_length_gap_pairs_only_samples_of_similar_length(qwen, captioned):
    model, processor = qwen
    seen = {}

    def score(text):  # longer is better: best against worst would pair different lengths
        return len(text) + sum(map(ord, text)) % 97 / 100

    def judge(image, text):
        seen.setdefault(image.size, []).append(text)
        return score(text)

    rows = captioned.select(range(2))
    pairs = ai_feedback_pairs(model, processor, rows, judge, num_samples=6, max_new_tokens=6, margin=0.0,
                              seed=0, max_length_gap=0, progress=False)
    expected = {}
    for size, samples in seen.items():  # worked out here from the samples the judge saw
        gaps = [(score(a) - score(b), a, b) for a in samples for b in samples
                if len(a.split()) == len(b.split()) and a != b and a and b and score(a) > score(b)]
        if gaps:
            expected[size] = max(gaps)[1:]
    got = {pair["images"][0].size: (pair["chosen"][0]["content"][0]["text"], pair["rejected"][0]["content"][0]["text"])
           for pair in pairs}
    assert got == expected and len(got) >= 1
    for chosen, rejected in got.values():
        assert len(chosen.split()) == len(rejected.split())
    with pytest.raises(ValueError, match="max_length_gap"):
        ai_feedback_pairs(model, processor, rows, judge, num_samples=2, max_length_gap=-1, progress=False)


def test_ai_feedback_with_a_tiny_clip_judge(qwen, captioned, tmp_path):
    import json

    import open_clip

    from data_recipes.shapes.judge import TINY_CLIP_CONFIG
    from vlmdpo.eval.judge import ClipJudge

    (tmp_path / "pair-builders-clip.json").write_text(json.dumps(TINY_CLIP_CONFIG))
    open_clip.add_model_config(str(tmp_path / "pair-builders-clip.json"))
    with torch.random.fork_rng(devices=[]):  # open_clip's random init draws from the global RNG
        torch.manual_seed(0)
        judge = ClipJudge.from_pretrained("pair-builders-clip")  # random weights: the ranking is arbitrary
    rows = captioned.select(range(2))
    pairs = ai_feedback_pairs(qwen[0], qwen[1], rows, judge, num_samples=3, max_new_tokens=6, margin=0.0,
                              progress=False)
    assert len(pairs) >= 1
    for pair in pairs:
        chosen, rejected = pair["chosen"][0]["content"][0]["text"], pair["rejected"][0]["content"][0]["text"]
        scores = judge.score([pair["images"][0]] * 2, [chosen, rejected]).tolist()
        assert scores == pytest.approx([pair["chosen_score"], pair["rejected_score"]], abs=1e-5)
        assert 0.0 <= pair["rejected_score"] <= pair["chosen_score"] <= 2.5


# --- conditional (mDPO) -------------------------------------------------------------------------------

def test_conditional_rows(captioned):
    rows = captioned.select(range(3))
    pairs = conditional_pairs(rows, seed=5, options={"keep": (0.1, 0.2)})
    assert pairs.column_names == ["images", "corrupted_images", "caption", "objects", "id"]
    assert pairs["id"] == rows["id"] and pairs["caption"] == rows["caption"]
    for pair in pairs:
        real, corrupted = pair["images"][0], pair["corrupted_images"][0]
        assert real.size == corrupted.size
        assert real.tobytes() != corrupted.tobytes()
    again = conditional_pairs(rows, seed=5, options={"keep": (0.1, 0.2)})
    assert [p["corrupted_images"][0].tobytes() for p in again] == [p["corrupted_images"][0].tobytes() for p in pairs]
    masked = conditional_pairs(rows, method="mask_patches", options={"fraction": 0.5, "patch_size": 8})
    assert masked[0]["corrupted_images"][0].tobytes() != pairs[0]["corrupted_images"][0].tobytes()
    with pytest.raises(ValueError, match="unknown corruption"):
        conditional_pairs(rows, method="blur")


# --- the rows train: each builder's output collates --------------------------------------------------

def test_builders_rows_collate(tiny_model_and_processor, captioned):
    _, processor = tiny_model_and_processor
    collator = PreferenceCollator(processor)
    pairs = hallucination_pairs(captioned, seed=0)
    batch = collator([normalize_row(row, i) for i, row in enumerate(pairs)])
    assert batch["chosen_input_ids"].shape[0] == len(pairs) == 3

    conditional = conditional_pairs(pairs, seed=0)
    real = collator([normalize_row(row, i) for i, row in enumerate(conditional)])
    corrupted = collator([normalize_row({**row, "images": row["corrupted_images"]}, i)
                          for i, row in enumerate(conditional)])
    for key in ("prompt_input_ids", "chosen_input_ids", "chosen_completion_mask"):
        assert torch.equal(real[key], corrupted[key])  # same tokens: only the pixels differ
    assert not torch.equal(real["vision_inputs"]["pixel_values"], corrupted["vision_inputs"]["pixel_values"])
