"""Precomputed reference log-probs: the same training as with a reference pass per step, cached on disk under
a key that changes with the data, the reference weights, the processor and the settings."""

import json

import pytest
import torch

from data_recipes.shapes import build_shapes_dataset, povid_pairs
from vlmdpo.config import load_config
from vlmdpo.model.load import load_model_and_processor
from vlmdpo.model.lora import apply_lora
from vlmdpo.train.reference_cache import (
    ReferenceLogps, cache_key, processor_fingerprint, weights_fingerprint,
)
from vlmdpo.train.loop import train

STEPS = 2


@pytest.fixture(scope="module")
def pairs_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ref_pairs") / "povid"
    shapes = build_shapes_dataset(seed=1, num_train=8, num_test=0, image_size=32)
    povid_pairs(shapes["train"]).save_to_disk(str(folder))
    return folder


def run(model_dir, pairs_dir, output_dir, capsys, *extra):
    overrides = [f"model.name_or_path={model_dir}", f"data.train={pairs_dir}", f"train.output_dir={output_dir}",
                 f"train.max_steps={STEPS}", "train.batch_size=4", "train.learning_rate=1e-2",
                 "train.lr_scheduler=constant", "train.warmup_ratio=0", "train.progress=false",
                 "train.mixed_precision=no", *extra]  # float32 on a GPU too (bf16 there differed by 5e-5)
    capsys.readouterr()
    train(load_config(None, overrides))
    log = capsys.readouterr().out
    records = [json.loads(line) for line in (output_dir / "metrics.jsonl").read_text().splitlines()]
    return records, log


def test_precomputed_reference_trains_the_same_and_is_cached(tiny_model_dir, pairs_dir, tmp_path, capsys):
    cache = tmp_path / "cache"
    online, _ = run(tiny_model_dir, pairs_dir, tmp_path / "online", capsys)
    first, log = run(tiny_model_dir, pairs_dir, tmp_path / "first", capsys, "train.precompute_ref_logps=true",
                     f"train.ref_cache_dir={cache}")
    assert "reference log-probs: computed for 8 pairs" in log
    files = list(cache.glob("*.pt"))
    assert len(files) == 1
    for ours, theirs in zip(first, online):
        for key in ("loss", "rewards/chosen", "rewards/rejected", "logps/chosen"):
            assert ours[key] == pytest.approx(theirs[key], rel=1e-5, abs=1e-6), key

    again, log = run(tiny_model_dir, pairs_dir, tmp_path / "again", capsys, "train.precompute_ref_logps=true",
                     f"train.ref_cache_dir={cache}")
    assert f"reference log-probs: loaded from {files[0]}" in log
    assert [r["loss"] for r in again] == [r["loss"] for r in first]

    # other rows (a different dataset fingerprint) or other settings: a new file, never the stale one
    _, log = run(tiny_model_dir, pairs_dir, tmp_path / "fewer", capsys, "train.precompute_ref_logps=true",
                 f"train.ref_cache_dir={cache}", "data.max_rows=4", "train.max_steps=1")
    assert "computed for 4 pairs" in log
    _, log = run(tiny_model_dir, pairs_dir, tmp_path / "shorter", capsys, "train.precompute_ref_logps=true",
                 f"train.ref_cache_dir={cache}", "data.max_response_length=4", "train.max_steps=1")
    assert "computed for 8 pairs" in log
    assert len(list(cache.glob("*.pt"))) == 3


def test_weights_fingerprint_follows_the_reference_weights_only(tiny_model_dir):
    model, _ = load_model_and_processor(tiny_model_dir)
    before = weights_fingerprint(model)
    policy = apply_lora(model, r=4)
    with torch.no_grad():
        for name, param in policy.named_parameters():
            if "lora_B" in name:
                param.add_(1.0)  # the adapter trains: the reference (adapter disabled) is unchanged
    assert weights_fingerprint(policy) == weights_fingerprint(policy)
    lora_free = weights_fingerprint(policy)
    with torch.no_grad():
        policy.get_base_model().lm_head.weight[0, 0] += 1e-3
    assert weights_fingerprint(policy) != lora_free
    assert before != lora_free  # parameter names differ inside a peft model: a different key, never a wrong one


def test_cache_key_changes_with_every_part(tiny_model_and_processor):
    processor = tiny_model_and_processor[1]
    parts = dict(dataset_fingerprint="abc", weights="w", processor=processor_fingerprint(processor),
                 settings={"max_response_length": 256, "dtype": "float32"})
    key = cache_key(**parts)
    assert key == cache_key(**parts)
    for name, other in (("dataset_fingerprint", "abd"), ("weights", "v"), ("processor", "p"),
                        ("settings", {"max_response_length": 128, "dtype": "float32"})):
        assert cache_key(**{**parts, name: other}) != key, name


def test_lookup_by_row_index_and_round_trip(tmp_path):
    table = ReferenceLogps(torch.tensor([3, 1, 2]), torch.tensor([-1.0, -2.0, -3.0]),
                           torch.tensor([-4.0, -5.0, -6.0]))
    table.save(tmp_path / "r.pt")
    loaded = ReferenceLogps.load(tmp_path / "r.pt")
    out = loaded.lookup([2, 3])
    assert out["chosen_logps"].tolist() == [-3.0, -1.0] and out["rejected_logps"].tolist() == [-6.0, -4.0]
    with pytest.raises(KeyError, match="rows \\[7\\]"):
        loaded.lookup([1, 7])
