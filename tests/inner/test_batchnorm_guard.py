"""torch's wrong second-order gradient through BatchNorm under vmap is never returned silently."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import grad, vmap

import metaops as mo
from metaops.inner import BatchNormUnderVmapError, adapt, first_order, sgd
from tests._helpers import assert_trees_close


def _conv(norm):
    torch.manual_seed(0)
    layers = [nn.Conv2d(1, 4, 3, padding=1)]
    if norm == "bn":
        layers.append(nn.BatchNorm2d(4, track_running_stats=False))
    if norm == "gn":
        layers.append(nn.GroupNorm(2, 4))
    layers += [nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(4 * 3 * 3, 3)]
    return nn.Sequential(*layers).double()


def _problem(norm):
    model = _conv(norm)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, 6, 1, 6, 6, generator=g, dtype=torch.float64)
    y = torch.arange(3).repeat(2).expand(3, 6)

    def loss_fn(params, batch):
        xb, yb = batch
        return F.cross_entropy(torch.func.functional_call(model, params, (xb,)), yb)

    theta = {k: v.detach() for k, v in model.named_parameters()}
    return loss_fn, theta, (x, y)


def _autograd_loop(loss_fn, theta, tasks, lr):
    leaves = {k: v.clone().requires_grad_() for k, v in theta.items()}
    total = 0
    for i in range(tasks[0].shape[0]):
        batch = (tasks[0][i], tasks[1][i])
        grads = torch.autograd.grad(loss_fn(leaves, batch), list(leaves.values()), create_graph=True)
        total = total + loss_fn({k: v - lr * g for (k, v), g in zip(leaves.items(), grads)}, batch)
    return dict(zip(leaves, torch.autograd.grad(total / tasks[0].shape[0], list(leaves.values()))))


def test_second_order_vmap_through_batchnorm_is_refused():
    loss_fn, theta, tasks = _problem("bn")

    def task_loss(th, x, y):
        return loss_fn(adapt(loss_fn, th, (x, y), sgd(0.4), steps=1), (x, y))

    with pytest.raises(BatchNormUnderVmapError, match="silently wrong second-order"):
        grad(lambda th: vmap(task_loss, in_dims=(None, 0, 0))(th, *tasks).mean())(theta)
    with pytest.raises(BatchNormUnderVmapError):
        mo.meta_value_and_grad(task_loss, theta, *tasks, strategy="vmap")


@pytest.mark.parametrize("strategy", ["auto", "loop"])
def test_auto_and_loop_give_the_exact_gradient_with_batchnorm(strategy):
    loss_fn, theta, tasks = _problem("bn")

    def task_loss(th, x, y):
        return loss_fn(adapt(loss_fn, th, (x, y), sgd(0.4), steps=1), (x, y))

    _, grads = mo.meta_value_and_grad(task_loss, theta, *tasks, strategy=strategy)
    assert_trees_close(grads, _autograd_loop(loss_fn, theta, tasks, 0.4), rtol=1e-9, atol=1e-12)


def test_first_order_and_groupnorm_are_allowed_under_vmap():
    loss_fn, theta, tasks = _problem("bn")

    def fo_task_loss(th, x, y):
        return loss_fn(adapt(loss_fn, th, (x, y), sgd(0.4), steps=1, mode=first_order()), (x, y))

    mo.meta_value_and_grad(fo_task_loss, theta, *tasks, strategy="vmap")  # no error

    loss_fn, theta, tasks = _problem("gn")

    def task_loss(th, x, y):
        return loss_fn(adapt(loss_fn, th, (x, y), sgd(0.4), steps=1), (x, y))

    _, grads = mo.meta_value_and_grad(task_loss, theta, *tasks, strategy="vmap")
    assert_trees_close(grads, _autograd_loop(loss_fn, theta, tasks, 0.4), rtol=1e-9, atol=1e-12)
