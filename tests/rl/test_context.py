"""PEARL's context pieces: product of Gaussians, KL to the unit prior, the context encoder."""

from __future__ import annotations

import pytest
import torch
from torch.func import functional_call, grad, vmap

from metaops.rl import ContextEncoder, kl_to_standard_normal, product_of_gaussians

D = torch.float64


def _factors(*shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    means = torch.randn(*shape, generator=g, dtype=D)
    variances = torch.rand(*shape, generator=g, dtype=D) * 2 + 0.1
    return means, variances


def _sequential(means, variances, prior_precision=0.0):
    """Bayesian updating one factor at a time, in (mean, variance) form (no precision sums)."""
    if prior_precision:
        mean, var = torch.zeros_like(means[0]), torch.full_like(variances[0], 1 / prior_precision)
        start = 0
    else:
        mean, var, start = means[0], variances[0], 1
    for m, v in zip(means[start:], variances[start:]):
        gain = var / (var + v)  # Kalman gain of a direct observation of z with noise v
        mean, var = mean + gain * (m - mean), (1 - gain) * var
    return mean, var


@pytest.mark.parametrize("prior_precision", [0.0, 1.0, 3.0])
def test_product_equals_sequential_bayesian_updating(prior_precision):
    means, variances = _factors(7, 4)
    mean, variance = product_of_gaussians(means, variances, prior_precision=prior_precision)
    expected_mean, expected_variance = _sequential(means, variances, prior_precision)
    torch.testing.assert_close(mean, expected_mean)
    torch.testing.assert_close(variance, expected_variance)


def test_product_of_two_unit_gaussians_by_hand():
    mean, variance = product_of_gaussians(torch.tensor([[0.0], [2.0]]), torch.tensor([[1.0], [3.0]]))
    # precisions 1 and 1/3: variance 3/4, mean (0 * 1 + 2 / 3) * 3/4 = 1/2
    torch.testing.assert_close(variance, torch.tensor([0.75]))
    torch.testing.assert_close(mean, torch.tensor([0.5]))


def test_mask_drops_factors_and_is_permutation_invariant():
    means, variances = _factors(3, 6, 2)
    mask = torch.tensor([[1, 1, 0, 1, 0, 0], [1, 0, 0, 0, 0, 0], [1, 1, 1, 1, 1, 1]])
    mean, variance = product_of_gaussians(means, variances, mask=mask)
    for i in range(3):
        keep = mask[i].bool()
        m, v = product_of_gaussians(means[i, keep], variances[i, keep])
        torch.testing.assert_close(mean[i], m)
        torch.testing.assert_close(variance[i], v)
    perm = torch.randperm(6, generator=torch.Generator().manual_seed(1))
    shuffled = product_of_gaussians(means[:, perm], variances[:, perm], mask=mask[:, perm])
    torch.testing.assert_close(shuffled[0], mean)
    torch.testing.assert_close(shuffled[1], variance)


def test_empty_context_with_the_unit_prior_is_the_prior():
    means, variances = _factors(5, 3)
    mean, variance = product_of_gaussians(means, variances, mask=torch.zeros(5), prior_precision=1.0)
    assert torch.equal(mean, torch.zeros(3, dtype=D)) and torch.equal(variance, torch.ones(3, dtype=D))


def test_variance_floor_keeps_everything_finite():
    means = torch.tensor([[1.0], [2.0]], requires_grad=True)
    variances = torch.tensor([[0.0], [1.0]], requires_grad=True)  # a zero variance: infinite precision
    mean, variance = product_of_gaussians(means, variances, min_variance=1e-7)
    (mean.sum() + variance.sum()).backward()
    assert torch.isfinite(mean).all() and torch.isfinite(variance).all()
    assert torch.isfinite(means.grad).all() and torch.isfinite(variances.grad).all()
    torch.testing.assert_close(mean, torch.tensor([1.0]), atol=1e-6, rtol=0)
    assert variance.item() <= 1e-7


def test_kl_matches_torch_distributions():
    mean, variance = _factors(4, 5)
    expected = torch.distributions.kl_divergence(
        torch.distributions.Normal(mean, variance.sqrt()), torch.distributions.Normal(0.0, 1.0)).sum(-1)
    torch.testing.assert_close(kl_to_standard_normal(mean, variance), expected)


def test_gradcheck_in_float64():
    means, variances = _factors(4, 2)
    mask = torch.tensor([1.0, 1.0, 0.0, 1.0], dtype=D)
    means.requires_grad_(), variances.requires_grad_()

    def fn(m, v):
        mean, var = product_of_gaussians(m, v, mask=mask, prior_precision=1.0)
        return mean, var, kl_to_standard_normal(mean, var)

    assert torch.autograd.gradcheck(fn, (means, variances))
    assert torch.autograd.gradgradcheck(fn, (means, variances))


def test_errors_are_clear():
    with pytest.raises(ValueError, match="same shape"):
        product_of_gaussians(torch.zeros(3, 2), torch.ones(3, 3))
    with pytest.raises(ValueError, match="mask has shape"):
        product_of_gaussians(torch.zeros(3, 2), torch.ones(3, 2), mask=torch.ones(2))
    with pytest.raises(TypeError, match="floating"):
        product_of_gaussians(torch.zeros(3, 2, dtype=torch.long), torch.ones(3, 2))
    with pytest.raises(ValueError, match="min_variance"):
        product_of_gaussians(torch.zeros(3, 2), torch.ones(3, 2), min_variance=0.0)
    with pytest.raises(ValueError, match="prior_precision"):
        product_of_gaussians(torch.zeros(3, 2), torch.ones(3, 2), prior_precision=-1.0)
    with pytest.raises(ValueError, match="shape"):
        kl_to_standard_normal(torch.zeros(2), torch.ones(3))


def test_encoder_vmap_over_tasks_equals_a_loop_in_value_and_gradient():
    torch.manual_seed(0)
    encoder = ContextEncoder(4, 3, hidden_sizes=(16, 16)).double()
    params = {k: v.detach() for k, v in encoder.named_parameters()}
    context = torch.randn(5, 9, 4, dtype=D)
    mask = (torch.rand(5, 9) < 0.7).to(D)
    mask[:, 0] = 1

    def task_loss(p, c, m):  # KL of one task's posterior: the information bottleneck term
        mean, variance = functional_call(encoder, p, (c, m))
        return kl_to_standard_normal(mean, variance) + mean.sum()

    batched = vmap(task_loss, in_dims=(None, 0, 0))(params, context, mask)
    looped = torch.stack([task_loss(params, context[i], mask[i]) for i in range(5)])
    torch.testing.assert_close(batched, looped)
    g_batched = grad(lambda p: vmap(task_loss, in_dims=(None, 0, 0))(p, context, mask).sum())(params)
    g_looped = grad(lambda p: sum(task_loss(p, context[i], mask[i]) for i in range(5)))(params)
    for name in params:
        torch.testing.assert_close(g_batched[name], g_looped[name])
    # the module's own forward agrees with the pure pieces
    means, variances = encoder.factors(context)
    expected = product_of_gaussians(means, variances, mask=mask)
    got = encoder(context, mask)
    torch.testing.assert_close(got[0], expected[0])
    torch.testing.assert_close(got[1], expected[1])
    assert (variances > 0).all()
