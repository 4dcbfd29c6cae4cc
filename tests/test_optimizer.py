"""``vlmdpo.train.optimizer``: a learning rate per part of the VLM (``train.part_learning_rates``).

Adam's first step moves every weight with a nonzero gradient by exactly its learning rate (the bias-corrected
moments are g and g**2, so the update is lr * g / |g|, up to eps), which makes the rates readable from the weights.
"""

import json

import pytest
import vlmdpo.train.setup as train_setup
from data_recipes.shapes import build_shapes_dataset, povid_pairs
from vlmdpo.config import load_config
from vlmdpo.model.lora import part_of
from vlmdpo.train.loop import train
from vlmdpo.train.optimizer import parameter_groups

RATE, VISION_RATE = 1e-2, 1e-4


@pytest.fixture(scope="module")
def pairs_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pairs") / "povid"
    povid_pairs(build_shapes_dataset(seed=0, num_train=4, num_test=0, image_size=32)["train"]).save_to_disk(
        str(folder))
    return folder


def one_step(model_dir, pairs_dir, output_dir, monkeypatch, *extra):
    """Initial and final weights of one full fine-tuning step at ``RATE`` (constant, no warmup, no decay)."""
    built = {}
    build_policy = train_setup.build_policy

    def capture(config):
        policy, reference, processor = build_policy(config)
        built.update(policy=policy, initial={n: p.detach().clone() for n, p in policy.named_parameters()})
        return policy, reference, processor

    monkeypatch.setattr(train_setup, "build_policy", capture)
    train(load_config(None, [f"model.name_or_path={model_dir}", f"data.train={pairs_dir}", "model.finetune=full",
                             f"train.output_dir={output_dir}", "train.max_steps=1", "train.batch_size=4",
                             f"train.learning_rate={RATE}", "train.lr_scheduler=constant", "train.warmup_ratio=0",
                             "train.progress=false", "train.mixed_precision=no", *extra]))
    return built["initial"], dict(built["policy"].named_parameters())


def largest_moves(initial, final):
    """Largest absolute change of any weight, per part."""
    moves = {}
    for name, value in final.items():
        part = part_of(name)
        moves[part] = max(moves.get(part, 0.0), (value.detach() - initial[name]).abs().max().item())
    return moves


def test_each_part_moves_by_its_own_rate(tiny_model_dir, pairs_dir, tmp_path, monkeypatch):
    initial, final = one_step(tiny_model_dir, pairs_dir, tmp_path / "run", monkeypatch,
                              f"train.part_learning_rates.vision={VISION_RATE}")
    moves = largest_moves(initial, final)
    logged = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[0])
    assert logged["learning_rate"] == RATE  # the main rate, not the vision tower's
    assert moves["vision"] == pytest.approx(VISION_RATE, rel=1e-3)
    assert moves["language"] == pytest.approx(RATE, rel=1e-3)
    assert moves["projector"] == pytest.approx(RATE, rel=1e-3)


def test_without_part_rates_every_part_moves_by_the_one_rate(tiny_model_dir, pairs_dir, tmp_path, monkeypatch):
    moves = largest_moves(*one_step(tiny_model_dir, pairs_dir, tmp_path / "run", monkeypatch))
    for part in ("vision", "projector", "language"):
        assert moves[part] == pytest.approx(RATE, rel=1e-3), part


def test_groups_hold_every_trainable_weight_once(tiny_model_and_processor):
    model = _copy(tiny_model_and_processor[0]).requires_grad_(True)
    groups = parameter_groups(model, RATE, {"vision": VISION_RATE, "projector": 3e-3})
    assert [(g["part"], g["lr"]) for g in groups] == [("rest", RATE), ("vision", VISION_RATE), ("projector", 3e-3)]
    held = [id(p) for g in groups for p in g["params"]]
    assert sorted(held) == sorted(id(p) for p in model.parameters() if p.requires_grad)
    names = {id(p): n for n, p in model.named_parameters()}
    assert {part_of(names[id(p)]) for p in groups[1]["params"]} == {"vision"}
    assert "vision" not in {part_of(names[id(p)]) for p in groups[0]["params"]}


def test_a_rate_for_a_part_that_does_not_train_is_refused(tiny_model_and_processor):
    from vlmdpo.model.lora import apply_lora

    model, _ = tiny_model_and_processor
    policy = apply_lora(_copy(model), parts=("language",))
    with pytest.raises(ValueError, match=r"names \['vision'\], but nothing trains there: add the part to "
                                         r"model.lora_parts"):
        parameter_groups(policy, RATE, {"vision": VISION_RATE})


def _copy(model):
    import copy

    return copy.deepcopy(model)


@pytest.mark.parametrize("override", ["train.part_learning_rates.eyes=1e-4",
                                      "train.part_learning_rates.vision=0"])
def test_part_rates_are_checked_when_the_config_loads(override):
    with pytest.raises(ValueError, match="must map language/projector/vision to rates > 0"):
        load_config(None, [override])
