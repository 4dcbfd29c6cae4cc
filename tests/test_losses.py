"""Loss values worked out by hand; the expected numbers never call the code under test.

Identities used below, with s the sigmoid:
    s(0) = 1/2, s(ln 3) = 3/4, s(-ln 3) = 1/4
    -log s(0) = ln 2 = 0.693147,  -log s(ln 3) = ln(4/3) = 0.287682,  -log s(-ln 3) = ln 4 = 1.386294
h = (pi_c - pi_r) - (ref_c - ref_r) is the log-ratio difference.
"""

import pytest
import torch

from helpers import LN2, LN3, LN4, LN4_3, check, chosen_ratio_ln3, equal_policy_and_ref, t
from vlmdpo.methods import LOSSES, MPO, combined_loss, rewards


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


# --- length-normalised DPO, EXO, DiscoPOP ---------------------------------------------------------

def test_sigmoid_norm_divides_each_log_ratio_by_its_length():
    # chosen_logratio = -4 - (-2) = -2 over 2 tokens = -1; rejected_logratio = -9 - (-3) = -6 over 3 tokens = -2.
    # margin -1 - (-2) = 1; beta = ln 3: -log s(ln 3) = ln(4/3).  Unnormalised h = -2 + 6 = 4 would differ.
    inputs = (t(-4.0), t(-9.0), t(-2.0), t(-3.0))
    check(LOSSES["sigmoid_norm"](*inputs, beta=LN3, chosen_lengths=t(2.0), rejected_lengths=t(3.0)), [LN4_3])
    with pytest.raises(ValueError, match="sigmoid_norm needs chosen_lengths and rejected_lengths"):
        LOSSES["sigmoid_norm"](*inputs, beta=LN3, chosen_lengths=t(2.0))


def test_exo_pair_is_the_kl_from_the_policy_preference_to_the_smoothed_label():
    # q = (s(beta h), s(-beta h)), p = (1 - eps, eps), loss = KL(q || p).
    # beta h = ln 3, eps = 1/4: q = (3/4, 1/4) = p, so 0.
    # h = 0, eps = 1/4: q = (1/2, 1/2): ln(1/2) - 0.5 ln(3/4 * 1/4) = -ln 2 - 0.5 ln(3/16)
    #   = -0.693147 + 0.5 * 1.673976 = 0.143841.
    # beta h = ln 3, eps = 1e-3 (the default): 3/4 (ln(3/4) - ln 0.999) + 1/4 (ln(1/4) - ln 0.001)
    #   = 0.75 (-0.287682 + 0.001001) + 0.25 (-1.386294 + 6.907755) = -0.215011 + 1.380365 = 1.165354.
    check(LOSSES["exo_pair"](*chosen_ratio_ln3(), beta=1.0, label_smoothing=0.25), [0.0])
    check(LOSSES["exo_pair"](*equal_policy_and_ref(), label_smoothing=0.25), [0.143841] * 3)
    check(LOSSES["exo_pair"](*chosen_ratio_ln3(), beta=1.0), [1.165354])


@pytest.mark.parametrize("eps", [0.0, 1.0, -0.1])
def test_exo_pair_needs_a_smoothed_label(eps):
    with pytest.raises(ValueError, match="exo_pair: label_smoothing"):
        LOSSES["exo_pair"](*chosen_ratio_ln3(), label_smoothing=eps)


def test_discopop_blends_logistic_and_exponential_losses():
    # loss = (1 - m) (-log s(x)) + m exp(-x), m = s(x / tau), x = beta h.
    # x = 0, any tau: m = 1/2: (ln 2 + 1) / 2 = 0.846574.
    # x = ln 3, tau = 1: m = 3/4: ln(4/3) / 4 + (3/4)(1/3) = 0.071921 + 0.25 = 0.321921.
    # x = -ln 3, tau = 1: m = 1/4: (3/4) ln 4 + (1/4) 3 = 1.039721 + 0.75 = 1.789721.
    check(LOSSES["discopop"](*equal_policy_and_ref()), [0.846574] * 3)
    check(LOSSES["discopop"](*chosen_ratio_ln3(), beta=1.0, discopop_tau=1.0), [0.321921])
    check(LOSSES["discopop"](t(-1.0 - LN3), t(-2.0), t(-1.0), t(-2.0), beta=1.0, discopop_tau=1.0), [1.789721])
    with pytest.raises(ValueError, match="discopop_tau must be > 0"):
        LOSSES["discopop"](*chosen_ratio_ln3(), discopop_tau=0.0)


def test_discopop_slope_at_h_zero_is_positive():
    # d/dx at x = 0 with A = -log s(x), E = exp(-x), m' = s'(0) / tau = 1/4 / 0.05 = 5:
    #   m' (E - A) + (1 - m) A' + m E' = 5 (1 - ln 2) + (1/2)(-1/2) + (1/2)(-1) = 1.534264 - 0.75 = 0.784264;
    # d/d pi_c = beta * 0.784264 = 0.0784264 at beta = 0.1: raising the chosen log-prob raises the loss here.
    policy_chosen, *rest = equal_policy_and_ref()
    policy_chosen = policy_chosen.clone().requires_grad_(True)
    LOSSES["discopop"](policy_chosen, *rest, beta=0.1).sum().backward()
    check(policy_chosen.grad, [0.0784264] * 3)


# --- losses on each response's own reward: APO-down, NCA, SPPO-hard ------------------------------

def test_apo_down_values():
    # s(beta chosen_logratio) + 1 - s(beta (chosen_logratio - rejected_logratio)), beta = 1:
    # pi == ref: 1/2 + 1 - 1/2 = 1
    # chosen_logratio = -ln 3, rejected_logratio = -2 ln 3: s(-ln 3) + 1 - s(ln 3) = 1/4 + 1/4 = 0.5
    # both ln 3: 3/4 + 1 - 1/2 = 1.25
    check(LOSSES["apo_down"](*equal_policy_and_ref()), [1.0] * 3)
    check(LOSSES["apo_down"](t(-LN3), t(-2 * LN3), t(0.0), t(0.0), beta=1.0), [0.5])
    check(LOSSES["apo_down"](t(LN3), t(LN3), t(0.0), t(0.0), beta=1.0), [1.25])


def test_apo_down_at_pi_equals_ref_pushes_only_the_rejected_response_down():
    # d/d pi_c = beta s'(0) - beta s'(0) = 0; d/d pi_r = +beta s'(0) = 0.1 * 1/4 = 0.025.
    policy_chosen, policy_rejected, *refs = equal_policy_and_ref()
    policy_chosen = policy_chosen.clone().requires_grad_(True)
    policy_rejected = policy_rejected.clone().requires_grad_(True)
    LOSSES["apo_down"](policy_chosen, policy_rejected, *refs, beta=0.1).sum().backward()
    check(policy_chosen.grad, [0.0] * 3)
    check(policy_rejected.grad, [0.025] * 3)


def test_nca_pair_values():
    # -log s(r_c) - 0.5 log s(-r_c) - 0.5 log s(-r_r), r = beta * logratio.
    # pi == ref: ln 2 (1 + 0.5 + 0.5) = 2 ln 2
    # beta = 1, r_c = ln 3, r_r = -ln 3: ln(4/3) + 0.5 ln 4 + 0.5 ln(4/3) = 0.431523 + 0.693147 = 1.124670
    check(LOSSES["nca_pair"](*equal_policy_and_ref()), [2 * LN2] * 3)
    check(LOSSES["nca_pair"](t(LN3), t(-LN3), t(0.0), t(0.0), beta=1.0), [1.124670])


def test_sppo_hard_values():
    # (chosen_logratio - 1/(2 beta))^2 + (rejected_logratio + 1/(2 beta))^2
    # pi == ref, beta = 0.1: 5^2 + 5^2 = 50
    # beta = 0.5 (targets +-1): chosen_logratio 1, rejected -1: 0; chosen 3, rejected 1: 2^2 + 2^2 = 8
    check(LOSSES["sppo_hard"](*equal_policy_and_ref(), beta=0.1), [50.0] * 3)
    check(LOSSES["sppo_hard"](t(1.0, 3.0), t(-1.0, 1.0), t(0.0, 0.0), t(0.0, 0.0), beta=0.5), [0.0, 8.0])


# --- AOT: sorted across the batch -----------------------------------------------------------------

def test_aot_matches_sorted_policy_margins_with_sorted_reference_margins():
    # policy margins pi_c - pi_r = (3, 1), sorted (1, 3); reference margins (0, 2), sorted (0, 2): d = (1, 1).
    # beta = ln 3: -log s(ln 3) = ln(4/3) on both rows (pair by pair, h = (3, -1) would give two other values).
    # eps = 0.1: 0.9 ln(4/3) + 0.1 ln 4 = 0.397543.
    inputs = (t(3.0, 1.0), t(0.0, 0.0), t(0.0, 2.0), t(0.0, 0.0))
    check(LOSSES["aot"](*inputs, beta=LN3), [LN4_3, LN4_3])
    check(LOSSES["aot"](*inputs, beta=LN3, label_smoothing=0.1), [0.397543, 0.397543])


def test_aot_unpaired_matches_sorted_chosen_with_sorted_rejected_log_ratios():
    # chosen_logratio (2, 0), sorted (0, 2); rejected_logratio (0, 1), sorted (0, 1): d = (0, 1).
    # beta = ln 3: (-log s(0), -log s(ln 3)) = (ln 2, ln(4/3)).
    inputs = (t(2.0, 0.0), t(0.0, 1.0), t(0.0, 0.0), t(0.0, 0.0))
    check(LOSSES["aot_unpaired"](*inputs, beta=LN3), [LN2, LN4_3])


@pytest.mark.parametrize("name", ["aot", "aot_unpaired"])
def test_aot_on_one_pair_is_dpo(name):
    check(LOSSES[name](*chosen_ratio_ln3(), beta=1.0), [LN4_3])


# --- properties over the whole registry -----------------------------------------------------------

def test_registry_contains_all_names():
    assert set(LOSSES) == {"sigmoid", "cdpo", "ipo", "hinge", "robust", "sigmoid_norm", "exo_pair", "discopop",
                           "simpo", "aot", "aot_unpaired", "bco_pair", "apo_zero", "apo_down", "nca_pair",
                           "sppo_hard", "sft", "mdpo_conditional", "mdpo_anchor"}


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


# apo_down lowers the rejected response only there, and DiscoPOP's slope at h = 0 is positive (tests above).
@pytest.mark.parametrize("name", sorted(set(LOSSES) - {"apo_down", "discopop"}))
def test_raising_chosen_logp_lowers_loss(name):
    # At pi == ref every other loss still wants the chosen response likelier (hinge: 1 - beta h with h = 0).
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
