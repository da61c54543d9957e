"""Policies and critics: distribution maths vs torch.distributions, functional use, vmap."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from torch import distributions as td
from torch.func import functional_call, grad, vmap

from metaops.inner import adapt, checkpointed, meta_sgd, sgd, unrolled
from metaops.rl import (
    CategoricalMLPPolicy,
    GaussianMLPPolicy,
    InnerStepWarning,
    QCritic,
    ValueCritic,
    categorical_entropy,
    categorical_kl,
    categorical_log_prob,
    check_inner_step,
    gaussian_entropy,
    gaussian_kl,
    gaussian_log_prob,
    kl_bounded_sgd,
    mean_kl,
    quadratic_kl,
)
from metaops.tree import tree_map, tree_stack

D = torch.float64
G = torch.Generator().manual_seed(0)


def _randn(*shape):
    return torch.randn(*shape, generator=G, dtype=D)


def test_gaussian_maths_match_torch_distributions_and_sum_over_action_dims():
    mean, log_std, actions = _randn(4, 3), _randn(4, 3) * 0.3, _randn(4, 3)
    ref = td.Independent(td.Normal(mean, log_std.exp()), 1)
    torch.testing.assert_close(gaussian_log_prob(mean, log_std, actions), ref.log_prob(actions))
    torch.testing.assert_close(gaussian_entropy(log_std), ref.entropy())
    mean2, log_std2 = _randn(4, 3), _randn(4, 3) * 0.3
    ref2 = td.Independent(td.Normal(mean2, log_std2.exp()), 1)
    torch.testing.assert_close(gaussian_kl(mean, log_std, mean2, log_std2), td.kl_divergence(ref, ref2))
    # summed, never averaged: 3 independent 1-d densities add up
    per_dim = td.Normal(mean, log_std.exp()).log_prob(actions)
    torch.testing.assert_close(gaussian_log_prob(mean, log_std, actions), per_dim.sum(-1))


def test_categorical_maths_match_torch_distributions():
    logits, logits2 = _randn(5, 4), _randn(5, 4)
    actions = torch.randint(4, (5,), generator=G)
    ref, ref2 = td.Categorical(logits=logits), td.Categorical(logits=logits2)
    torch.testing.assert_close(categorical_log_prob(logits, actions), ref.log_prob(actions))
    torch.testing.assert_close(categorical_entropy(logits), ref.entropy())
    torch.testing.assert_close(categorical_kl(logits, logits2), td.kl_divergence(ref, ref2))


@pytest.mark.parametrize("kind", ["gaussian", "categorical"])
def test_policy_functional_call_vmap_over_task_params_equals_loop(kind):
    torch.manual_seed(0)
    if kind == "gaussian":
        policy = GaussianMLPPolicy(3, 2, hidden_sizes=(8, 8), init_log_std=-0.5).double()
        actions = _randn(4, 6, 2)
    else:
        policy = CategoricalMLPPolicy(3, 5, hidden_sizes=(8,)).double()
        actions = torch.randint(5, (4, 6), generator=G)
    obs = _randn(4, 6, 3)
    base = {k: v.detach() for k, v in policy.named_parameters()}
    task_params = tree_stack([tree_map(lambda p, i=i: p + 0.1 * i, base) for i in range(4)])

    def loss(params, o, a):
        dist = functional_call(policy, params, (o,))
        return -policy.log_prob(dist, a).mean() - 0.01 * policy.entropy(dist).mean()

    batched = vmap(grad(loss))(task_params, obs, actions)
    looped = tree_stack([grad(loss)(tree_map(lambda p, i=i: p[i], task_params), obs[i], actions[i]) for i in range(4)])
    for k in base:
        torch.testing.assert_close(batched[k], looped[k])


def test_gaussian_policy_interface():
    policy = GaussianMLPPolicy(3, 2, hidden_sizes=(4,), init_log_std=-1.0)
    mean, log_std = policy(torch.zeros(7, 5, 3))
    assert mean.shape == log_std.shape == (7, 5, 2)
    torch.testing.assert_close(log_std, torch.full((7, 5, 2), -1.0))
    assert "log_std" in dict(policy.named_parameters())
    dist = policy(torch.zeros(100, 3))
    a1 = policy.sample(dist, generator=torch.Generator().manual_seed(1))
    a2 = policy.sample(dist, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a1, a2) and not a1.requires_grad and a1.shape == (100, 2)
    torch.testing.assert_close(a1.std(0), torch.full((2,), 0.3679), atol=0.08, rtol=0)
    assert torch.equal(policy.mode(dist), dist[0])


def test_categorical_policy_interface():
    policy = CategoricalMLPPolicy(4, 3, hidden_sizes=(4,))
    logits = policy(torch.zeros(2, 6, 4))
    assert logits.shape == (2, 6, 3)
    actions = policy.sample(logits, generator=torch.Generator().manual_seed(0))
    assert actions.shape == (2, 6) and actions.dtype == torch.int64
    assert policy.log_prob(logits, actions).shape == (2, 6)
    assert policy.kl(logits, logits).abs().max() < 1e-6
    freq = torch.bincount(categorical_sample_many(torch.tensor([0.0, 1.0, 2.0]), 20000), minlength=3) / 20000
    torch.testing.assert_close(freq, torch.softmax(torch.tensor([0.0, 1.0, 2.0]), 0), atol=0.02, rtol=0)


def categorical_sample_many(logits, n):
    policy = CategoricalMLPPolicy(1, 3)
    return policy.sample(logits.expand(n, 3), generator=torch.Generator().manual_seed(0))


def test_critics_shapes_and_functional_call():
    v = ValueCritic(3, hidden_sizes=(8,))
    q = QCritic(3, 2, hidden_sizes=(8,))
    obs, act = torch.randn(4, 5, 3), torch.randn(4, 5, 2)
    assert v(obs).shape == (4, 5) and q(obs, act).shape == (4, 5)
    params = {k: p.detach() * 0 for k, p in v.named_parameters()}
    assert torch.all(functional_call(v, params, (obs,)) == 0)
    with pytest.raises(ValueError, match="leading dims"):
        q(obs, act[:, :4])


def test_bad_inputs_raise():
    with pytest.raises(TypeError, match="integer"):
        categorical_log_prob(torch.zeros(3, 2), torch.zeros(3))
    with pytest.raises(ValueError, match="actions has shape"):
        categorical_log_prob(torch.zeros(3, 2), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="actions has shape"):
        gaussian_log_prob(torch.zeros(3, 2), torch.zeros(3, 2), torch.zeros(3, 3))
    with pytest.raises(TypeError, match="floating-point"):
        gaussian_log_prob(torch.zeros(3, 2), torch.zeros(3, 2), torch.zeros(3, 2, dtype=torch.long))


def test_distribution_functions_pass_gradcheck_and_gradgradcheck():
    mean, log_std, actions = _randn(2, 3), _randn(2, 3) * 0.3, _randn(2, 3)
    mean2, log_std2 = _randn(2, 3), _randn(2, 3) * 0.3
    logits, logits2 = _randn(2, 4), _randn(2, 4)
    acts = torch.tensor([1, 3])
    cases = [
        (lambda m, s: gaussian_log_prob(m, s, actions), (mean, log_std)),
        (gaussian_kl, (mean, log_std, mean2, log_std2)),
        (gaussian_entropy, (log_std,)),
        (lambda lg: categorical_log_prob(lg, acts), (logits,)),
        (categorical_kl, (logits, logits2)),
        (categorical_entropy, (logits,)),
    ]
    for fn, inputs in cases:
        inputs = tuple(x.clone().requires_grad_(True) for x in inputs)
        assert torch.autograd.gradcheck(fn, inputs)
        assert torch.autograd.gradgradcheck(fn, inputs)


# --- bounded actions, the log-std floor and the size of an inner step in policy space -----------------


def _bounded(low=-0.1, high=0.1, **kwargs):
    torch.manual_seed(0)
    return GaussianMLPPolicy(3, 2, hidden_sizes=(8,), action_bounds=(low, high), **kwargs).double()


def test_bounded_policy_keeps_the_mean_in_the_box_and_starts_at_a_tenth_of_the_half_range():
    policy = _bounded(low=torch.tensor([-0.1, 0.0]), high=torch.tensor([0.1, 2.0]))
    with torch.no_grad():
        policy.mean_net[-1].bias.copy_(torch.tensor([1e4, -1e4]))  # a runaway output
    mean, log_std = policy(_randn(50, 3))
    torch.testing.assert_close(mean, torch.tensor([0.1, 0.0], dtype=D).expand(50, 2))  # saturates at the bounds
    torch.testing.assert_close(log_std.exp()[0], torch.tensor([0.01, 0.1], dtype=D))  # 0.1 x half-range
    # near the centre the squashing is the identity in normalised units: mean = c + h f / L
    policy_zero = _bounded()
    with torch.no_grad():
        policy_zero.mean_net[-1].weight.zero_()
        policy_zero.mean_net[-1].bias.fill_(1e-3)
    torch.testing.assert_close(policy_zero(_randn(4, 3))[0], torch.full((4, 2), 1e-5, dtype=D), rtol=1e-6, atol=0)
    assert "action_center" not in policy.state_dict() and set(dict(policy.named_parameters())) == {
        "mean_net.0.weight", "mean_net.0.bias", "mean_net.2.weight", "mean_net.2.bias", "log_std"}


def test_bounded_policy_score_and_kl_do_not_depend_on_the_width_of_the_box():
    """The reference parameterisation: the same network is the same policy on any box, so the inner step
    (gradient of log pi wrt the parameters) and its KL are the same for +-0.1 and +-10 actions."""
    narrow, wide = _bounded(-0.1, 0.1), _bounded(-10.0, 10.0)
    params = {k: v.detach() for k, v in narrow.named_parameters()}
    obs, noise = _randn(6, 3), _randn(6, 2)

    def score(policy):  # of the same normalised action in each box
        mean, log_std = policy(obs)
        actions = (mean + log_std.exp() * noise).detach()
        return grad(lambda p: policy.log_prob(functional_call(policy, p, (obs,)), actions).sum())(params)

    for k, v in score(narrow).items():
        torch.testing.assert_close(v, score(wide)[k])
    step = tree_map(lambda p: 0.3 * torch.ones_like(p), params)
    moved = tree_map(torch.add, params, step)
    torch.testing.assert_close(mean_kl(narrow, params, moved, obs), mean_kl(wide, params, moved, obs))


def test_log_std_floor_clamps_and_stops_the_gradient_below_it():
    policy = GaussianMLPPolicy(3, 1, hidden_sizes=(4,), init_log_std=-1.0, min_log_std=-2.0).double()
    params = {k: v.detach() for k, v in policy.named_parameters()}
    low = dict(params, log_std=torch.tensor([-5.0], dtype=D))
    assert torch.all(functional_call(policy, low, (_randn(3, 3),))[1] == -2.0)
    obs, actions = _randn(5, 3), _randn(5, 1)
    log_lik = lambda p: policy.log_prob(functional_call(policy, p, (obs,)), actions).sum()
    assert grad(log_lik)(low)["log_std"].abs().max() == 0
    assert grad(log_lik)(params)["log_std"].abs().max() > 0
    with pytest.raises(ValueError, match="min_log_std"):
        GaussianMLPPolicy(3, 1, init_log_std=-3.0, min_log_std=-2.0)
    with pytest.raises(ValueError, match="low < high"):
        GaussianMLPPolicy(3, 2, action_bounds=(0.1, -0.1))
    with pytest.raises(ValueError, match="normalized_bound"):
        GaussianMLPPolicy(3, 2, action_bounds=(-1, 1), normalized_bound=0.0)


def _hessian_quadratic(policy, params, step, obs):
    """1/2 step^T F step, F = the Hessian of KL(pi_params || pi_p) at p = params (dense reference)."""
    f = lambda p: mean_kl(policy, params, p, obs)
    hvp_value = torch.func.jvp(grad(f), (params,), (step,))[1]
    return 0.5 * sum((step[k] * hvp_value[k]).sum() for k in params)


@pytest.mark.parametrize("kind", ["gaussian", "gaussian-bounded", "categorical"])
def test_quadratic_kl_is_the_fisher_quadratic_and_the_small_step_limit_of_the_kl(kind):
    torch.manual_seed(0)
    if kind == "categorical":
        policy = CategoricalMLPPolicy(3, 4, hidden_sizes=(8,)).double()
    else:
        bounds = (-0.1, 0.1) if kind == "gaussian-bounded" else None
        policy = GaussianMLPPolicy(3, 2, hidden_sizes=(8,), init_log_std=-0.5, action_bounds=bounds).double()
    params = {k: v.detach() for k, v in policy.named_parameters()}
    step = tree_map(lambda p: _randn(*p.shape), params)
    obs, mask = _randn(2, 7, 3), (torch.arange(7) < torch.tensor([[7], [4]])).double()
    quad = quadratic_kl(policy, params, step, obs)
    torch.testing.assert_close(quad, _hessian_quadratic(policy, params, step, obs))
    small = tree_map(lambda s: 1e-3 * s, step)
    exact = mean_kl(policy, params, tree_map(torch.add, params, small), obs)
    torch.testing.assert_close(quadratic_kl(policy, params, small, obs), exact, rtol=1e-2, atol=0)
    per_row = [quadratic_kl(policy, params, step, obs[0]), quadratic_kl(policy, params, step, obs[1, :4])]
    masked = quadratic_kl(policy, params, step, obs, mask=mask)
    torch.testing.assert_close(masked, (7 * per_row[0] + 4 * per_row[1]) / 11)


def test_quadratic_kl_passes_gradcheck_and_gradgradcheck_and_vmaps():
    policy = _bounded()
    params = {k: v.detach() for k, v in policy.named_parameters()}
    step = tree_map(lambda p: _randn(*p.shape), params)
    obs = _randn(5, 3)
    fn = lambda s, t: quadratic_kl(policy, tree_map(lambda p: p + t, params), tree_map(lambda d: s * d, step), obs)
    inputs = (torch.tensor(0.7, dtype=D, requires_grad=True), torch.tensor(0.1, dtype=D, requires_grad=True))
    assert torch.autograd.gradcheck(fn, inputs)
    assert torch.autograd.gradgradcheck(fn, inputs)
    scaled = [tree_map(lambda d, i=i: d * (i + 1), step) for i in range(3)]
    batched = vmap(lambda s: quadratic_kl(policy, params, s, obs))(tree_stack(scaled))
    looped = torch.stack([quadratic_kl(policy, params, s, obs) for s in scaled])
    torch.testing.assert_close(batched, looped)
    torch.testing.assert_close(batched, looped[0] * torch.tensor([1.0, 4.0, 9.0], dtype=D))  # quadratic in the step


def _inner_problem(num_tasks=3):
    policy = _bounded()
    params = {k: v.detach() for k, v in policy.named_parameters()}
    obs, actions, adv = _randn(num_tasks, 4, 5, 3), 0.1 * _randn(num_tasks, 4, 5, 2), _randn(num_tasks, 4, 5)

    def loss_fn(p, batch):
        o, a, w = batch
        return -(policy.log_prob(functional_call(policy, p, (o,)), a) * w).mean()

    return policy, params, (obs, actions, adv), loss_fn


def test_kl_bounded_sgd_is_sgd_inside_the_bound_and_cuts_larger_steps_to_it():
    policy, params, data, loss_fn = _inner_problem()
    task = tree_map(lambda x: x[0], data)
    g = grad(loss_fn)(params, task)
    for lr, max_kl in [(1e-4, 0.1), (1.0, 0.1), (1.0, 1e-3)]:
        opt = kl_bounded_sgd(policy, task[0], lr=lr, max_kl=max_kl)
        adapted = adapt(loss_fn, params, task, opt, steps=1)
        plain = adapt(loss_fn, params, task, sgd(lr), steps=1)
        sgd_kl = quadratic_kl(policy, params, tree_map(lambda x: -lr * x, g), task[0])
        step_kl = quadratic_kl(policy, params, tree_map(torch.sub, adapted, params), task[0])
        if sgd_kl <= max_kl:  # inside the bound: exactly SGD
            for k in params:
                torch.testing.assert_close(adapted[k], plain[k])
        else:  # cut back along the SGD direction, to the bound
            torch.testing.assert_close(step_kl, torch.tensor(max_kl, dtype=D))
            scale = (adapted["log_std"] - params["log_std"]) / (plain["log_std"] - params["log_std"])
            torch.testing.assert_close(scale, torch.full_like(scale, float((max_kl / sgd_kl) ** 0.5)))
    with pytest.raises(ValueError, match="max_kl"):
        kl_bounded_sgd(policy, task[0], lr=0.1, max_kl=0.0)


def test_kl_bounded_sgd_vmaps_and_its_meta_gradient_matches_finite_differences():
    policy, params, data, loss_fn = _inner_problem()

    def post_loss(theta, batch):  # one KL-bounded step, then the loss on the same batch
        adapted = adapt(loss_fn, theta, batch, kl_bounded_sgd(policy, batch[0], lr=1.0, max_kl=0.05), steps=1)
        return loss_fn(adapted, batch)

    batched = grad(lambda th: vmap(post_loss, in_dims=(None, 0))(th, data).mean())(params)
    looped = grad(lambda th: torch.stack([post_loss(th, tree_map(lambda x, i=i: x[i], data))
                                          for i in range(3)]).mean())(params)
    for k in params:
        torch.testing.assert_close(batched[k], looped[k])
    task = tree_map(lambda x: x[0], data)
    slice_fn = lambda s: post_loss(dict(params, log_std=params["log_std"] + s), task)
    s0 = torch.tensor([0.1, -0.2], dtype=D, requires_grad=True)
    assert torch.autograd.gradcheck(slice_fn, (s0,))
    assert torch.autograd.gradgradcheck(slice_fn, (s0,))


def test_kl_bounded_sgd_with_meta_sgd_rates():
    """Per-parameter rates: equal rates give the float-lr step; any rates respect the bound; the rates'
    meta-gradient matches finite differences in every differentiating mode; wrong names fail at init."""
    policy, params, data, loss_fn = _inner_problem()
    task = tree_map(lambda x: x[0], data)
    for max_kl in (10.0, 1e-3):  # inside the bound, then cut back to it
        same = {k: torch.tensor(0.5, dtype=D) for k in params}
        by_rates = adapt(loss_fn, params, task, kl_bounded_sgd(policy, task[0], lr=same, max_kl=max_kl), steps=1)
        by_float = adapt(loss_fn, params, task, kl_bounded_sgd(policy, task[0], lr=0.5, max_kl=max_kl), steps=1)
        for k in params:
            torch.testing.assert_close(by_rates[k], by_float[k])
    g = torch.Generator().manual_seed(3)
    rates = {k: (0.2 + torch.rand(v.shape, generator=g, dtype=D)) for k, v in params.items()}  # elementwise
    plain = adapt(loss_fn, params, task, meta_sgd(rates), steps=1)
    plain_kl = quadratic_kl(policy, params, tree_map(torch.sub, plain, params), task[0])
    bound = float(plain_kl) / 4  # the Meta-SGD step is 4x over: cut to the bound, along its own direction
    bounded = adapt(loss_fn, params, task, kl_bounded_sgd(policy, task[0], lr=rates, max_kl=bound), steps=1)
    step_kl = quadratic_kl(policy, params, tree_map(torch.sub, bounded, params), task[0])
    torch.testing.assert_close(step_kl, torch.tensor(bound, dtype=D))
    for k in params:
        torch.testing.assert_close(bounded[k] - params[k], 0.5 * (plain[k] - params[k]))

    def post_loss(log_std_rate, mode):  # meta-gradient of the post-step loss w.r.t. one rate tensor
        lrs = dict(rates, log_std=log_std_rate)
        opt = kl_bounded_sgd(policy, task[0], lr=lrs, max_kl=bound)
        return loss_fn(adapt(loss_fn, params, task, opt, steps=2, mode=mode), task)

    r0 = rates["log_std"].clone().requires_grad_()
    for mode in (unrolled(), checkpointed()):
        assert torch.autograd.gradcheck(lambda r, m=mode: post_loss(r, m), (r0,))
    assert torch.autograd.gradgradcheck(lambda r: post_loss(r, unrolled()), (r0,))
    with pytest.raises(ValueError, match="kl_bounded_sgd lr"):
        adapt(loss_fn, params, task, kl_bounded_sgd(policy, task[0], lr={"log_std": r0}, max_kl=0.1), steps=1)
    with pytest.raises(TypeError, match="dict mapping parameter names to tensors"):
        kl_bounded_sgd(policy, task[0], lr={"log_std": 0.1}, max_kl=0.1)


def test_check_inner_step_warns_on_a_runaway_step_only():
    policy = GaussianMLPPolicy(3, 1, hidden_sizes=(4,))
    params = {k: v.detach() for k, v in policy.named_parameters()}
    obs = torch.randn(2, 6, 3)
    small = tree_map(lambda p: p + 1e-3, params)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        stats = check_inner_step(policy, params, small, obs)
    assert set(stats) == {"kl", "kl_max", "step_norm", "log_std_change"} and stats["kl"] < 1e-3
    # the tutorial issue: raw rewards moved log-std to 23 in one step
    with pytest.warns(InnerStepWarning, match=r"log-std moved by 23"):
        check_inner_step(policy, params, dict(params, log_std=params["log_std"] + 23.0), obs)
    # a large move of the mean alone (std unchanged)
    far = dict(params, **{"mean_net.2.bias": params["mean_net.2.bias"] + 5.0})
    with pytest.warns(InnerStepWarning, match=r"mean KL 12\.5 per state"):
        check_inner_step(policy, params, far, obs)
    with pytest.warns(InnerStepWarning, match="mean KL nan"):
        check_inner_step(policy, params, dict(params, log_std=params["log_std"] * float("nan")), obs)
    with pytest.raises(ValueError, match="leading task dimension"):
        check_inner_step(policy, params, dict(params, log_std=torch.zeros(2, 2, 1)), obs)


def test_check_inner_step_on_a_task_batch_names_the_bad_tasks():
    policy = CategoricalMLPPolicy(3, 2, hidden_sizes=(4,))
    params = {k: v.detach() for k, v in policy.named_parameters()}
    shifts = torch.tensor([0.0, 0.0, 30.0, 0.0])
    adapted = {k: v.expand(4, *v.shape).clone() for k, v in params.items()}
    adapted["logits_net.2.bias"] = adapted["logits_net.2.bias"] + shifts[:, None] * torch.tensor([1.0, -1.0])
    obs, mask = torch.randn(4, 3, 5, 3), torch.ones(4, 3, 5)
    with pytest.warns(InnerStepWarning, match=r"for task\(s\) \[2\]"):
        stats = check_inner_step(policy, params, adapted, obs, mask=mask)
    assert stats["kl"].shape == (4,) and "log_std_change" not in stats
    assert stats["kl"][2] > 5 and stats["kl"][[0, 1, 3]].abs().max() < 1e-6
    torch.testing.assert_close(stats["step_norm"], shifts * 2**0.5)


def test_xavier_weight_init_is_glorot_uniform_with_zero_biases():
    """Bounds and variance of Glorot-uniform, U(+-sqrt(6 / (n_in + n_out))): variance 2 / (n_in + n_out)."""
    torch.manual_seed(0)
    policy = GaussianMLPPolicy(300, 100, hidden_sizes=(500,), weight_init="xavier")
    for layer, (n_in, n_out) in zip((policy.mean_net[0], policy.mean_net[2]), ((300, 500), (500, 100)), strict=True):
        bound = math.sqrt(6 / (n_in + n_out))
        assert layer.weight.abs().max() <= bound and layer.weight.abs().max() > 0.99 * bound
        assert layer.weight.var().item() == pytest.approx(2 / (n_in + n_out), rel=0.02)
        assert torch.equal(layer.bias, torch.zeros_like(layer.bias))
    # the default is untouched: PyTorch's nn.Linear initialisation, draw for draw
    torch.manual_seed(1)
    default = GaussianMLPPolicy(4, 2, hidden_sizes=(8,))
    torch.manual_seed(1)
    first, second = torch.nn.Linear(4, 8), torch.nn.Linear(8, 2)
    for mine, theirs in zip(default.mean_net[::2], (first, second), strict=True):
        assert torch.equal(mine.weight, theirs.weight) and torch.equal(mine.bias, theirs.bias)


def test_unknown_weight_init_is_rejected():
    with pytest.raises(ValueError, match="weight_init must be one of"):
        GaussianMLPPolicy(3, 2, weight_init="glorot")
