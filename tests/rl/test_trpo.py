"""KL, Fisher-vector products (also through an inner step) and the TRPO (meta-)step."""

from __future__ import annotations

import pytest
import torch
from torch.func import functional_call, grad, vmap

from metaops.estimators import dice_objective, lvc_objective
from metaops.rl import CategoricalMLPPolicy, GaussianMLPPolicy, kl_hvp, mean_kl, trpo_step
from metaops.tree import stop_gradient, tree_map, tree_ravel

D = torch.float64
LR = 0.5


def _setup(seed=0, hidden=()):
    torch.manual_seed(seed)
    policy = CategoricalMLPPolicy(3, 3, hidden_sizes=hidden).double()
    params = {k: v.detach() for k, v in policy.named_parameters()}
    g = torch.Generator().manual_seed(seed)
    obs = torch.randn(2, 4, 6, 3, generator=g, dtype=D)  # (tasks, episodes, T, obs_dim)
    actions = torch.randint(3, (2, 4, 6), generator=g)
    rewards = torch.randn(2, 4, 6, generator=g, dtype=D)
    mask = torch.ones(2, 4, 6, dtype=torch.bool)
    mask[:, 1, 4:] = False
    return policy, params, obs, actions, rewards, mask


def _dense(fn, params):
    flat, unravel = tree_ravel(params)
    return torch.func.hessian(lambda f: fn(unravel(f)))(flat), flat, unravel


def test_mean_kl_masks_and_zero_at_equal_params():
    policy, params, obs, _, _, mask = _setup()
    other = tree_map(lambda p: p + 0.3, params)
    kl = mean_kl(policy, params, other, obs, mask=mask)
    per_step = policy.kl(policy(obs), functional_call(policy, other, (obs,)))
    torch.testing.assert_close(kl, per_step[mask].mean())
    garbage_obs = torch.where(mask[..., None], obs, 1e3)
    torch.testing.assert_close(mean_kl(policy, params, other, garbage_obs, mask=mask), kl)
    assert mean_kl(policy, params, params, obs) == 0


def test_kl_hessian_is_the_fisher_matrix():
    policy, params, obs, _, _, _ = _setup()
    obs = obs.reshape(-1, 3)
    kl_fn = lambda p: mean_kl(policy, stop_gradient(params), p, obs)
    dense, flat, unravel = _dense(kl_fn, params)

    # exact Fisher by enumerating the 3 actions of every state
    def log_prob_all(f):
        return torch.log_softmax(functional_call(policy, unravel(f), (obs,)), -1)  # (S, A)

    jac = torch.func.jacrev(log_prob_all)(flat)  # (S, A, P)
    probs = log_prob_all(flat).exp()
    fisher = torch.einsum("sa,sai,saj->ij", probs, jac, jac) / obs.shape[0]
    torch.testing.assert_close(dense, fisher)
    v = torch.randn_like(flat)
    fv = kl_hvp(kl_fn, params, unravel(v), damping=0.1)
    torch.testing.assert_close(tree_ravel(fv)[0], fisher @ v + 0.1 * v)


def _maml_fns(policy, params0, obs, actions, rewards, mask):
    """MAML-TRPO pieces: inner DiCE step on task data, outer objective on 'post' data."""
    post_obs, post_actions = obs.flip(-2), actions.flip(-1)
    advantages = rewards.flip(-1)

    def adapt(params, o, a, r, m):
        def inner(p):
            lp = policy.log_prob(functional_call(policy, p, (o,)), a)
            return dice_objective(lp, r, gamma=0.9, mask=m).mean()

        return tree_map(lambda p, g: p + LR * g, params, grad(inner)(params))

    def post_log_probs(params, o, a, r, m, po, pa):
        adapted = adapt(params, o, a, r, m)
        return policy.log_prob(functional_call(policy, adapted, (po,)), pa)

    batched = vmap(post_log_probs, in_dims=(None, 0, 0, 0, 0, 0, 0))
    data = (obs, actions, rewards, mask, post_obs, post_actions)
    old_lp = batched(params0, *data).detach()
    old_adapted = vmap(adapt, in_dims=(None, 0, 0, 0, 0))(params0, obs, actions, rewards, mask)
    old_adapted = stop_gradient(old_adapted)

    def surrogate_fn(params):
        lp = batched(params, *data)
        return lvc_objective(lp, advantages, sampling_log_probs=old_lp, mask=mask).mean()

    def kl_fn(params):
        adapted = vmap(adapt, in_dims=(None, 0, 0, 0, 0))(params, obs, actions, rewards, mask)
        per_task = vmap(lambda old, new, o, m: mean_kl(policy, old, new, o, mask=m))(
            old_adapted, adapted, post_obs, mask
        )
        return per_task.mean()

    return surrogate_fn, kl_fn


def test_kl_hvp_through_an_inner_adaptation_step_matches_dense_hessian():
    policy, params, obs, actions, rewards, mask = _setup(hidden=(4,))
    _, kl_fn = _maml_fns(policy, params, obs, actions, rewards, mask)
    dense, flat, unravel = _dense(kl_fn, params)
    v = torch.randn_like(flat)
    torch.testing.assert_close(tree_ravel(kl_hvp(kl_fn, params, unravel(v)))[0], dense @ v)
    # positive semi-definite at the old parameters (it is a Fisher matrix of the adapted policy)
    assert torch.linalg.eigvalsh(dense).min() > -1e-10


def test_trpo_step_cg_matches_dense_solve_and_constraint_holds():
    policy, params, obs, actions, rewards, mask = _setup()
    o, a, m = obs.reshape(-1, 6, 3), actions.reshape(-1, 6), mask.reshape(-1, 6)
    adv = rewards.reshape(-1, 6)
    old_lp = policy.log_prob(policy(o), a).detach()

    def surrogate_fn(p):
        lp = policy.log_prob(functional_call(policy, p, (o,)), a)
        return lvc_objective(lp, adv, sampling_log_probs=old_lp, mask=m).mean()

    kl_fn = lambda p: mean_kl(policy, params, p, o, mask=m)
    damping, max_kl = 1e-3, 0.01
    new, info = trpo_step(surrogate_fn, kl_fn, params, max_kl=max_kl, damping=damping, cg_steps=60)
    fisher, flat, _ = _dense(kl_fn, params)
    g = tree_ravel(grad(surrogate_fn)(params))[0]
    x = torch.linalg.solve(fisher + damping * torch.eye(len(flat), dtype=D), g)
    expected_step = torch.sqrt(2 * max_kl / (x @ (fisher + damping * torch.eye(len(x), dtype=D)) @ x)) * x
    torch.testing.assert_close(tree_ravel(info.full_step)[0], expected_step, rtol=1e-6, atol=1e-8)
    assert info.accepted
    assert 0 < info.kl <= max_kl
    assert info.improvement > 0
    torch.testing.assert_close(float(kl_fn(new)), info.kl)
    torch.testing.assert_close(float(surrogate_fn(new)) - float(surrogate_fn(params)), info.improvement)
    assert all(not v.requires_grad for v in new.values())


def test_maml_trpo_meta_step_through_inner_adaptation():
    policy, params, obs, actions, rewards, mask = _setup(hidden=(4,))
    surrogate_fn, kl_fn = _maml_fns(policy, params, obs, actions, rewards, mask)
    new, info = trpo_step(surrogate_fn, kl_fn, params, max_kl=0.005, cg_steps=10)
    assert info.accepted and info.kl <= 0.005 and info.improvement > 0
    assert float(surrogate_fn(new)) > float(surrogate_fn(params))


def _maml_step_expected(surrogate_fn, fisher_kl_fn, params, *, max_kl, damping):
    """The full TRPO step from a dense Fisher matrix (torch.func.hessian) and a direct solve."""
    fisher, flat, _ = _dense(fisher_kl_fn, params)
    g = tree_ravel(grad(surrogate_fn)(params))[0]
    damped = fisher + damping * torch.eye(len(flat), dtype=D)
    x = torch.linalg.solve(damped, g)
    return torch.sqrt(2 * max_kl / (x @ damped @ x)) * x


def test_maml_trpo_full_step_through_inner_adaptation_matches_dense_solve():
    # the products reuse one linearisation of the KL gradient through the inner step
    policy, params, obs, actions, rewards, mask = _setup(hidden=(4,))
    surrogate_fn, kl_fn = _maml_fns(policy, params, obs, actions, rewards, mask)
    n = len(tree_ravel(params)[0])
    _, info = trpo_step(surrogate_fn, kl_fn, params, max_kl=0.005, damping=1e-3, cg_steps=3 * n)
    expected = _maml_step_expected(surrogate_fn, kl_fn, params, max_kl=0.005, damping=1e-3)
    torch.testing.assert_close(tree_ravel(info.full_step)[0], expected, rtol=1e-6, atol=1e-9)


def test_fisher_kl_fn_defines_the_products_and_kl_fn_the_line_search():
    policy, params, obs, actions, rewards, mask = _setup(hidden=(4,))
    surrogate_fn, kl_fn = _maml_fns(policy, params, obs, actions, rewards, mask)
    # the KL of the first task only: a subsample of the data
    _, kl_first = _maml_fns(policy, params, obs[:1], actions[:1], rewards[:1], mask[:1])
    n = len(tree_ravel(params)[0])
    max_kl = 0.005
    new, info = trpo_step(surrogate_fn, kl_fn, params, max_kl=max_kl, damping=1e-3, cg_steps=3 * n,
                          fisher_kl_fn=kl_first)
    expected = _maml_step_expected(surrogate_fn, kl_first, params, max_kl=max_kl, damping=1e-3)
    torch.testing.assert_close(tree_ravel(info.full_step)[0], expected, rtol=1e-6, atol=1e-9)
    full = _maml_step_expected(surrogate_fn, kl_fn, params, max_kl=max_kl, damping=1e-3)
    assert not torch.allclose(expected, full, rtol=1e-3)  # the subsample's Fisher differs
    assert info.accepted and info.kl <= max_kl  # the line search enforces the full KL
    torch.testing.assert_close(float(kl_fn(new)), info.kl)


def test_trpo_rejects_when_no_candidate_improves():
    policy, params, obs, _, _, _ = _setup()
    surrogate_fn = lambda p: (tree_ravel(p)[0] * 0).sum()  # flat: nothing can improve
    kl_fn = lambda p: mean_kl(policy, params, p, obs)
    new, info = trpo_step(surrogate_fn, kl_fn, params, max_backtracks=3)
    assert not info.accepted and info.backtracks == 3 and info.improvement == 0
    for k in params:
        assert torch.equal(new[k], params[k])


def test_trpo_backtracks_when_the_quadratic_model_overshoots():
    """A KL that grows faster than its quadratic model forces at least one backtrack."""
    policy = GaussianMLPPolicy(1, 1, hidden_sizes=()).double()
    params = {k: v.detach() for k, v in policy.named_parameters()}
    surrogate_fn = lambda p: p["mean_net.0.bias"].sum()
    kl_fn = lambda p: (
        ((p["mean_net.0.bias"] - params["mean_net.0.bias"]) ** 2).sum() * 0.5
        + ((p["mean_net.0.bias"] - params["mean_net.0.bias"]) ** 4).sum() * 1e4
        + 1e-3 * sum(((p[k] - params[k]) ** 2).sum() for k in params)
    )
    new, info = trpo_step(surrogate_fn, kl_fn, params, max_kl=0.01)
    assert info.accepted and info.backtracks >= 1 and info.kl <= 0.01


def test_trpo_bad_hyperparameters():
    policy, params, obs, _, _, _ = _setup()
    kl_fn = lambda p: mean_kl(policy, params, p, obs)
    f = lambda p: kl_fn(p)
    with pytest.raises(ValueError, match="max_kl"):
        trpo_step(f, kl_fn, params, max_kl=0.0)
    with pytest.raises(ValueError, match="backtrack_ratio"):
        trpo_step(f, kl_fn, params, backtrack_ratio=1.0)
    with pytest.raises(ValueError, match="finite scalar"):
        trpo_step(lambda p: tree_ravel(p)[0].sum() * torch.nan, kl_fn, params)


def test_reduce_is_applied_to_the_gradient_every_fisher_product_and_the_line_search():
    """With ``reduce`` = doubling, the step equals the one-process step on 2 J and 2 D (and damping 2 beta).

    Doubling J and D leaves the CG direction unchanged but halves the step's scale twice over
    (sqrt of the doubled curvature) and doubles the KL the line search sees: a site that skipped
    ``reduce`` would change the step, the KL or the number of backtracks.
    """
    policy, params, obs, actions, rewards, mask = _setup(hidden=(4,))
    surrogate_fn, kl_fn = _maml_fns(policy, params, obs, actions, rewards, mask)
    n = len(tree_ravel(params)[0])
    calls = []

    def doubled(tree):
        calls.append(tree)
        return tree_map(lambda x: 2 * x, tree)

    kw = dict(max_kl=0.005, cg_steps=3 * n, max_backtracks=15)
    new, info = trpo_step(surrogate_fn, kl_fn, params, damping=1e-3, reduce=doubled, **kw)
    want_new, want = trpo_step(lambda p: 2 * surrogate_fn(p), lambda p: 2 * kl_fn(p), params, damping=2e-3, **kw)
    assert info.accepted and info.backtracks == want.backtracks
    torch.testing.assert_close(tree_ravel(info.full_step)[0], tree_ravel(want.full_step)[0], rtol=1e-8, atol=1e-12)
    torch.testing.assert_close(tree_ravel(new)[0], tree_ravel(want_new)[0], rtol=1e-8, atol=1e-12)
    assert info.kl == pytest.approx(want.kl, rel=1e-8) and info.surrogate_before == pytest.approx(want.surrogate_before)
    # one call for the gradient, one per product (CG + curvature), one per line-search candidate
    assert len(calls) == 1 + (3 * n + 1) + (info.backtracks + 1)
    # fisher_reduce replaces reduce for the products only
    fisher_calls = []
    trpo_step(surrogate_fn, kl_fn, params, damping=1e-3, reduce=doubled,
              fisher_reduce=lambda t: fisher_calls.append(t) or doubled(t), **kw)
    assert len(fisher_calls) == 3 * n + 1


def test_line_search_fn_evaluates_the_candidates():
    """The candidates' surrogate and KL come from ``line_search_fn`` when it is given, and nowhere else."""
    policy, params, obs, actions, rewards, mask = _setup(hidden=(4,))
    surrogate_fn, kl_fn = _maml_fns(policy, params, obs, actions, rewards, mask)
    kw = dict(max_kl=0.005, damping=1e-3, max_backtracks=6)
    want_new, want = trpo_step(surrogate_fn, kl_fn, params, **kw)
    seen = []

    def together(p):
        seen.append(p)
        return surrogate_fn(p), kl_fn(p)

    new, info = trpo_step(surrogate_fn, kl_fn, params, line_search_fn=together, **kw)
    assert want.accepted and info == want._replace(full_step=info.full_step)
    assert len(seen) == want.backtracks + 1
    torch.testing.assert_close(tree_ravel(new)[0], tree_ravel(want_new)[0], rtol=0, atol=0)
    # a line search that sees a much larger KL rejects every candidate: the values are its own
    _, rejected = trpo_step(surrogate_fn, kl_fn, params, line_search_fn=lambda p: (surrogate_fn(p), 1e6 * kl_fn(p)),
                            **kw)
    assert not rejected.accepted and rejected.backtracks == 6


@pytest.mark.parametrize("bad", [lambda s, k: s, lambda s, k: (s, k, k), lambda s, k: (s, k.reshape(1))])
def test_line_search_fn_must_return_two_scalars(bad):
    policy, params, obs, actions, rewards, mask = _setup(hidden=(4,))
    surrogate_fn, kl_fn = _maml_fns(policy, params, obs, actions, rewards, mask)
    with pytest.raises(ValueError, match="line_search_fn must return a tuple"):
        trpo_step(surrogate_fn, kl_fn, params, line_search_fn=lambda p: bad(surrogate_fn(p), kl_fn(p)))
