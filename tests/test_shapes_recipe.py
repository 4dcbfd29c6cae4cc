"""Shapes world: scenes draw what they claim, captions say what is drawn, datasets are reproducible."""

import random
import re

import datasets
import numpy as np
import pytest

from data_recipes.shapes import (
    BACKGROUND_RGB,
    COLOURS,
    HALLUCINATIONS,
    NOISE_AMPLITUDE,
    POSITIONS,
    SHAPES_VOCABULARY,
    Scene,
    ShapeObject,
    applicable_hallucinations,
    build_shapes_dataset,
    caption,
    caption_sft_rows,
    cell_box,
    draw_scene,
    hallucinate,
    mentioned_objects,
    noisy_web_caption,
    objects_in_scene,
    povid_pairs,
    sample_scene,
    swap_binding,
    swap_shape,
    user_prompt,
    yes_no_questions,
)
from data_recipes.shapes.__main__ import main as shapes_main

PALETTE_NAMES = ["background", *COLOURS]
PALETTE = np.array([BACKGROUND_RGB, *COLOURS.values()], dtype=np.int32)


def _scenes(n, seed=0):
    rng = random.Random(seed)
    return [sample_scene(rng) for _ in range(n)]


def _labels(image):
    """Per-pixel index into PALETTE_NAMES of the nearest palette colour, (H, W)."""
    pixels = np.asarray(image, dtype=np.int32)
    distances = ((pixels[:, :, None, :] - PALETTE[None, None]) ** 2).sum(-1)
    return distances.argmin(-1)


def _classify_shape(mask):
    """Read a shape back from a binary mask by how much of its bounding box it fills."""
    rows, cols = np.nonzero(mask)
    box = mask[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
    fill = box.mean()
    if fill > 0.9:
        return "square"
    if fill > 0.65:
        return "circle"
    widths = box.sum(1)
    return "triangle" if widths[-1] > widths[0] + 2 else "diamond"


@pytest.fixture(scope="module")
def shapes_dataset():
    return build_shapes_dataset(seed=0, num_train=24, num_test=12)


# ---------------------------------------------------------------- world


def test_scene_rejects_ambiguous_or_overlapping_objects():
    red_circle = ShapeObject("red", "circle", "small", "top left")
    with pytest.raises(ValueError, match="colour and shape"):
        Scene((red_circle, ShapeObject("red", "circle", "large", "top right")))
    with pytest.raises(ValueError, match="grid cell"):
        Scene((red_circle, ShapeObject("blue", "square", "large", "top left")))
    with pytest.raises(ValueError, match="colour="):
        ShapeObject("white", "circle", "small", "top left")


def test_scene_orders_objects_and_round_trips_through_json():
    scene = Scene(
        (ShapeObject("blue", "square", "small", "bottom right"), ShapeObject("red", "circle", "large", "top right"))
    )
    assert scene.names == ["red circle", "blue square"]
    assert Scene.from_json(scene.to_json()) == scene


def test_palette_is_far_apart_and_far_from_background():
    """Noise of amplitude A moves a pixel at most A*sqrt(3); colours must stay far beyond twice that."""
    distances = np.sqrt(((PALETTE[:, None] - PALETTE[None]) ** 2).sum(-1))
    nearest = distances[~np.eye(len(PALETTE), dtype=bool)].min()
    assert nearest >= 100 > 2 * NOISE_AMPLITUDE * np.sqrt(3)


def test_cell_boxes_follow_reading_order():
    assert [cell_box(p, 64) for p in POSITIONS] == [(0, 0, 32, 32), (32, 0, 64, 32), (0, 32, 32, 64), (32, 32, 64, 64)]


def test_sampled_scenes_respect_object_bounds():
    rng = random.Random(3)
    counts = {len(sample_scene(rng, 2, 3).objects) for _ in range(200)}
    assert counts == {2, 3}


@pytest.mark.parametrize("background", ["plain", "noisy"])
def test_drawn_pixels_match_scene(background):
    """Every object appears in its own cell with its colour, shape and size; nothing else is drawn."""
    for scene in _scenes(40, seed=11):
        image = draw_scene(scene, image_size=64, background=background, rng=random.Random(1))
        assert image.mode == "RGB" and image.size == (64, 64)
        labels = _labels(image)
        if background == "plain":
            # No antialiasing: every pixel is exactly a palette colour.
            pixels = np.asarray(image, dtype=np.int32).reshape(-1, 3)
            assert (PALETTE[labels.reshape(-1)] == pixels).all()
        else:
            # Noise is there but small; the checks below show it never moves a pixel to another colour.
            noise = np.asarray(image, dtype=np.int32) - np.asarray(draw_scene(scene), dtype=np.int32)
            assert 0 < np.abs(noise).max() <= NOISE_AMPLITUDE
        present = {PALETTE_NAMES.index(o.colour) for o in scene.objects}
        assert set(np.unique(labels)) <= present | {0}, "a colour absent from the scene was drawn"
        by_position = {o.position: o for o in scene.objects}
        for position in POSITIONS:
            left, top, right, bottom = cell_box(position, 64)
            cell = labels[top:bottom, left:right]
            obj = by_position.get(position)
            if obj is None:
                assert (cell == 0).all(), f"empty cell {position} is not plain background"
                continue
            mask = cell == PALETTE_NAMES.index(obj.colour)
            assert ((cell == 0) | mask).all(), f"another colour leaked into {position}"
            assert mask.sum() >= (300 if obj.size == "large" else 80), (obj, int(mask.sum()))
            assert _classify_shape(mask) == obj.shape, obj


def test_noisy_background_is_deterministic_without_rng():
    scene = _scenes(1, seed=5)[0]
    assert draw_scene(scene, background="noisy").tobytes() == draw_scene(scene, background="noisy").tobytes()


# ---------------------------------------------------------------- captions and vocabulary


def test_caption_grammar():
    scene = Scene(
        (
            ShapeObject("green", "triangle", "large", "bottom left"),
            ShapeObject("red", "circle", "large", "top left"),
            ShapeObject("blue", "square", "small", "top right"),
        )
    )
    assert caption(scene) == "a large red circle, a small blue square and a large green triangle."
    assert caption(scene, with_size=False) == "a red circle, a blue square and a green triangle."
    assert caption(Scene(scene.objects[:1])) == "a large red circle."


def test_caption_mentions_exactly_the_scene_objects():
    for scene in _scenes(200):
        assert mentioned_objects(caption(scene)) == objects_in_scene(scene) == scene.names


def test_vocabulary_covers_every_colour_shape_pair():
    assert len(SHAPES_VOCABULARY) == 24
    assert SHAPES_VOCABULARY["red circle"] == ["red circle", "red circles"]
    assert mentioned_objects("Two Red Circles and a blue diamond; a red circle.") == ["red circle", "blue diamond"]
    assert mentioned_objects("a reddish circle") == []


def test_hallucinate_always_names_an_absent_object():
    rng = random.Random(0)
    for scene in _scenes(200):
        for kind in applicable_hallucinations(scene):
            text = HALLUCINATIONS[kind](scene, rng)
            mentioned = mentioned_objects(text)
            assert set(mentioned) - set(scene.names), (kind, scene.names, text)
            expected_count = len(scene.objects) + (kind in ("add_object", "insert_object"))
            assert len(mentioned) == expected_count, (kind, text)
            if kind == "add_object":
                assert mentioned[:-1] == scene.names
        assert hallucinate(scene, rng) != caption(scene)


def test_swap_shape_is_skipped_when_no_shape_is_free():
    shapes = ("circle", "square", "triangle", "diamond")
    scene = Scene(tuple(ShapeObject("red", s, "small", p) for s, p in zip(shapes, POSITIONS)))
    assert applicable_hallucinations(scene) == ["add_object", "insert_object", "swap_colour"]
    with pytest.raises(ValueError, match="shape"):
        swap_shape(scene, random.Random(0))


def test_noisy_web_caption_keeps_the_truth_and_adds_one_absent_object():
    rng = random.Random(0)
    for scene in _scenes(100):
        mentioned = mentioned_objects(noisy_web_caption(scene, rng))
        extra = [name for name in mentioned if name not in scene.names]
        assert len(extra) == 1
        assert [name for name in mentioned if name in scene.names] == scene.names


def _check_answers(scene, questions, answers):
    for text, answer in zip(questions, answers, strict=True):
        colour, shape = re.fullmatch(r"is there a (\w+) (\w+) in the image\?", text).groups()
        assert answer == ("yes" if scene.has(colour, shape) else "no"), text


def test_yes_no_answers_match_the_scene():
    rng = random.Random(0)
    for scene in _scenes(100):
        qa = yes_no_questions(scene, rng, n_pos=2, n_neg=3)
        assert len(qa) == min(2, len(scene.objects)) + 3
        assert len({q for q, _ in qa}) == len(qa)
        _check_answers(scene, *zip(*qa))


# ---------------------------------------------------------------- datasets


def _image_bytes(split):
    list_feature = getattr(datasets, "List", datasets.Sequence)
    raw = split.cast_column("images", list_feature(datasets.Image(decode=False)))
    return [images[0]["bytes"] for images in raw["images"]]


def test_swap_binding_swaps_colours_between_objects_that_differ_in_both():
    red_circle, blue_square = (ShapeObject("red", "circle", "small", "top left"),
                               ShapeObject("blue", "square", "large", "top right"))
    scene = Scene((red_circle, blue_square))
    assert swap_binding(scene, random.Random(0)) == "a small blue circle and a large red square."
    same_colour = Scene((red_circle, ShapeObject("red", "square", "large", "bottom left")))
    assert swap_binding(same_colour, random.Random(0)) is None


def test_dataset_is_deterministic_in_the_seed(shapes_dataset):
    again = build_shapes_dataset(seed=0, num_train=24, num_test=12)
    other = build_shapes_dataset(seed=1, num_train=24, num_test=12)
    for split in ("train", "test"):
        assert _image_bytes(again[split]) == _image_bytes(shapes_dataset[split])
        assert again[split].remove_columns("images").to_dict() == (
            shapes_dataset[split].remove_columns("images").to_dict()
        )
        assert _image_bytes(other[split]) != _image_bytes(shapes_dataset[split])
        assert other[split]["caption"] != shapes_dataset[split]["caption"]


def test_dataset_rows_agree_with_their_scene(shapes_dataset):
    assert set(shapes_dataset["train"]["scene"]).isdisjoint(shapes_dataset["test"]["scene"])
    for row in shapes_dataset["train"]:
        scene = Scene.from_json(row["scene"])
        assert row["objects"] == scene.names
        assert row["caption"] == caption(scene)
        assert len(set(mentioned_objects(row["noisy_caption"])) - set(scene.names)) == 1
        _check_answers(scene, row["questions"], row["answers"])
        assert len(row["images"]) == 1 and row["images"][0].size == (64, 64)
        assert row["background"] in ("plain", "noisy")


def test_povid_pairs_have_trl_conversational_format(shapes_dataset):
    split = shapes_dataset["train"]
    pairs = povid_pairs(split, seed=0)
    assert set(pairs.column_names) >= {"images", "prompt", "chosen", "rejected", "objects"}
    for row, source in zip(pairs, split):
        assert row["prompt"] == user_prompt("Describe the image.")
        for key in ("chosen", "rejected"):
            (message,) = row[key]
            assert message["role"] == "assistant" and message["content"][0]["type"] == "text"
        chosen, rejected = row["chosen"][0]["content"][0]["text"], row["rejected"][0]["content"][0]["text"]
        assert chosen == source["caption"] and chosen != rejected
        assert set(mentioned_objects(rejected)) - set(source["objects"])
        assert row["hallucination"] in HALLUCINATIONS
        assert row["images"][0].tobytes() == source["images"][0].tobytes()
    assert povid_pairs(split, seed=0)["rejected"] == pairs["rejected"]


def test_caption_sft_rows_mix_noisy_captions(shapes_dataset):
    split = shapes_dataset["train"]
    rows = caption_sft_rows(split, noisy_fraction=0.25, seed=0)
    assert sum(rows["is_noisy"]) == 6
    for row, source in zip(rows, split):
        (message,) = row["completion"]
        assert message["role"] == "assistant"
        expected = source["noisy_caption"] if row["is_noisy"] else source["caption"]
        assert message["content"][0]["text"] == expected
        assert row["prompt"] == user_prompt()
    assert sum(caption_sft_rows(split, noisy_fraction=0.0)["is_noisy"]) == 0


def test_cli_saves_a_loadable_dataset(tmp_path, capsys):
    shapes_main(["--out", str(tmp_path / "shapes"), "--num-train", "4", "--num-test", "2", "--seed", "3"])
    loaded = datasets.load_from_disk(str(tmp_path / "shapes"))
    assert {split: len(rows) for split, rows in loaded.items()} == {"train": 4, "test": 2}
    assert loaded["train"]["caption"] == build_shapes_dataset(seed=3, num_train=4, num_test=2)["train"]["caption"]
    assert "train: 4 rows" in capsys.readouterr().out


# ---------------------------------------------------------------- yes/no probe


def test_question_kind_sorts_every_pair_of_a_hand_made_scene():
    from data_recipes.shapes.yes_no_probe import question_kind

    scene = Scene(objects=(ShapeObject("red", "circle", "small", "top left"),
                           ShapeObject("blue", "square", "large", "bottom right")))
    assert question_kind(scene, "red", "circle") == "present"
    assert question_kind(scene, "red", "triangle") == "same colour"
    assert question_kind(scene, "green", "circle") == "same shape"
    assert question_kind(scene, "red", "square") == "colour and shape apart"  # red circle + blue square
    assert question_kind(scene, "green", "diamond") == "unrelated"


def test_probe_rows_ask_every_pair_once_per_image(shapes_dataset):
    from collections import Counter

    from data_recipes.shapes.world import SHAPES
    from data_recipes.shapes.yes_no_probe import probe_rows

    split = shapes_dataset["test"]
    rows, kinds = probe_rows(split, max_images=3)
    assert len(rows) == len(kinds) == 3 * len(COLOURS) * len(SHAPES)
    assert Counter(kinds)["present"] == sum(len(objects) for objects in split["objects"][:3])
    assert rows[0]["prompt"][0]["content"][-1]["text"].startswith("Is there a ")


def test_yes_rate_by_kind_runs_a_real_model(shapes_dataset):
    from data_recipes.shapes.yes_no_probe import KINDS, yes_rate_by_kind
    from vlmdpo.tiny.models import build_tiny_vlm

    model, processor = build_tiny_vlm("llava", image_size=64, patch_size=16)
    rates = yes_rate_by_kind(model.eval(), processor, shapes_dataset["test"], max_images=2, progress=False)
    assert list(rates) == list(KINDS)
    assert all(rate is None or 0.0 <= rate <= 1.0 for rate in rates.values())
    assert rates["present"] is not None
