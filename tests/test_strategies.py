"""Execution strategies: vmap == chunked == loop == a plain per-task autograd loop."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import metaops as mo
import metaops._batching as batching
from metaops.inner import adapt, first_order, meta_sgd, sgd
from tests._helpers import assert_trees_close, index_task, toy_regression

STRATEGIES = [("vmap", None), ("chunked", 3), ("chunked", 1), ("loop", None), ("auto", None)]


def _reference(loss_fn, theta, support, query, *, lr, steps, second_order=True):
    """Independent formulation: torch.autograd.grad(create_graph=...), task by task."""
    leaves = {k: v.clone().requires_grad_() for k, v in theta.items()}
    n = support[0].shape[0]
    losses, total = [], 0.0
    for i in range(n):
        params = dict(leaves)
        for _ in range(steps):
            grads = torch.autograd.grad(
                loss_fn(params, index_task(support, i)), list(params.values()), create_graph=second_order
            )
            params = {k: v - lr * g for (k, v), g in zip(params.items(), grads)}
        loss = loss_fn(params, index_task(query, i))
        losses.append(loss.detach())
        total = total + loss / n
    return torch.stack(losses).mean(), dict(zip(leaves, torch.autograd.grad(total, list(leaves.values()))))


@pytest.fixture(params=["autograd", "functional"])
def path(request, monkeypatch):
    """Runs each test through both implementations: ordinary autograd and torch.func.grad."""
    if request.param == "functional":
        monkeypatch.setattr(batching, "_use_autograd", lambda meta_params: False)
    return request.param


@pytest.mark.parametrize("second_order", [True, False])
@pytest.mark.parametrize("strategy,chunk_size", STRATEGIES)
def test_strategies_equal_autograd_loop(path, strategy, chunk_size, second_order):
    _, loss_fn, theta, support, query = toy_regression(num_tasks=5)

    def task_loss(th, s, q):
        mode = None if second_order else first_order()
        return loss_fn(adapt(loss_fn, th, s, sgd(0.3), steps=2, mode=mode), q)

    loss, grads = mo.meta_value_and_grad(task_loss, theta, support, query, strategy=strategy, chunk_size=chunk_size)
    ref_loss, ref_grads = _reference(loss_fn, theta, support, query, lr=0.3, steps=2, second_order=second_order)
    torch.testing.assert_close(loss, ref_loss, rtol=1e-12, atol=1e-14)
    assert_trees_close(grads, ref_grads, rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("strategy,chunk_size", STRATEGIES)
def test_meta_sgd_rates_get_the_same_gradient_everywhere(path, strategy, chunk_size):
    _, loss_fn, theta, support, query = toy_regression(num_tasks=4)
    meta = {"params": theta, "lrs": {k: torch.full_like(v, 0.2) for k, v in theta.items()}}

    def task_loss(m, s, q):
        return loss_fn(adapt(loss_fn, m["params"], s, meta_sgd(m["lrs"]), steps=2), q)

    _, expected = mo.meta_value_and_grad(task_loss, meta, support, query, strategy="vmap")
    _, grads = mo.meta_value_and_grad(task_loss, meta, support, query, strategy=strategy, chunk_size=chunk_size)
    assert_trees_close(grads, expected, rtol=1e-10, atol=1e-13)
    assert max(g.abs().max() for g in grads["lrs"].values()) > 0


@pytest.mark.parametrize("strategy,chunk_size", STRATEGIES)
def test_map_tasks_strategies_agree(strategy, chunk_size):
    _, loss_fn, theta, support, query = toy_regression(num_tasks=5)

    def adapted_loss(th, s, q):
        return loss_fn(adapt(loss_fn, th, s, sgd(0.3), steps=2), q)

    expected = torch.stack([adapted_loss(theta, index_task(support, i), index_task(query, i)) for i in range(5)])
    out = mo.map_tasks(adapted_loss, in_dims=(None, 0, 0), strategy=strategy, chunk_size=chunk_size)(
        theta, support, query
    )
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-14)


def _bn_problem():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4, track_running_stats=False), nn.ReLU(),
        nn.MaxPool2d(2), nn.Flatten(), nn.Linear(4 * 3 * 3, 3),
    ).double()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, 6, 1, 6, 6, generator=g, dtype=torch.float64)
    y = torch.arange(3).repeat(2).expand(3, 6)

    def loss_fn(params, batch):
        return F.cross_entropy(torch.func.functional_call(model, params, (batch[0],)), batch[1])

    return loss_fn, {k: v.detach() for k, v in model.named_parameters()}, (x, y)


def test_auto_falls_back_to_loop_for_batchnorm_with_the_exact_gradient(path):
    loss_fn, theta, tasks = _bn_problem()

    def task_loss(th, s, q):
        return loss_fn(adapt(loss_fn, th, s, sgd(0.4), steps=1), q)

    assert batching._auto_strategy((tasks,), (0,)) == "vmap"  # small tasks: auto tries vmap first
    with pytest.raises(mo.inner.BatchNormUnderVmapError):
        mo.meta_value_and_grad(task_loss, theta, tasks, tasks, strategy="vmap")
    loss, grads = mo.meta_value_and_grad(task_loss, theta, tasks, tasks, strategy="auto")
    ref_loss, ref_grads = _reference(loss_fn, theta, tasks, tasks, lr=0.4, steps=1)
    torch.testing.assert_close(loss, ref_loss, rtol=1e-12, atol=1e-14)
    assert_trees_close(grads, ref_grads, rtol=1e-9, atol=1e-12)


def test_auto_rule_loops_over_large_cpu_tasks_and_vmaps_small_ones():
    small = (torch.zeros(25, 10, 1), torch.zeros(25, 10, 1))  # sinusoid: 20 elements per task
    large = (torch.zeros(32, 30, 1, 28, 28), torch.zeros(32, 30))  # Omniglot 5-way: ~23.5k
    assert batching._auto_strategy(small, (0, 0)) == "vmap"
    assert batching._auto_strategy(large, (0, 0)) == "loop"
    assert batching._auto_strategy((large[0], None), (0, None)) == "loop"


def test_returned_gradients_are_constants_even_for_parameters_that_require_grad():
    model, loss_fn, _, support, query = toy_regression(num_tasks=3)
    params = dict(model.named_parameters())

    def task_loss(th, s, q):
        return loss_fn(adapt(loss_fn, th, s, sgd(0.3), steps=1), q)

    for strategy in ("vmap", "loop"):
        loss, grads = mo.meta_value_and_grad(task_loss, params, support, query, strategy=strategy)
        assert not loss.requires_grad and not any(g.requires_grad for g in grads.values())
        assert all(p.grad is None for p in model.parameters())  # nothing written into the module


def test_non_scalar_task_loss_is_refused():
    with pytest.raises(ValueError, match="scalar tensor per task"):
        mo.meta_value_and_grad(lambda m, x: m * x, torch.ones(1), torch.ones(2, 1), strategy="loop")


@pytest.mark.parametrize("strategy,chunk_size", [("vmap", None), ("chunked", 2), ("loop", None)])
def test_tensors_the_task_loss_captures_get_no_grad_on_either_path(path, strategy, chunk_size):
    # ANIL-style: the body is a module used through a closure, only the head is meta-learned.
    torch.manual_seed(0)
    body = nn.Sequential(nn.Linear(1, 8), nn.Tanh()).double()
    head = nn.Linear(8, 1).double()
    _, _, _, support, query = toy_regression(num_tasks=4)

    def loss_fn(params, batch):
        return F.mse_loss(torch.func.functional_call(head, params, (body(batch[0]),)), batch[1])

    def task_loss(meta, s, q):
        return loss_fn(adapt(loss_fn, meta, s, sgd(0.3), steps=1), q)

    meta = {k: v.detach() for k, v in head.named_parameters()}
    _, grads = mo.meta_value_and_grad(task_loss, meta, support, query, strategy=strategy, chunk_size=chunk_size)
    assert all(p.grad is None for p in body.parameters())  # backward() would have written these
    assert all(g.abs().sum() > 0 for g in grads.values())
