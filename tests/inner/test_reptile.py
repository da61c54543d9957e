import pytest
import torch
from torch.func import vmap

from metaops.inner import adapt, reptile_grad, sgd
from tests._helpers import toy_regression


def test_reptile_grad_is_theta_minus_mean_adapted():
    _, loss_fn, theta, support, _ = toy_regression(num_tasks=3)
    phis = vmap(lambda s: adapt(loss_fn, theta, s, sgd(0.1), steps=4))(support)
    g = reptile_grad(theta, phis)
    for k in theta:
        torch.testing.assert_close(g[k], theta[k] - phis[k].mean(0))
    # a plain SGD step with lr eps on this gradient is Reptile's interpolation
    eps = 0.5
    new = {k: theta[k] - eps * g[k] for k in theta}
    for k in theta:
        torch.testing.assert_close(new[k], theta[k] + eps * (phis[k].mean(0) - theta[k]))


def test_reptile_grad_errors():
    with pytest.raises(ValueError, match="names differ"):
        reptile_grad({"w": torch.zeros(2)}, {"v": torch.zeros(2)})
    with pytest.raises(ValueError, match="neither"):
        reptile_grad({"w": torch.zeros(2)}, {"w": torch.zeros(3)})
