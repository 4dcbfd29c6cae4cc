"""mDPO's conditional and anchor losses (arXiv:2406.11839): values worked out by hand, then a real tiny
Qwen2-VL with LoRA whose conditional term gives no gradient when the "corrupted" image is the real one.

Identities used below, with s the sigmoid:
    -log s(0) = ln 2 = 0.693147,  -log s(ln 3) = ln(4/3) = 0.287682,  -log s(-ln 3) = ln 4 = 1.386294
conditional: x = beta * ((pi_c - ref_c) - (pi_c' - ref_c')), loss -log s(x)
anchor:      x = beta * (pi_c - ref_c) - margin,             loss -log s(x)
"""

import math

import numpy as np
import pytest
import torch

from vlmdpo.data.collator import PreferenceCollator
from PIL import Image, ImageDraw

from vlmdpo.methods.corrupt import CORRUPTIONS, add_noise, corrupt_image, corrupt_row_images, crop_resize, mask_patches
from vlmdpo.forward.logps import completion_logps
from vlmdpo.config import LossConfig
from vlmdpo.methods import LOSSES, MDPO, build_methods, combined_loss
from vlmdpo.methods.mdpo import CorruptedImages

from helpers import LONGER, ONE_IMAGE, lora_policy, rows_from

LN2, LN3, LN4_3, LN4 = math.log(2), math.log(3), math.log(4 / 3), math.log(4)


def t(*values):
    return torch.tensor(values, dtype=torch.float32)


def check(actual, expected):
    torch.testing.assert_close(actual, torch.as_tensor(expected, dtype=torch.float32), rtol=1e-5, atol=1e-6)


def chosen_ratio_ln3():
    """pi_c, pi_r, ref_c, ref_r with chosen_logratio = ln 3 and rejected_logratio = 0 (so h = ln 3)."""
    return t(-1.0), t(-2.0), t(-1.0 - LN3), t(-2.0)


def corrupted(policy, ref):
    return {"policy_corrupted_chosen_logps": t(policy), "ref_corrupted_chosen_logps": t(ref)}


# --- hand-worked values ------------------------------------------------------------------------------

def test_conditional_real_image_ln3_above_corrupted():
    # chosen logratio ln 3, corrupted logratio (-2) - (-2) = 0: x = ln 3, loss -log s(ln 3) = ln(4/3)
    check(LOSSES["mdpo_conditional"](*chosen_ratio_ln3(), beta=1.0, **corrupted(-2.0, -2.0)), [LN4_3])


def test_conditional_corrupted_image_ln3_above_real():
    # chosen logratio ln 3, corrupted logratio (-1) - (-1 - 2 ln 3) = 2 ln 3: x = -ln 3, loss ln 4
    check(LOSSES["mdpo_conditional"](*chosen_ratio_ln3(), beta=1.0, **corrupted(-1.0, -1.0 - 2 * LN3)), [LN4])


def test_conditional_beta_scales_the_logratio_difference():
    # beta = 0.5 on a difference of 2 ln 3: x = ln 3, loss ln(4/3); the rejected log-probs are ignored
    pc, _, rc, _ = chosen_ratio_ln3()
    out = LOSSES["mdpo_conditional"](pc, t(-50.0), rc - LN3, t(7.0), beta=0.5, **corrupted(-3.0, -3.0))
    check(out, [LN4_3])


def test_conditional_equal_images_is_ln2_whatever_the_chosen_logratio():
    # the corrupted log-probs equal the real ones: x = 0, loss ln 2
    pc, pr, rc, rr = t(-4.0, -9.0), t(-5.0, -1.0), t(-6.0, -2.0), t(-5.0, -1.0)
    check(LOSSES["mdpo_conditional"](pc, pr, rc, rr, beta=0.7, policy_corrupted_chosen_logps=pc,
                                     ref_corrupted_chosen_logps=rc), [LN2, LN2])


@pytest.mark.parametrize("missing", ["policy_corrupted_chosen_logps", "ref_corrupted_chosen_logps"])
def test_conditional_without_corrupted_logps_says_what_it_needs(missing):
    extra = corrupted(-2.0, -2.0)
    del extra[missing]
    with pytest.raises(ValueError, match="policy_corrupted_chosen_logps and ref_corrupted_chosen_logps"):
        LOSSES["mdpo_conditional"](*chosen_ratio_ln3(), beta=1.0, **extra)


def test_anchor_values():
    inputs = chosen_ratio_ln3()
    check(LOSSES["mdpo_anchor"](*inputs, beta=1.0), [LN4_3])  # x = ln 3, default margin 0
    check(LOSSES["mdpo_anchor"](*inputs, beta=1.0, anchor_margin=LN3), [LN2])  # x = ln 3 - ln 3 = 0
    check(LOSSES["mdpo_anchor"](*inputs, beta=0.5, anchor_margin=-0.5 * LN3), [LN4_3])  # x = ln3/2 + ln3/2
    # pi_c below ref_c by ln 3: x = -ln 3, loss ln 4, whatever the rejected response does
    check(LOSSES["mdpo_anchor"](t(-2.0), t(100.0), t(-2.0 + LN3), t(-100.0), beta=1.0), [LN4])


def test_losses_are_float32_per_pair_from_bfloat16():
    pc, pr, rc, rr = (x.repeat(3).to(torch.bfloat16) for x in chosen_ratio_ln3())
    extra = {k: v.repeat(3).to(torch.bfloat16) for k, v in corrupted(-2.0, -2.0).items()}
    for name in ("mdpo_conditional", "mdpo_anchor"):
        out = LOSSES[name](pc, pr, rc, rr, beta=0.1, **(extra if name == "mdpo_conditional" else {}))
        assert out.shape == (3,) and out.dtype == torch.float32


def test_mdpo_preset_sums_three_terms():
    # sigmoid h = ln 3 -> ln(4/3); conditional x = ln 3 -> ln(4/3); anchor x = ln 3 -> ln(4/3): total 3 ln(4/3)
    total, parts = combined_loss(MDPO, *chosen_ratio_ln3(), beta=1.0, **corrupted(-2.0, -2.0))
    check(total, 3 * LN4_3)
    assert set(parts) == {"sigmoid", "mdpo_conditional", "mdpo_anchor"}
    for value in parts.values():
        check(value, LN4_3)


def test_registry_says_what_the_terms_read():
    assert not LOSSES["mdpo_conditional"].rejected and not LOSSES["mdpo_anchor"].rejected
    assert LOSSES["mdpo_conditional"].reference and LOSSES["mdpo_anchor"].reference
    # only the conditional term brings the corrupted-image pass
    assert [type(m) for m in build_methods(LossConfig(losses="mdpo"))] == [CorruptedImages]
    assert build_methods(LossConfig(losses="sigmoid+mdpo_anchor")) == []
    assert LossConfig(losses="mdpo").responses == ("chosen", "rejected")
    assert LossConfig(losses="mdpo_conditional+mdpo_anchor").responses == ("chosen",)


# --- a real tiny model: the conditional term has no gradient when the images are equal ---------------

@pytest.fixture(scope="module")
def policy_and_collator():
    from vlmdpo.model.load import load_model_and_processor
    from vlmdpo.tiny import tiny_vlm

    model, processor = load_model_and_processor(tiny_vlm("qwen2_vl"))  # our own copy: LoRA wraps it in place
    policy = lora_policy(model, seed=3).eval()  # eval: no dropout, so two forwards of one batch agree
    return policy, PreferenceCollator(processor), processor.tokenizer.pad_token_id


@pytest.fixture(scope="module")
def rows(images):
    return rows_from(images, [ONE_IMAGE, LONGER[0]])


def policy_and_ref_logps(policy, batch, pad):
    policy_out = completion_logps(policy, batch, pad)
    with torch.no_grad(), policy.disable_adapter():
        ref_out = completion_logps(policy, batch, pad)
    return policy_out, ref_out


def lora_grads(policy):
    return {name: p.grad.clone() for name, p in policy.named_parameters() if p.requires_grad and p.grad is not None}


def backward_grads(policy, loss):
    policy.zero_grad(set_to_none=True)
    loss.backward()
    grads = lora_grads(policy)
    assert grads and len(grads) == sum(p.requires_grad for p in policy.parameters())
    return grads


def mdpo_inputs(policy, collator, pad, rows, corrupted_rows):
    real, real_ref = policy_and_ref_logps(policy, collator(rows), pad)
    corrupt, corrupt_ref = policy_and_ref_logps(policy, collator(corrupted_rows), pad)
    logps = (real["chosen_logps"], real["rejected_logps"], real_ref["chosen_logps"], real_ref["rejected_logps"])
    extra = {"policy_corrupted_chosen_logps": corrupt["chosen_logps"],
             "ref_corrupted_chosen_logps": corrupt_ref["chosen_logps"]}
    return logps, extra


def test_conditional_has_zero_gradient_when_corrupted_image_is_the_real_one(policy_and_collator, rows):
    policy, collator, pad = policy_and_collator
    same = [dict(row) for row in rows]  # the "corrupted" images are the real ones
    logps, extra = mdpo_inputs(policy, collator, pad, rows, same)
    torch.testing.assert_close(extra["policy_corrupted_chosen_logps"], logps[0], rtol=0, atol=0)
    conditional = LOSSES["mdpo_conditional"](*logps, beta=0.1, **extra)
    check(conditional.detach(), [LN2, LN2])
    grads = backward_grads(policy, conditional.mean())
    assert all(torch.count_nonzero(g) == 0 for g in grads.values())


def test_combined_with_dpo_the_conditional_term_adds_nothing_for_equal_images(policy_and_collator, rows):
    policy, collator, pad = policy_and_collator
    logps, extra = mdpo_inputs(policy, collator, pad, rows, [dict(row) for row in rows])
    total, parts = combined_loss((("sigmoid", 1.0), ("mdpo_conditional", 1.0)), *logps, beta=0.1, **extra)
    check(parts["mdpo_conditional"], LN2)
    combined = backward_grads(policy, total)

    logps, extra = mdpo_inputs(policy, collator, pad, rows, [dict(row) for row in rows])
    dpo_only = backward_grads(policy, LOSSES["sigmoid"](*logps, beta=0.1).mean())
    assert any(torch.count_nonzero(g) > 0 for g in dpo_only.values())  # DPO itself does move the adapter
    # equal up to float32 summation order: the conditional term's two halves cancel inside the sum
    scale = max(g.abs().max().item() for g in dpo_only.values())
    for name, grad in dpo_only.items():
        torch.testing.assert_close(combined[name], grad, rtol=1e-4, atol=1e-5 * scale)


def test_conditional_has_a_gradient_with_a_really_corrupted_image(policy_and_collator, rows):
    policy, collator, pad = policy_and_collator
    corrupted_rows = [corrupt_row_images(row, "mask_patches", seed=i, fraction=0.75, patch_size=8)
                      for i, row in enumerate(rows)]
    logps, extra = mdpo_inputs(policy, collator, pad, rows, corrupted_rows)
    assert not torch.equal(extra["policy_corrupted_chosen_logps"], logps[0])
    grads = backward_grads(policy, LOSSES["mdpo_conditional"](*logps, beta=0.1, **extra).mean())
    assert any(torch.count_nonzero(g) > 0 for g in grads.values())


# --- image corruptions (vlmdpo.methods.corrupt) ---------------------------------------------------------------

SIZES = [(32, 32), (64, 32), (24, 48), (57, 91), (100, 37)]


def striped(size):
    """An image with stripes and a box: every crop, noise and mask changes its pixels."""
    image = Image.new("RGB", size, (250, 250, 250))
    draw = ImageDraw.Draw(image)
    for x in range(0, size[0], 6):
        draw.line((x, 0, x, size[1]), fill=(20, 20 + 3 * x % 200, 200), width=2)
    draw.rectangle((size[0] // 4, size[1] // 4, size[0] // 2, size[1] // 2), fill=(220, 30, 30))
    return image


CASES = [("crop_resize", {}), ("crop_resize", {"keep": (0.0, 0.2)}), ("noise", {"strength": 0.3}),
         ("mask_patches", {"fraction": 0.25, "patch_size": 8})]


@pytest.fixture(scope="module")
def qwen2_vl_image_processor():
    from transformers import AutoProcessor

    from vlmdpo.tiny import tiny_vlm

    return AutoProcessor.from_pretrained(tiny_vlm("qwen2_vl")).image_processor


@pytest.mark.parametrize("method, options", CASES)
def test_corruption_keeps_qwen2_vl_image_tokens(qwen2_vl_image_processor, method, options):
    # Qwen2-VL resizes to a multiple of patch * merge near the input size: same size, same grid
    merge = qwen2_vl_image_processor.merge_size
    for size in SIZES:
        image = striped(size)
        out = corrupt_image(image, method, seed="row-7", **options)
        assert out.size == image.size and out.mode == "RGB"
        real = qwen2_vl_image_processor(images=[image], return_tensors="pt")
        fake = qwen2_vl_image_processor(images=[out], return_tensors="pt")
        assert torch.equal(real["image_grid_thw"], fake["image_grid_thw"])
        assert real["image_grid_thw"].prod() // merge ** 2 == fake["image_grid_thw"].prod() // merge ** 2
        assert real["pixel_values"].shape == fake["pixel_values"].shape
        assert not torch.equal(real["pixel_values"], fake["pixel_values"])


@pytest.mark.parametrize("method, options", CASES)
def test_corruption_is_deterministic_given_the_seed(method, options):
    image = striped((57, 91))
    state = torch.random.get_rng_state()
    first = corrupt_image(image, method, seed=3, **options)
    assert torch.equal(torch.random.get_rng_state(), state)  # the global RNG is not touched
    assert first.tobytes() == corrupt_image(image, method, seed=3, **options).tobytes()
    assert first.tobytes() != image.tobytes()
    others = {corrupt_image(image, method, seed=s, **options).tobytes() for s in range(4, 8)}
    assert others - {first.tobytes()}


def test_crop_resize_keeps_the_asked_area():
    # a 100 x 100 image of distinct pixel values: the crop's area fraction is the kept fraction
    image = Image.new("RGB", (100, 100))
    image.putdata([(x, y, 0) for y in range(100) for x in range(100)])
    for seed in range(5):
        pixels = np.asarray(crop_resize(image, keep=(0.25, 0.25), seed=seed)).astype(int)
        xs, ys = pixels[..., 0], pixels[..., 1]
        # a 50 x 50 window (sqrt(0.25) of each side), resampled back to 100 x 100
        assert 45 <= xs.max() - xs.min() <= 52 and 45 <= ys.max() - ys.min() <= 52
    with pytest.raises(ValueError, match="keep"):
        crop_resize(image, keep=(0.6, 0.2))


def test_mask_patches_and_noise_amounts():
    image = Image.new("RGB", (32, 32), (255, 255, 255))
    out = mask_patches(image, fraction=0.25, patch_size=8, seed=0)  # 16 cells, 4 painted black
    assert (np.asarray(out) == 0).all(axis=-1).sum() == 4 * 64
    assert add_noise(image, strength=0.0, seed=0).tobytes() == image.tobytes()
    assert add_noise(image, strength=1.0, seed=0).tobytes() != image.tobytes()
    with pytest.raises(ValueError, match="strength"):
        add_noise(image, strength=1.5)
    with pytest.raises(ValueError, match="unknown corruption"):
        corrupt_image(image, "blur")
    assert set(CORRUPTIONS) == {"crop_resize", "noise", "mask_patches"}


def test_corrupt_row_images_corrupts_each_image_of_a_row_on_its_own():
    row = {"images": [striped((40, 40)), striped((40, 40))], "prompt": [], "chosen": []}
    out = corrupt_row_images(row, "mask_patches", seed=1, fraction=0.5, patch_size=8)
    assert out["prompt"] is row["prompt"] and len(out["images"]) == 2
    assert out["images"][0].tobytes() != out["images"][1].tobytes()  # seeds "1:0" and "1:1"
    assert row["images"][0].tobytes() == striped((40, 40)).tobytes()  # the input row is not changed
