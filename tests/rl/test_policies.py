"""Policies and critics: distribution maths vs torch.distributions, functional use, vmap."""

from __future__ import annotations

import pytest
import torch
from torch import distributions as td
from torch.func import functional_call, grad, vmap

from metaops.rl import (
    CategoricalMLPPolicy,
    GaussianMLPPolicy,
    QCritic,
    ValueCritic,
    categorical_entropy,
    categorical_kl,
    categorical_log_prob,
    gaussian_entropy,
    gaussian_kl,
    gaussian_log_prob,
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
