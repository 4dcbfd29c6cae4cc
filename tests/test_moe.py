"""Mixture-of-experts VLMs (tiny Qwen3-VL-MoE: 4 experts, top 2; tiny GLM-4.5V: a dense layer, then 4 routed
experts, top 2, and a shared expert; tiny Qwen3.5-MoE: 4 experts, top 2, and a gated shared expert in every layer;
tiny ERNIE 4.5 VL: a dense layer, then 4 text and 4 vision experts, top 2, and shared experts): LoRA never wraps a
router, ``experts`` puts LoRA on the fused expert weights (and only there), the fast path stays exact with it (or is
refused for the reason the family matrix states), and the routers' load-balancing loss joins the training loss
when, and only when, the routers train."""

import copy

import pytest
import torch
from helpers import assert_fast_path_equals_plain, lora_policy
from test_families import matrix_rows

from vlmdpo.config import LossConfig, ModelConfig
from vlmdpo.data.collator import PreferenceCollator
from vlmdpo.forward.fast import fast_path_problem
from vlmdpo.forward.logps import concatenated_inputs
from vlmdpo.model.load import load_model_and_processor
from vlmdpo.model.lora import apply_lora
from vlmdpo.model.routers import router_loss_coefficient, router_modules
from vlmdpo.tiny.models import tiny_vlm
from vlmdpo.tiny.support import TESTED_FAMILIES
from vlmdpo.train.step import dpo_step

LANGUAGE_MLPS = {f"{layer}.mlp.{kind}_proj" for layer in (0, 1) for kind in ("gate", "up", "down")}
# family -> (its experts modules, its router_aux_loss_coef, what `language` LoRA adapts in its layers besides attention)
MOE_FAMILIES = {
    "qwen3_vl_moe": (2, 1e-3, set()),  # every layer sparse: attention only
    "glm4v_moe": (1, 1e-4, {name.replace("1.mlp.", "1.mlp.shared_experts.") for name in LANGUAGE_MLPS}),
    "qwen3_5_moe": (2, 1e-3, {name.replace(".mlp.", ".mlp.shared_expert.") for name in LANGUAGE_MLPS}
                    | {"0.mlp.shared_expert_gate", "1.mlp.shared_expert_gate"}),  # the shared expert's scalar gate
    "ernie4_5_vl_moe": (2, 1e-3, {name.replace("1.mlp.", "1.mlp.shared_experts.") for name in LANGUAGE_MLPS}),
}  # (ERNIE's 2 experts modules: the text and the vision experts of its one sparse layer)
ROUTER_PART = "loss/router_load_balancing"


@pytest.fixture(scope="module", params=list(MOE_FAMILIES))
def built(request, vlmdpo_cache):
    model, processor = load_model_and_processor(tiny_vlm(request.param))
    model.requires_grad_(False)
    batch = PreferenceCollator(processor)(matrix_rows())
    return request.param, model.eval(), processor, batch


def adapted_names(policy, marker="lora_A"):
    """The base model's names of the modules and parameters LoRA adapts (``...experts`` for fused experts)."""
    names = set()
    for name, _ in policy.named_parameters():
        if marker in name:
            names.add(name.split(f".{marker}")[0].replace("base_model.model.", "").replace(".base_layer", ""))
    return names


def test_lora_never_wraps_a_router_and_experts_only_when_asked(built):
    family, model, _, _ = built
    routers = {name for name, module in model.named_modules() if module in router_modules(model)}
    assert routers and all(name.rsplit(".", 1)[-1] == "gate" for name in routers), routers
    for parts in (("language",), ("language", "projector", "vision", "experts"), ("experts",)):
        policy = apply_lora(copy.deepcopy(model), r=4, alpha=8, parts=parts)
        adapted = adapted_names(policy)
        assert not any(name.startswith(tuple(routers)) for name in adapted), (family, parts, adapted)
        assert not any("lora_" in name for router in router_modules(policy) for name, _ in router.named_parameters())
        experts = {name for name in adapted if name.rsplit(".", 1)[-1] == "experts"}
        assert bool(experts) == ("experts" in parts), (family, parts, experts)
        if "experts" in parts:  # every MoE layer's experts, one rank-4 update per expert (peft's num_experts)
            assert len(experts) == MOE_FAMILIES[family][0]
            shapes = {tuple(p.shape) for n, p in policy.named_parameters() if ".experts." in n and "lora_A" in n}
            fused = {(4 * 4, p.shape[-1]) for n, p in model.named_parameters() if ".experts." in n}  # (4, out, in)
            assert shapes == fused, shapes
    language = adapted_names(apply_lora(copy.deepcopy(model), r=4, alpha=8))
    # dense MLPs and shared experts are language: kept where peft would move them
    others = {name.split("layers.")[1] for name in language if not {"self_attn", "linear_attn"} & set(name.split("."))}
    assert others == MOE_FAMILIES[family][2], others


def test_expert_lora_trains_and_base_and_router_weights_do_not(built):
    family, model, processor, batch = built
    model = copy.deepcopy(model)
    base = {name: value.clone() for name, value in model.state_dict().items()}
    policy = lora_policy(model, parts=("language", "experts"), seed=3)
    expert_lora = {n: p.detach().clone() for n, p in policy.named_parameters() if ".experts." in n and "lora_" in n}
    assert len(expert_lora) == 4 * MOE_FAMILIES[family][0]  # A and B of gate_up and down
    optimizer = torch.optim.AdamW([p for p in policy.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(2):
        loss, metrics = dpo_step(policy, None, batch, LossConfig(), pad_token_id=processor.tokenizer.pad_token_id)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        assert ROUTER_PART not in metrics  # LoRA leaves the routers frozen: no load-balancing term
    for name, before in expert_lora.items():
        assert not torch.equal(dict(policy.named_parameters())[name], before), f"{family}: {name} did not train"
    after = {name.replace(".base_layer", ""): value for name, value in policy.get_base_model().state_dict().items()
             if "lora_" not in name}
    fused = [name for name in base if name.endswith(("experts.gate_up_proj", "experts.down_proj", "mlp.gate.weight"))]
    assert fused and all(torch.equal(after[name], base[name]) for name in fused)
    assert all(torch.equal(after[name], value) for name, value in base.items() if name in after)


def test_fast_path_equals_plain_with_expert_lora(built):
    family, model, processor, batch = built
    policy = lora_policy(copy.deepcopy(model), parts=("language", "experts"), seed=1)
    refused = TESTED_FAMILIES[family][1]  # the reason the family matrix states (Qwen3.5-MoE's linear attention)
    if refused is not None:
        assert fast_path_problem(policy, batch).startswith(refused)
        return
    assert_fast_path_equals_plain(policy, batch, processor.tokenizer.pad_token_id)


def routing_on(model, on: bool = True):
    model.config.get_text_config().output_router_logits = on
    return model


def test_load_balancing_joins_the_loss_when_the_routers_train(built):
    family, model, processor, batch = built
    pad = processor.tokenizer.pad_token_id
    full = routing_on(copy.deepcopy(model)).requires_grad_(True)  # full fine-tuning: the routers train
    reference = copy.deepcopy(model).requires_grad_(False)
    coefficient = MOE_FAMILIES[family][1]  # the family's own router_aux_loss_coef
    assert router_loss_coefficient(full) == coefficient
    loss, metrics = dpo_step(full, reference, batch, LossConfig(), pad_token_id=pad, forward_path="plain")
    term = metrics[ROUTER_PART]
    torch.testing.assert_close(loss.detach(), metrics["loss/sigmoid"] + term, rtol=0, atol=1e-7)
    # the same number as the model's own aux_loss on that forward (attention mask, every layer's router)
    inputs = concatenated_inputs(batch, pad)["model_inputs"]
    with torch.no_grad():
        own = full(**inputs, use_cache=False).aux_loss
    torch.testing.assert_close(term, coefficient * own, rtol=1e-5, atol=0)
    # 4 experts, top 2: a perfectly balanced router scores top_k = 2 (Switch Transformer's minimum, times k)
    assert 2.0 <= float(own) < 2.5, float(own)
    loss.backward()
    router_grads = [router.weight.grad for router in router_modules(full)]
    assert all(g is not None and g.abs().sum() > 0 for g in router_grads)
    if TESTED_FAMILIES[family][1] is not None:  # no fast path for this family
        return
    # the packed fast path logs it too (its own tokens: each prompt once)
    _, fast = dpo_step(full, reference, batch, LossConfig(), pad_token_id=pad, forward_path="fast")
    assert 2.0 * coefficient <= float(fast[ROUTER_PART]) < 2.5 * coefficient


def test_no_load_balancing_term_when_the_routers_are_frozen_or_not_asked(built):
    _, model, processor, batch = built
    pad = processor.tokenizer.pad_token_id
    policy = lora_policy(routing_on(copy.deepcopy(model)), seed=2)  # routers frozen under LoRA
    assert router_loss_coefficient(policy.get_base_model()) == 0.0
    loss_on, metrics = dpo_step(policy, None, batch, LossConfig(), pad_token_id=pad)
    assert ROUTER_PART not in metrics
    routing_on(policy.get_base_model(), False)
    loss_off, _ = dpo_step(policy, None, batch, LossConfig(), pad_token_id=pad)
    assert torch.equal(loss_on, loss_off)
    full = copy.deepcopy(model).requires_grad_(True)  # routers train, but the config asks for no router logits
    assert router_loss_coefficient(full) == 0.0


def test_experts_is_refused_where_it_cannot_apply(built, vlmdpo_cache):
    _, model, _, _ = built
    with pytest.raises(ValueError, match="lora_dropout=0.1 cannot apply to .*experts.*Set model.lora_dropout=0"):
        apply_lora(copy.deepcopy(model), r=4, dropout=0.1, parts=("language", "experts"))
    dense, _ = load_model_and_processor(tiny_vlm("llava"))
    with pytest.raises(ValueError, match="has no routed experts in its language model"):
        apply_lora(dense, r=4, parts=("language", "experts"))


def test_lora_parts_accepts_experts_and_names_the_choices():
    assert ModelConfig(lora_parts=["language", "experts"]).lora_parts == ["language", "experts"]
    with pytest.raises(ValueError, match="unknown parts \\['expert'\\]; use language/projector/vision/experts"):
        ModelConfig(lora_parts=["expert"])


# --- model.router_aux_loss_coef ----------------------------------------------------------------------------------

@pytest.mark.parametrize("settings, words", [
    ({"router_aux_loss_coef": 0.01}, "applies when the routers train .model.finetune=full."),
    ({"router_aux_loss_coef": -1.0, "finetune": "full"}, "must be >= 0"),
])
def test_router_aux_loss_coef_is_checked_when_the_config_loads(settings, words):
    with pytest.raises(ValueError, match=words):
        ModelConfig(**settings)


def test_vlmdpo_train_adds_the_load_balancing_term_when_asked(vlmdpo_cache, tmp_path):
    """Full fine-tuning of tiny Qwen3-VL-MoE through ``vlmdpo train``: with ``model.router_aux_loss_coef`` the term
    is logged and weighed by it; without, the checkpoint's settings (router logits off) leave it out."""
    import json

    from PIL import Image

    from vlmdpo.config import load_config
    from vlmdpo.train.loop import train

    (tmp_path / "red.png").write_bytes(b"")
    Image.new("RGB", (32, 32), (200, 30, 30)).save(tmp_path / "red.png")
    rows = [{"images": ["red.png"], "prompt": f"what colour is shape {i}?", "chosen": "red.", "rejected": "blue."}
            for i in range(4)]
    (tmp_path / "pairs.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    logged = {}
    for coefficient in (None, 0.01):
        out = tmp_path / f"run-{coefficient}"
        extra = [] if coefficient is None else [f"model.router_aux_loss_coef={coefficient}"]
        train(load_config(None, [f"model.name_or_path={tiny_vlm('qwen3_vl_moe')}", "model.finetune=full",
                                 f"data.train={tmp_path / 'pairs.jsonl'}", f"train.output_dir={out}",
                                 "train.batch_size=2", "train.max_steps=1", "train.progress=false",
                                 "train.mixed_precision=no", *extra]))
        logged[coefficient] = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()][0]
    assert ROUTER_PART not in logged[None]
    # 4 experts, top 2: the term is at least top_k = 2 times the coefficient, and near it for a near-balanced router
    assert 0.01 * 2 <= logged[0.01][ROUTER_PART] < 0.01 * 2.5, logged[0.01]


def test_generation_runs_with_router_logits_on(built):
    from vlmdpo.eval.generation import generate_responses

    family, model, processor, _ = built
    rows = matrix_rows()[:2]
    off = generate_responses(model, processor, rows, max_new_tokens=4, progress=False)
    on = generate_responses(routing_on(copy.deepcopy(model)), processor, rows, max_new_tokens=4, progress=False)
    assert on == off, family
