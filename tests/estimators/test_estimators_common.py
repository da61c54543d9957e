"""Shared battery for every estimator: masks, vmap == loop, transforms and bad input."""

from __future__ import annotations

import pytest
import torch
from torch.func import grad, vmap

from metaops.estimators import (
    dice_objective,
    loaded_dice_objective,
    lvc_objective,
    score_function_objective,
)

DTYPE = torch.float64
B, T = 3, 5

# Each estimator as f(log_probs, second, third, mask) with second/third (..., T) constants.
ESTIMATORS = {
    "dice": lambda lp, x, y, mask=None: dice_objective(lp, x, gamma=0.9, mask=mask),
    "dice_baseline": lambda lp, x, y, mask=None: dice_objective(lp, x, gamma=0.9, baseline=y, mask=mask),
    "loaded_dice": lambda lp, x, y, mask=None: loaded_dice_objective(lp, x, gamma=0.95, decay=0.8, mask=mask),
    "lvc": lambda lp, x, y, mask=None: lvc_objective(lp, x, mask=mask),
    "lvc_importance_weighted": lambda lp, x, y, mask=None: lvc_objective(lp, x, sampling_log_probs=y, mask=mask),
    "score_function": lambda lp, x, y, mask=None: score_function_objective(lp, x, mask=mask),
}
NAMES = list(ESTIMATORS)


def _data(seed=0):
    g = torch.Generator().manual_seed(seed)
    theta = torch.randn(B, T, generator=g, dtype=DTYPE)
    x = torch.randn(B, T, generator=g, dtype=DTYPE)
    y = torch.randn(B, T, generator=g, dtype=DTYPE)
    mask = torch.ones(B, T, dtype=torch.bool)
    mask[1, 3:] = False
    mask[2, 1:] = False
    return theta, x, y, mask


def _log_probs(theta):
    # a smooth, nonlinear, elementwise map from parameters to log-probabilities (log_softmax:
    # logsigmoid hits a torch forward-AD-under-vmap resize warning unrelated to metaops)
    return torch.log_softmax(torch.stack([theta, 0.3 * theta**2 - theta]), 0)[0]


def _objective(name, theta, x, y, mask):
    return ESTIMATORS[name](_log_probs(theta), x, y, mask).sum()


@pytest.mark.parametrize("name", NAMES)
def test_padded_steps_are_irrelevant(name):
    theta, x, y, mask = _data()
    # garbage (even NaN) in padded rewards / advantages / baselines must not leak
    x2 = torch.where(mask, x, torch.nan)
    y2 = torch.where(mask, y, 1e6)
    f1 = lambda th: _objective(name, th, x, y, mask)
    f2 = lambda th: _objective(name, th, x2, y2, mask)
    torch.testing.assert_close(f1(theta), f2(theta))
    torch.testing.assert_close(grad(f1)(theta), grad(f2)(theta))
    hess1 = torch.func.hessian(f1)(theta)
    hess2 = torch.func.hessian(f2)(theta)
    torch.testing.assert_close(hess1, hess2)
    # parameters of padded steps get exactly zero gradient and curvature
    g = grad(f1)(theta)
    assert torch.all(g[~mask] == 0)
    # ... and the masked batch equals evaluating each episode truncated to its length
    lengths = mask.sum(-1)
    for i in range(B):
        n = int(lengths[i])
        fi = lambda th, i=i, n=n: ESTIMATORS[name](_log_probs(th)[i, :n], x[i, :n], y[i, :n]).sum()
        full = lambda th, i=i: ESTIMATORS[name](_log_probs(th), x, y, mask)[i]
        torch.testing.assert_close(grad(fi)(theta), grad(full)(theta))


@pytest.mark.parametrize("name", NAMES)
def test_float_mask_equals_bool_mask(name):
    theta, x, y, mask = _data()
    torch.testing.assert_close(
        grad(lambda th: _objective(name, th, x, y, mask))(theta),
        grad(lambda th: _objective(name, th, x, y, mask.to(DTYPE)))(theta),
    )


@pytest.mark.parametrize("name", NAMES)
def test_vmap_of_grad_equals_python_loop(name):
    tasks = [_data(seed) for seed in range(4)]
    stacked = [torch.stack(t) for t in zip(*tasks, strict=True)]
    per_task = lambda th, x, y, m: _objective(name, th, x, y, m)
    batched = vmap(grad(per_task))(*stacked)
    looped = torch.stack([grad(per_task)(*t) for t in tasks])
    torch.testing.assert_close(batched, looped)
    # and the hessian-vector structure under vmap (second order) agrees too
    hv = lambda th, x, y, m: torch.func.jvp(grad(lambda u: per_task(u, x, y, m)), (th,), (torch.ones_like(th),))[1]
    torch.testing.assert_close(vmap(hv)(*stacked), torch.stack([hv(*t) for t in tasks]))


@pytest.mark.parametrize("name", NAMES)
def test_func_grad_equals_autograd(name):
    theta, x, y, mask = _data()
    th = theta.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(_objective(name, th, x, y, mask), th, create_graph=True)
    torch.testing.assert_close(g.detach(), grad(lambda u: _objective(name, u, x, y, mask))(theta))
    v = torch.randn_like(theta)
    (hv,) = torch.autograd.grad((g * v).sum(), th)
    hv_func = torch.func.jvp(grad(lambda u: _objective(name, u, x, y, mask)), (theta,), (v,))[1]
    torch.testing.assert_close(hv, hv_func)


@pytest.mark.parametrize("name", NAMES)
def test_inputs_are_not_mutated(name):
    theta, x, y, mask = _data()
    copies = [t.clone() for t in (theta, x, y, mask)]
    _objective(name, theta, x, y, mask)
    for a, b in zip((theta, x, y, mask), copies, strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("name", NAMES)
def test_mismatched_shapes_raise(name):
    theta, x, y, mask = _data()
    with pytest.raises(ValueError, match=r"shape \(3, 4\).*shape \(3, 5\)"):
        ESTIMATORS[name](_log_probs(theta), x[:, :4], y, mask)
    with pytest.raises(ValueError, match="mask has shape"):
        ESTIMATORS[name](_log_probs(theta), x, y, mask[:, :4])


@pytest.mark.parametrize("name", NAMES)
def test_wrong_dtype_raises(name):
    theta, x, y, mask = _data()
    with pytest.raises(TypeError, match="floating-point"):
        ESTIMATORS[name](_log_probs(theta), x.long(), y, mask)
    with pytest.raises(TypeError, match="dtype torch.float32 but log_probs has dtype"):
        ESTIMATORS[name](_log_probs(theta), x.float(), y, mask)
    with pytest.raises(TypeError, match="must be a torch.Tensor"):
        ESTIMATORS[name](_log_probs(theta), x.tolist(), y, mask)


@pytest.mark.parametrize("name", NAMES)
def test_non_finite_values_at_real_steps_raise(name):
    theta, x, y, mask = _data()
    x_bad = x.clone()
    x_bad[0, 2] = torch.inf
    with pytest.raises(ValueError, match="non-finite"):
        ESTIMATORS[name](_log_probs(theta), x_bad, y, mask)


@pytest.mark.parametrize("name", NAMES)
def test_all_masked_batch_raises(name):
    theta, x, y, mask = _data()
    with pytest.raises(ValueError, match="all zeros"):
        ESTIMATORS[name](_log_probs(theta), x, y, torch.zeros_like(mask))


@pytest.mark.parametrize("name", NAMES)
def test_a_gap_in_the_mask_raises(name):
    """Right padding only: a row is one trajectory, so 1 0 0 1 ... is rejected (not read as two)."""
    theta, x, y, mask = _data()
    gap = mask.clone()
    gap[2, 3] = True  # row 2 is 1 0 0 1 0: a second episode after padding
    message = r"right-padded.*mask\[2\] has a 0 followed by a 1 \(step 3.*separate rows"
    with pytest.raises(ValueError, match=message):
        ESTIMATORS[name](_log_probs(theta), x, y, gap)
    with pytest.raises(ValueError, match=message):
        ESTIMATORS[name](_log_probs(theta), x, y, gap.to(DTYPE))
    # a leading pad is a gap too (episodes start at step 0)
    with pytest.raises(ValueError, match="right-padded"):
        ESTIMATORS[name](_log_probs(theta), x, y, torch.roll(mask, 1, -1))


def test_bad_hyperparameters_raise():
    lp, r = torch.zeros(4), torch.ones(4)
    with pytest.raises(ValueError, match="gamma"):
        dice_objective(lp, r, gamma=1.5)
    with pytest.raises(ValueError, match="decay"):
        loaded_dice_objective(lp, r, gamma=0.9, decay=-0.1)
    with pytest.raises(ValueError, match="time last"):
        dice_objective(torch.tensor(0.0), torch.tensor(1.0), gamma=0.9)


def test_value_checks_are_skipped_inside_vmap_but_shape_checks_are_not():
    lp, r = torch.zeros(2, 3), torch.ones(2, 3)
    out = vmap(lambda a, b: dice_objective(a, b, gamma=1.0))(lp, r)
    torch.testing.assert_close(out, torch.full((2,), 3.0))
    with pytest.raises(ValueError, match="shape"):
        vmap(lambda a, b: dice_objective(a, b[:2], gamma=1.0))(lp, r)
