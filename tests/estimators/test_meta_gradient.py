"""Meta-gradients of one inner policy-gradient step: exact enumeration and Monte Carlo."""

from __future__ import annotations

import torch
from _tiny_mdp import DTYPE, hessian_terms, make_mdp
from torch.func import grad, hessian, vmap

from metaops.estimators import (
    dice_objective,
    lvc_objective,
    magic_box,
    score_function_objective,
)

MDP = make_mdp()
THETA = MDP.theta0
LR = 0.7
N, H = MDP.states.shape


def _close(a, b, tol=1e-10):
    torch.testing.assert_close(a, b, atol=tol, rtol=tol)


def _inner_objective(kind, log_probs, rewards):
    """Per-trajectory inner objective, shape (..., N)."""
    rewards = MDP.rewards if rewards is None else rewards
    if kind == "dice":
        return dice_objective(log_probs, rewards, gamma=MDP.gamma, baseline=MDP.values, mask=MDP.mask)
    rtg = MDP.reward_to_go()
    fn = {"lvc": lvc_objective, "score_function": score_function_objective}[kind]
    return fn(log_probs, rtg, mask=MDP.mask)


def _outer(theta_post, rewards=None):
    """Expected outer DiCE objective at post-update params (weights are stop-gradient)."""
    rewards = MDP.rewards if rewards is None else rewards
    lp = MDP.log_probs_under(theta_post)
    per = dice_objective(lp, rewards, gamma=MDP.gamma, mask=MDP.mask)
    return (MDP.probs_under(theta_post).detach() * per).sum(-1)


# --- Formulation with the exact (infinite-batch) inner step: theta' = theta + lr grad J --------


def _meta_objective_expected_inner(kind, rewards=None):
    def meta(theta):
        inner = lambda th: MDP.expect(lambda u: _inner_objective(kind, MDP.log_probs(u), None), th)
        adapted = theta + LR * grad(inner)(theta)  # one inner policy-gradient ascent step
        return _outer(adapted, rewards)

    return meta


def _exact_meta_gradient():
    J = MDP.exact_return
    return grad(lambda th: J(th + LR * grad(J)(th)))(THETA)


def test_dice_meta_gradient_is_exact_with_the_expected_inner_step():
    meta = _meta_objective_expected_inner("dice")
    _close(grad(meta)(THETA), _exact_meta_gradient())
    # the exact value, written out: (I + lr Hess J(theta)) grad J(theta')
    J = MDP.exact_return
    adapted = THETA + LR * grad(J)(THETA)
    by_hand = (torch.eye(4, dtype=DTYPE) + LR * hessian(J)(THETA)) @ grad(J)(adapted)
    _close(grad(meta)(THETA), by_hand)


def test_lvc_meta_gradient_uses_exactly_h1_plus_h2():
    J = MDP.exact_return
    h1, h2, _ = hessian_terms(MDP, THETA)
    adapted = THETA + LR * grad(J)(THETA)
    expected = (torch.eye(4, dtype=DTYPE) + LR * (h1 + h2)) @ grad(J)(adapted)
    _close(grad(_meta_objective_expected_inner("lvc"))(THETA), expected)
    assert (expected - _exact_meta_gradient()).abs().max() > 1e-3


def test_score_function_meta_gradient_is_biased():
    J = MDP.exact_return
    _, h2, _ = hessian_terms(MDP, THETA)
    adapted = THETA + LR * grad(J)(THETA)
    expected = (torch.eye(4, dtype=DTYPE) + LR * h2) @ grad(J)(adapted)
    got = grad(_meta_objective_expected_inner("score_function"))(THETA)
    _close(got, expected)
    assert (got - _exact_meta_gradient()).abs().max() > 1e-2


def test_meta_gradient_vmap_over_tasks_equals_loop():
    g = torch.Generator().manual_seed(1)
    tasks = torch.where(MDP.mask, MDP.rewards + torch.randn(3, N, H, generator=g, dtype=DTYPE), 0)

    def per_task(theta, rewards):
        inner = lambda th: MDP.expect(
            lambda u: dice_objective(MDP.log_probs(u), rewards, gamma=MDP.gamma, mask=MDP.mask),
            th,
        )
        return _outer(theta + LR * grad(inner)(theta), rewards)

    batched = grad(lambda th: vmap(per_task, in_dims=(None, 0))(th, tasks).mean())(THETA)
    looped = grad(lambda th: torch.stack([per_task(th, r) for r in tasks]).mean())(THETA)
    _close(batched, looped)


# --- Formulation with a sampled inner trajectory: E_{tau1}[J(theta + lr g(tau1; theta))] -------


def _adapted_per_inner_trajectory(theta):
    """(N, P): theta'(tau1) = theta + lr * grad of the inner DiCE objective on tau1 alone."""
    thetas = theta.unsqueeze(0).repeat(N, 1)

    def summed(ths):  # row n's objective depends only on ths[n]: the grad gives per-row grads
        lp = MDP.log_probs_under(ths)  # (N, N, H): all trajectories under each row's params
        own = lp[torch.arange(N), torch.arange(N)]  # (N, H): trajectory n under params n
        return _inner_objective("dice", own, None).sum()

    return thetas + LR * grad(summed)(thetas)


def _exact_sampled_meta_objective(theta):
    """F(theta) = sum_tau1 p(tau1; theta) J(theta'(tau1)), everything differentiable."""
    adapted = _adapted_per_inner_trajectory(theta)
    j_post = (MDP.probs_under(adapted) * MDP.returns()).sum(-1)  # (N,)
    return (MDP.probs(theta) * j_post).sum()


def _dice_meta_estimate(theta, pre, post):
    """The DiCE meta-objective for one sampled pair: tau1 ~ pi_theta, tau2 ~ pi_theta'(tau1).

    ``pre`` and ``post`` are (states, actions, rewards, mask, values) rows, as a user's rollout
    loop would record them; theta' is one DiCE policy-gradient step on tau1.
    """

    def log_probs(th, states, actions):
        return torch.log_softmax(th.reshape(2, 2), -1)[states, actions]

    def inner_objective(th):
        s, a, r, m, v = pre
        return dice_objective(log_probs(th, s, a), r, gamma=MDP.gamma, baseline=v, mask=m)

    adapted = theta + LR * grad(inner_objective)(theta)
    s, a, r, m, _ = post
    outer = dice_objective(log_probs(adapted, s, a), r, gamma=MDP.gamma, mask=m)
    s, a, _, m, _ = pre
    pre_log_prob = torch.where(m, log_probs(theta, s, a), 0.0).sum()
    return magic_box(pre_log_prob) * outer  # magic box of the pre-update trajectory


def test_dice_meta_gradient_is_exact_with_a_sampled_inner_trajectory():
    def expected_estimate(theta, box=True):
        adapted = _adapted_per_inner_trajectory(theta)
        pre = torch.where(MDP.mask, MDP.log_probs(theta), 0.0).sum(-1)  # (N,)
        post = dice_objective(
            MDP.log_probs_under(adapted),
            MDP.rewards.expand(N, N, H),
            gamma=MDP.gamma,
            mask=MDP.mask.expand(N, N, H),
        )  # (N1, N2)
        inner_sum = (MDP.probs_under(adapted).detach() * post).sum(-1)
        weight = magic_box(pre) if box else 1.0
        return (MDP.probs(theta).detach() * weight * inner_sum).sum()

    exact = grad(_exact_sampled_meta_objective)(THETA)
    _close(grad(expected_estimate)(THETA), exact)
    # without the pre-update magic box (as in most MAML-RL code) the term
    # E[grad log p(tau1) J(theta')] is lost: biased for a finite inner batch
    no_box = grad(lambda th: expected_estimate(th, box=False))(THETA)
    assert (no_box - exact).abs().max() > 1e-2


def test_sampled_dice_meta_gradient_monte_carlo_within_standard_errors():
    g = torch.Generator().manual_seed(12345)
    samples = 4000
    with torch.no_grad():
        inner_idx = torch.multinomial(MDP.probs(THETA), samples, replacement=True, generator=g)
        adapted = _adapted_per_inner_trajectory(THETA)
        post_probs = MDP.probs_under(adapted)[inner_idx]  # (samples, N)
        outer_idx = torch.multinomial(post_probs, 1, generator=g).squeeze(-1)
    rows = lambda idx: tuple(x[idx] for x in (MDP.states, MDP.actions, MDP.rewards, MDP.mask, MDP.values))
    per_sample = vmap(grad(_dice_meta_estimate), in_dims=(None, 0, 0))(
        THETA, rows(inner_idx), rows(outer_idx)
    )  # (samples, P)
    mean = per_sample.mean(0)
    stderr = per_sample.std(0) / samples**0.5
    exact = grad(_exact_sampled_meta_objective)(THETA)
    z = (mean - exact) / stderr
    assert torch.all(z.abs() < 4), z  # fixed seed: deterministic
    # and the test has power: the exact meta-gradient is far from zero in standard errors
    assert (exact.abs() / stderr).max() > 10
