"""iMAML through adapt(implicit(...)) against the dense solve with the exact Hessian."""

import pytest
import torch
from torch.func import grad, hessian, vmap

from metaops.inner import adapt, implicit, proximal_loss, sgd
from metaops.tree import tree_ravel
from tests._helpers import assert_trees_close, index_task, toy_regression

REG = 2.0


def _dense_imaml_grad(loss_fn, theta, support, query, *, steps):
    prox = proximal_loss(loss_fn, theta, reg=REG)
    phi = adapt(prox, theta, support, sgd(0.05), steps=steps)
    phi = {k: v.detach() for k, v in phi.items()}
    flat_phi, unravel = tree_ravel(phi)
    H = hessian(lambda v: loss_fn(unravel(v), support))(flat_phi)
    g, _ = tree_ravel(grad(loss_fn)(phi, query))
    A = torch.eye(len(flat_phi), dtype=H.dtype) + H / REG
    return unravel(torch.linalg.solve(A, g)), phi


def test_implicit_equals_dense_solve():
    _, loss_fn, theta, support, query = toy_regression(num_tasks=1)
    s, q = index_task(support, 0), index_task(query, 0)
    steps = 400
    n = sum(v.numel() for v in theta.values())
    opt = implicit(sgd(0.05), reg=REG, cg_steps=n)  # CG is exact in n iterations
    meta_grad = grad(lambda th: loss_fn(adapt(loss_fn, th, s, opt, steps=steps), q))(theta)
    expected, phi = _dense_imaml_grad(loss_fn, theta, s, q, steps=steps)
    assert_trees_close(meta_grad, expected, rtol=1e-6, atol=1e-9)
    # and the adapted point solves the proximal problem: its gradient vanishes
    prox_grad = grad(proximal_loss(loss_fn, theta, reg=REG))(phi, s)
    assert max(v.abs().max() for v in prox_grad.values()) < 1e-6


def test_implicit_under_vmap_equals_loop_and_backward():
    _, loss_fn, theta, support, query = toy_regression(num_tasks=3)
    opt = implicit(sgd(0.05), reg=REG, cg_steps=10)

    def task_loss(th, s, q):
        return loss_fn(adapt(loss_fn, th, s, opt, steps=50), q)

    batched = grad(lambda th: vmap(task_loss, in_dims=(None, 0, 0))(th, support, query).mean())(theta)
    looped = grad(
        lambda th: torch.stack([task_loss(th, index_task(support, i), index_task(query, i)) for i in range(3)]).mean()
    )(theta)
    assert_trees_close(batched, looped)
    leaves = {k: v.clone().requires_grad_() for k, v in theta.items()}
    vmap(task_loss, in_dims=(None, 0, 0))(leaves, support, query).mean().backward()
    assert_trees_close(batched, {k: v.grad for k, v in leaves.items()})


def test_implicit_forward_value_is_the_proximal_solution_not_graph_dependent():
    # quadratic: loss 0.5 * c * w^2, prox solution w* = reg * theta / (c + reg)
    c = 3.0
    theta = {"w": torch.tensor([2.0], dtype=torch.float64)}
    phi = adapt(lambda p, b: 0.5 * c * (p["w"] ** 2).sum(), theta, None, implicit(sgd(0.1), reg=1.0), steps=200)
    assert phi["w"].item() == pytest.approx(2.0 / 4.0)


@pytest.mark.parametrize(
    "kwargs, message",
    [({"reg": 0.0}, "reg > 0"), ({"reg": -1.0}, "reg > 0"), ({"reg": 1.0, "cg_steps": 0}, "cg_steps >= 1")],
)
def test_implicit_bad_config(kwargs, message):
    with pytest.raises(ValueError, match=message):
        implicit(sgd(0.1), **kwargs)


def test_implicit_cannot_wrap_a_looped_optimizer():
    with pytest.raises(ValueError, match="own loop"):
        implicit(implicit(sgd(0.1), reg=1.0), reg=1.0)
