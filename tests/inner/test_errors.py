"""Bad input gets a clear error that names the problem."""

import pytest
import torch
import torch.nn.functional as F

import metaops as mo
import metaops._batching as batching
from metaops.inner import (
    InnerOptimizer,
    NonFiniteError,
    adapt,
    checkpointed,
    first_order,
    implicit,
    meta_sgd,
    sgd,
)

LOSS = lambda p, b: ((p["w"] - b) ** 2).sum()  # noqa: E731
THETA = {"w": torch.zeros(3)}


def test_steps_must_be_positive_int():
    with pytest.raises(ValueError, match="steps must be >= 1"):
        adapt(LOSS, THETA, torch.ones(3), sgd(0.1), steps=0)
    with pytest.raises(TypeError, match="steps must be an int"):
        adapt(LOSS, THETA, torch.ones(3), sgd(0.1), steps=1.5)


def test_non_scalar_loss():
    with pytest.raises(ValueError, match="scalar"):
        adapt(lambda p, b: (p["w"] - b) ** 2, THETA, torch.ones(3), sgd(0.1), steps=1)
    with pytest.raises(TypeError, match="scalar Tensor"):
        adapt(lambda p, b: 1.0, THETA, torch.ones(3), sgd(0.1), steps=1)


@pytest.mark.parametrize("mode", [None, checkpointed(), implicit(reg=1.0)])
def test_nan_loss_is_reported_with_the_step(mode):
    with pytest.raises(NonFiniteError, match="inner loss is nan at inner step 0"):
        adapt(lambda p, b: (p["w"] * b).sum(), THETA, torch.full((3,), float("nan")), sgd(0.1), steps=2, mode=mode)


def test_inf_gradient_is_reported_with_the_parameter_name():
    loss = lambda p, b: torch.sqrt(p["w"].abs()).sum()  # noqa: E731  infinite gradient at 0
    with pytest.raises(NonFiniteError, match=r"non-finite gradient at inner step 0 for parameters \['w'\]"):
        adapt(loss, THETA, None, sgd(0.1), steps=1)


def test_diverging_inner_loop_suggests_a_lower_learning_rate():
    with pytest.raises(NonFiniteError, match=r"inner loss is inf at inner step \d+; .*lower the inner learning rate"):
        adapt(lambda p, b: (p["w"] ** 2).sum(), {"w": torch.ones(3)}, None, sgd(1e3), steps=200)


LINEAR = torch.nn.Linear(3, 1)


def _linear_loss(params, batch):
    x, y = batch
    return F.mse_loss(torch.func.functional_call(LINEAR, params, (x,)), y)


@pytest.mark.parametrize("mode", [None, first_order(), checkpointed()], ids=["unrolled", "first_order", "checkpointed"])
def test_adapt_refuses_params_the_loss_does_not_use(mode):
    # functional_call ignores the misspelt name and uses the module's own weight: without the
    # check, adapt would return 'wieght' unchanged and the meta-gradient would be 0.
    params = {"wieght": torch.zeros(1, 3), "bias": torch.zeros(1)}
    batch = (torch.ones(4, 3), torch.ones(4, 1))
    with pytest.raises(ValueError, match=r"does not depend on params \['wieght'\].*named_parameters"):
        adapt(_linear_loss, params, batch, sgd(0.1), steps=2, mode=mode)
    adapt(_linear_loss, {"weight": torch.zeros(1, 3), "bias": torch.zeros(1)}, batch, sgd(0.1), steps=2, mode=mode)


def test_params_must_be_a_dict_of_float_tensors():
    with pytest.raises(TypeError, match="dict"):
        adapt(LOSS, [torch.zeros(3)], torch.ones(3), sgd(0.1), steps=1)
    with pytest.raises(TypeError, match="floating point"):
        adapt(LOSS, {"w": torch.zeros(3, dtype=torch.long)}, torch.ones(3), sgd(0.1), steps=1)
    with pytest.raises(ValueError, match="empty"):
        adapt(LOSS, {}, torch.ones(3), sgd(0.1), steps=1)


def test_optimizer_type_is_checked():
    with pytest.raises(TypeError, match="InnerOptimizer"):
        adapt(LOSS, THETA, torch.ones(3), torch.optim.SGD, steps=1)


@pytest.mark.parametrize(
    "lr, error", [(0.0, ValueError), (-1.0, ValueError), (float("nan"), ValueError), ("0.1", TypeError)]
)
def test_bad_learning_rates(lr, error):
    with pytest.raises(error, match="learning rate"):
        sgd(lr)


def test_meta_sgd_names_and_shapes_must_match():
    with pytest.raises(ValueError, match=r"missing \['w'\], unexpected \['v'\]"):
        adapt(LOSS, THETA, torch.ones(3), meta_sgd({"v": torch.tensor(0.1)}), steps=1)
    with pytest.raises(ValueError, match=r"has shape \(2,\) but params\['w'\] has shape \(3,\)"):
        adapt(LOSS, THETA, torch.ones(3), meta_sgd({"w": torch.ones(2)}), steps=1)


def test_unknown_strategy_and_bad_chunk_size():
    with pytest.raises(ValueError, match="unknown strategy 'fast'"):
        mo.map_tasks(lambda x: x, strategy="fast")
    with pytest.raises(ValueError, match="chunk_size >= 1"):
        mo.meta_value_and_grad(lambda m, x: (m * x).sum(), torch.ones(1), torch.ones(2, 1), strategy="chunked")


def test_task_batches_must_agree():
    with pytest.raises(ValueError, match=r"disagree on the number of tasks: \[2, 3\]"):
        mo.meta_value_and_grad(lambda m, x, y: (m * x * y).sum(), torch.ones(1), torch.ones(2, 1), torch.ones(3, 1))


def test_non_finite_meta_loss_names_the_tasks():
    x = torch.tensor([[1.0], [float("inf")], [2.0]])
    with pytest.raises(NonFiniteError, match=r"tasks \[1\] of 3; .*lower the inner learning rate"):
        mo.meta_value_and_grad(lambda m, x: (m * x).sum(), torch.ones(1), x, strategy="vmap")


@pytest.fixture(params=["autograd", "functional"])
def path(request, monkeypatch):
    """Runs a test through both implementations: ordinary autograd and torch.func.grad."""
    if request.param == "functional":
        monkeypatch.setattr(batching, "_use_autograd", lambda meta_params: False)
    return request.param


def _adam_without_eps_root(lr, b1=0.9, b2=0.999, eps=1e-8):
    """Adam as commonly hand-written: sqrt(v), whose derivative is infinite at v = 0."""

    def step(params, grads, state, hp):
        m, v, t = state
        m = {k: b1 * m[k] + (1 - b1) * grads[k] for k in params}
        v = {k: b2 * v[k] + (1 - b2) * grads[k] ** 2 for k in params}
        new = {k: params[k] - lr * (m[k] / (1 - b1 ** (t + 1))) / ((v[k] / (1 - b2 ** (t + 1))).sqrt() + eps)
               for k in params}
        return new, (m, v, t + 1)

    init = lambda params: ({k: torch.zeros_like(p) for k, p in params.items()},) * 2 + (0,)  # noqa: E731
    return InnerOptimizer(init=init, step=step, name="adam")


@pytest.mark.parametrize("strategy", ["vmap", "loop"])
def test_non_finite_meta_gradient_names_the_parameters_and_the_cause(path, strategy):
    def loss_fn(p, b):
        return ((b[0] * p["w"] + p["b"] - b[1]) ** 2).mean()

    def task_loss(meta, support, query):
        return loss_fn(adapt(loss_fn, meta, support, _adam_without_eps_root(0.1), steps=2), query)

    y = torch.randn(2, 5)
    support = (torch.zeros(2, 5), y)  # x = 0: w's inner gradient is exactly 0, where sqrt(v) has none
    query = (torch.rand(2, 5), y)
    theta = {"w": torch.tensor(0.5), "b": torch.tensor(0.1)}
    with pytest.raises(NonFiniteError, match=r"meta-gradient is NaN/inf for \['w'.*learning rate.*eps_root"):
        mo.meta_value_and_grad(task_loss, theta, support, query, strategy=strategy)


@pytest.mark.parametrize("strategy", ["vmap", "chunked", "loop"])
def test_meta_params_the_loss_does_not_use_are_named(strategy):
    def task_loss(meta, x, y):  # no inner loop: the meta-level check alone
        return _linear_loss(meta, (x, y))

    meta = {"wieght": torch.zeros(1, 3), "bias": torch.zeros(1)}
    x, y = torch.randn(4, 5, 3), torch.randn(4, 5, 1)
    chunk_size = 2 if strategy == "chunked" else None
    with pytest.raises(ValueError, match=r"meta_params \['wieght'\] do not affect .*named_parameters"):
        mo.meta_value_and_grad(task_loss, meta, x, y, strategy=strategy, chunk_size=chunk_size)
    assert LINEAR.weight.grad is None


def test_one_tasks_data_without_the_task_dimension_is_refused():
    def task_loss(meta, support, query):
        return _linear_loss(adapt(_linear_loss, meta, support, sgd(0.1), steps=1), query)

    theta = {k: v.detach() for k, v in LINEAR.named_parameters()}
    x, labels = torch.randn(5, 3), torch.randn(5)  # one task: 5 points, features and targets
    with pytest.raises(ValueError, match=r"shape \(5,\), which would be read as 5 tasks .*x\[None\]"):
        mo.meta_value_and_grad(task_loss, theta, (x, labels), (x, labels))
