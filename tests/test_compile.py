"""compile_meta_step: compiled == eager, no recompiles, graceful eager fallback.

Most tests compile with the ``aot_eager`` backend, which traces the whole meta-step (dynamo +
AOT autograd, exactly what inductor receives) in about a second; the one inductor test is
marked slow (its compile takes tens of seconds on 2 cores).
"""

import warnings

import pytest
import torch

import metaops as mo
from metaops._compile import _mismatch
from metaops._compile_tasks import compile_meta_value_and_grad  # behind meta_value_and_grad(compile=True)
from metaops.inner import (
    adapt,
    checkpointed,
    first_order,
    implicit,
    implicit_value_and_grad,
    meta_sgd,
    sgd,
    unrolled,
)
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
        mode = {
            "second_order": unrolled(),
            "first_order": first_order(),
            "implicit": implicit(reg=2.0, cg_steps=3),
            "checkpointed": checkpointed(),
        }[variant]
        return loss_fn(adapt(loss_fn, meta, s, sgd(0.3), steps=2, mode=mode), q)

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


# ----------------------------------------------------------------------------- verification
class CorruptingBackend:
    """aot_eager, but every floating output is scaled by 1.01: a wrong compiler, on purpose."""

    def __call__(self, gm, example_inputs):
        compiled = torch._dynamo.lookup_backend("aot_eager")(gm, example_inputs)

        def run(*args):
            out = compiled(*args)
            return type(out)(x * 1.01 if isinstance(x, torch.Tensor) and x.is_floating_point() else x for x in out)

        return run


def test_verify_catches_a_wrong_compiled_result_and_returns_the_eager_one():
    _, loss_fn, theta, support, query = toy_regression(num_tasks=3)
    eager = lambda m, s, q: mo.meta_value_and_grad(_task_loss(loss_fn, "second_order"), m, s, q, strategy="vmap")
    step = mo.compile_meta_step(eager, backend=CorruptingBackend())
    expected = eager(theta, support, query)
    step(theta, support, query)
    with pytest.warns(RuntimeWarning, match="compiled result differs from the eager one"):
        assert_trees_close(step(theta, support, query), expected)
    assert not step.compiled
    assert_trees_close(step(theta, support, query), expected)  # eager from now on
    unverified = mo.compile_meta_step(eager, backend=CorruptingBackend(), verify=False)
    unverified(theta, support, query)
    loss, _ = unverified(theta, support, query)  # what verify=False trusts: the wrong compiler
    torch.testing.assert_close(loss, expected[0] * 1.01)


class _ScaledBackward(torch.autograd.Function):
    """A user's custom Function whose backward is (deliberately) 3x the forward's derivative."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x):
        return 2.0 * x

    @staticmethod
    def setup_context(ctx, inputs, output):
        pass

    @staticmethod
    def backward(ctx, g):
        return 6.0 * g


def test_a_custom_autograd_function_in_a_compiled_step_is_never_silently_wrong():
    # torch.compile (2.13) runs only the forward of an autograd.Function under torch.func.grad
    # (here: gradient 2 instead of 6); whatever torch does, the step must return 6.
    _, loss_fn, theta, support, query = toy_regression(num_tasks=3)

    def task_loss(meta, s, q):
        adapted = adapt(loss_fn, meta, s, sgd(0.3), steps=1)
        return _ScaledBackward.apply(loss_fn(adapted, q))

    eager = lambda m, s, q: mo.meta_value_and_grad(task_loss, m, s, q, strategy="vmap")
    step = mo.compile_meta_step(eager, backend=CountingBackend())
    expected = eager(theta, support, query)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the fallback warning, if torch drops it
        for _ in range(3):
            assert_trees_close(step(theta, support, query), expected)


def test_mismatch_reports_structure_nan_and_tolerance():
    a = {"w": torch.tensor([1.0, float("nan")])}
    assert _mismatch(a, {"w": torch.tensor([1.0, float("nan")])}) is None
    assert "NaN in one run only" in _mismatch(a, {"w": torch.tensor([1.0, 2.0])})
    assert "structures" in _mismatch(a, {"v": a["w"]})
    assert _mismatch(torch.tensor([1000.0, 1.0]), torch.tensor([1010.0, 1.0])) is None  # float32: 1% of the leaf
    assert "differs by" in _mismatch(torch.tensor([1000.0]), torch.tensor([1050.0]))
    x = torch.tensor([1.0], dtype=torch.float64)
    assert "differs by" in _mismatch(x, x + 1e-5)
    inf = torch.tensor([float("inf"), 1.0])
    assert _mismatch(inf, inf.clone()) is None and "differs by" in _mismatch(inf, torch.tensor([1.0, 1.0]))
    # a gradient that is zero up to rounding (a bias before batch norm) is judged against the
    # largest output, not against its own noise
    grads = {"w": torch.tensor([0.5, -0.3]), "b": torch.tensor([8e-7])}
    assert _mismatch(grads, {"w": grads["w"], "b": torch.tensor([1e-7])}) is None
    assert "differs by" in _mismatch(grads, {"w": grads["w"], "b": torch.tensor([0.05])})


# ----------------------------------------------------------------------------- implicit
def test_implicit_value_and_grad_compiles_and_equals_the_autograd_function_path():
    _, loss_fn, theta, support, query = toy_regression(num_tasks=3)

    def task(meta, s, q):
        return implicit_value_and_grad(
            lambda phi: loss_fn(phi, q), loss_fn, meta, s, sgd(0.3), reg=2.0, steps=2, cg_steps=3
        )

    def meta_step(meta, s, q):
        losses, grads = mo.map_tasks(task, in_dims=(None, 0, 0), strategy="vmap")(meta, s, q)
        return losses.mean(), {k: g.mean(0) for k, g in grads.items()}

    through_adapt = lambda m, s, q: mo.meta_value_and_grad(_task_loss(loss_fn, "implicit"), m, s, q, strategy="vmap")
    backend = CountingBackend()
    step = mo.compile_meta_step(meta_step, backend=backend)
    for i in range(3):
        s = tuple(x + 0.1 * i for x in support)
        assert_trees_close(step(theta, s, query), through_adapt(theta, s, query), rtol=1e-10, atol=1e-12)
    assert step.compiled and backend.compilations == 1


# ----------------------------------------------------------------------------- per-unit compile
@pytest.mark.parametrize("strategy, chunk_size, graphs", [("loop", None, 1), ("chunked", 2, 2), ("vmap", None, 1)])
def test_compile_meta_value_and_grad_equals_eager_with_one_graph_per_unit_shape(strategy, chunk_size, graphs):
    _, loss_fn, theta, support, query = toy_regression(num_tasks=3)
    task_loss = _task_loss(loss_fn, "second_order")
    backend = CountingBackend()
    meta_grad = compile_meta_value_and_grad(task_loss, strategy=strategy, chunk_size=chunk_size, backend=backend)
    for i in range(4):  # tasks are views at different offsets; new data every call
        s = tuple(x + 0.1 * i for x in support)
        expected = mo.meta_value_and_grad(task_loss, theta, s, query, strategy="loop")
        assert_trees_close(meta_grad(theta, s, query), expected, rtol=1e-10, atol=1e-12)
    assert meta_grad.compiled and meta_grad.compile_seconds is not None, meta_grad.fallback_reason
    assert backend.compilations == graphs
    assert list(meta_grad.units) == [strategy]


def test_compile_meta_value_and_grad_auto_compiles_the_exact_loop_for_batchnorm():
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.BatchNorm2d(4, track_running_stats=False), torch.nn.ReLU(),
        torch.nn.Flatten(), torch.nn.Linear(4 * 4 * 4, 3),
    ).double()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, 6, 1, 4, 4, generator=g, dtype=torch.float64)
    y = torch.arange(3).repeat(2).expand(3, 6)

    def loss_fn(params, batch):
        return torch.nn.functional.cross_entropy(torch.func.functional_call(model, params, (batch[0],)), batch[1])

    def task_loss(meta, xb, yb):
        return loss_fn(adapt(loss_fn, meta, (xb, yb), sgd(0.3), steps=1), (xb, yb))

    theta = {k: v.detach() for k, v in model.named_parameters()}
    backend = CountingBackend()
    meta_grad = compile_meta_value_and_grad(task_loss, backend=backend)  # auto: tiny tasks -> vmap first
    expected = mo.meta_value_and_grad(task_loss, theta, x, y, strategy="loop")
    for _ in range(3):
        assert_trees_close(meta_grad(theta, x, y), expected, rtol=1e-10, atol=1e-12)
    assert list(meta_grad.units) == ["vmap", "loop"] and meta_grad.units["loop"].compiled
    assert backend.compilations == 1


def test_compile_meta_value_and_grad_reports_nan_tasks_and_bad_input():
    _, loss_fn, theta, support, query = toy_regression(num_tasks=3)
    meta_grad = compile_meta_value_and_grad(_task_loss(loss_fn, "second_order"), strategy="loop",
                                               backend=CountingBackend())
    meta_grad(theta, support, query)
    meta_grad(theta, support, query)  # compiled from here on
    bad_query = (query[0], query[1].clone())
    bad_query[1][1] = float("nan")
    with pytest.raises(mo.inner.NonFiniteError, match=r"tasks \[1\] of 3"):
        meta_grad(theta, support, bad_query)
    with pytest.raises(ValueError, match="disagree on the number of tasks"):
        meta_grad(theta, support, tuple(x[:2] for x in query))
    with pytest.raises(ValueError, match="unknown strategy"):
        compile_meta_value_and_grad(_task_loss(loss_fn, "second_order"), strategy="fast")


def test_verification_replays_the_same_random_numbers():
    # the eager check runs from the random state the compiled call started from, so a step
    # that draws random numbers agrees with itself under a backend with torch's own generator
    step = mo.compile_meta_step(lambda x: x + torch.randn(3, dtype=x.dtype), backend="aot_eager")
    x = torch.zeros(3, dtype=torch.float64)
    step(x)
    torch.manual_seed(0)
    out = step(x)  # compiled and verified
    assert step.compiled, step.fallback_reason
    after_step = torch.randn(1, dtype=torch.float64)
    torch.manual_seed(0)
    torch.testing.assert_close(out, torch.randn(3, dtype=torch.float64))
    torch.testing.assert_close(after_step, torch.randn(1, dtype=torch.float64))  # advanced once, not twice


def test_meta_value_and_grad_compile_option_caches_and_equals_eager():
    _, loss_fn, theta, support, query = toy_regression(num_tasks=3)
    task_loss = _task_loss(loss_fn, "second_order")
    expected = mo.meta_value_and_grad(task_loss, theta, support, query, strategy="loop")
    for _ in range(3):
        got = mo.meta_value_and_grad(task_loss, theta, support, query, strategy="loop", compile=True)
        assert_trees_close(got, expected, rtol=1e-10, atol=1e-12)
    from metaops._batching import _COMPILED

    (unit,) = _COMPILED[task_loss].values()  # one cached compiled meta-gradient per strategy
    assert unit.compiled, unit.fallback_reason
