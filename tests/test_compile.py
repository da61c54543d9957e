"""compile_meta_step: compiled == eager, no recompiles, graceful eager fallback.

Most tests compile with the ``aot_eager`` backend, which traces the whole meta-step (dynamo +
AOT autograd, exactly what inductor receives) in about a second; the one inductor test is
marked slow (its compile takes tens of seconds on 2 cores).
"""

import pytest
import torch

import metaops as mo
from metaops.inner import adapt, checkpointed, first_order, implicit, meta_sgd, sgd
from tests._helpers import assert_trees_close, toy_regression


class CountingBackend:
    """A torch.compile backend that counts graph compilations and delegates to aot_eager."""

    def __init__(self):
        self.compilations = 0

    def __call__(self, gm, example_inputs):
        self.compilations += 1
        return torch._dynamo.lookup_backend("aot_eager")(gm, example_inputs)


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _task_loss(loss_fn, variant):
    def task_loss(meta, s, q):
        if variant == "meta_sgd":
            return loss_fn(adapt(loss_fn, meta["params"], s, meta_sgd(meta["lrs"]), steps=2), q)
        opt = {
            "second_order": lambda: sgd(0.3),
            "first_order": lambda: first_order(sgd(0.3)),
            "implicit": lambda: implicit(sgd(0.3), reg=2.0, cg_steps=3),
            "checkpointed": lambda: checkpointed(sgd(0.3)),
        }[variant]()
        return loss_fn(adapt(loss_fn, meta, s, opt, steps=2), q)

    return task_loss


def _meta(theta, variant):
    if variant == "meta_sgd":
        return {"params": theta, "lrs": {k: torch.full_like(v, 0.2) for k, v in theta.items()}}
    return theta


@pytest.mark.parametrize("variant", ["second_order", "first_order", "meta_sgd"])
def test_compiled_equals_eager_without_recompiling(variant):
    _, loss_fn, theta, support, query = toy_regression(num_tasks=3)
    task_loss = _task_loss(loss_fn, variant)
    meta = _meta(theta, variant)
    eager = lambda m, s, q: mo.meta_value_and_grad(task_loss, m, s, q, strategy="vmap")
    backend = CountingBackend()
    step = mo.compile_meta_step(eager, backend=backend)
    for i in range(4):  # new data each iteration, same shapes, as in training
        s = tuple(x + 0.1 * i for x in support)
        loss, grads = step(meta, s, query)
        ref_loss, ref_grads = eager(meta, s, query)
        torch.testing.assert_close(loss, ref_loss, rtol=1e-10, atol=1e-12)
        assert_trees_close(grads, ref_grads, rtol=1e-10, atol=1e-12)
    assert step.compiled and step.compile_seconds is not None
    assert backend.compilations == 1  # compiled once (call 2), cache hits on calls 3 and 4


def test_training_loop_with_module_parameters_hits_the_cache():
    model, loss_fn, _, support, query = toy_regression(num_tasks=3)
    task_loss = _task_loss(loss_fn, "second_order")
    adam = torch.optim.Adam(model.parameters(), lr=1e-2)
    backend = CountingBackend()
    step = mo.compile_meta_step(
        lambda p, s, q: mo.meta_value_and_grad(task_loss, p, s, q, strategy="vmap"),
        backend=backend,
    )
    for _ in range(4):
        _, grads = step(mo.nn.named_params(model), support, query)
        adam.zero_grad()
        mo.nn.set_grads(model, grads)
        adam.step()  # parameters change in place between calls
    assert step.compiled and backend.compilations == 1


@pytest.mark.parametrize("variant", ["implicit", "checkpointed"])
def test_custom_autograd_modes_stay_eager_with_a_clear_warning(variant):
    _, loss_fn, theta, support, query = toy_regression(num_tasks=3)
    eager = lambda m, s, q: mo.meta_value_and_grad(_task_loss(loss_fn, variant), m, s, q, strategy="vmap")
    step = mo.compile_meta_step(eager, backend=CountingBackend())
    with pytest.warns(RuntimeWarning, match="not traceable by torch.compile"):
        first = step(theta, support, query)
    assert not step.compiled
    second = step(theta, support, query)  # no second warning
    expected = eager(theta, support, query)
    assert_trees_close(first, expected)
    assert_trees_close(second, expected)


def test_compile_failure_falls_back_to_eager_with_a_warning():
    _, loss_fn, theta, support, query = toy_regression(num_tasks=3)
    eager = lambda m, s, q: mo.meta_value_and_grad(_task_loss(loss_fn, "second_order"), m, s, q)

    def broken_backend(gm, example_inputs):
        raise RuntimeError("simulated: no working C++ compiler")

    step = mo.compile_meta_step(eager, backend=broken_backend)
    expected = eager(theta, support, query)
    assert_trees_close(step(theta, support, query), expected)  # eager first call
    with pytest.warns(RuntimeWarning, match="simulated: no working C\\+\\+ compiler"):
        assert_trees_close(step(theta, support, query), expected)  # the compiling call
    assert not step.compiled and "simulated" in step.fallback_reason
    assert_trees_close(step(theta, support, query), expected)  # eager from now on


def test_user_errors_are_raised_not_hidden_by_the_fallback():
    _, loss_fn, theta, support, query = toy_regression(num_tasks=3)
    step = mo.compile_meta_step(
        lambda m, s, q: mo.meta_value_and_grad(_task_loss(loss_fn, "second_order"), m, s, q),
        backend=CountingBackend(),
    )
    step(theta, support, query)
    with pytest.raises(ValueError, match="disagree on the number of tasks"):  # the compiling call
        step(theta, support, tuple(x[:2] for x in query))
    assert step.compiled and step.fallback_reason is None


@pytest.mark.slow
def test_inductor_compiled_equals_eager():
    _, loss_fn, theta, support, query = toy_regression(num_tasks=3)
    task_loss = _task_loss(loss_fn, "second_order")
    eager = lambda m, s, q: mo.meta_value_and_grad(task_loss, m, s, q, strategy="vmap")
    step = mo.compile_meta_step(eager)
    graphs_before = torch._dynamo.utils.counters["stats"]["unique_graphs"]  # process-global
    for _ in range(3):
        out = step(theta, support, query)
    assert step.compiled, step.fallback_reason
    assert_trees_close(out, eager(theta, support, query), rtol=1e-9, atol=1e-11)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] - graphs_before == 1
