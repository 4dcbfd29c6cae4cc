"""f-DPO (arXiv 2309.16240), ``vlmdpo.methods.fdivergence``: losses on the chosen-minus-rejected difference
under each f-divergence, values worked out by hand (the identities are in tests/test_losses.py), and where an
f-divergence is refused."""

import math
import re

import pytest

from helpers import LN3, LN4_3, check, chosen_ratio_ln3, t
from vlmdpo.config import LossConfig
from vlmdpo.methods import LOSSES, combined_loss


@pytest.mark.parametrize("f_divergence,alpha,logratios,beta", [
    # forward KL, f'(u) = 1 - 1/u: u_c = 2 -> 1/2, u_r = 2/3 -> -1/2, h = 1; beta = ln 3
    ("forward_kl", 0.5, (math.log(2), math.log(2 / 3)), LN3),
    # JS, f'(u) = log(2u / (1 + u)): u_c = 3 -> ln(3/2), u_r = 1/3 -> ln(1/2), h = ln 3; beta = 1
    ("js_divergence", 0.5, (LN3, -LN3), 1.0),
    # alpha = 1/2, f'(u) = (u^(-1/2) - 1) / (-1/2): u_c = 4 -> 1, u_r = 1 -> 0, h = 1; beta = ln 3
    ("alpha_divergence", 0.5, (math.log(4), 0.0), LN3),
    # alpha = 1 is the reverse KL: h = ln 3 - 0; beta = 1
    ("alpha_divergence", 1.0, (LN3, 0.0), 1.0),
    # alpha = 0 is the forward KL (the first case)
    ("alpha_divergence", 0.0, (math.log(2), math.log(2 / 3)), LN3),
])
def test_sigmoid_with_an_f_divergence(f_divergence, alpha, logratios, beta):
    # each case makes beta * h = ln 3, so -log s(ln 3) = ln(4/3)
    chosen_logratio, rejected_logratio = logratios
    inputs = (t(-1.0 + chosen_logratio), t(-2.0 + rejected_logratio), t(-1.0), t(-2.0))
    out = LOSSES["sigmoid"](*inputs, beta=beta, f_divergence=f_divergence, f_divergence_alpha=alpha)
    check(out, [LN4_3])


def test_ipo_divides_the_f_divergence_score_not_the_log_ratio():
    # forward KL: chosen score 1 - 1/2 = 1/2 over 2 tokens = 1/4; rejected score 1 - 3/2 = -1/2 over 1 token.
    # h = 3/4, beta = 2: (3/4 - 1/4)^2 = 1/4.  (Scoring ln(2)/2 instead would give 1 - 2^(-1/2) = 0.292893.)
    inputs = (t(math.log(2)), t(math.log(2 / 3)), t(0.0), t(0.0))
    out = LOSSES["ipo"](*inputs, beta=2.0, f_divergence="forward_kl", chosen_lengths=t(2.0), rejected_lengths=t(1.0))
    check(out, [0.25])


def test_the_losses_on_the_reward_difference_take_an_f_divergence():
    takers = {name for name, term in LOSSES.items() if "f_divergence" in term.keywords}
    assert takers == {"sigmoid", "cdpo", "ipo", "hinge", "robust", "sigmoid_norm", "exo_pair", "discopop"}
    assert all("f_divergence_alpha" in LOSSES[name].keywords for name in takers)


def test_an_unknown_f_divergence_is_refused_by_the_loss_and_the_config():
    with pytest.raises(ValueError, match="f_divergence must be one of"):
        LOSSES["sigmoid"](*chosen_ratio_ln3(), f_divergence="kl")
    with pytest.raises(ValueError, match="loss.f_divergence must be one of"):
        LossConfig(f_divergence="kl")
    with pytest.raises(ValueError, match="f_divergence_alpha must be a finite number"):
        LossConfig(f_divergence="alpha_divergence", f_divergence_alpha=float("nan"))


@pytest.mark.parametrize("spec,refused", [
    ("bco_pair", "does not apply to ['bco_pair']"),
    ("sigmoid+apo_zero", "does not apply to ['apo_zero']"),
    ("mdpo", "does not apply to ['mdpo_conditional', 'mdpo_anchor']"),
    ("aot", "does not apply to ['aot']"),
    ("sft", "has none of them"),
])
def test_an_f_divergence_is_refused_where_it_does_not_apply(spec, refused):
    with pytest.raises(ValueError, match=re.escape(refused)):
        LossConfig(losses=spec, f_divergence="forward_kl")
    with pytest.raises(ValueError, match=re.escape(refused)):
        combined_loss(LossConfig(losses=spec).weighted(), *chosen_ratio_ln3(), f_divergence="forward_kl",
                      chosen_lengths=t(1.0), rejected_lengths=t(1.0))
    LossConfig(losses=spec, f_divergence="reverse_kl")


def test_an_f_divergence_composes_with_sft_beside_a_difference_loss():
    # js at chosen_logratio = ln 3, rejected 0: h = ln(3/2) - 0; sft with length 1: -(-1) = 1.
    # total = -log s(ln 1.5) + 1 = log(1 + 2/3) + 1 = 0.510826 + 1 = 1.510826
    config = LossConfig(losses="sigmoid+sft", f_divergence="js_divergence", beta=1.0)
    total, _ = combined_loss(config.weighted(), *chosen_ratio_ln3(), **config.settings(),
                             chosen_lengths=t(1.0), rejected_lengths=t(1.0))
    check(total, 1.510826)


def test_the_config_refuses_what_exo_pair_and_discopop_cannot_run_with():
    with pytest.raises(ValueError, match="loss.label_smoothing is EXO's epsilon"):
        LossConfig(losses="exo_pair")
    assert LossConfig(losses="exo_pair:1+sft:1", label_smoothing=1e-3).names == {"exo_pair", "sft"}
    with pytest.raises(ValueError, match="loss.discopop_tau must be > 0"):
        LossConfig(losses="discopop", discopop_tau=0.0)
