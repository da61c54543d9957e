"""DiCE and Loaded DiCE against exact enumeration of a tiny MDP (float64)."""

from __future__ import annotations

import pytest
import torch
from _tiny_mdp import DTYPE, hessian_terms, make_mdp
from torch.func import grad, hessian, jacrev

from metaops.estimators import dice_objective, loaded_dice_objective, magic_box

MDP = make_mdp()
THETA = MDP.theta0


def _close(a, b, tol=1e-10):
    torch.testing.assert_close(a, b, atol=tol, rtol=tol)


def _baselines():
    g = torch.Generator().manual_seed(3)
    noise = torch.randn(2, MDP.horizon, generator=g, dtype=DTYPE)  # b(s, t), any function
    t = torch.arange(MDP.horizon).expand_as(MDP.states)
    table = torch.where(MDP.mask, noise[MDP.states, t], 123.0)  # garbage on padding
    return {"none": None, "table": table, "value": MDP.values}


BASELINES = _baselines()


def _dice(baseline_name):
    baseline = BASELINES[baseline_name]
    return lambda th: dice_objective(MDP.log_probs(th), MDP.rewards, gamma=MDP.gamma, baseline=baseline, mask=MDP.mask)


def test_magic_box_value_and_derivatives():
    x = torch.tensor([0.3, -1.2], dtype=DTYPE)
    _close(magic_box(x), torch.ones(2, dtype=DTYPE))
    # every derivative of sum(magic_box(f(theta))) is that of exp(f) rescaled, here f = theta^2
    f = lambda th: magic_box(th**2).sum()
    _close(grad(f)(x), 2 * x)
    _close(hessian(f)(x), torch.diag(2 + 4 * x**2))


def test_magic_box_rejects_non_float():
    with pytest.raises(TypeError, match="floating-point"):
        magic_box(torch.tensor([1, 2]))


@pytest.mark.parametrize("baseline", ["none", "table", "value"])
def test_dice_expected_value_gradient_and_hessian_are_exact(baseline):
    est = _dice(baseline)
    _close(MDP.expect(est, THETA), MDP.exact_return(THETA))
    _close(grad(lambda th: MDP.expect(est, th))(THETA), grad(MDP.exact_return)(THETA))
    _close(hessian(lambda th: MDP.expect(est, th))(THETA), hessian(MDP.exact_return)(THETA))


def test_dice_third_derivative_is_exact_with_baseline():
    est = _dice("table")
    third = jacrev(jacrev(jacrev(lambda th: MDP.expect(est, th))))(THETA)
    _close(third, jacrev(jacrev(jacrev(MDP.exact_return)))(THETA))


def test_baseline_inside_cumulative_box_is_biased():
    """The tempting form sum_t gamma^t (r_t - b_t) box(W_t) (ProMP's sample processor)."""
    b = BASELINES["value"]

    def biased(th):
        lp = torch.where(MDP.mask, MDP.log_probs(th), 0.0)
        adjusted = torch.where(MDP.mask, MDP.rewards - b, 0.0)
        t = torch.arange(MDP.horizon, dtype=DTYPE)
        return (magic_box(lp.cumsum(-1)) * adjusted * MDP.gamma**t).sum(-1)

    biased_grad = grad(lambda th: MDP.expect(biased, th))(THETA)
    assert (biased_grad - grad(MDP.exact_return)(THETA)).abs().max() > 1e-2


def _per_trajectory_derivatives(est):
    g = jacrev(est)(THETA)  # (N, P)
    h = jacrev(jacrev(est))(THETA)  # (N, P, P)
    return g, h


def _variance(per_sample, p):
    mean = torch.einsum("n,n...->...", p, per_sample)
    return torch.einsum("n,n...->", p, (per_sample - mean) ** 2)


def test_value_baseline_lowers_gradient_and_hessian_variance():
    p = MDP.probs(THETA)
    g0, h0 = _per_trajectory_derivatives(_dice("none"))
    g1, h1 = _per_trajectory_derivatives(_dice("value"))
    assert _variance(g1, p) < 0.7 * _variance(g0, p)
    assert _variance(h1, p) < 0.9 * _variance(h0, p)


def _mc_advantages():
    """gamma^t-free Monte Carlo advantages G_t - V(s_t) (G_t discounted from t)."""
    t = torch.arange(MDP.horizon, dtype=DTYPE)
    returns_to_go = MDP.reward_to_go() / MDP.gamma**t
    return torch.where(MDP.mask, returns_to_go - MDP.values, -5.0)


def _loaded(decay):
    adv = _mc_advantages()
    return lambda th: loaded_dice_objective(MDP.log_probs(th), adv, gamma=MDP.gamma, decay=decay, mask=MDP.mask)


@pytest.mark.parametrize("decay", [0.0, 0.5, 1.0])
def test_loaded_dice_gradient_is_exact_for_every_decay(decay):
    expected_grad = grad(lambda th: MDP.expect(_loaded(decay), th))(THETA)
    _close(expected_grad, grad(MDP.exact_return)(THETA))


def test_loaded_dice_hessian_interpolates_between_lvc_and_dice():
    exact = hessian(MDP.exact_return)(THETA)
    h1, h2, h12 = hessian_terms(MDP, THETA)
    hess = {d: hessian(lambda th, d=d: MDP.expect(_loaded(d), th))(THETA) for d in (0, 0.5, 1)}
    _close(hess[1], exact)  # decay 1: the full DiCE Hessian
    _close(hess[0], h1 + h2)  # decay 0: only the LVC terms
    assert (hess[0.5] - exact).abs().max() > 1e-3  # in between: biased ...
    assert (hess[0.5] - (h1 + h2)).abs().max() > 1e-3  # ... but not LVC either


def test_loaded_dice_with_unit_decay_equals_dice_with_baseline_per_sample():
    g = torch.Generator().manual_seed(0)
    rewards = torch.randn(4, 6, generator=g, dtype=DTYPE)
    baseline = torch.randn(4, 6, generator=g, dtype=DTYPE)
    theta = torch.randn(4, 6, generator=g, dtype=DTYPE)
    gamma = 0.8
    t = torch.arange(6, dtype=DTYPE)
    returns = (rewards * gamma**t).flip(-1).cumsum(-1).flip(-1) / gamma**t
    lp = lambda th: torch.log_softmax(torch.stack([th, -th]), 0)[0]
    dice = lambda th: dice_objective(lp(th), rewards, gamma=gamma, baseline=baseline).sum()
    loaded = lambda th: loaded_dice_objective(lp(th), returns - baseline, gamma=gamma, decay=1.0).sum()
    _close(grad(dice)(theta), grad(loaded)(theta))
    _close(hessian(dice)(theta), hessian(loaded)(theta))


def test_loaded_dice_value_is_zero():
    lp = torch.randn(3, 5, dtype=DTYPE)
    out = loaded_dice_objective(lp, torch.randn(3, 5, dtype=DTYPE), gamma=0.9, decay=0.7)
    _close(out, torch.zeros(3, dtype=DTYPE))


def test_dice_func_grad_matches_autograd_double_backward():
    est = _dice("table")
    theta = THETA.clone().requires_grad_(True)
    value = MDP.expect(est, theta)
    (g,) = torch.autograd.grad(value, theta, create_graph=True)
    rows = [torch.autograd.grad(g[i], theta, retain_graph=True)[0] for i in range(len(g))]
    _close(g.detach(), grad(lambda th: MDP.expect(est, th))(THETA))
    _close(torch.stack(rows), hessian(lambda th: MDP.expect(est, th))(THETA))


def test_dice_expected_hessian_matches_finite_differences_of_the_exact_return():
    """An autograd-free reference: central differences of J itself (the DiCE value is constant
    in theta, so finite differences must act on the exact expected return, not the surrogate)."""
    h, n = 1e-4, THETA.numel()
    eye = torch.eye(n, dtype=DTYPE) * h
    J = MDP.exact_return
    fd = torch.empty(n, n, dtype=DTYPE)
    for i in range(n):
        for j in range(n):
            fd[i, j] = (
                J(THETA + eye[i] + eye[j])
                - J(THETA + eye[i] - eye[j])
                - J(THETA - eye[i] + eye[j])
                + J(THETA - eye[i] - eye[j])
            ) / (4 * h * h)
    expected = hessian(lambda th: MDP.expect(_dice("value"), th))(THETA)
    _close(expected, fd, tol=1e-6)
