"""LVC, likelihood-ratio and score-function surrogates: which Hessian terms they contain."""

from __future__ import annotations

import torch
from _tiny_mdp import DTYPE, hessian_terms, make_mdp
from torch.func import grad, hessian

from metaops.estimators import (
    lvc_objective,
    score_function_objective,
)

MDP = make_mdp()
THETA = MDP.theta0
ADVANTAGES = {
    "reward_to_go": MDP.reward_to_go(),
    # any state-dependent baseline: gamma^t V(s_t) (the reward to go is discounted from 0)
    "with_baseline": MDP.reward_to_go() - MDP.values * MDP.gamma ** torch.arange(3, dtype=DTYPE),
}


def _close(a, b, tol=1e-10):
    torch.testing.assert_close(a, b, atol=tol, rtol=tol)


def _expected(fn, advantages):
    f = lambda th: MDP.expect(lambda u: fn(MDP.log_probs(u), advantages, mask=MDP.mask), th)
    return grad(f)(THETA), hessian(f)(THETA)


def test_hessian_terms_helper_recomposes_the_exact_hessian():
    h1, h2, h12 = hessian_terms(MDP, THETA)
    _close(h1 + h2 + h12 + h12.T, hessian(MDP.exact_return)(THETA))
    assert h12.abs().max() > 1e-2  # the cross terms are not negligible on this MDP


def test_lvc_gradient_exact_and_hessian_is_exactly_h1_plus_h2():
    h1, h2, _ = hessian_terms(MDP, THETA)
    for advantages in ADVANTAGES.values():
        g, h = _expected(lvc_objective, advantages)
        _close(g, grad(MDP.exact_return)(THETA))
        _close(h, h1 + h2)


def test_score_function_gradient_exact_and_hessian_is_only_h2():
    h1, h2, h12 = hessian_terms(MDP, THETA)
    exact = hessian(MDP.exact_return)(THETA)
    g, h = _expected(score_function_objective, ADVANTAGES["reward_to_go"])
    _close(g, grad(MDP.exact_return)(THETA))
    _close(h, h2)
    _close(exact - h, h1 + h12 + h12.T)  # exactly the documented missing terms
    assert (h - exact).abs().max() > 1e-2


def test_score_function_hessian_depends_on_the_baseline():
    """E[b_t Hess log pi_t] = -E[b_t Fisher_t] != 0: a baseline shifts the expected Hessian."""
    _, h2, _ = hessian_terms(MDP, THETA)
    baseline = ADVANTAGES["reward_to_go"] - ADVANTAGES["with_baseline"]  # gamma^t V(s_t)
    g, h = _expected(score_function_objective, ADVANTAGES["with_baseline"])
    _close(g, grad(MDP.exact_return)(THETA))  # the gradient stays exact
    hess_lp = torch.func.jacrev(torch.func.jacrev(MDP.log_probs))(THETA)
    shift = torch.einsum("n,nt,ntij->ij", MDP.probs(THETA), baseline, hess_lp)
    _close(h, h2 - shift)
    assert shift.abs().max() > 1e-2


def test_likelihood_ratio_matches_lvc_at_the_old_parameters():
    advantages = ADVANTAGES["with_baseline"]
    old = MDP.log_probs(THETA)
    ratio = lambda lp, adv, mask: lvc_objective(lp, adv, sampling_log_probs=old, mask=mask)
    g_lr, h_lr = _expected(ratio, advantages)
    g_lvc, h_lvc = _expected(lvc_objective, advantages)
    _close(g_lr, g_lvc)
    _close(h_lr, h_lvc)


def test_likelihood_ratio_value_at_the_old_parameters_is_the_advantage_sum():
    advantages = ADVANTAGES["reward_to_go"]
    old = MDP.log_probs(THETA)
    value = MDP.expect(
        lambda th: lvc_objective(MDP.log_probs(th), advantages, sampling_log_probs=old, mask=MDP.mask),
        THETA,
    )
    expected_sum = (MDP.probs(THETA) * MDP.reward_to_go().sum(-1)).sum()
    _close(value, expected_sum)
