"""LD-DPO (``loss.ld_alpha``) and WPO (``loss.use_weighting``): their formulas worked by hand, equal to TRL 1.16's
own ``DPOTrainer._compute_loss`` in loss and gradient on the same per-token log-probs, the forwards' per-token
``log sum_v p_v ** 2`` equal to TRL's fused LM head's, the refusals, and a two-step training run of each.

TRL's side is its real ``_compute_loss`` on a trainer holding only the state it reads (as in
``test_trl_parity_losses``), with stand-in policy and reference forwards that return the per-token values the test
chose; vlmdpo's side is ``dpo_step`` with the forward replaced by the same per-token values.
"""

import ast
import inspect
import json
import math
import re
from collections import defaultdict
from types import SimpleNamespace

import datasets
import pytest
import torch

import vlmdpo.train.step as step_module
from vlmdpo.config import LossConfig, load_config
from vlmdpo.data.collator import PreferenceCollator
from vlmdpo.data.rows import PreferenceDataset
from vlmdpo.forward.fast import fast_completion_logps
from vlmdpo.forward.lm_head import head_log_sum_sq_probs
from vlmdpo.forward.logps import completion_logps, log_sum_sq_probs
from vlmdpo.methods import build_methods, combined_loss
from vlmdpo.methods.length_desensitised import LengthDesensitised, desensitised_logps
from vlmdpo.methods.wpo import wpo_weights

try:
    from trl.trainer.dpo_trainer import DPOConfig, DPOTrainer
except ImportError:  # TRL, the parity oracle, is in the dev extra; the formulas' own tests run without it
    DPOConfig = DPOTrainer = None
needs_trl = pytest.mark.skipif(DPOTrainer is None, reason="trl (the dev extra) is the parity oracle")
TRL_LOSSES = re.findall(r"'(\w+)'", DPOConfig.__dataclass_fields__["loss_type"].metadata["help"]) if DPOConfig else []
SMOOTHING = {"exo_pair": 1e-3, "robust": 0.1, "aot": 0.1, "aot_unpaired": 0.1}


# --- hand-worked ---------------------------------------------------------------------------------

def test_ld_logps_hand_worked():
    # pair 0: chosen 3 tokens, rejected 4 -> shared 3: rejected's 4th token counts alpha = 0.5 times.
    # pair 1: chosen has a template token first (mask 0) and 3 response tokens, rejected 2 -> shared 2: chosen's
    # third response token (-4, in column 3) counts half.
    per_token = torch.tensor([[-1.0, -2.0, -3.0, 0.0], [0.0, -1.0, -2.0, -4.0],
                              [-0.5, -1.0, -2.0, -4.0], [-1.0, -3.0, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 1, 0], [0, 1, 1, 1], [1, 1, 1, 1], [1, 1, 0, 0]])
    torch.testing.assert_close(desensitised_logps(per_token, mask, 0.5),
                               torch.tensor([-6.0, -1 - 2 - 0.5 * 4, -3.5 - 0.5 * 4, -4.0]))
    torch.testing.assert_close(desensitised_logps(per_token, mask, 1.0), (per_token * mask).sum(1))
    torch.testing.assert_close(desensitised_logps(per_token, mask, 0.0), torch.tensor([-6.0, -3.0, -3.5, -4.0]))


def test_wpo_weights_hand_worked():
    # chosen: tokens of probability 1/2 and 1/4 where sum_v p_v^2 = 1/2 -> exp((0 + ln(1/2)) / 2) = 2 ** -0.5;
    # rejected: one token of probability 0.1 where sum_v p_v^2 = 0.2 -> 0.5. The pair's weight is their product.
    log = math.log
    per_token = torch.tensor([[log(0.5), log(0.25)], [log(0.1), 0.0]])
    sum_sq = torch.tensor([[log(0.5), log(0.5)], [log(0.2), 0.0]])
    mask = torch.tensor([[1, 1], [1, 0]])
    torch.testing.assert_close(wpo_weights(per_token, sum_sq, mask), torch.tensor([2 ** -0.5 * 0.5]))
    assert not wpo_weights(per_token.requires_grad_(), sum_sq, mask).requires_grad  # a constant, as in TRL


def test_log_sum_sq_probs_hand_worked():
    # softmax([0, ln 3]) = (1/4, 3/4): sum of squares 1/16 + 9/16 = 5/8
    logits = torch.tensor([[0.0, math.log(3.0)], [2.0, 2.0]])
    torch.testing.assert_close(log_sum_sq_probs(logits), torch.tensor([math.log(5 / 8), math.log(1 / 2)]))


@needs_trl
def test_log_sum_sq_probs_equal_trls_fused_lm_head():
    from trl.kernels.chunked_logprob import ChunkedLogProbFunction

    generator = torch.Generator().manual_seed(0)
    hidden, head = torch.randn(13, 8, generator=generator), torch.nn.Linear(8, 50, bias=False)
    head.weight.data = torch.randn(50, 8, generator=generator)
    targets = torch.randint(0, 50, (13,), generator=generator)
    _, _, theirs, _, _ = ChunkedLogProbFunction.apply(hidden, head.weight, None, targets, 1.0, 16, None, 1.0,
                                                      ("log_sum_sq_probs",))
    torch.testing.assert_close(log_sum_sq_probs(head(hidden)), theirs, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(head_log_sum_sq_probs(hidden, head), theirs, rtol=1e-5, atol=1e-5)


# --- TRL parity ----------------------------------------------------------------------------------

class StandInForward(torch.nn.Module):
    """What TRL's loss reads of a forward: per-token log-probs (2B, C), chosen rows then rejected, WPO's per-token
    ``log sum_v p_v ** 2``, and zeros for its metrics."""

    is_gradient_checkpointing = False

    def __init__(self, per_token_logps, log_sum_sq_probs=None):
        super().__init__()
        self.per_token_logps, self.log_sum_sq_probs = per_token_logps, log_sum_sq_probs

    def forward(self, input_ids, attention_mask, labels, fused_lm_head, use_cache):
        zeros = torch.zeros_like(self.per_token_logps.detach())
        return SimpleNamespace(log_probs=self.per_token_logps, log_sum_sq_probs=self.log_sum_sq_probs, entropy=zeros,
                               mean_logits=zeros, is_top1=zeros.bool())


def trl_loss(loss_types, weights, policy, ref, sum_sq, mask, *, beta, label_smoothing, ld_alpha, use_weighting):
    """TRL 1.16's ``_compute_loss``, its reference pass included, on these per-token values."""
    completion_mask = torch.cat([torch.zeros(mask.shape[0], 1, dtype=torch.long), mask], dim=1)  # a prompt token
    trainer = DPOTrainer.__new__(DPOTrainer)
    trainer.__dict__.update(
        model=StandInForward(policy, sum_sq), ref_model=StandInForward(ref), beta=beta, loss_types=loss_types,
        loss_weights=weights, label_smoothing=label_smoothing, f_divergence_type="reverse_kl",
        f_alpha_divergence_coef=0.5, args=SimpleNamespace(discopop_tau=0.05, gradient_checkpointing_kwargs=None),
        ld_alpha=ld_alpha, precompute_ref_logps=False, use_weighting=use_weighting, aux_loss_enabled=False,
        _tp_size=1, _total_train_tokens=0, _metrics={"train": defaultdict(list), "eval": defaultdict(list)},
        accelerator=SimpleNamespace(device=torch.device("cpu"), gather=lambda x: x, gather_for_metrics=lambda x: x))
    inputs = {"input_ids": torch.zeros_like(completion_mask), "attention_mask": torch.ones_like(completion_mask),
              "completion_mask": completion_mask}
    return trainer._compute_loss(trainer.model, inputs, return_outputs=False)


def vlmdpo_loss(config, policy, ref, sum_sq, mask, monkeypatch):
    """``dpo_step`` of ``config`` with its forward replaced by these per-token values (vlmdpo's layout: responses
    right-padded, zeros outside them)."""
    batch_size = mask.shape[0] // 2

    def out(per_token):
        sums, lengths = per_token.sum(1), mask.sum(1)
        return {"per_token_logps": per_token, "chosen_logps": sums[:batch_size], "rejected_logps": sums[batch_size:],
                "chosen_lengths": lengths[:batch_size], "rejected_lengths": lengths[batch_size:]}

    def forward(policy_model, reference, batch, pad_token_id, forward_path, with_reference, ref_logps,
                policy_outputs=(), policy_pass=None):
        assert policy_pass is None  # no model, so no router logits to record
        assert list(policy_outputs) == (["log_sum_sq_probs"] if config.use_weighting else [])
        return {**out(policy), "per_token_log_sum_sq_probs": sum_sq}, out(ref.detach())

    batch = {"prompt_input_ids": torch.zeros(batch_size, 1, dtype=torch.long), "chosen_input_ids": mask[:batch_size],
             "rejected_input_ids": mask[batch_size:], "chosen_completion_mask": mask[:batch_size],
             "rejected_completion_mask": mask[batch_size:]}
    monkeypatch.setattr(step_module, "policy_and_reference_logps", forward)
    return step_module.dpo_step(None, None, batch, config, pad_token_id=0, forward_path="fast",
                                methods=build_methods(config))


def per_token_inputs(seed: int, batch: int = 4, width: int = 9):
    """Policy and reference per-token log-probs and ``log sum_v p_v ** 2`` (2B, C), zero outside each response,
    and the response mask (responses of 2 to 9 tokens, right-padded)."""
    generator = torch.Generator().manual_seed(seed)
    lengths = torch.randint(2, width + 1, (2 * batch,), generator=generator)
    mask = (torch.arange(width) < lengths[:, None]).long()
    ref = -3.0 * torch.rand(2 * batch, width, generator=generator) * mask
    policy = (ref + 0.5 * torch.randn(2 * batch, width, generator=generator)).clamp(max=0) * mask
    sum_sq = -1.5 * torch.rand(2 * batch, width, generator=generator) * mask
    return policy, ref, sum_sq, mask


def assert_parity(spec, loss_types, weights, seed, monkeypatch, *, ld_alpha=None, use_weighting=False):
    policy, ref, sum_sq, mask = per_token_inputs(seed)
    smoothing = max((SMOOTHING.get(name, 0.0) for name in loss_types), default=0.0)
    config = LossConfig(losses=spec, beta=0.3, label_smoothing=smoothing, ld_alpha=ld_alpha,
                        use_weighting=use_weighting)
    ours, theirs = policy.clone().requires_grad_(True), policy.clone().requires_grad_(True)
    loss, metrics = vlmdpo_loss(config, ours, ref, sum_sq, mask, monkeypatch)
    expected = trl_loss(loss_types, weights, theirs, ref, sum_sq, mask, beta=0.3, label_smoothing=smoothing,
                        ld_alpha=ld_alpha, use_weighting=use_weighting)
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-5)
    if use_weighting and "hinge" in loss_types:
        # TRL multiplies the weights into relu's output in place, so its own backward fails there
        with pytest.raises(RuntimeError, match="inplace"):
            torch.autograd.grad(expected, theirs)
        return metrics
    # gradients on the response tokens: the values outside them are zeros that depend on no weight (TRL's masks
    # let some of them into its sums, where they add nothing)
    torch.testing.assert_close(torch.autograd.grad(loss, ours)[0] * mask,
                               torch.autograd.grad(expected, theirs)[0] * mask, rtol=1e-5, atol=1e-5)
    return metrics


@needs_trl
@pytest.mark.parametrize("loss_type", sorted(set(TRL_LOSSES) - {"sft"}))
def test_ld_dpo_equals_trl(loss_type, monkeypatch):
    assert_parity(loss_type, [loss_type], [1.0], seed=len(loss_type), monkeypatch=monkeypatch, ld_alpha=0.4)


@needs_trl
@pytest.mark.parametrize("loss_type", sorted(set(TRL_LOSSES) - {"sft", "aot", "aot_unpaired"}))
def test_wpo_equals_trl(loss_type, monkeypatch):
    metrics = assert_parity(loss_type, [loss_type], [1.0], seed=len(loss_type), monkeypatch=monkeypatch,
                            use_weighting=True)
    assert metrics["wpo/weight"] > 0


@needs_trl
def test_wpo_and_ld_dpo_together_on_a_weighted_sum_equal_trl(monkeypatch):
    assert_parity("sigmoid:0.8+bco_pair:0.2+ipo:0.5", ["sigmoid", "bco_pair", "ipo"], [0.8, 0.2, 0.5], seed=7,
                  monkeypatch=monkeypatch, ld_alpha=0.0, use_weighting=True)


def trl_wpo_refused_losses() -> set[str]:
    """The loss types ``DPOTrainer.__init__`` refuses ``use_weighting`` with."""
    for node in ast.walk(ast.parse(inspect.getsource(DPOTrainer.__init__).lstrip())):
        if isinstance(node, ast.If) and "use_weighting" in ast.unparse(node.test):
            return {elt.value for s in ast.walk(node.test) if isinstance(s, ast.Set) for elt in s.elts}
    raise AssertionError("DPOTrainer.__init__ no longer refuses use_weighting with any loss")


@needs_trl
def test_wpo_is_refused_with_the_losses_trl_refuses_it_with():
    refused = trl_wpo_refused_losses()
    assert refused == {"aot", "aot_unpaired"}
    for loss_type in sorted(set(TRL_LOSSES) - {"sft"}):
        spec = f"sigmoid+{loss_type}" if loss_type != "sigmoid" else "sigmoid"
        if loss_type in refused:
            with pytest.raises(ValueError, match="sort the pairs"):
                LossConfig(losses=spec, use_weighting=True, label_smoothing=0.1)
        else:
            LossConfig(losses=spec, use_weighting=True, label_smoothing=SMOOTHING.get(loss_type, 0.0) or 0.1)
    values = [torch.zeros(3)] * 4
    with pytest.raises(ValueError, match="sort the pairs"):  # a direct caller too
        combined_loss([("aot", 1.0)], *values, beta=0.1, pair_weights=torch.ones(3))


@pytest.mark.parametrize("settings,message", [
    ({"ld_alpha": 1.5}, "in \\[0, 1\\]"),
    ({"ld_alpha": 0.5, "losses": "sft"}, "no rejected response"),
    ({"ld_alpha": 0.5, "losses": "mpo"}, "\\['sft'\\]"),
    ({"ld_alpha": 0.5, "losses": "mdpo"}, "mdpo_conditional"),
    ({"ld_alpha": 0.5, "dense_gamma": 5.0}, "dense_gamma"),
    ({"use_weighting": True, "losses": "sft"}, "no rejected response"),
])
def test_settings_the_modifiers_cannot_apply_to_are_refused(settings, message):
    with pytest.raises(ValueError, match=message):
        LossConfig(**settings)


def test_ld_dpo_refuses_precomputed_reference_sums():
    mask = torch.ones(2, 3, dtype=torch.long)
    out = {"per_token_logps": -torch.ones(2, 3), "chosen_logps": torch.tensor([-3.0]),
           "rejected_logps": torch.tensor([-3.0])}
    batch = {"chosen_input_ids": mask[:1], "rejected_input_ids": mask[1:], "chosen_completion_mask": mask[:1],
             "rejected_completion_mask": mask[1:]}
    cached = {"chosen_logps": torch.tensor([-3.0]), "rejected_logps": torch.tensor([-3.0])}
    with pytest.raises(ValueError, match="precompute_ref_logps=false"):
        LengthDesensitised(0.5).reweight(out, cached, batch)


# --- the forwards and training -------------------------------------------------------------------

@pytest.fixture(scope="module")
def llava(vlmdpo_cache):
    from vlmdpo.model.load import load_model_and_processor
    from vlmdpo.tiny.models import tiny_vlm

    folder = tiny_vlm("llava")
    model, processor = load_model_and_processor(folder)
    return folder, model.requires_grad_(False).eval(), processor


@pytest.fixture(scope="module")
def pairs_dir(tmp_path_factory):
    from data_recipes.shapes import build_shapes_dataset, povid_pairs

    folder = tmp_path_factory.mktemp("modifier_pairs") / "povid"
    povid_pairs(build_shapes_dataset(seed=0, num_train=4, num_test=0, image_size=32)["train"]).save_to_disk(str(folder))
    return folder


def test_both_forwards_give_the_same_log_sum_sq_probs_on_the_responses(llava, pairs_dir):
    _, model, processor = llava
    pairs = PreferenceDataset(datasets.load_from_disk(str(pairs_dir)))
    batch = PreferenceCollator(processor)([pairs[i] for i in range(3)])
    with torch.no_grad():
        plain = completion_logps(model, batch, processor.tokenizer.pad_token_id, outputs=("log_sum_sq_probs",))
        fast = fast_completion_logps(model, batch, outputs=("log_sum_sq_probs",))
    values = plain["per_token_log_sum_sq_probs"]
    assert ((values != 0) == (plain["per_token_logps"] != 0)).all() and (values <= 0).all()
    torch.testing.assert_close(fast["per_token_log_sum_sq_probs"], values, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="unknown per-token outputs"):
        completion_logps(model, batch, processor.tokenizer.pad_token_id, outputs=("entropy",))


def train_two_steps(model_dir, pairs_dir, output_dir, *settings):
    from vlmdpo.train.loop import train

    config = load_config(None, [f"model.name_or_path={model_dir}", f"data.train={pairs_dir}",
                                f"train.output_dir={output_dir}", "train.max_steps=2", "train.batch_size=2",
                                "train.learning_rate=1e-2", "train.progress=false", "train.mixed_precision=no",
                                *settings])
    train(config)
    return [json.loads(line) for line in (output_dir / "metrics.jsonl").read_text().splitlines()]


def test_training_with_ld_dpo(llava, pairs_dir, tmp_path):
    dpo = train_two_steps(llava[0], pairs_dir, tmp_path / "dpo")
    assert train_two_steps(llava[0], pairs_dir, tmp_path / "alpha1", "loss.ld_alpha=1.0") == dpo
    halved = train_two_steps(llava[0], pairs_dir, tmp_path / "half", "loss.ld_alpha=0.5")
    # step 1: policy == reference, so the loss is ln 2; the longer responses' excess tokens count half, so the
    # (negative) log-probs rise, strictly where a pair's lengths differ
    assert halved[0]["loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert halved[0]["logps/chosen"] >= dpo[0]["logps/chosen"] and halved[0]["logps/rejected"] >= dpo[0]["logps/rejected"]
    assert halved[0]["logps/chosen"] + halved[0]["logps/rejected"] > dpo[0]["logps/chosen"] + dpo[0]["logps/rejected"]
    assert math.isfinite(halved[1]["loss"]) and halved[1] != dpo[1]


def test_training_with_wpo_logs_its_weights(llava, pairs_dir, tmp_path):
    records = train_two_steps(llava[0], pairs_dir, tmp_path / "wpo", "loss.use_weighting=true")
    assert [r["step"] for r in records] == [1, 2]
    for record in records:
        assert 0 < record["wpo/weight"] < float("inf")
    # step 1: every pair's DPO loss is ln 2, so the loss is ln 2 times the mean pair weight
    assert records[0]["loss"] == pytest.approx(math.log(2) * records[0]["wpo/weight"], rel=1e-5)
