"""Tests for vlmdpo.eval.judge (ClipJudge: scoring, saving, loading) and the shapes world's judge trainer
(data_recipes.shapes.judge): a tiny open_clip judge trained on the CPU on solid-colour shapes.

The judge is trained once per module (64 steps, ~10 s of one core) and shared by the tests.
"""

import copy
import json
import random

import open_clip
import pytest
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

from data_recipes.shapes.judge import TINY_CLIP_CONFIG, TINY_CLIP_NAME, train_clip_judge
from vlmdpo.eval.judge import HUB_CONFIG_NAME, WEIGHTS_NAME, ClipJudge

COLOURS = {"red": (220, 30, 30), "green": (30, 170, 40), "blue": (30, 60, 220), "yellow": (230, 200, 20)}
SHAPES = ("circle", "square")


def draw_shape(colour: str, shape: str, rng: random.Random) -> Image.Image:
    """One solid shape of random size and position on a white 64x64 canvas."""
    image = Image.new("RGB", (64, 64), "white")
    radius = rng.randint(10, 20)
    cx, cy = rng.randint(radius, 63 - radius), rng.randint(radius, 63 - radius)
    box = (cx - radius, cy - radius, cx + radius, cy + radius)
    draw = ImageDraw.Draw(image)
    (draw.ellipse if shape == "circle" else draw.rectangle)(box, fill=COLOURS[colour])
    return image


def make_dataset(n: int, seed: int):
    """n (image, caption, colour, shape) rows, every colour-shape pair equally often."""
    rng = random.Random(seed)
    pairs = [(c, s) for c in COLOURS for s in SHAPES]
    rows = []
    for i in range(n):
        colour, shape = pairs[i % len(pairs)]
        rows.append((draw_shape(colour, shape, rng), f"a {colour} {shape}.", colour, shape))
    rng.shuffle(rows)
    return rows


@pytest.fixture(scope="module")
def held_out():
    return make_dataset(64, seed=1)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("judge")
    rows = make_dataset(512, seed=0)
    # One intra-op thread: on a shared 2-core box, 2 OpenMP threads that lose their cores to
    # other processes spin at every barrier and a step goes from ~0.15 s to ~3 s.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        judge = train_clip_judge([r[0] for r in rows], [r[1] for r in rows], out_dir,
                                 epochs=8, batch_size=64, lr=2e-3, seed=0, progress=False)
    finally:
        torch.set_num_threads(threads)
    return judge, out_dir


def test_tokenizer_is_the_packaged_simple_tokenizer(trained):
    judge, _ = trained
    assert isinstance(judge.tokenizer, open_clip.SimpleTokenizer)
    tokens = judge.tokenizer(["a red circle."])
    assert tokens.shape == (1, TINY_CLIP_CONFIG["text_cfg"]["context_length"])
    assert tokens[0, 0] == judge.tokenizer.sot_token_id


def test_save_writes_open_clip_config_and_weights(trained):
    judge, out_dir = trained
    assert json.loads((out_dir / f"{TINY_CLIP_NAME}.json").read_text()) == TINY_CLIP_CONFIG
    hub_config = json.loads((out_dir / HUB_CONFIG_NAME).read_text())
    assert hub_config["model_cfg"] == TINY_CLIP_CONFIG
    assert hub_config["preprocess_cfg"]["size"] == [64, 64]
    assert (out_dir / WEIGHTS_NAME).is_file()
    assert judge.name == f"{TINY_CLIP_NAME}:{out_dir / WEIGHTS_NAME}"


def test_trained_judge_prefers_true_colour_over_wrong_colour(trained, held_out):
    judge, _ = trained
    rng = random.Random(2)
    images = [r[0] for r in held_out]
    true_captions = [r[1] for r in held_out]
    wrong_captions = [f"a {rng.choice([c for c in COLOURS if c != r[2]])} {r[3]}." for r in held_out]
    true_scores = judge.score(images, true_captions, batch_size=16)
    wrong_scores = judge.score(images, wrong_captions, batch_size=16)
    accuracy = (true_scores > wrong_scores).float().mean().item()
    assert accuracy >= 0.8, f"true caption beat the wrong-colour caption on only {accuracy:.0%}"


def test_rank_puts_true_colour_first_for_most_images(trained, held_out):
    judge, _ = trained
    hits = 0
    for image, caption, _, shape in held_out[:24]:
        candidates = [f"a {c} {shape}." for c in COLOURS]
        order = judge.rank(image, candidates)
        assert sorted(order) == list(range(len(candidates)))
        hits += candidates[order[0]] == caption
    assert hits / 24 >= 0.8  # top-1 of 4 colours; chance is 1/4


def test_clipscore_is_hessel_definition_from_normalised_embeddings(trained, held_out):
    judge, _ = trained
    images = [r[0] for r in held_out[:8]]
    captions = [f"a {c} {s}." for c in COLOURS for s in SHAPES]
    with torch.no_grad():
        pixels = torch.stack([judge.preprocess(im) for im in images])
        image_emb = F.normalize(judge.model.encode_image(pixels), dim=-1)
        text_emb = F.normalize(judge.model.encode_text(judge.tokenizer(captions)), dim=-1)
    cosine = image_emb @ text_emb.T
    assert (cosine < 0).any() and (cosine > 0).any(), "need both signs to check the clamp"
    expected = 2.5 * cosine.clamp(min=0)

    matrix = judge.scores_matrix(images, captions, batch_size=3)
    assert matrix.shape == (8, 8)
    torch.testing.assert_close(matrix, expected, atol=1e-5, rtol=0)
    assert matrix.min() >= 0 and matrix.max() <= 2.5

    pairs = judge.score(images, captions, batch_size=3)  # i-th image with i-th caption
    torch.testing.assert_close(pairs, expected.diagonal(), atol=1e-5, rtol=0)


def test_load_reproduces_scores(trained, held_out):
    judge, out_dir = trained
    images, captions = [r[0] for r in held_out[:16]], [r[1] for r in held_out[:16]]
    loaded = ClipJudge.load(out_dir)
    assert loaded.name == judge.name
    torch.testing.assert_close(loaded.score(images, captions), judge.score(images, captions), atol=0, rtol=0)


def test_from_pretrained_accepts_a_local_checkpoint_path(trained, held_out):
    judge, out_dir = trained
    open_clip.add_model_config(out_dir / f"{TINY_CLIP_NAME}.json")  # plain open_clip, no vlmdpo loader
    weights = str(out_dir / WEIGHTS_NAME)
    from_path = ClipJudge.from_pretrained(TINY_CLIP_NAME, pretrained=weights)
    assert from_path.name == f"{TINY_CLIP_NAME}:{weights}"
    images, captions = [r[0] for r in held_out[:8]], [r[1] for r in held_out[:8]]
    expected = judge.score(images, captions)
    torch.testing.assert_close(from_path.score(images, captions), expected, atol=0, rtol=0)
    from_dir = ClipJudge.from_pretrained(f"local-dir:{out_dir}")  # open_clip's own folder format
    torch.testing.assert_close(from_dir.score(images, captions), expected, atol=0, rtol=0)


def test_save_load_keeps_a_non_default_image_transform(tmp_path):
    """A SigLIP-style mean/std must survive save/load, not fall back to CLIP's."""
    (tmp_path / "vlmdpo-test-half-norm.json").write_text(json.dumps(TINY_CLIP_CONFIG))
    open_clip.add_model_config(tmp_path / "vlmdpo-test-half-norm.json")
    half = {"mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5)}
    ClipJudge.from_pretrained("vlmdpo-test-half-norm", preprocess_cfg=half).save(tmp_path / "saved")
    loaded = ClipJudge.load(tmp_path / "saved")
    white = loaded.preprocess(Image.new("RGB", (64, 64), "white"))
    torch.testing.assert_close(white, torch.ones_like(white))  # (1 - 0.5) / 0.5


def test_load_after_same_name_other_config_uses_its_own_config(trained, held_out, tmp_path):
    """open_clip's config registry is global: reloading must re-register the directory's config."""
    judge, out_dir = trained
    other = copy.deepcopy(TINY_CLIP_CONFIG)
    other["embed_dim"] = 32
    (tmp_path / f"{TINY_CLIP_NAME}.json").write_text(json.dumps(other))
    open_clip.add_model_config(tmp_path / f"{TINY_CLIP_NAME}.json")
    ClipJudge.from_pretrained(TINY_CLIP_NAME).save(tmp_path / "other")
    assert ClipJudge.load(tmp_path / "other").model.text_projection.shape[1] == 32

    # A judge keeps the config it was built with, whatever the registry says now.
    judge.save(tmp_path / "again")
    assert json.loads((tmp_path / "again" / f"{TINY_CLIP_NAME}.json").read_text()) == TINY_CLIP_CONFIG

    reloaded = ClipJudge.load(out_dir)
    images, captions = [r[0] for r in held_out[:4]], [r[1] for r in held_out[:4]]
    expected = judge.score(images, captions)
    torch.testing.assert_close(reloaded.score(images, captions), expected, atol=0, rtol=0)


def test_load_without_weights_fails_with_a_clear_message(tmp_path):
    (tmp_path / f"{TINY_CLIP_NAME}.json").write_text(json.dumps(TINY_CLIP_CONFIG))
    with pytest.raises(FileNotFoundError, match=WEIGHTS_NAME):
        ClipJudge.load(tmp_path)


def test_score_needs_one_caption_per_image(trained, held_out):
    judge, _ = trained
    with pytest.raises(ValueError, match="one caption per image"):
        judge.score([held_out[0][0]], ["a red circle.", "a blue square."])


def test_hard_negative_loss_worked_out_by_hand():
    from data_recipes.shapes.judge import clip_loss_with_hard_negatives

    e1, e2 = torch.eye(2)
    # one image matching its caption (cos 1), its hard negative orthogonal (cos 0), scale 1:
    # image -> [caption, negative] logits [1, 0]: CE = log(1 + e^-1); caption -> [image] logits [1]: CE = 0
    loss = clip_loss_with_hard_negatives(e1[None], e1[None], e2[None], torch.tensor(1.0))
    assert loss.item() == pytest.approx(torch.log1p(torch.exp(torch.tensor(-1.0))).item() / 2, abs=1e-6)
    # a hard negative as close as the caption makes the image's side a coin flip: CE = log 2
    loss = clip_loss_with_hard_negatives(e1[None], e1[None], e1[None], torch.tensor(1.0))
    assert loss.item() == pytest.approx(torch.log(torch.tensor(2.0)).item() / 2, abs=1e-6)


def test_training_with_hard_negatives_checks_them_and_saves_a_loadable_judge(tmp_path):
    rows = make_dataset(64, seed=2)
    # the hard negative of "a red circle." is the same colour on the other shape
    negatives = [f"a {r[2]} {'square' if r[3] == 'circle' else 'circle'}." for r in rows]
    images, captions = [r[0] for r in rows], [r[1] for r in rows]
    with pytest.raises(ValueError, match="one each"):
        train_clip_judge(images, captions, tmp_path / "bad", epochs=1, hard_negatives=negatives[:-1], progress=False)
    judge = train_clip_judge(images, captions, tmp_path / "neg", epochs=1, batch_size=32, seed=0, progress=False,
                             hard_negatives=negatives)
    plain = train_clip_judge(images, captions, tmp_path / "plain", epochs=1, batch_size=32, seed=0,
                             progress=False)
    scores = judge.score(images[:8], captions[:8])
    assert not torch.allclose(scores, plain.score(images[:8], captions[:8]))  # the negatives took part
    torch.testing.assert_close(ClipJudge.load(tmp_path / "neg").score(images[:8], captions[:8]), scores)


def test_training_a_judge_leaves_the_callers_rng_alone(tmp_path):
    images = [Image.new("RGB", (64, 64), colour) for colour in COLOURS.values()]
    state = torch.get_rng_state()
    first = train_clip_judge(images, list(COLOURS), tmp_path / "a", epochs=1, batch_size=2, seed=1, progress=False)
    assert torch.equal(torch.get_rng_state(), state)
    torch.rand(3)
    again = train_clip_judge(images, list(COLOURS), tmp_path / "b", epochs=1, batch_size=2, seed=1, progress=False)
    torch.testing.assert_close(first.score(images, list(COLOURS)), again.score(images, list(COLOURS)))
