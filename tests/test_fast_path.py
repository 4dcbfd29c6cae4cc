"""The fast path (packed pairs, tree attention, shared image features, fused LM head) against the plain path:
the same per-sequence log-probs and loss to 1e-5 and the same LoRA gradients to 1e-4, for each tiny family,
with prompts of different lengths, multi-image rows and responses of different lengths in one batch."""

import pytest
import torch

import vlmdpo.forward.lm_head as lm_head_module
from vlmdpo.data.collator import PreferenceCollator
from vlmdpo.config import load_config
from vlmdpo.forward.fast import (
    choose_forward_path, fast_completion_logps, fast_path_problem, packed_completion_logps, shares_image_features,
)
from vlmdpo.forward.lm_head import head_logps
from vlmdpo.forward.logps import completion_logps, selective_log_softmax
from vlmdpo.model.load import load_model_and_processor
from vlmdpo.forward.packing import pack_pairs, padding_stats
from vlmdpo.train.step import dpo_step, policy_and_reference_logps

from helpers import LONGER, ONE_IMAGE, SHORT, assert_fast_path_equals_plain, lora_policy, rows_from

SPECS = [SHORT, ONE_IMAGE, *LONGER]  # 0, 1, 2 and 3 images; prompts and responses of different lengths


def close(actual, expected, tol=1e-5):
    torch.testing.assert_close(actual, expected, rtol=tol, atol=tol)


@pytest.fixture
def model_and_processor(tiny_model_dir):
    """A fresh float32 copy per test (the fast path installs its attention on the model it runs)."""
    model, processor = load_model_and_processor(tiny_model_dir)
    return model.eval(), processor


@pytest.fixture
def batch(model_and_processor, images):
    return PreferenceCollator(model_and_processor[1])(rows_from(images, SPECS))


def step(policy, batch, path, pad, **overrides):
    config = load_config(None, [f"{key}={value}" for key, value in overrides.items()])
    policy.zero_grad()
    loss, metrics = dpo_step(policy, None, batch, config.loss, pad_token_id=pad, forward_path=path)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in policy.named_parameters() if p.requires_grad}
    return loss.detach(), metrics, grads


# --- log-probs ------------------------------------------------------------------------------------

def test_logps_match_the_plain_path(model_and_processor, batch):
    model, processor = model_and_processor
    pad = processor.tokenizer.pad_token_id
    assert batch["prompt_attention_mask"].sum(1).unique().numel() >= 3  # prompts of different lengths
    assert (batch["chosen_attention_mask"].sum(1) != batch["rejected_attention_mask"].sum(1)).any()
    with torch.no_grad():
        plain = completion_logps(model, batch, pad)
        fast = fast_completion_logps(model, batch)
    assert set(fast) == set(plain)
    for key in ("chosen_logps", "rejected_logps", "per_token_logps"):
        assert fast[key].dtype == torch.float32
        close(fast[key], plain[key])
    for key in ("chosen_lengths", "rejected_lengths"):
        assert fast[key].tolist() == plain[key].tolist()


def test_each_pair_sees_only_its_own_prompt_and_images(model_and_processor, images):
    """A pair alone and packed next to three others gives the same log-probs."""
    model, processor = model_and_processor
    collator, pad = PreferenceCollator(processor), processor.tokenizer.pad_token_id
    rows = rows_from(images, SPECS)
    with torch.no_grad():
        together = fast_completion_logps(model, collator(rows))
        for i, row in enumerate(rows):
            alone = fast_completion_logps(model, collator([row]))
            for field in ("chosen", "rejected"):
                close(together[f"{field}_logps"][i: i + 1], alone[f"{field}_logps"])


def test_supervised_batch_matches(model_and_processor, images):
    model, processor = model_and_processor
    pad = processor.tokenizer.pad_token_id
    rows = [{k: v for k, v in row.items() if k != "rejected"} for row in rows_from(images, SPECS)]
    batch = PreferenceCollator(processor)(rows)
    with torch.no_grad():
        plain, fast = completion_logps(model, batch, pad), fast_completion_logps(model, batch)
    assert set(fast) == set(plain) == {"per_token_logps", "chosen_logps", "chosen_lengths"}
    close(fast["chosen_logps"], plain["chosen_logps"])


# --- loss and gradients ---------------------------------------------------------------------------

@pytest.mark.parametrize("parts", [("language",), ("language", "projector")], ids=["lm", "lm+projector"])
def test_loss_and_lora_gradients_match(model_and_processor, batch, parts):
    """With LoRA on the projector the image features differ between policy and reference: each model then
    encodes the images itself, and gradients reach the projector's adapter."""
    model, processor = model_and_processor
    pad = processor.tokenizer.pad_token_id
    policy = lora_policy(model, parts)
    assert shares_image_features(policy) == (parts == ("language",))
    plain_loss, plain_metrics, plain_grads = step(policy, batch, "plain", pad)
    fast_loss, fast_metrics, fast_grads = step(policy, batch, "fast", pad)
    with torch.no_grad():  # the adapter moves every response's log-probs clearly off the reference's
        policy_out, ref_out = policy_and_reference_logps(policy, None, batch, pad, "plain")
    moved = (policy_out["per_token_logps"] - ref_out["per_token_logps"]).abs().sum(1)
    assert (moved > 1e-2).all(), moved
    close(fast_loss, plain_loss)
    for key in ("rewards/chosen", "rewards/rejected", "logps/chosen", "logps/rejected"):
        close(fast_metrics[key], plain_metrics[key])
    assert set(fast_grads) == set(plain_grads)
    if "projector" in parts:
        assert any("multi_modal_projector" in n or "merger" in n for n in fast_grads)
    for name, grad in plain_grads.items():
        assert grad.abs().max() > 0, name
        close(fast_grads[name], grad, tol=1e-4)
    assert float(fast_metrics["padding/fraction"]) == 0.0 < float(plain_metrics["padding/fraction"])


def test_gradient_checkpointing_gives_the_same_gradients(model_and_processor, batch):
    model, processor = model_and_processor
    pad = processor.tokenizer.pad_token_id
    policy = lora_policy(model)
    loss, _, grads = step(policy, batch, "plain", pad)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.enable_input_require_grads()
    assert any(getattr(m, "gradient_checkpointing", False) for m in model.modules())
    checkpointed_loss, _, checkpointed = step(policy, batch, "fast", pad)
    close(checkpointed_loss, loss)
    for name, grad in grads.items():
        close(checkpointed[name], grad, tol=1e-4)


def test_images_are_encoded_once_per_pair_for_policy_and_reference(model_and_processor, batch):
    model, processor = model_and_processor
    pad = processor.tokenizer.pad_token_id
    policy = lora_policy(model)
    tower = next(m for n, m in model.named_modules() if n.endswith(("vision_tower", "visual")))
    encoded = []
    handle = tower.register_forward_hook(lambda module, args, kwargs_out: encoded.append(args[0].shape[0]))
    try:
        policy_and_reference_logps(policy, None, batch, pad, "fast")
        fast = list(encoded)
        encoded.clear()
        policy_and_reference_logps(policy, None, batch, pad, "plain")
    finally:
        handle.remove()
    assert len(fast) == 1  # one vision pass serves the policy and the reference
    assert sum(encoded) == 4 * sum(fast)  # the plain path: twice per forward (chosen, rejected), two forwards


# --- the LM head ----------------------------------------------------------------------------------

@pytest.mark.parametrize("slice_elements", [50, 1 << 24])
def test_head_logps_values_and_gradients(monkeypatch, slice_elements):
    monkeypatch.setattr(lm_head_module, "_SLICE_ELEMENTS", slice_elements)  # 50: 2 rows of 23 per slice
    generator = torch.Generator().manual_seed(0)
    head = torch.nn.Linear(16, 23, bias=True).requires_grad_(False)
    hidden = torch.randn(7, 16, generator=generator)
    labels = torch.randint(0, 23, (7,), generator=generator)
    weights = torch.randn(7, generator=generator)
    ours, theirs = hidden.clone().requires_grad_(), hidden.clone().requires_grad_()
    out = head_logps(ours, head, labels)
    expected = selective_log_softmax(head(theirs), labels)
    close(out, expected, tol=1e-6)
    (out * weights).sum().backward()
    (expected * weights).sum().backward()
    close(ours.grad, theirs.grad, tol=1e-6)
    with torch.no_grad():
        close(head_logps(hidden, head, labels), expected.detach(), tol=1e-6)


def test_trainable_head_gets_gradients():
    head = torch.nn.Linear(8, 11)
    hidden = torch.randn(5, 8, requires_grad=True)
    head_logps(hidden, head, torch.arange(5)).sum().backward()
    assert head.weight.grad is not None and hidden.grad is not None


# --- packing --------------------------------------------------------------------------------------

def test_packing_has_no_padding_and_scores_every_response_token(model_and_processor, batch):
    model = model_and_processor[0]
    packed = pack_pairs(model, batch)
    stats = padding_stats(batch)
    assert packed.input_ids.shape[1] == stats["packed_tokens"]
    assert stats["packed_tokens"] < stats["real_tokens"] < stats["plain_tokens"]
    prompts = int(batch["prompt_attention_mask"].sum())
    responses = sum(int(batch[f"{f}_attention_mask"].sum()) for f in ("chosen", "rejected"))
    assert stats["packed_tokens"] == prompts + responses  # each prompt once
    assert stats["real_tokens"] == 2 * prompts + responses
    assert stats["padding_fraction"] == pytest.approx(1 - stats["real_tokens"] / stats["plain_tokens"])
    scored = sum(int(batch[f"{f}_completion_mask"].sum()) for f in ("chosen", "rejected"))
    assert packed.labels.numel() == scored
    # every scored token is predicted from an earlier position of the same pair
    assert (packed.score_index < packed.input_ids.shape[1]).all()


@pytest.mark.parametrize("family", ["qwen2_vl"], indirect=True)
def test_mrope_positions_continue_after_the_images(family, model_and_processor, batch):
    """Qwen2-VL's responses take the 3-D positions its own get_rope_index gives [prompt; response]."""
    model = model_and_processor[0]
    packed = pack_pairs(model, batch)
    assert packed.position_ids.shape == (3, 1, packed.input_ids.shape[1])
    b = 3  # three images
    inputs = {"input_ids": torch.cat([batch["prompt_input_ids"], batch["chosen_input_ids"]], 1)[b:b + 1],
              "attention_mask": torch.cat([batch["prompt_attention_mask"], batch["chosen_attention_mask"]],
                                          1)[b:b + 1],
              "mm_token_type_ids": torch.nn.functional.pad(batch["prompt_token_types"]["mm_token_type_ids"],
                                                           (0, batch["chosen_input_ids"].shape[1]))[b:b + 1]}
    grid = batch["vision_inputs"]["image_grid_thw"][-3:]
    expected, _ = model.model.get_rope_index(image_grid_thw=grid, **inputs)
    expected = expected[:, 0, inputs["attention_mask"][0].bool()]
    start = packed.layout.starts[b]
    length = packed.layout.prompt_lengths[b] + packed.layout.response_lengths[b][0]
    assert torch.equal(packed.position_ids[:, 0, start:start + length], expected)


# --- choosing the path ----------------------------------------------------------------------------

def test_auto_takes_the_fast_path_and_says_so(model_and_processor, batch):
    model, processor = model_and_processor
    lines = []
    path = choose_forward_path("auto", [model], batch, processor.tokenizer.pad_token_id, lines.append)
    assert path == "fast" and lines[0].startswith("forward path: fast")
    assert choose_forward_path("plain", [model], batch, 0, lines.append) == "plain"
    assert lines[-1] == "forward path: plain (train.forward_path=plain)"


def test_unsupported_models_fall_back_with_the_reason(model_and_processor, batch):
    model, processor = model_and_processor
    model.config.get_text_config().attn_logit_softcapping = 50.0  # Gemma 2 style: tree attention does not cap
    gemma_like = batch
    assert "soft-caps" in fast_path_problem(model, gemma_like)
    lines = []
    assert choose_forward_path("auto", [model], gemma_like, 0, lines.append) == "plain"
    assert lines == [f"forward path: plain, because {fast_path_problem(model, gemma_like)}"]
    with pytest.raises(ValueError, match="forward_path=fast"):
        choose_forward_path("fast", [model], gemma_like, 0, lines.append)


def test_auto_falls_back_when_the_probe_disagrees(model_and_processor, batch, monkeypatch):
    """A model whose forward the fast path does not reproduce (here: logits scaled behind its back) is caught
    by the probe batch."""
    model, processor = model_and_processor
    head = model.get_output_embeddings()
    handle = head.register_forward_hook(lambda module, args, out: out * 2)  # the plain path sees this, fast not
    lines = []
    try:
        path = choose_forward_path("auto", [model], batch, processor.tokenizer.pad_token_id, lines.append)
    finally:
        handle.remove()
    assert path == "plain" and "probe batch" in lines[0]


# --- other set-ups --------------------------------------------------------------------------------

def test_full_finetuning_matches(model_and_processor, batch):
    """Everything trains (the head too: the autograd path of head_logps), the reference is a frozen copy."""
    from vlmdpo.model.lora import frozen_copy

    model, processor = model_and_processor
    pad = processor.tokenizer.pad_token_id
    reference = frozen_copy(model)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn(param.shape, generator=generator) * 1e-2)
    model.train().requires_grad_(True)
    config = load_config(None, ["model.finetune=full"])
    grads = {}
    for path in ("plain", "fast"):
        model.zero_grad()
        loss, _ = dpo_step(model, reference, batch, config.loss, pad_token_id=pad, forward_path=path)
        loss.backward()
        grads[path] = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    assert set(grads["fast"]) == set(grads["plain"])
    assert any("vision" in n or "visual" in n for n in grads["fast"]) and "lm_head.weight" in grads["fast"]
    for name, grad in grads["plain"].items():
        close(grads["fast"][name], grad, tol=1e-4)


def test_ddp_wrapped_model_lets_the_model_apply_its_head(model_and_processor, batch, tmp_path):
    """Under DDP the forward must go through the wrapper; the logits then come from ``logits_to_keep``."""
    import torch.distributed as dist

    model, processor = model_and_processor
    pad = processor.tokenizer.pad_token_id
    policy = lora_policy(model)
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1)
    try:
        wrapped = torch.nn.parallel.DistributedDataParallel(policy)
        packed = pack_pairs(wrapped, batch)
        out = packed_completion_logps(wrapped, packed)
        (out["chosen_logps"].sum() - out["rejected_logps"].sum()).backward()
        plain = completion_logps(policy, batch, pad)
    finally:
        dist.destroy_process_group()
    close(out["chosen_logps"].detach(), plain["chosen_logps"].detach())
    close(out["rejected_logps"].detach(), plain["rejected_logps"].detach())
    assert all(p.grad is not None for n, p in policy.named_parameters() if "lora_" in n)


@pytest.mark.parametrize("family, setting, value", [("aya_vision", "logit_scale", 4.0),
                                                    ("gemma4", "final_logit_softcapping", 1.0)])
def test_logit_transforms_are_applied_on_the_fast_path(family, setting, value, images, monkeypatch):
    """Aya Vision scales its logits, Gemma 4 soft-caps them (set here so far below the logits' range that the
    transform moves every log-prob): the fast path applies both exactly, and without them it would differ."""
    import vlmdpo.forward.fast as fast_module
    from vlmdpo.tiny import tiny_vlm

    model, processor = load_model_and_processor(tiny_vlm(family))
    setattr(model.config.get_text_config(), setting, value)
    policy = lora_policy(model.eval())
    batch = PreferenceCollator(processor)(rows_from(images, SPECS))
    assert fast_path_problem(policy, batch) is None
    # the steep cap makes gradients of order 1: compared relative to that
    plain = assert_fast_path_equals_plain(policy, batch, processor.tokenizer.pad_token_id, grad_scale="relative")
    monkeypatch.setattr(fast_module, "logit_transform", lambda config: {})
    with torch.no_grad():
        untransformed = fast_completion_logps(policy, batch)["chosen_logps"]
    assert (untransformed - plain["chosen_logps"].detach()).abs().max() > 1e-2


def test_bfloat16_autocast_agrees_with_the_plain_path_under_it(model_and_processor, batch):
    """``train.mixed_precision=bf16`` on either path is the model under bfloat16 autocast: the fast path's
    summed log-probs are float32 and agree with the plain path's under the same autocast to bfloat16 rounding
    (the paths differ by less than autocast moves either from float32), and the LoRA gradients point the same
    way."""
    model, processor = model_and_processor
    pad = processor.tokenizer.pad_token_id
    policy = lora_policy(model)
    lora = [p for n, p in policy.named_parameters() if "lora_" in n]

    def margin_and_grads(path):
        logps = (fast_completion_logps(policy, batch) if path == "fast"
                 else completion_logps(policy, batch, pad))
        margin = logps["chosen_logps"] - logps["rejected_logps"]
        return logps["chosen_logps"], torch.cat([g.flatten() for g in torch.autograd.grad(margin.sum(), lora)])

    exact, _ = margin_and_grads("plain")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        plain, plain_grads = margin_and_grads("plain")
        fast, fast_grads = margin_and_grads("fast")
    assert fast.dtype == torch.float32
    rounding = (plain - exact).abs().max()  # 3.5e-3 / 4.7e-3 here (llava / qwen2_vl); the paths: 1.4e-3 / 2.2e-3
    assert rounding > 1e-3  # autocast changed the arithmetic (in float32 the paths agree to 1e-5)
    assert (fast - plain).abs().max() < 2 * rounding
    assert torch.nn.functional.cosine_similarity(fast_grads, plain_grads, dim=0) > 0.99
