"""The GRU Gaussian policy and unrolling a recurrent policy over a trial."""

import math

import pytest
import torch
from torch.func import functional_call, grad, vmap

from metaops import estimators, rl


def _policy(dtype=torch.float64, **kwargs):
    torch.manual_seed(0)
    return rl.GaussianGRUPolicy(4, 2, hidden_size=3, **kwargs).to(dtype)


def test_step_equals_torch_gru_cell_for_any_batch_shape():
    policy = _policy(torch.float32)
    x, h = torch.randn(2, 5, 4), torch.randn(2, 5, 3)
    (mean, log_std), new = policy(x, h)
    reference = policy.gru(x.reshape(10, 4), h.reshape(10, 3)).reshape(2, 5, 3)
    torch.testing.assert_close(new, reference)
    torch.testing.assert_close(mean, policy.mean(reference))
    assert log_std.shape == (2, 5, 2)


def test_bounded_actions_squash_the_mean_like_the_mlp_policy():
    policy = _policy(torch.float32, action_bounds=(-0.1, 0.1), init_log_std=0.0)
    x = 1e4 * torch.randn(50, 4)
    (mean, log_std), _ = policy(x, policy.initial_carry((50,)))
    assert bool(mean.abs().max() <= 0.1)
    torch.testing.assert_close(log_std.exp(), torch.full((50, 2), 0.01))


def test_initial_carry_and_errors():
    policy = _policy()
    carry = policy.initial_carry((2, 3), dtype=torch.float64)
    assert carry.shape == (2, 3, 3) and carry.dtype == torch.float64 and not carry.any()
    with pytest.raises(ValueError, match="obs_dim \\+ act_dim \\+ 2"):
        policy(torch.zeros(2, 5, dtype=torch.float64), torch.zeros(2, 3, dtype=torch.float64))
    with pytest.raises(ValueError, match="hidden_size"):
        rl.GaussianGRUPolicy(4, 2, hidden_size=0)
    with pytest.raises(ValueError, match="min_log_std"):
        rl.GaussianGRUPolicy(4, 2, init_log_std=-1.0, min_log_std=0.0)
    with pytest.raises(ValueError, match="T >= 1"):
        rl.unroll(policy, dict(policy.named_parameters()), torch.zeros(4, dtype=torch.float64))


def test_unroll_continues_from_a_given_carry():
    policy = _policy()
    params = dict(policy.named_parameters())
    inputs = torch.randn(2, 6, 4, dtype=torch.float64)
    (whole, _), last = rl.unroll(policy, params, inputs)
    (first, _), middle = rl.unroll(policy, params, inputs[:, :4])
    (second, _), end = rl.unroll(policy, params, inputs[:, 4:], carry=middle)
    torch.testing.assert_close(torch.cat([first, second], 1), whole)
    torch.testing.assert_close(end, last)


def test_vmap_over_tasks_equals_a_loop():
    policy = _policy()
    params = {k: v.detach() + 0.1 * torch.randn(3, *v.shape, dtype=v.dtype) for k, v in policy.named_parameters()}
    inputs = torch.randn(3, 2, 5, 4, dtype=torch.float64)  # (task, trial, time, input)
    vmapped = vmap(lambda p, x: rl.unroll(policy, p, x)[0])(params, inputs)
    looped = [rl.unroll(policy, {k: v[i] for k, v in params.items()}, inputs[i])[0] for i in range(3)]
    for j in range(2):
        torch.testing.assert_close(vmapped[j], torch.stack([d[j] for d in looped]))


def _ppo_loss(policy, params, inputs, actions, old_log_probs, advantages, mask):
    dist, _ = rl.unroll(policy, params, inputs)
    log_probs = policy.log_prob(dist, actions)
    objective = estimators.ppo_clip_objective(log_probs, old_log_probs, advantages, clip=0.2, mask=mask)
    return -objective.sum() / mask.sum()


def _trial_data(policy):
    g = torch.Generator().manual_seed(1)
    inputs = torch.randn(2, 4, 4, dtype=torch.float64, generator=g)
    actions = torch.randn(2, 4, 2, dtype=torch.float64, generator=g)
    mask = torch.tensor([[1.0, 1.0, 1.0, 1.0], [1.0, 1.0, 0.0, 0.0]], dtype=torch.float64)
    with torch.no_grad():
        dist, _ = rl.unroll(policy, dict(policy.named_parameters()), inputs)
        old = policy.log_prob(dist, actions) - 0.05 * torch.randn(2, 4, dtype=torch.float64, generator=g)
    advantages = torch.randn(2, 4, dtype=torch.float64, generator=g)
    return inputs, actions, old, advantages, mask


def test_ppo_loss_gradient_through_the_unrolled_gru_matches_finite_differences():
    policy = _policy()
    data = _trial_data(policy)
    names = ["gru.weight_hh", "gru.bias_ih", "log_std"]
    base = {k: v.detach() for k, v in policy.named_parameters()}

    def loss(*leaves):
        return _ppo_loss(policy, {**base, **dict(zip(names, leaves))}, *data)

    leaves = tuple(base[k].clone().requires_grad_() for k in names)
    assert torch.autograd.gradcheck(loss, leaves)
    # torch.func.grad through the loop agrees with autograd
    by_func = grad(lambda p: _ppo_loss(policy, p, *data))(base)
    by_autograd = torch.autograd.grad(loss(*leaves), leaves)
    for name, g in zip(names, by_autograd):
        torch.testing.assert_close(by_func[name], g)


def test_functional_call_uses_the_given_params():
    policy = _policy()
    params = {k: torch.zeros_like(v) for k, v in policy.named_parameters()}
    (mean, log_std), carry = functional_call(policy, params, (torch.randn(2, 4, dtype=torch.float64),
                                                              policy.initial_carry((2,), dtype=torch.float64)))
    assert not mean.any() and not log_std.any() and not carry.any()
    assert math.isclose(float(policy.entropy((mean, log_std))[0]), 2 * 0.5 * math.log(2 * math.pi * math.e))
