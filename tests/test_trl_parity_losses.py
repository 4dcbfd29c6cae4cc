"""Every preference loss TRL's DPOTrainer has, equal to TRL's own code in value and gradient.

TRL's loss is no function of its own: it lives in ``DPOTrainer._compute_loss``, after the forward pass. The
oracle here is that method, run on a trainer holding only the state it reads, with precomputed reference
log-probs and a stand-in forward that returns log-probs the test chose (shaped as TRL's fused LM head returns
them): everything from the log-probs to the loss is TRL's code. vlmdpo's side is what a training step runs: a
``LossConfig`` and ``combined_loss``.
"""

import ast
import dataclasses
import inspect
import re
from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch

trl_dpo = pytest.importorskip("trl.trainer.dpo_trainer")

from vlmdpo.config import LossConfig  # noqa: E402
from vlmdpo.methods import LOSSES, combined_loss  # noqa: E402

DPOConfig, DPOTrainer = trl_dpo.DPOConfig, trl_dpo.DPOTrainer
DEFAULTS = {f.name: f.default for f in dataclasses.fields(DPOConfig)}
TRL_LOSSES = re.findall(r"'(\w+)'", dict((f.name, f) for f in dataclasses.fields(DPOConfig))["loss_type"]
                        .metadata["help"])
DIVERGENCES = [("reverse_kl", 0.5), ("forward_kl", 0.5), ("js_divergence", 0.5), ("alpha_divergence", 0.5),
               ("alpha_divergence", 1.5), ("alpha_divergence", 1.0)]


def trl_f_divergence_losses() -> set[str]:
    """The loss types ``DPOTrainer.__init__`` lets a non-default ``f_divergence_type`` through with."""
    for node in ast.walk(ast.parse(inspect.getsource(DPOTrainer.__init__).lstrip())):
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", None) == "f_divergence_loss_types":
            return ast.literal_eval(node.value)
    raise AssertionError("DPOTrainer.__init__ no longer names f_divergence_loss_types")


class LogProbForward(torch.nn.Module):
    """The forward TRL's loss reads: per-token log-probs (2B, T), chosen rows then rejected rows, and metrics."""

    def __init__(self, per_token_logps: torch.Tensor):
        super().__init__()
        self.per_token_logps = per_token_logps

    def forward(self, input_ids, attention_mask, labels, fused_lm_head, use_cache):
        zeros = torch.zeros_like(self.per_token_logps.detach())
        return SimpleNamespace(log_probs=self.per_token_logps, entropy=zeros, mean_logits=zeros, is_top1=zeros.bool())


def trl_loss(loss_types, weights, logps, lengths, *, beta, label_smoothing, f_divergence, alpha,
             discopop_tau=DEFAULTS["discopop_tau"]) -> torch.Tensor:
    """TRL 1.16's ``DPOTrainer._compute_loss`` on these summed log-probs and response lengths."""
    policy_chosen, policy_rejected, ref_chosen, ref_rejected = logps
    chosen_lengths, rejected_lengths = lengths
    counts = torch.cat([chosen_lengths, rejected_lengths])
    width = int(counts.max()) + 1  # a prompt token, then the longest response
    positions = torch.arange(width)
    completion_mask = (positions >= width - counts[:, None]).long()  # each response at the end of its row
    # each row's summed log-prob on its last token, zeros elsewhere: TRL sums the row to the same number
    last = torch.cat([policy_chosen, policy_rejected])[:, None]
    per_token_logps = torch.cat([torch.zeros(len(counts), width - 2), last], dim=1)
    trainer = DPOTrainer.__new__(DPOTrainer)
    trainer.__dict__.update(
        model=LogProbForward(per_token_logps), beta=beta, loss_types=loss_types, loss_weights=weights,
        label_smoothing=label_smoothing, f_divergence_type=f_divergence, f_alpha_divergence_coef=alpha,
        args=SimpleNamespace(discopop_tau=discopop_tau), ld_alpha=None, precompute_ref_logps=True,
        use_weighting=False, aux_loss_enabled=False, _tp_size=1, _total_train_tokens=0,
        _metrics={"train": defaultdict(list), "eval": defaultdict(list)},
        accelerator=SimpleNamespace(device=torch.device("cpu"), gather=lambda x: x, gather_for_metrics=lambda x: x))
    inputs = {"input_ids": torch.zeros_like(completion_mask), "attention_mask": torch.ones_like(completion_mask),
              "completion_mask": completion_mask, "ref_chosen_logps": ref_chosen, "ref_rejected_logps": ref_rejected}
    return trainer._compute_loss(trainer.model, inputs, return_outputs=False)


def random_inputs(seed: int, equal_lengths: bool = False, batch: int = 5):
    generator = torch.Generator().manual_seed(seed)
    ref = -5.0 - 35.0 * torch.rand(2, batch, generator=generator)
    policy = ref + 1.5 * torch.randn(2, batch, generator=generator)
    lengths = torch.randint(3, 12, (2, batch), generator=generator).float()
    if equal_lengths:
        lengths[:] = 7.0
    return (policy[0], policy[1], ref[0], ref[1]), (lengths[0], lengths[1])


def assert_parity(spec: str, loss_types, weights, seed: int, *, equal_lengths=False, beta=0.1, label_smoothing=0.0,
                  f_divergence="reverse_kl", alpha=0.5):
    values, lengths = random_inputs(seed, equal_lengths)
    ours = [v.clone().requires_grad_(True) for v in values]
    theirs = [v.clone().requires_grad_(True) for v in values]
    config = LossConfig(losses=spec, beta=beta, label_smoothing=label_smoothing, f_divergence=f_divergence,
                        f_divergence_alpha=alpha)
    loss, _ = combined_loss(config.weighted(), *ours, **config.settings(), chosen_lengths=lengths[0],
                            rejected_lengths=lengths[1])
    expected = trl_loss(loss_types, weights, theirs, lengths, beta=beta, label_smoothing=label_smoothing,
                        f_divergence=f_divergence, alpha=alpha)
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-5)
    grads = torch.autograd.grad(loss, ours, allow_unused=True, materialize_grads=True)
    expected_grads = torch.autograd.grad(expected, theirs, allow_unused=True, materialize_grads=True)
    for name, ours_grad, trl_grad in zip(("policy_chosen", "policy_rejected", "ref_chosen", "ref_rejected"),
                                         grads, expected_grads):
        torch.testing.assert_close(ours_grad, trl_grad, rtol=1e-5, atol=1e-5, msg=lambda m: f"{name}: {m}")


SMOOTHING = {"exo_pair": 1e-3, "robust": 0.1, "aot": 0.1, "aot_unpaired": 0.1}


@pytest.mark.parametrize("f_divergence,alpha", DIVERGENCES)
@pytest.mark.parametrize("loss_type", sorted(trl_f_divergence_losses() - {"sft"}))
def test_losses_on_the_reward_difference_equal_trl_under_each_f_divergence(loss_type, f_divergence, alpha):
    assert_parity(loss_type, [loss_type], [1.0], seed=len(loss_type), beta=0.3, f_divergence=f_divergence,
                  alpha=alpha, label_smoothing=SMOOTHING.get(loss_type, 0.0))


@pytest.mark.parametrize("loss_type", sorted(set(TRL_LOSSES) - trl_f_divergence_losses()))
def test_the_other_losses_equal_trl(loss_type):
    assert_parity(loss_type, [loss_type], [1.0], seed=len(loss_type), beta=0.3,
                  label_smoothing=SMOOTHING.get(loss_type, 0.0))


def test_aot_without_label_smoothing_equals_trl():
    assert_parity("aot+aot_unpaired", ["aot", "aot_unpaired"], [1.0, 1.0], seed=3, beta=0.3)


def test_sft_and_a_weighted_sum_equal_trl_when_responses_have_one_length():
    # TRL's sft is the batch's token mean, vlmdpo's the mean of each row's token mean: equal at one length.
    assert_parity("sft", ["sft"], [1.0], seed=1, equal_lengths=True)
    assert_parity("mpo", ["sigmoid", "bco_pair", "sft"], [0.8, 0.2, 1.0], seed=2, equal_lengths=True)
    assert_parity("exo_pair:0.5+sft:2", ["exo_pair", "sft"], [0.5, 2.0], seed=4, equal_lengths=True,
                  label_smoothing=1e-3, f_divergence="js_divergence")


def test_every_trl_loss_type_is_registered():
    assert set(TRL_LOSSES) <= set(LOSSES), sorted(set(TRL_LOSSES) - set(LOSSES))
    assert len(TRL_LOSSES) == 15


@pytest.mark.parametrize("loss_type", TRL_LOSSES)
def test_an_f_divergence_is_refused_with_the_losses_trl_refuses_it_with(loss_type):
    spec = "sigmoid" if loss_type == "sigmoid" else f"sigmoid+{loss_type}"  # sft alone changes nothing: refused
    if loss_type in trl_f_divergence_losses():
        LossConfig(losses=spec, f_divergence="forward_kl", label_smoothing=1e-3)
    else:
        with pytest.raises(ValueError, match=f"does not apply to \\['{loss_type}'\\]"):
            LossConfig(losses=spec, f_divergence="forward_kl", label_smoothing=1e-3)


def test_the_loss_config_defaults_are_trls():
    ours = LossConfig()
    assert (ours.beta, ours.label_smoothing, ours.discopop_tau, ours.f_divergence, ours.f_divergence_alpha) == (
        DEFAULTS["beta"], DEFAULTS["label_smoothing"], DEFAULTS["discopop_tau"], DEFAULTS["f_divergence_type"],
        DEFAULTS["f_alpha_divergence_coef"])
