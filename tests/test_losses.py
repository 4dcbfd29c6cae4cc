"""Loss values worked out by hand; the expected numbers never call the code under test.

Identities used below, with s the sigmoid:
    s(0) = 1/2, s(ln 3) = 3/4, s(-ln 3) = 1/4
    -log s(0) = ln 2 = 0.693147,  -log s(ln 3) = ln(4/3) = 0.287682,  -log s(-ln 3) = ln 4 = 1.386294
h = (pi_c - pi_r) - (ref_c - ref_r) is the log-ratio difference.
"""

import math

import pytest
import torch

from vlmdpo.methods import LOSSES, MPO, combined_loss, rewards

LN2, LN3, LN4_3, LN4 = math.log(2), math.log(3), math.log(4 / 3), math.log(4)


def t(*values, dtype=torch.float32):
    return torch.tensor(values, dtype=dtype)


def equal_policy_and_ref(batch=3):
    """pi == ref for every response, so every log-ratio and h are 0."""
    logps = t(-5.0, -12.0, -7.5)[:batch]
    return logps, logps - 1.0, logps.clone(), logps - 1.0


def chosen_ratio_ln3():
    """chosen_logratio = ln 3, rejected_logratio = 0, so h = ln 3 (with beta = 1, beta*h = ln 3)."""
    return t(-1.0), t(-2.0), t(-1.0 - LN3), t(-2.0)


def check(actual, expected):
    torch.testing.assert_close(actual, torch.as_tensor(expected, dtype=torch.float32), rtol=1e-5, atol=1e-6)


# --- sigmoid DPO, cDPO, robust ----------------------------------------------------------------

def test_sigmoid_policy_equals_reference_is_log2():
    check(LOSSES["sigmoid"](*equal_policy_and_ref(), beta=0.1), [LN2] * 3)


def test_sigmoid_at_beta_h_ln3():
    # -log s(ln 3) = ln(4/3)
    check(LOSSES["sigmoid"](*chosen_ratio_ln3(), beta=1.0), [LN4_3])


def test_cdpo_at_beta_h_ln3():
    # -(0.9) log(3/4) - 0.1 log(1/4) = 0.9 ln(4/3) + 0.1 ln 4 = 0.258914 + 0.138629 = 0.397543
    check(LOSSES["cdpo"](*chosen_ratio_ln3(), beta=1.0), [0.9 * LN4_3 + 0.1 * LN4])
    check(LOSSES["cdpo"](*chosen_ratio_ln3(), beta=1.0), [0.397543])


def test_cdpo_default_smoothing_is_0_1_and_sigmoid_default_is_0():
    inputs = chosen_ratio_ln3()
    check(LOSSES["cdpo"](*inputs, beta=1.0), LOSSES["sigmoid"](*inputs, beta=1.0, label_smoothing=0.1))
    check(LOSSES["sigmoid"](*inputs, beta=1.0), [LN4_3])


def test_robust_at_beta_h_ln3():
    # (0.9 ln(4/3) + 0.1 log(1/4)) / 0.8 = (0.258914 - 0.138629) / 0.8 = 0.150356
    check(LOSSES["robust"](*chosen_ratio_ln3(), beta=1.0, label_smoothing=0.1), [0.150356])


@pytest.mark.parametrize("name", ["cdpo", "robust"])
def test_smoothed_losses_at_eps_zero_equal_sigmoid(name):
    inputs = (t(-3.0, -4.0, -1.0), t(-5.0, -2.0, -1.5), t(-3.5, -4.0, -2.0), t(-4.0, -2.5, -1.0))
    check(LOSSES[name](*inputs, beta=0.3, label_smoothing=0.0), LOSSES["sigmoid"](*inputs, beta=0.3))


@pytest.mark.parametrize("name,eps", [("robust", 0.5), ("robust", -0.1), ("sigmoid", 0.6), ("cdpo", -0.1)])
def test_label_smoothing_out_of_range_raises(name, eps):
    with pytest.raises(ValueError, match="label_smoothing"):
        LOSSES[name](*chosen_ratio_ln3(), label_smoothing=eps)


# --- IPO, hinge ---------------------------------------------------------------------------------

@pytest.mark.parametrize("beta", [0.1, 0.5, 1.0])
def test_ipo_at_h_zero_is_one_over_four_beta_squared(beta):
    # (0 - 1/(2 beta))^2 = 1/(4 beta^2): 25, 1, 0.25
    check(LOSSES["ipo"](*equal_policy_and_ref(), beta=beta), [1 / (4 * beta**2)] * 3)


def test_ipo_divides_by_lengths():
    # per-token: pi_c = -4/2 = -2, pi_r = -9/3 = -3, refs -2/2 = -1, -3/3 = -1 -> h = 1.
    # beta = 0.25: (1 - 2)^2 = 1; beta = 0.5: (1 - 1)^2 = 0.  Unnormalised h would be 5 - 1 = 4.
    inputs = (t(-4.0), t(-9.0), t(-2.0), t(-3.0))
    lengths = dict(chosen_lengths=t(2.0), rejected_lengths=t(3.0))
    check(LOSSES["ipo"](*inputs, beta=0.25, **lengths), [1.0])
    check(LOSSES["ipo"](*inputs, beta=0.5, **lengths), [0.0])
    check(LOSSES["ipo"](*inputs, beta=0.5), [(4.0 - 1.0) ** 2])


def test_ipo_with_one_length_raises():
    with pytest.raises(ValueError, match="both"):
        LOSSES["ipo"](*chosen_ratio_ln3(), chosen_lengths=t(2.0))


def test_hinge_values():
    # beta = 0.5; h = 0, 1, 4, -2  ->  relu(1 - 0.5 h) = 1, 0.5, 0, 2
    policy_chosen = t(0.0, 1.0, 4.0, -2.0)
    zeros = torch.zeros(4)
    check(LOSSES["hinge"](policy_chosen, zeros, zeros, zeros, beta=0.5), [1.0, 0.5, 0.0, 2.0])


# --- SimPO ----------------------------------------------------------------------------------------

def test_simpo_values():
    # per-token pi_c = -4/2 = -2, pi_r = -9/3 = -3, margin 1; references are ignored.
    # beta=2, gamma=2:   -log s(2 - 2) = ln 2
    # beta=2, gamma=0.5: -log s(1.5) = log(1 + e^-1.5) = log(1.223130) = 0.201413
    inputs = (t(-4.0), t(-9.0), t(100.0), t(-100.0))
    lengths = dict(chosen_lengths=t(2.0), rejected_lengths=t(3.0))
    check(LOSSES["simpo"](*inputs, beta=2.0, simpo_gamma=2.0, **lengths), [LN2])
    check(LOSSES["simpo"](*inputs, beta=2.0, **lengths), [0.201413])


@pytest.mark.parametrize("missing", ["chosen_lengths", "rejected_lengths", "both"])
def test_simpo_without_lengths_raises(missing):
    lengths = dict(chosen_lengths=t(2.0), rejected_lengths=t(3.0))
    for key in ["chosen_lengths", "rejected_lengths"] if missing == "both" else [missing]:
        del lengths[key]
    with pytest.raises(ValueError, match="simpo needs chosen_lengths and rejected_lengths"):
        LOSSES["simpo"](*chosen_ratio_ln3(), **lengths)


# --- BCO pair, APO-zero, SFT ----------------------------------------------------------------------

def test_bco_pair_values():
    # beta = 1, chosen_logratio = ln 3, rejected_logratio = -ln 3, delta = 0:
    #   -log s(ln 3) - log s(ln 3) = 2 ln(4/3) = 0.575364
    # chosen_logratio = 2 ln 3, rejected_logratio = 0, delta = ln 3: the same two terms.
    check(LOSSES["bco_pair"](t(LN3), t(-LN3), t(0.0), t(0.0), beta=1.0), [2 * LN4_3])
    check(LOSSES["bco_pair"](t(2 * LN3), t(0.0), t(0.0), t(0.0), beta=1.0, bco_delta=LN3), [0.575364])
    check(LOSSES["bco_pair"](t(2 * LN3), t(0.0), t(0.0), t(0.0), beta=1.0, bco_delta=torch.tensor(LN3)),
          [2 * LN4_3])


def test_bco_pair_policy_equals_reference_is_2_log2():
    check(LOSSES["bco_pair"](*equal_policy_and_ref()), [2 * LN2] * 3)


def test_apo_zero_values():
    # pi == ref: (1 - 1/2) + 1/2 = 1
    # beta = 1, chosen_logratio = ln 3, rejected_logratio = -ln 3: (1 - 3/4) + 1/4 = 0.5
    check(LOSSES["apo_zero"](*equal_policy_and_ref()), [1.0] * 3)
    check(LOSSES["apo_zero"](t(LN3), t(-LN3), t(0.0), t(0.0), beta=1.0), [0.5])


def test_sft_is_per_token_nll_with_lengths_and_summed_without():
    # -(-6) / 3 = 2 and -(-6) = 6; rejected and reference inputs are ignored.
    inputs = (t(-6.0, -1.0), t(-50.0, 0.0), t(3.0, 3.0), t(-1.0, 7.0))
    check(LOSSES["sft"](*inputs, chosen_lengths=t(3.0, 4.0)), [2.0, 0.25])
    check(LOSSES["sft"](*inputs), [6.0, 1.0])


# --- properties over the whole registry -----------------------------------------------------------

def test_registry_contains_all_names():
    assert set(LOSSES) == {"sigmoid", "cdpo", "ipo", "hinge", "robust", "simpo", "bco_pair", "apo_zero", "sft",
                           "mdpo_conditional", "mdpo_anchor"}


# the extra inputs some losses need: response lengths (IPO, SimPO, SFT), corrupted-image log-probs (mDPO)
LENGTHS = dict(chosen_lengths=t(4.0, 6.0, 5.0), rejected_lengths=t(3.0, 8.0, 2.0),
               policy_corrupted_chosen_logps=t(-5.0, -12.0, -7.5), ref_corrupted_chosen_logps=t(-5.0, -12.0, -7.5))


def call(name, *logps, **inputs):
    """``LOSSES[name]`` with the inputs it takes (as ``combined_loss`` hands them out)."""
    return LOSSES[name](*logps, **{key: value for key, value in inputs.items() if key in LOSSES[name].keywords})


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_low_precision_inputs_give_float32_per_pair_losses(name):
    inputs = [x.to(torch.bfloat16) for x in equal_policy_and_ref()]
    lengths = {k: v.to(torch.int64 if k.endswith("lengths") else torch.bfloat16) for k, v in LENGTHS.items()}
    out = call(name, *inputs, beta=0.1, **lengths)
    assert out.shape == (3,) and out.dtype == torch.float32


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_raising_chosen_logp_lowers_loss(name):
    # At pi == ref every loss still wants the chosen response likelier (hinge: 1 - beta h with h = 0).
    policy_chosen, *rest = equal_policy_and_ref()
    policy_chosen = policy_chosen.clone().requires_grad_(True)
    call(name, policy_chosen, *rest, beta=0.1, **LENGTHS).sum().backward()
    assert (policy_chosen.grad < 0).all()


def test_sigmoid_gradient_has_closed_form():
    # d/d pi_c of -log s(beta h) = -beta (1 - s(beta h)); at h = 0, beta = 0.1: -0.05.
    policy_chosen, *rest = equal_policy_and_ref()
    policy_chosen = policy_chosen.clone().requires_grad_(True)
    LOSSES["sigmoid"](policy_chosen, *rest, beta=0.1).sum().backward()
    check(policy_chosen.grad, [-0.05] * 3)


def test_rewards_is_beta_times_logratio_and_detached():
    policy = torch.tensor([-1.0, -4.0], requires_grad=True)
    out = rewards(policy, t(-3.0, -2.0), beta=0.5)
    check(out, [1.0, -1.0])
    assert not out.requires_grad


# --- combined_loss --------------------------------------------------------------------------------

def test_combined_mpo_equals_hand_weighted_sum():
    # chosen_ratio_ln3 with beta = 1, chosen_lengths = 1:
    #   sigmoid  = -log s(ln 3)                  = ln(4/3)
    #   bco_pair = -log s(ln 3) - log s(-(0))    = ln(4/3) + ln 2
    #   sft      = -(-1) / 1                     = 1
    # total = 0.8 ln(4/3) + 0.2 (ln(4/3) + ln 2) + 1 = ln(4/3) + 0.2 ln 2 + 1 = 1.426311
    lengths = dict(chosen_lengths=t(1.0), rejected_lengths=t(1.0))
    total, parts = combined_loss(MPO, *chosen_ratio_ln3(), beta=1.0, **lengths)
    check(total, LN4_3 + 0.2 * LN2 + 1.0)
    check(total, 1.426311)
    assert list(parts) == ["sigmoid", "bco_pair", "sft"]
    check(parts["sigmoid"], LN4_3)
    check(parts["bco_pair"], LN4_3 + LN2)
    check(parts["sft"], 1.0)


def test_combined_takes_mean_over_batch_and_accepts_dict():
    # hinge at beta = 0.5, h = 0 and 4: losses 1 and 0, mean 0.5; weight 2 -> total 1.
    zeros = torch.zeros(2)
    total, parts = combined_loss({"hinge": 2.0}, t(0.0, 4.0), zeros, zeros, zeros, beta=0.5)
    check(total, 1.0)
    check(parts["hinge"], 0.5)
    assert total.shape == ()


def test_combined_zero_weight_is_logged_but_not_trained():
    policy_chosen, *rest = equal_policy_and_ref()
    policy_chosen = policy_chosen.clone().requires_grad_(True)
    total, parts = combined_loss([("sigmoid", 0.0)], policy_chosen, *rest)
    check(parts["sigmoid"], LN2)
    check(total, 0.0)
    assert not parts["sigmoid"].requires_grad
    total.backward()
    check(policy_chosen.grad, [0.0] * 3)


def test_combined_unknown_name_lists_known_names():
    with pytest.raises(ValueError, match="unknown loss name") as info:
        combined_loss([("sigmoid", 1.0), ("dpop", 1.0)], *chosen_ratio_ln3())
    assert "dpop" in str(info.value)
    assert all(name in str(info.value) for name in LOSSES)


@pytest.mark.parametrize("losses,match", [
    ([("sigmoid", -0.5)], "weights must be >= 0"),
    ([("sigmoid", 1.0), ("sigmoid", 0.5)], "once"),
    ([], "at least one"),
])
def test_combined_rejects_bad_specs(losses, match):
    with pytest.raises(ValueError, match=match):
        combined_loss(losses, *chosen_ratio_ln3())


def test_combined_refuses_a_keyword_no_loss_takes():
    with pytest.raises(TypeError, match=r"no registered loss takes \['betta'\]"):
        combined_loss(MPO, *chosen_ratio_ln3(), betta=1.0)


def test_each_term_gets_only_the_keywords_it_names():
    # simpo's gamma reaches simpo and not sigmoid: h = ln 3 at beta 1 -> -log s(ln 3) = ln(4/3) for sigmoid;
    # simpo: beta * (pi_c / 1 - pi_r / 1) - gamma = (-1 + 2) - 1 = 0 -> -log s(0) = ln 2
    lengths = {"chosen_lengths": t(1.0), "rejected_lengths": t(1.0)}
    _, parts = combined_loss([("sigmoid", 1.0), ("simpo", 1.0)], *chosen_ratio_ln3(), beta=1.0,
                             simpo_gamma=1.0, **lengths)
    check(parts["sigmoid"], LN4_3)
    check(parts["simpo"], LN2)


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_a_loss_called_directly_refuses_a_setting_it_does_not_take(name):
    with pytest.raises(TypeError):
        LOSSES[name](*chosen_ratio_ln3(), no_such_setting=1.0)


def test_the_registry_says_what_each_term_reads():
    reference_free = {name for name, term in LOSSES.items() if not term.reference}
    chosen_only = {name for name, term in LOSSES.items() if not term.rejected}
    assert reference_free == {"simpo", "sft"}
    assert chosen_only == {"sft", "mdpo_conditional", "mdpo_anchor"}
    assert LOSSES["bco_pair"].keywords == {"beta", "bco_delta"}
