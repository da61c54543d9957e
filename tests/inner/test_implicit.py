"""iMAML (adapt(implicit(...)) and implicit_value_and_grad) against the dense solve with the exact Hessian."""

import pytest
import torch
from torch.func import grad, hessian, vmap

from metaops import map_tasks
from metaops.inner import NonFiniteError, adapt, implicit, implicit_value_and_grad, proximal_loss, sgd
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
    mode = implicit(reg=REG, cg_steps=n)  # CG is exact in n iterations
    meta_grad = grad(lambda th: loss_fn(adapt(loss_fn, th, s, sgd(0.05), steps=steps, mode=mode), q))(theta)
    expected, phi = _dense_imaml_grad(loss_fn, theta, s, q, steps=steps)
    assert_trees_close(meta_grad, expected, rtol=1e-6, atol=1e-9)
    # and the adapted point solves the proximal problem: its gradient vanishes
    prox_grad = grad(proximal_loss(loss_fn, theta, reg=REG))(phi, s)
    assert max(v.abs().max() for v in prox_grad.values()) < 1e-6


def test_implicit_under_vmap_equals_loop_and_backward():
    _, loss_fn, theta, support, query = toy_regression(num_tasks=3)
    mode = implicit(reg=REG, cg_steps=10)

    def task_loss(th, s, q):
        return loss_fn(adapt(loss_fn, th, s, sgd(0.05), steps=50, mode=mode), q)

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
    phi = adapt(lambda p, b: 0.5 * c * (p["w"] ** 2).sum(), theta, None, sgd(0.1), steps=200, mode=implicit(reg=1.0))
    assert phi["w"].item() == pytest.approx(2.0 / 4.0)


@pytest.mark.parametrize(
    "kwargs, message",
    [({"reg": 0.0}, "reg > 0"), ({"reg": -1.0}, "reg > 0"), ({"reg": 1.0, "cg_steps": 0}, "cg_steps >= 1")],
)
def test_implicit_bad_config(kwargs, message):
    with pytest.raises(ValueError, match=message):
        implicit(**kwargs)


# ----------------------------------------------------------------------------- the explicit form
def test_implicit_value_and_grad_equals_dense_solve_and_finite_differences():
    # exact when the inner problem is solved and CG has converged: then d/dtheta of the outer
    # loss at the proximal solution is also what central finite differences give (float64)
    _, loss_fn, theta, support, query = toy_regression(num_tasks=1)
    s, q = index_task(support, 0), index_task(query, 0)
    n = sum(v.numel() for v in theta.values())
    value, meta_grad = implicit_value_and_grad(
        lambda phi: loss_fn(phi, q), loss_fn, theta, s, sgd(0.05), reg=REG, steps=400, cg_steps=n
    )
    expected, phi = _dense_imaml_grad(loss_fn, theta, s, q, steps=400)
    assert_trees_close(meta_grad, expected, rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(value, loss_fn(phi, q))

    def outer_at_solution(th):  # the exact proximal solution (Newton's method), as a plain function
        prox = proximal_loss(loss_fn, th, reg=REG)
        flat, unravel = tree_ravel(adapt(prox, th, s, sgd(0.05), steps=40))
        for _ in range(10):
            g = tree_ravel(grad(prox)(unravel(flat), s))[0]
            flat = flat - torch.linalg.solve(hessian(lambda v: prox(unravel(v), s))(flat), g)
        return loss_fn(unravel(flat), q)

    name, eps = "0.weight", 1e-6
    for i in range(theta[name].numel()):
        plus = {k: v.clone() for k, v in theta.items()}
        minus = {k: v.clone() for k, v in theta.items()}
        plus[name].view(-1)[i] += eps
        minus[name].view(-1)[i] -= eps
        fd = (outer_at_solution(plus) - outer_at_solution(minus)) / (2 * eps)
        assert meta_grad[name].view(-1)[i].item() == pytest.approx(fd.item(), rel=1e-4, abs=1e-7)


def test_implicit_value_and_grad_equals_the_autograd_function_path_under_vmap():
    _, loss_fn, theta, support, query = toy_regression(num_tasks=3)

    def explicit(th, s, q):
        return implicit_value_and_grad(
            lambda phi: loss_fn(phi, q), loss_fn, th, s, sgd(0.05), reg=REG, steps=30, cg_steps=4
        )

    def through_adapt(th, s, q):
        return loss_fn(adapt(loss_fn, th, s, sgd(0.05), steps=30, mode=implicit(reg=REG, cg_steps=4)), q)

    losses, grads = map_tasks(explicit, in_dims=(None, 0, 0), strategy="vmap")(theta, support, query)
    expected = grad(lambda th: vmap(through_adapt, in_dims=(None, 0, 0))(th, support, query).sum())(theta)
    assert_trees_close({k: g.sum(0) for k, g in grads.items()}, expected, rtol=1e-12, atol=1e-14)
    looped = [explicit(theta, index_task(support, i), index_task(query, i)) for i in range(3)]
    torch.testing.assert_close(losses, torch.stack([v for v, _ in looped]))
    assert not losses.requires_grad


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"reg": 0.0}, ValueError, "reg > 0"),
        ({"cg_steps": 0}, ValueError, "cg_steps >= 1"),
        ({"steps": 0}, ValueError, "steps must be >= 1"),
    ],
)
def test_implicit_value_and_grad_bad_config(kwargs, error, message):
    _, loss_fn, theta, support, query = toy_regression(num_tasks=1)
    config = {"reg": 1.0, "steps": 2, "cg_steps": 2} | kwargs
    with pytest.raises(error, match=message):
        implicit_value_and_grad(lambda p: loss_fn(p, index_task(query, 0)), loss_fn, theta,
                                index_task(support, 0), sgd(0.1), **config)


def test_implicit_value_and_grad_rejects_non_scalar_outer_loss_and_nan():
    _, loss_fn, theta, support, _ = toy_regression(num_tasks=1)
    s = index_task(support, 0)
    with pytest.raises(ValueError, match="scalar"):
        implicit_value_and_grad(lambda p: p["0.weight"], loss_fn, theta, s, sgd(0.1), reg=1.0, steps=1)
    nan_loss = lambda p, b: loss_fn(p, b) * float("nan")  # noqa: E731
    with pytest.raises(NonFiniteError, match="inner step 0"):
        implicit_value_and_grad(lambda p: loss_fn(p, s), nan_loss, theta, s, sgd(0.1), reg=1.0, steps=1)
