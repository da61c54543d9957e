"""Bad input gets a clear error that names the problem."""

import pytest
import torch

import metaops as mo
from metaops.inner import NonFiniteError, adapt, checkpointed, implicit, meta_sgd, sgd

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
    with pytest.raises(NonFiniteError, match=r"tasks \[1\] of 3"):
        mo.meta_value_and_grad(lambda m, x: (m * x).sum(), torch.ones(1), x, strategy="vmap")
