"""from_torchopt: meta-gradients through torchopt's adaptive optimizers are finite and exact."""

import pytest
import torch
import torchopt

import metaops as mo
from metaops.inner import adapt, from_torchopt
from tests._helpers import assert_trees_close

TRANSFORMS = {
    "adam": lambda: torchopt.adam(0.05),
    "adamw": lambda: torchopt.adamw(0.05),
    "rmsprop": lambda: torchopt.rmsprop(0.05),
    "rmsprop_centered": lambda: torchopt.rmsprop(0.05, centered=True),
    "adagrad": lambda: torchopt.adagrad(0.05),
    "radam": lambda: torchopt.radam(0.05),
}


def loss_fn(params, batch):
    x, y = batch
    return ((x @ params["w"] - y) ** 2).mean()


def _tasks(num_tasks=3, dtype=torch.float64):
    """Linear regression whose last feature is zero in every support set and not in the query
    set: its inner gradient is exactly zero at every step, where sqrt(nu) has no derivative."""
    g = torch.Generator().manual_seed(0)
    xs = torch.randn(num_tasks, 6, 3, generator=g, dtype=dtype)
    xs[..., 2] = 0.0
    xq = torch.randn(num_tasks, 6, 3, generator=g, dtype=dtype)
    w_true = torch.randn(num_tasks, 3, 1, generator=g, dtype=dtype)
    return (xs, (xs @ w_true).squeeze(-1)), (xq, (xq @ w_true).squeeze(-1))


def _meta_loss(make_transform, w, support, query, steps=8):
    return loss_fn(adapt(loss_fn, {"w": w}, support, from_torchopt(make_transform()), steps=steps), query)


@pytest.mark.parametrize("name", list(TRANSFORMS))
def test_meta_gradient_through_a_zero_inner_gradient_matches_finite_differences(name):
    support, query = _tasks(1)
    support, query = tuple(t[0] for t in support), tuple(t[0] for t in query)
    w = torch.tensor([0.3, -0.2, 0.5], dtype=torch.float64, requires_grad=True)
    (grad,) = torch.autograd.grad(_meta_loss(TRANSFORMS[name], w, support, query), w)
    assert torch.isfinite(grad).all(), grad
    assert torch.autograd.gradcheck(lambda w: _meta_loss(TRANSFORMS[name], w, support, query), (w,))


def _hand_written_adam(w, support, *, lr, steps, b1=0.9, b2=0.999, eps=1e-8):
    """Adam with eps_root = 0, written with torch.autograd.grad; sqrt(0) gets derivative 0 by
    the double-where trick (at nu = 0 the first moment is 0 too, so its factor vanishes).
    Like torchopt, it computes the bias corrections 1 - b**t in the default dtype (float32)."""
    m, v = torch.zeros_like(w), torch.zeros_like(w)
    for t in range(1, steps + 1):
        (g,) = torch.autograd.grad(loss_fn({"w": w}, support), w, create_graph=True)
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        count = torch.tensor(t)
        v_hat = v / (1 - torch.pow(b2, count))
        positive = v_hat > 0
        root = torch.where(positive, torch.sqrt(torch.where(positive, v_hat, 1.0)), 0.0)
        w = w - lr * (m / (1 - torch.pow(b1, count))) / (root + eps)
    return w


@pytest.mark.parametrize("strategy", ["vmap", "loop"])
def test_meta_value_and_grad_through_torchopt_adam_equals_a_hand_written_adam(strategy):
    support, query = _tasks(3)
    theta = {"w": torch.tensor([0.3, -0.2, 0.5], dtype=torch.float64)}

    def task_loss(meta, s, q):
        return loss_fn(adapt(loss_fn, meta, s, from_torchopt(torchopt.adam(0.05)), steps=4), q)

    loss, grads = mo.meta_value_and_grad(task_loss, theta, support, query, strategy=strategy)

    w = theta["w"].clone().requires_grad_()
    losses = [
        loss_fn({"w": _hand_written_adam(w, (support[0][i], support[1][i]), lr=0.05, steps=4)},
                (query[0][i], query[1][i]))
        for i in range(3)
    ]
    expected_loss = torch.stack(losses).mean()
    (expected,) = torch.autograd.grad(expected_loss, w)
    assert torch.isfinite(grads["w"]).all()
    torch.testing.assert_close(loss, expected_loss.detach(), rtol=1e-12, atol=1e-14)
    assert_trees_close(grads, {"w": expected}, rtol=1e-10, atol=1e-12)


def test_float32_adam_meta_gradient_is_finite():
    support, query = _tasks(2, dtype=torch.float32)
    theta = {"w": torch.tensor([0.3, -0.2, 0.5])}

    def task_loss(meta, s, q):
        return loss_fn(adapt(loss_fn, meta, s, from_torchopt(torchopt.adam(1e-2)), steps=3), q)

    _, grads = mo.meta_value_and_grad(task_loss, theta, support, query)
    assert torch.isfinite(grads["w"]).all()
    assert grads["w"][2].abs() > 0  # the query loss still reaches the feature the support lacks


@pytest.mark.parametrize("name", list(TRANSFORMS))
def test_adapted_values_equal_plain_torchopt(name):
    support, _ = _tasks(1)
    support = (support[0][0], support[1][0])
    params = {"w": torch.tensor([0.3, -0.2, 0.5], dtype=torch.float64)}
    transform = TRANSFORMS[name]()
    state = transform.init(params)
    expected = params
    for _ in range(8):
        grads = torch.func.grad(loss_fn)(expected, support)
        updates, state = transform.update(grads, state, params=expected, inplace=False)
        expected = torchopt.apply_updates(expected, updates, inplace=False)
    got = adapt(loss_fn, params, support, from_torchopt(TRANSFORMS[name]()), steps=8)
    assert_trees_close(got, expected, rtol=1e-14, atol=1e-16)
