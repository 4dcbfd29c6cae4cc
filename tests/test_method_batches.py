"""Dense DPO's token weights and mDPO's corrupted-image batch, from the collator to the step
(``vlmdpo.methods``, ``vlmdpo.train.step.dpo_step``), on a real tiny model, both forward paths."""

import copy
import math

import pytest
import torch
from PIL import Image

from helpers import lora_policy
from vlmdpo.data.collator import PreferenceCollator
from vlmdpo.config import ConfigError, LossConfig, load_config
from vlmdpo.data.rows import normalize_row
from vlmdpo.methods import MethodCollator, build_methods
from vlmdpo.model.load import load_model_and_processor
from vlmdpo.train.step import dpo_step, policy_and_reference_logps
from vlmdpo.tiny import tiny_vlm

PAIRS = [("describe the image.", "a red circle and a blue square.", "a red circle and a green square."),
         ("what is there?", "two small stars.", "two small stars and a big dog.")]


@pytest.fixture(scope="module", params=["llava", "qwen2_vl"])
def built(request):
    model, processor = load_model_and_processor(tiny_vlm(request.param))
    return model.eval(), processor


def rows():
    # gradients, not flat colours: a crop of a flat image is the same image
    images = [Image.linear_gradient("L").convert("RGB").resize(size) for size in ((40, 32), (32, 48))]
    return [{**normalize_row({"images": [image], "prompt": [{"role": "user", "content": [
        {"type": "image"}, {"type": "text", "text": prompt}]}], "chosen": chosen, "rejected": rejected}, i),
        "index": i} for i, (image, (prompt, chosen, rejected)) in enumerate(zip(images, PAIRS))]


def weighted_words(batch, tokenizer, field, row):
    ids, weights = batch[f"{field}_input_ids"][row], batch[f"{field}_token_weights"][row]
    return tokenizer.decode(ids[weights > 1]).split()


def test_dense_weights_fall_on_the_changed_words(built):
    _, processor = built
    batch = MethodCollator(PreferenceCollator(processor), build_methods(LossConfig(dense_gamma=5.0)))(rows())
    tokenizer = processor.tokenizer
    assert weighted_words(batch, tokenizer, "chosen", 0) == ["blue"]
    assert weighted_words(batch, tokenizer, "rejected", 0) == ["green"]
    assert weighted_words(batch, tokenizer, "chosen", 1) == ["stars."]
    assert weighted_words(batch, tokenizer, "rejected", 1) == ["stars", "and", "a", "big", "dog."]
    assert set(batch["chosen_token_weights"].unique().tolist()) == {1.0, 5.0}


@pytest.mark.parametrize("path", ["plain", "fast"])
def test_dense_logps_are_the_weighted_sums_and_gamma_one_is_dpo(built, path):
    model, processor = built
    policy = lora_policy(copy.deepcopy(model))
    pad = processor.tokenizer.pad_token_id
    collate = PreferenceCollator(processor)
    dense = MethodCollator(collate, build_methods(LossConfig(dense_gamma=5.0)))(rows())
    plain_batch = collate(rows())
    policy_out, _ = policy_and_reference_logps(policy, None, plain_batch, pad, path, with_reference=False)
    per_token, size = policy_out["per_token_logps"], len(rows())
    for normalize in (False, True):
        loss_config = LossConfig(dense_gamma=5.0, dense_normalize=normalize)
        _, metrics = dpo_step(policy, None, dense, loss_config, pad_token_id=pad, forward_path=path)
        for i, field in enumerate(("chosen", "rejected")):
            width = dense[f"{field}_token_weights"].shape[1]
            weights = dense[f"{field}_token_weights"] * dense[f"{field}_completion_mask"]
            sums = (per_token[i * size:(i + 1) * size, :width] * weights).sum(1)
            expected = sums / weights.sum(1) if normalize else sums
            key = "logps/chosen" if field == "chosen" else "logps/rejected"
            torch.testing.assert_close(metrics[key], expected.mean(), rtol=1e-5, atol=1e-5)
    # gamma = 1 without normalisation is plain DPO: the same loss as a batch without weights
    ones = {**dense, "chosen_token_weights": torch.ones_like(dense["chosen_token_weights"]),
            "rejected_token_weights": torch.ones_like(dense["rejected_token_weights"])}
    with torch.no_grad():
        weighted, _ = dpo_step(policy, None, ones, LossConfig(dense_gamma=5.0, dense_normalize=False),
                               pad_token_id=pad, forward_path=path)
        plain, _ = dpo_step(policy, None, plain_batch, LossConfig(), pad_token_id=pad, forward_path=path)
    torch.testing.assert_close(weighted, plain, rtol=1e-6, atol=1e-6)


def test_corrupted_batch_keeps_the_tokens_and_changes_the_pixels(built):
    _, processor = built
    batch = MethodCollator(PreferenceCollator(processor), build_methods(LossConfig(losses="mdpo"), 3))(
        rows())
    corrupted = batch["corrupted"]
    assert "rejected_input_ids" not in corrupted
    assert torch.equal(corrupted["chosen_input_ids"], batch["chosen_input_ids"])
    assert torch.equal(corrupted["prompt_input_ids"], batch["prompt_input_ids"])  # same image-token count
    assert not torch.equal(corrupted["vision_inputs"]["pixel_values"], batch["vision_inputs"]["pixel_values"])
    again = MethodCollator(PreferenceCollator(processor), build_methods(LossConfig(losses="mdpo"), 3))(
        rows())
    assert torch.equal(again["corrupted"]["vision_inputs"]["pixel_values"], corrupted["vision_inputs"]["pixel_values"])


def test_mdpo_step_on_both_paths_and_no_signal_from_an_uncorrupted_image(built):
    model, processor = built
    policy = lora_policy(copy.deepcopy(model))
    pad = processor.tokenizer.pad_token_id
    config = LossConfig(losses="mdpo")
    batch = MethodCollator(PreferenceCollator(processor), build_methods(config))(rows())
    losses = {}
    for path in ("plain", "fast"):
        loss, metrics = dpo_step(policy, None, batch, config, pad_token_id=pad, forward_path=path)
        assert torch.isfinite(loss) and {"loss/sigmoid", "loss/mdpo_conditional", "loss/mdpo_anchor"} <= set(metrics)
        losses[path] = metrics
    for key in ("loss/sigmoid", "loss/mdpo_conditional", "loss/mdpo_anchor"):
        torch.testing.assert_close(losses["fast"][key], losses["plain"][key], rtol=1e-5, atol=1e-5)
    # the "corrupted" image is the real one: the conditional term is ln 2 and moves no weight
    same = {**batch, "corrupted": {k: v for k, v in batch.items() if not k.startswith("rejected_")
                                   and k not in ("chosen_token_weights", "corrupted")}}
    lora = [p for n, p in policy.named_parameters() if "lora_" in n]
    loss, metrics = dpo_step(policy, None, same, LossConfig(losses="mdpo_conditional"), pad_token_id=pad)
    assert math.isclose(float(metrics["loss/mdpo_conditional"]), math.log(2), abs_tol=1e-6)
    for grad in torch.autograd.grad(loss, lora, allow_unused=True):
        assert grad is None or grad.abs().max() < 1e-6


def test_training_runs_mdpo_with_dense_weights(tmp_path):
    import datasets

    from vlmdpo.eval.metrics_log import read_metrics
    from vlmdpo.train.loop import train

    data = datasets.Dataset.from_list([{"images": [Image.new("RGB", (32, 32), (40 * i, 90, 200))],
                                        "prompt": prompt, "chosen": chosen, "rejected": rejected}
                                       for i, (prompt, chosen, rejected) in enumerate(PAIRS * 2)])
    data.save_to_disk(str(tmp_path / "pairs"))
    out = train(load_config(None, [f"model.name_or_path={tiny_vlm('llava')}", f"data.train={tmp_path / 'pairs'}",
                                   f"train.output_dir={tmp_path / 'run'}", "train.max_steps=2", "train.batch_size=2",
                                   "train.progress=false", "train.mixed_precision=no", "loss.losses=mdpo",
                                   "loss.dense_gamma=5"]))
    records = [r for r in read_metrics(out / "metrics.jsonl") if "loss" in r]
    assert len(records) == 2 and all(math.isfinite(r["loss/mdpo_conditional"]) for r in records)


def test_settings_that_cannot_work_together_are_refused():
    with pytest.raises(ConfigError, match="precompute_ref_logps"):
        load_config(None, ["loss.dense_gamma=5", "train.precompute_ref_logps=true"])
    with pytest.raises(ConfigError, match="loss.corruption must be one of"):
        load_config(None, ["loss.corruption=blur"])
    with pytest.raises(ConfigError, match="dense_gamma must be > 0"):
        load_config(None, ["loss.dense_gamma=0"])


def test_a_row_without_an_image_stops_mdpo_before_training(tmp_path):
    import datasets

    from vlmdpo.train.loop import train
    from vlmdpo.data.validate import BadRowsError

    image = Image.linear_gradient("L").convert("RGB").resize((32, 32))
    data = datasets.Dataset.from_list([
        {"images": [image], "prompt": "describe the image.", "chosen": "a square.", "rejected": "a dog."},
        {"images": [], "prompt": "is the sky blue?", "chosen": "yes.", "rejected": "no."}])
    data.save_to_disk(str(tmp_path / "pairs"))
    with pytest.raises(BadRowsError, match="row 1.*no image.*mdpo_conditional"):
        train(load_config(None, [f"model.name_or_path={tiny_vlm('llava')}", f"data.train={tmp_path / 'pairs'}",
                                 f"train.output_dir={tmp_path / 'run'}", "train.max_steps=1", "train.progress=false",
                                 "loss.losses=mdpo"]))
    assert not list((tmp_path / "run").glob("checkpoint-*"))


def test_a_corrupted_images_column_is_what_the_conditional_term_sees(built):
    """Pairs built ahead of training (``conditional_pairs``) carry their own corruptions; the trainer uses them
    rather than corrupting again, and a row with the wrong number of them is refused by name."""
    import datasets

    from data_recipes.pair_builders import conditional_pairs
    from vlmdpo.data.rows import DataError, PreferenceDataset

    _, processor = built
    source = datasets.Dataset.from_list([{"images": row["images"], "prompt": PAIRS[i][0], "chosen": PAIRS[i][1],
                                          "rejected": PAIRS[i][2]} for i, row in enumerate(rows())])
    pairs = PreferenceDataset(conditional_pairs(source, method="noise", seed=5))
    loaded = [pairs[i] for i in range(len(pairs))]
    collate = PreferenceCollator(processor)
    batch = MethodCollator(collate, build_methods(LossConfig(losses="mdpo")))(loaded)
    given = collate([{k: v for k, v in {**row, "images": row["corrupted_images"]}.items()
                      if k not in ("rejected", "corrupted_images")} for row in loaded])
    assert torch.equal(batch["corrupted"]["vision_inputs"]["pixel_values"], given["vision_inputs"]["pixel_values"])
    on_the_fly = MethodCollator(collate, build_methods(LossConfig(losses="mdpo")))(
        [{k: v for k, v in row.items() if k != "corrupted_images"} for row in loaded])
    assert not torch.equal(on_the_fly["corrupted"]["vision_inputs"]["pixel_values"],
                           given["vision_inputs"]["pixel_values"])
    short = source.add_column("corrupted_images", [[], []])
    with pytest.raises(DataError, match="row 0.*corrupted_images.*0 corrupted images for 1"):
        PreferenceDataset(short)[0]
