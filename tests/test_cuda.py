"""The same meta-gradients on CUDA as on CPU (skipped where no GPU is present, e.g. in CI)."""

import pytest
import torch

import metaops as mo
from metaops.inner import adapt, implicit_value_and_grad, sgd
from tests._helpers import assert_trees_close, index_task, toy_regression

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _to(tree, device):
    return mo.tree.tree_map(lambda x: x.to(device), tree)


def _problem():
    model, loss_fn, theta, support, query = toy_regression(num_tasks=4)

    def task_loss(meta, s, q):
        return loss_fn(adapt(loss_fn, meta, s, sgd(0.3), steps=2), q)

    return model, loss_fn, task_loss, theta, support, query


@pytest.mark.parametrize("strategy", ["vmap", "chunked", "loop", "auto"])
def test_meta_value_and_grad_on_cuda_equals_cpu(strategy):
    model, _, task_loss, theta, support, query = _problem()
    kwargs = {"chunk_size": 3} if strategy == "chunked" else {}
    expected = mo.meta_value_and_grad(task_loss, theta, support, query, strategy=strategy, **kwargs)
    model.cuda()
    got = mo.meta_value_and_grad(task_loss, _to(theta, "cuda"), _to(support, "cuda"), _to(query, "cuda"),
                                 strategy=strategy, **kwargs)
    assert all(x.device.type == "cuda" for x in mo.tree.tree_leaves(got))
    assert_trees_close(_to(got, "cpu"), expected, rtol=1e-9, atol=1e-11)


def test_implicit_value_and_grad_on_cuda_equals_cpu():
    model, loss_fn, _, theta, support, query = _problem()
    s, q = index_task(support, 0), index_task(query, 0)

    def run(th, s, q):
        return implicit_value_and_grad(lambda phi: loss_fn(phi, q), loss_fn, th, s, sgd(0.1), reg=2.0, steps=5)

    expected = run(theta, s, q)
    model.cuda()
    got = run(_to(theta, "cuda"), _to(s, "cuda"), _to(q, "cuda"))
    assert_trees_close(_to(got, "cpu"), expected, rtol=1e-9, atol=1e-11)


@pytest.mark.slow
def test_compiled_meta_step_on_cuda_equals_eager():
    model, _, task_loss, theta, support, query = _problem()
    model.cuda()
    args = (_to(theta, "cuda"), _to(support, "cuda"), _to(query, "cuda"))
    eager = lambda m, s, q: mo.meta_value_and_grad(task_loss, m, s, q, strategy="vmap")
    step = mo.compile_meta_step(eager)
    for _ in range(3):
        out = step(*args)
    assert step.compiled, step.fallback_reason
    assert_trees_close(out, eager(*args), rtol=1e-9, atol=1e-11)
