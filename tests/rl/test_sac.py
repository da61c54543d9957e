"""SAC building blocks: the squashed density against independent formulations, the losses against
hand-computed values, gradient checks, and vmap over tasks against a per-task Python loop."""

from __future__ import annotations

import math

import pytest
import torch
from torch import distributions as td
from torch import nn
from torch.func import functional_call, grad, vmap

from metaops.rl import (
    SquashedGaussianMLPPolicy,
    Transitions,
    TwinQCritic,
    polyak_update,
    sac_actor_loss,
    sac_critic_loss,
    sac_loss,
    sac_soft_target,
    sac_temperature_loss,
    squashed_gaussian_log_prob,
    squashed_gaussian_sample,
)
from metaops.tree import tree_map, tree_stack
from tests._helpers import assert_trees_close

D = torch.float64


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _randn(g, *shape):
    return torch.randn(*shape, generator=g, dtype=D)


# ---------------------------------------------------------------------------------------------
# the squashed Gaussian density


@pytest.mark.parametrize("center, scale", [(0.0, 1.0), (0.5, 2.5)])
def test_squashed_density_integrates_to_one_in_1d(center, scale):
    """Change of variables: the density in action units integrates to 1 over the box."""
    t = torch.linspace(-1.0, 1.0, 400_001, dtype=D)[1:-1]
    actions = center + scale * t
    u = torch.atanh(t).unsqueeze(-1)
    mean, log_std = torch.full_like(u, 0.3), torch.full_like(u, math.log(0.8))
    density = squashed_gaussian_log_prob(mean, log_std, u, scale=scale).exp()
    assert torch.trapezoid(density, actions).item() == pytest.approx(1.0, abs=1e-5)
    # the test can fail: without the log-det correction the "density" does not integrate to 1
    naive = td.Normal(0.3, 0.8).log_prob(u.squeeze(-1)).exp()
    assert abs(torch.trapezoid(naive, actions).item() - 1.0) > 0.1


@pytest.mark.parametrize("bounds", [None, (torch.tensor([-1.0, 0.0, -3.0]), torch.tensor([3.0, 0.5, -2.0]))])
def test_squashed_log_prob_matches_torch_transformed_distribution(bounds):
    g = _gen(1)
    mean, log_std, noise = _randn(g, 7, 3), 0.3 * _randn(g, 7, 3), _randn(g, 7, 3)
    center, scale = (0.0, 1.0)
    if bounds is not None:
        center, scale = (bounds[1] + bounds[0]).to(D) / 2, (bounds[1] - bounds[0]).to(D) / 2
    actions, log_probs = squashed_gaussian_sample(mean, log_std, noise, center=center, scale=scale)
    transforms = [td.TanhTransform()] + ([] if bounds is None else [td.AffineTransform(center, scale)])
    reference = td.Independent(td.TransformedDistribution(td.Normal(mean, log_std.exp()), transforms), 1)
    torch.testing.assert_close(log_probs, reference.log_prob(actions), rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(actions, center + scale * torch.tanh(mean + log_std.exp() * noise))
    low, high = center - scale * torch.ones(3, dtype=D), center + scale * torch.ones(3, dtype=D)
    assert bool(((actions >= low) & (actions <= high)).all())


def test_squashed_log_prob_is_stable_where_the_naive_formula_overflows():
    u = torch.tensor([[0.5], [5.0], [9.0], [20.0], [60.0], [-60.0]])  # float32
    mean, log_std = torch.zeros_like(u), torch.zeros_like(u)
    stable = squashed_gaussian_log_prob(mean, log_std, u)
    # exact: log(1 - tanh^2 u) = log 4 - 2|u| - 2 log(1 + e^{-2|u|}), evaluated in Python floats
    log_1m_tanh_sq = lambda x: math.log(4.0) - 2 * abs(x) - 2 * math.log1p(math.exp(-2 * abs(x)))
    exact = [-0.5 * x * x - 0.5 * math.log(2 * math.pi) - log_1m_tanh_sq(x) for x in u.squeeze(-1).tolist()]
    torch.testing.assert_close(stable, torch.tensor(exact), rtol=1e-6, atol=1e-5)
    naive = td.Normal(0.0, 1.0).log_prob(u).sum(-1) - torch.log(1 - torch.tanh(u) ** 2).sum(-1)
    assert abs(naive[2].item() - exact[2]) > 1e-2  # float32 cancellation in 1 - tanh^2 already at u = 9
    assert torch.isinf(naive[3:]).all()  # 1 - tanh(20)^2 rounds to 0
    x = u.clone().requires_grad_()
    (gradient,) = torch.autograd.grad(squashed_gaussian_log_prob(mean, log_std, x).sum(), x)
    # d/du [log N(u) - log(1 - tanh^2 u)] = -u + 2 tanh(u)
    torch.testing.assert_close(gradient, -u + 2 * torch.tanh(u))


def test_squashed_log_prob_gradcheck_including_large_pre_tanh():
    g = _gen(2)
    mean, log_std = _randn(g, 4, 2), 0.2 * _randn(g, 4, 2)
    u = torch.tensor([[0.1, -0.3], [4.0, -6.0], [12.0, 0.0], [-15.0, 2.0]], dtype=D)
    inputs = tuple(x.clone().requires_grad_() for x in (mean, log_std, u))
    f = lambda m, s, x: squashed_gaussian_log_prob(m, s, x, scale=torch.tensor([0.5, 3.0], dtype=D))
    assert torch.autograd.gradcheck(f, inputs)
    assert torch.autograd.gradgradcheck(f, inputs)


def test_squashed_errors_name_the_shapes_and_the_scale():
    with pytest.raises(ValueError, match=r"noise has shape \(3,\) but mean has shape \(2,\)"):
        squashed_gaussian_sample(torch.zeros(2), torch.zeros(2), torch.zeros(3))
    with pytest.raises(ValueError, match="scale must be positive"):
        squashed_gaussian_log_prob(torch.zeros(2), torch.zeros(2), torch.zeros(2), scale=0.0)
    with pytest.raises(TypeError, match="noise must be a floating-point tensor"):
        squashed_gaussian_sample(torch.zeros(2), torch.zeros(2), torch.zeros(2, dtype=torch.long))


def test_policy_bounds_clamp_and_mode():
    policy = SquashedGaussianMLPPolicy(2, 2, hidden_sizes=(4,), action_bounds=(-1.0, [3.0, 1.0]),
                                       log_std_bounds=(-5.0, 1.0)).double()
    obs = 1e3 * _randn(_gen(3), 6, 2)
    with torch.no_grad():
        policy.log_std_head.weight.zero_()
        policy.log_std_head.bias.copy_(torch.tensor([40.0, -40.0]))
    mean, log_std = policy(obs)
    assert log_std.tolist() == [[1.0, -5.0]] * 6  # clamped to the bounds
    mode = policy.mode((mean, log_std))
    assert mode.dtype == D and bool((mode >= -1).all() and (mode[:, 0] <= 3).all() and (mode[:, 1] <= 1).all())
    torch.testing.assert_close(policy.mode((torch.zeros(2, dtype=D), log_std[0])), torch.tensor([1.0, 0.0], dtype=D))
    assert "action_scale" not in policy.state_dict()  # constants are not checkpointed
    with pytest.raises(ValueError, match="low < high"):
        SquashedGaussianMLPPolicy(2, 2, action_bounds=(1.0, 1.0))
    with pytest.raises(ValueError, match="log_std_bounds"):
        SquashedGaussianMLPPolicy(2, 2, log_std_bounds=(2.0, -2.0))


def test_twin_critics_are_independent_networks():
    critic = TwinQCritic(3, 2, hidden_sizes=(8,)).double()
    q1, q2 = critic(_randn(_gen(4), 5, 3), _randn(_gen(5), 5, 2))
    assert q1.shape == q2.shape == (5,) and not torch.allclose(q1, q2)
    assert {k.split(".")[0] for k, _ in critic.named_parameters()} == {"q1", "q2"}


# ---------------------------------------------------------------------------------------------
# polyak averaging


def test_polyak_update_hand_values_purity_and_no_graph():
    target = {"w": torch.tensor([0.0, 1.0]), "b": torch.tensor(4.0)}
    online = {"w": torch.tensor([2.0, -1.0], requires_grad=True), "b": torch.tensor(0.0, requires_grad=True)}
    new = polyak_update(target, online, tau=0.1)
    torch.testing.assert_close(new["w"], torch.tensor([0.2, 0.8]))  # 0.9 * 0 + 0.1 * 2, 0.9 * 1 + 0.1 * -1
    torch.testing.assert_close(new["b"], torch.tensor(3.6))
    assert not new["w"].requires_grad and not new["b"].requires_grad
    torch.testing.assert_close(target["w"], torch.tensor([0.0, 1.0]))  # inputs untouched
    assert polyak_update(target, online, tau=1)["w"].tolist() == [2.0, -1.0]
    # 100 steps with tau: the target moves by 1 - (1 - tau)^100 of the gap
    t = {"w": torch.zeros((), dtype=D)}
    for _ in range(100):
        t = polyak_update(t, {"w": torch.ones((), dtype=D)}, tau=0.005)
    assert t["w"].item() == pytest.approx(1 - 0.995**100, rel=1e-12)


def test_polyak_update_works_on_task_stacks_and_under_vmap():
    target, online = {"w": torch.zeros(3, 2)}, {"w": torch.arange(6.0).reshape(3, 2)}
    direct = polyak_update(target, online, tau=0.5)
    mapped = vmap(lambda t, p: polyak_update(t, p, tau=0.5))(target, online)
    torch.testing.assert_close(direct["w"], mapped["w"])
    torch.testing.assert_close(direct["w"], 0.5 * online["w"])


def test_polyak_update_errors():
    with pytest.raises(ValueError, match=r"tau must be a number in \(0, 1\]"):
        polyak_update({"w": torch.zeros(1)}, {"w": torch.zeros(1)}, tau=0.0)
    with pytest.raises(ValueError, match="tau"):
        polyak_update({"w": torch.zeros(1)}, {"w": torch.zeros(1)}, tau=1.5)
    with pytest.raises(ValueError, match=r"only in target \['v'\], only in params \['w'\]"):
        polyak_update({"v": torch.zeros(1)}, {"w": torch.zeros(1)}, tau=0.5)
    with pytest.raises(ValueError, match=r"shape \(1,\) but the matching parameter has shape \(3, 1\)"):
        polyak_update({"w": torch.zeros(1)}, {"w": torch.zeros(3, 1)}, tau=0.5)
    with pytest.raises(ValueError, match=r"dtype torch.float32 but the matching parameter has dtype torch.float64"):
        polyak_update({"w": torch.zeros(1)}, {"w": torch.zeros(1, dtype=torch.float64)}, tau=0.5)


# ---------------------------------------------------------------------------------------------
# the losses on hand-computed values


def _linear_modules():
    """1-D linear policy and critics (no hidden layers) so that every value is computable by hand."""
    policy = SquashedGaussianMLPPolicy(1, 1, hidden_sizes=()).double()
    critic = TwinQCritic(1, 1, hidden_sizes=()).double()

    def t(value):
        return torch.tensor(value, dtype=D)

    policy_params = {"mean_head.weight": t([0.5]), "mean_head.bias": t(0.1),
                     "log_std_head.weight": t([0.0]), "log_std_head.bias": t(math.log(0.5))}
    policy_params = {k: v.reshape(p.shape) for (k, p), v in zip(policy.named_parameters(), policy_params.values())}
    names = [k for k, _ in critic.named_parameters()]
    assert names == ["q1.net.0.weight", "q1.net.0.bias", "q2.net.0.weight", "q2.net.0.bias"]
    # online: Q1 = s + 2a, Q2 = s/2 - a + 0.3
    online = dict(zip(names, [t([[1.0, 2.0]]), t([0.0]), t([[0.5, -1.0]]), t([0.3])]))
    target = dict(zip(names, [t([[0.8, 1.5]]), t([0.1]), t([[0.4, -0.5]]), t([0.2])]))
    return policy, critic, policy_params, online, target


def _by_hand_policy(s, eps, center, scale):
    """(action, log-prob) of the linear policy: u = 0.5 s + 0.1 + 0.5 eps, a = c + h tanh(u)."""
    u = 0.5 * s + 0.1 + 0.5 * eps
    log_normal = -0.5 * eps**2 - math.log(0.5) - 0.5 * math.log(2 * math.pi)
    return center + scale * math.tanh(u), log_normal - math.log(1 - math.tanh(u) ** 2) - math.log(scale)


BATCH = dict(obs=[1.0, -2.0], actions=[0.2, -0.4], rewards=[1.0, 0.5], next_obs=[0.5, 3.0], terminated=[False, True])
NOISE, NEXT_NOISE = [0.7, -0.2], [0.3, -1.2]


def _batch():
    col = lambda v: torch.tensor(v, dtype=D).unsqueeze(-1)
    return Transitions(col(BATCH["obs"]), col(BATCH["actions"]), torch.tensor(BATCH["rewards"], dtype=D),
                       col(BATCH["next_obs"]), torch.tensor(BATCH["terminated"]))


@pytest.mark.parametrize("bounds", [None, (-1.0, 3.0)])
def test_losses_against_hand_computed_values(bounds):
    policy, critic, policy_params, online, target_params = _linear_modules()
    center, scale = (0.0, 1.0) if bounds is None else ((bounds[0] + bounds[1]) / 2, (bounds[1] - bounds[0]) / 2)
    if bounds is not None:
        policy = SquashedGaussianMLPPolicy(1, 1, hidden_sizes=(), action_bounds=bounds).double()
    alpha, gamma = 0.2, 0.9
    log_alpha = torch.tensor(math.log(alpha), dtype=D)
    batch = _batch()
    q1 = lambda s, a: s + 2 * a
    q2 = lambda s, a: 0.5 * s - a + 0.3
    t1 = lambda s, a: 0.8 * s + 1.5 * a + 0.1
    t2 = lambda s, a: 0.4 * s - 0.5 * a + 0.2

    ys = []
    for r, s2, d, eps in zip(BATCH["rewards"], BATCH["next_obs"], BATCH["terminated"], NEXT_NOISE):
        a2, logp2 = _by_hand_policy(s2, eps, center, scale)
        ys.append(r + gamma * (1 - d) * (min(t1(s2, a2), t2(s2, a2)) - alpha * logp2))
    y = sac_soft_target(policy, policy_params, critic, target_params, log_alpha, batch,
                        torch.tensor(NEXT_NOISE, dtype=D).unsqueeze(-1), gamma=gamma)
    torch.testing.assert_close(y, torch.tensor(ys, dtype=D), rtol=1e-12, atol=1e-12)
    assert ys[1] == 0.5  # the terminal transition does not bootstrap

    critic_by_hand = 0.5 * sum(
        sum((q(s, a) - yi) ** 2 for s, a, yi in zip(BATCH["obs"], BATCH["actions"], ys)) / 2 for q in (q1, q2)
    )
    critic_loss = sac_critic_loss(critic, online, batch, y)
    assert critic_loss.item() == pytest.approx(critic_by_hand, rel=1e-12)

    terms, log_probs_by_hand = [], []
    for s, eps in zip(BATCH["obs"], NOISE):
        a, logp = _by_hand_policy(s, eps, center, scale)
        terms.append(alpha * logp - min(q1(s, a), q2(s, a)))
        log_probs_by_hand.append(logp)
    actor_loss, log_probs = sac_actor_loss(policy, policy_params, critic, online, log_alpha, batch.obs,
                                           torch.tensor(NOISE, dtype=D).unsqueeze(-1))
    assert actor_loss.item() == pytest.approx(sum(terms) / 2, rel=1e-12)
    torch.testing.assert_close(log_probs, torch.tensor(log_probs_by_hand, dtype=D))

    temperature_loss = sac_temperature_loss(log_alpha, log_probs, target_entropy=-1.0)
    by_hand = -math.log(alpha) * (sum(log_probs_by_hand) / 2 - 1.0)
    assert temperature_loss.item() == pytest.approx(by_hand, rel=1e-12)

    # sac_loss is their sum, with the default target entropy -act_dim + log(half-range) = -1 + log(scale)
    params = {"policy": policy_params, "critic": online, "log_alpha": log_alpha}
    loss, aux = sac_loss(policy, critic, params, target_params, batch, torch.tensor(NOISE, dtype=D).unsqueeze(-1),
                         torch.tensor(NEXT_NOISE, dtype=D).unsqueeze(-1), gamma=gamma)
    by_hand_default = -math.log(alpha) * (sum(log_probs_by_hand) / 2 - 1.0 + math.log(scale))
    assert loss.item() == pytest.approx(critic_by_hand + sum(terms) / 2 + by_hand_default, rel=1e-12)
    assert aux["alpha"].item() == pytest.approx(alpha)
    assert aux["entropy"].item() == pytest.approx(-sum(log_probs_by_hand) / 2, rel=1e-12)
    q_mean = sum(q(s, a) for q in (q1, q2) for s, a in zip(BATCH["obs"], BATCH["actions"])) / 4
    assert aux["q"].item() == pytest.approx(q_mean, rel=1e-12)


def test_temperature_gradient_sign_follows_the_entropy_gap():
    log_alpha = torch.tensor(0.0, requires_grad=True)
    low_entropy = torch.full((8,), 3.0)  # entropy -3 < target -1: alpha must grow (gradient < 0)
    (g,) = torch.autograd.grad(sac_temperature_loss(log_alpha, low_entropy, target_entropy=-1.0), log_alpha)
    assert g.item() == pytest.approx(-2.0)


# ---------------------------------------------------------------------------------------------
# gradients: each group gets its own loss's gradient; gradcheck in float64; grad == autograd


def _smooth_setup(seed=0, tasks=None, batch_size=5, obs_dim=3, act_dim=2):
    """Tanh networks (smooth, for finite differences) in float64, a batch and noise."""
    torch.manual_seed(seed)
    policy = SquashedGaussianMLPPolicy(obs_dim, act_dim, hidden_sizes=(6,), activation=nn.Tanh,
                                       action_bounds=(-2.0, 1.0)).double()
    critic = TwinQCritic(obs_dim, act_dim, hidden_sizes=(6,), activation=nn.Tanh).double()
    lead = () if tasks is None else (tasks,)

    def init(module):
        if tasks is None:
            return {k: v.detach().clone() for k, v in module.named_parameters()}
        copies = [type(module)(obs_dim, act_dim, hidden_sizes=(6,), activation=nn.Tanh).double() for _ in range(tasks)]
        return tree_stack([{k: v.detach() for k, v in m.named_parameters()} for m in copies])

    params = {"policy": init(policy), "critic": init(critic),
              "log_alpha": torch.linspace(-1.0, 0.5, tasks or 1, dtype=D).reshape(lead)}
    target = tree_map(lambda v: v + 0.05 * torch.randn_like(v), params["critic"])
    g = _gen(seed + 10)
    batch = Transitions(_randn(g, *lead, batch_size, obs_dim), torch.rand(*lead, batch_size, act_dim, generator=g,
                        dtype=D) * 3 - 2, _randn(g, *lead, batch_size), _randn(g, *lead, batch_size, obs_dim),
                        torch.rand(*lead, batch_size, generator=g) < 0.3)
    noise, next_noise = _randn(g, *lead, batch_size, act_dim), _randn(g, *lead, batch_size, act_dim)
    return policy, critic, params, target, batch, noise, next_noise


def test_sac_loss_gives_each_group_its_own_gradient():
    policy, critic, params, target, batch, noise, next_noise = _smooth_setup()
    total = grad(lambda p: sac_loss(policy, critic, p, target, batch, noise, next_noise, gamma=0.99)[0])(params)
    y = sac_soft_target(policy, params["policy"], critic, target, params["log_alpha"], batch, next_noise, gamma=0.99)
    critic_grad = grad(lambda c: sac_critic_loss(critic, c, batch, y))(params["critic"])
    actor_grad = grad(lambda p: sac_actor_loss(policy, p, critic, params["critic"], params["log_alpha"],
                                               batch.obs, noise)[0])(params["policy"])
    _, log_probs = sac_actor_loss(policy, params["policy"], critic, params["critic"], params["log_alpha"],
                                  batch.obs, noise)
    default_target = -2.0 + 2 * math.log(1.5)  # -act_dim + sum(log h), h = (1 - (-2)) / 2 in both dimensions
    alpha_grad = grad(lambda a: sac_temperature_loss(a, log_probs, target_entropy=default_target))(params["log_alpha"])
    assert_trees_close(total, {"policy": actor_grad, "critic": critic_grad, "log_alpha": alpha_grad})
    assert all(bool(v.abs().sum() > 0) for v in total["critic"].values())  # not trivially zero


def test_torch_func_grad_equals_autograd_with_create_graph():
    policy, critic, params, target, batch, noise, next_noise = _smooth_setup(seed=1)
    functional = grad(lambda p: sac_loss(policy, critic, p, target, batch, noise, next_noise, gamma=0.9)[0])(params)
    leaves = tree_map(lambda v: v.clone().requires_grad_(), params)
    loss, _ = sac_loss(policy, critic, leaves, target, batch, noise, next_noise, gamma=0.9)
    flat = [*leaves["policy"].values(), *leaves["critic"].values(), leaves["log_alpha"]]
    autograd = torch.autograd.grad(loss, flat, create_graph=True)
    assert_trees_close([*functional["policy"].values(), *functional["critic"].values(), functional["log_alpha"]],
                       list(autograd))


def _as_function(loss, params):
    names = list(params)
    return (lambda *leaves: loss(dict(zip(names, leaves, strict=True)))), tuple(
        params[k].clone().requires_grad_() for k in names)


def test_gradcheck_critic_actor_and_temperature_losses_in_float64():
    policy, critic, params, target, batch, noise, next_noise = _smooth_setup(seed=2, batch_size=3)
    y = sac_soft_target(policy, params["policy"], critic, target, params["log_alpha"], batch, next_noise, gamma=0.99)
    f, inputs = _as_function(lambda c: sac_critic_loss(critic, c, batch, y), params["critic"])
    assert torch.autograd.gradcheck(f, inputs)
    assert torch.autograd.gradgradcheck(f, inputs)
    f, inputs = _as_function(lambda p: sac_actor_loss(policy, p, critic, params["critic"], params["log_alpha"],
                                                      batch.obs, noise)[0], params["policy"])
    assert torch.autograd.gradcheck(f, inputs)
    assert torch.autograd.gradgradcheck(f, inputs)
    _, log_probs = sac_actor_loss(policy, params["policy"], critic, params["critic"], params["log_alpha"],
                                  batch.obs, noise)
    log_alpha = params["log_alpha"].clone().requires_grad_()
    assert torch.autograd.gradcheck(lambda a: sac_temperature_loss(a, log_probs, target_entropy=-2.0), (log_alpha,))


# ---------------------------------------------------------------------------------------------
# one expert per task: vmap over tasks == a per-task Python loop


TASKS = 3


def _per_task_loss(policy, critic):
    def loss(p, t, b, n, nn_):
        return sac_loss(policy, critic, p, t, b, n, nn_, gamma=0.99)

    return loss


def test_vmapped_gradients_equal_a_per_task_loop():
    policy, critic, params, target, batch, noise, next_noise = _smooth_setup(seed=3, tasks=TASKS)
    loss = _per_task_loss(policy, critic)
    batched, aux = vmap(grad(loss, has_aux=True))(params, target, batch, noise, next_noise)
    for k in range(TASKS):
        at = lambda tree, k=k: tree_map(lambda x: x[k], tree)
        looped, aux_k = grad(loss, has_aux=True)(at(params), at(target), Transitions(*at(tuple(batch))), noise[k],
                                                 next_noise[k])
        assert_trees_close(at(batched), looped)
        assert_trees_close(at(aux), aux_k)


def test_vmapped_adam_update_equals_a_per_task_loop():
    """Three SAC updates (losses, Adam, Polyak) for three tasks in one batched call each."""
    policy, critic, params, target, *_ = _smooth_setup(seed=4, tasks=TASKS)
    loss = _per_task_loss(policy, critic)
    g = _gen(40)
    steps = []
    for _ in range(3):
        batch = Transitions(_randn(g, TASKS, 5, 3), _randn(g, TASKS, 5, 2).tanh(), _randn(g, TASKS, 5),
                            _randn(g, TASKS, 5, 3), torch.rand(TASKS, 5, generator=g) < 0.2)
        steps.append((batch, _randn(g, TASKS, 5, 2), _randn(g, TASKS, 5, 2)))

    # batched: stacked leaves, one Adam, losses summed over tasks
    stacked = tree_map(lambda v: v.clone().requires_grad_(), params)
    leaves = [*stacked["policy"].values(), *stacked["critic"].values(), stacked["log_alpha"]]
    optimizer = torch.optim.Adam(leaves, lr=1e-2)
    stacked_target = target
    for batch, noise, next_noise in steps:
        losses, _ = vmap(loss)(stacked, stacked_target, batch, noise, next_noise)
        optimizer.zero_grad()
        losses.sum().backward()
        optimizer.step()
        stacked_target = polyak_update(stacked_target, stacked["critic"], tau=0.1)

    for k in range(TASKS):
        at = lambda tree, k=k: tree_map(lambda x: x[k], tree)
        own = tree_map(lambda v: v.clone().requires_grad_(), at(params))
        own_leaves = [*own["policy"].values(), *own["critic"].values(), own["log_alpha"]]
        own_optimizer = torch.optim.Adam(own_leaves, lr=1e-2)
        own_target = at(target)
        for batch, noise, next_noise in steps:
            value, _ = loss(own, own_target, Transitions(*at(tuple(batch))), noise[k], next_noise[k])
            own_optimizer.zero_grad()
            value.backward()
            own_optimizer.step()
            own_target = polyak_update(own_target, own["critic"], tau=0.1)
        assert_trees_close(tree_map(torch.Tensor.detach, at(stacked)), tree_map(torch.Tensor.detach, own),
                           rtol=1e-9, atol=1e-11)
        assert_trees_close(at(stacked_target), own_target, rtol=1e-9, atol=1e-11)
    moved = stacked["policy"]["mean_head.weight"] - params["policy"]["mean_head.weight"]
    assert bool(moved.abs().amax(dim=(1, 2)).gt(0).all())  # every task trained


# ---------------------------------------------------------------------------------------------
# errors


def test_loss_errors_name_what_is_wrong():
    policy, critic, params, target, batch, noise, next_noise = _smooth_setup()
    with pytest.raises(ValueError, match=r"missing \['log_alpha'\]"):
        sac_loss(policy, critic, {"policy": params["policy"], "critic": params["critic"]}, target, batch, noise,
                 next_noise, gamma=0.99)
    bad = batch._replace(rewards=batch.rewards[:3])
    with pytest.raises(ValueError, match=r"batch.obs has shape \(5, 3\) but batch.rewards has shape \(3,\)"):
        sac_soft_target(policy, params["policy"], critic, target, params["log_alpha"], bad, next_noise, gamma=0.99)
    with pytest.raises(ValueError, match=r"batch.terminated has shape \(4,\), expected \(5,\)"):
        sac_soft_target(policy, params["policy"], critic, target, params["log_alpha"],
                        batch._replace(terminated=batch.terminated[:4]), next_noise, gamma=0.99)
    nan_next_obs = batch.next_obs.clone()
    nan_next_obs[2, 0] = float("nan")
    with pytest.raises(ValueError, match=r"batch.next_obs contains 1 non-finite value\(s\) \(NaN or inf\)"):
        sac_soft_target(policy, params["policy"], critic, target, params["log_alpha"],
                        batch._replace(next_obs=nan_next_obs), next_noise, gamma=0.99)
    with pytest.raises(TypeError, match="batch.rewards must be a floating-point tensor"):
        sac_soft_target(policy, params["policy"], critic, target, params["log_alpha"],
                        batch._replace(rewards=batch.rewards.long()), next_noise, gamma=0.99)
    with pytest.raises(ValueError, match=r"gamma must be a number in \[0, 1\]"):
        sac_soft_target(policy, params["policy"], critic, target, params["log_alpha"], batch, next_noise, gamma=1.5)
    with pytest.raises(ValueError, match=r"target has shape \(4,\) but the Q-values have shape \(5,\)"):
        sac_critic_loss(critic, params["critic"], batch, torch.zeros(4, dtype=D))
    with pytest.raises(ValueError, match=r"log_alpha must be a scalar"):
        sac_temperature_loss(torch.zeros(1), torch.zeros(3), target_entropy=-1.0)
    with pytest.raises(ValueError, match=r"noise has shape \(5, 1\) but mean has shape \(5, 2\)"):
        sac_actor_loss(policy, params["policy"], critic, params["critic"], params["log_alpha"], batch.obs,
                       noise[:, :1])


def test_functional_call_uses_the_given_parameters_not_the_modules():
    policy, critic, params, target, batch, noise, next_noise = _smooth_setup(seed=5)
    zero = {k: torch.zeros_like(v) for k, v in params["critic"].items()}
    qs = functional_call(critic, zero, (batch.obs, batch.actions))
    assert all(bool((q == 0).all()) for q in qs)
    # with all-zero target critics the target is r - gamma (1 - d) alpha log pi(a'|s')
    y = sac_soft_target(policy, params["policy"], critic, zero, params["log_alpha"], batch, next_noise, gamma=0.5)
    dist = functional_call(policy, params["policy"], (batch.next_obs,))
    _, next_log_probs = policy.sample(dist, next_noise)
    expected = batch.rewards - 0.5 * (~batch.terminated) * params["log_alpha"].exp() * next_log_probs
    torch.testing.assert_close(y, expected.detach())


def test_default_entropy_target_follows_the_action_units():
    """-dim(A) in the unit box: the same policy mapped onto a box of half-ranges h gets the same temperature step.

    In the box the log-density drops by sum(log h); a target of -dim(A) alone would push alpha the
    other way for h = 0.1 (the bug of a unit-box target in action units).
    """
    torch.manual_seed(0)
    unit = SquashedGaussianMLPPolicy(3, 2, hidden_sizes=(8,)).double()
    boxed = SquashedGaussianMLPPolicy(3, 2, hidden_sizes=(8,), action_bounds=(-0.1, 0.1)).double()
    boxed.load_state_dict(unit.state_dict())
    critic = TwinQCritic(3, 2, hidden_sizes=(8,)).double()
    g = _gen(3)
    obs = _randn(g, 16, 3)
    batch = Transitions(obs, torch.rand(16, 2, generator=g, dtype=D) * 0.2 - 0.1, _randn(g, 16), _randn(g, 16, 3),
                        torch.zeros(16, dtype=torch.bool))
    noise, next_noise = _randn(g, 16, 2), _randn(g, 16, 2)
    grads = {}
    for name, policy in (("unit", unit), ("boxed", boxed)):
        params = {"policy": {k: v.detach() for k, v in policy.named_parameters()},
                  "critic": {k: v.detach() for k, v in critic.named_parameters()},
                  "log_alpha": torch.zeros((), dtype=D)}
        loss = lambda a, policy=policy, params=params: sac_loss(  # noqa: E731
            policy, critic, {**params, "log_alpha": a}, params["critic"], batch, noise, next_noise, gamma=0.99)[1][
            "temperature_loss"]
        grads[name] = grad(loss)(params["log_alpha"])
    torch.testing.assert_close(grads["boxed"], grads["unit"])
    # and the explicit unit-box target in the box's units gives a different (wrong-signed here) step
    _, log_probs = sac_actor_loss(boxed, {k: v.detach() for k, v in boxed.named_parameters()}, critic,
                                  {k: v.detach() for k, v in critic.named_parameters()}, torch.zeros((), dtype=D),
                                  obs, noise)
    naive = grad(lambda a: sac_temperature_loss(a, log_probs, target_entropy=-2.0))(torch.zeros((), dtype=D))
    assert not torch.allclose(naive, grads["unit"])
