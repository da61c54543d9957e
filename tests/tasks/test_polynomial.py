import numpy as np
import pytest
import torch

from metaops.tasks import Polynomial, PolynomialTask


def test_coefficients_are_independent_and_uniform_in_range():
    dist = Polynomial(degree=3, coeff_range=(-1.0, 2.0))
    tasks = dist.sample_tasks(4000, generator=torch.Generator().manual_seed(0))
    c = torch.tensor([t.coefficients for t in tasks], dtype=torch.float64)  # (tasks, degree + 1)
    assert c.shape == (4000, 4) and c.min() >= -1.0 and c.max() <= 2.0
    # U[-1, 2]: mean 0.5, variance 9/12, quartiles -0.25 and 1.25 (standard errors ~0.014, ~0.01, ~0.02)
    torch.testing.assert_close(c.mean(0), torch.full((4,), 0.5, dtype=torch.float64), atol=0.06, rtol=0)
    torch.testing.assert_close(c.var(0), torch.full((4,), 0.75, dtype=torch.float64), atol=0.05, rtol=0)
    quartiles = torch.quantile(c, torch.tensor([0.25, 0.75], dtype=torch.float64), dim=0)
    torch.testing.assert_close(quartiles, torch.tensor([[-0.25] * 4, [1.25] * 4], dtype=torch.float64),
                               atol=0.08, rtol=0)
    correlation = torch.corrcoef(c.T) - torch.eye(4, dtype=torch.float64)
    assert correlation.abs().max() < 0.06


def test_inputs_are_uniform_in_range_float32_and_batched():
    dist = Polynomial(degree=2, input_range=(-3.0, 1.0))
    g = torch.Generator().manual_seed(1)
    (xs, ys), (xq, yq) = dist.sample_batch(dist.sample_tasks(5, generator=g), 400, generator=g, query_shots=7)
    assert xs.shape == ys.shape == (5, 400, 1) and xq.shape == yq.shape == (5, 7, 1)
    assert xs.dtype == ys.dtype == torch.float32
    assert xs.min() >= -3.0 and xs.max() <= 1.0 and abs(xs.mean().item() + 1.0) < 0.1
    (x64, y64), _ = dist.sample_batch(dist.sample_tasks(2, generator=g), 3, generator=g, dtype=torch.float64)
    assert x64.dtype == y64.dtype == torch.float64


def test_seeded_determinism():
    def draw(seed):
        g = torch.Generator().manual_seed(seed)
        dist = Polynomial(degree=4)
        tasks = dist.sample_tasks(6, generator=g)
        return tasks, dist.sample_batch(tasks, 5, generator=g)

    (tasks_a, (sa, qa)), (tasks_b, (sb, qb)) = draw(7), draw(7)
    assert tasks_a == tasks_b
    for a, b in zip((*sa, *qa), (*sb, *qb)):
        assert torch.equal(a, b)
    assert draw(8)[0] != tasks_a
    assert PolynomialTask(**tasks_a[0].to_dict()) == tasks_a[0]  # plain data, round trip


@pytest.mark.parametrize("degree", [0, 1, 3, 5])
def test_targets_equal_numpy_polyval(degree):
    dist = Polynomial(degree=degree, coeff_range=(-2.0, 2.0), input_range=(-2.0, 2.0))
    g = torch.Generator().manual_seed(degree)
    tasks = dist.sample_tasks(4, generator=g)
    x, y = dist.sample_data(tasks, 50, generator=g)
    for i, task in enumerate(tasks):
        expected = np.polyval(np.array(task.coefficients[::-1]), x[i].double().numpy())  # numpy: highest first
        np.testing.assert_allclose(y[i].numpy(), expected, rtol=1e-5, atol=1e-5)
        grid = torch.linspace(-2, 2, 9, dtype=torch.float64).view(-1, 1)  # the plots' grid evaluation
        np.testing.assert_allclose(task.target(grid).numpy(), np.polyval(task.coefficients[::-1], grid.numpy()),
                                   rtol=1e-12)
    assert task.degree == degree and task.label.startswith("c=(")


def test_bad_arguments_are_clear_errors():
    for degree in (-1, 2.5, True, "3"):
        with pytest.raises(ValueError, match="degree must be an int >= 0"):
            Polynomial(degree=degree)
    for bad in ((1.0, -1.0), (0.0, 0.0), (0.0, float("inf")), (float("nan"), 1.0), (0.0,)):
        with pytest.raises(ValueError, match="coeff_range must be a finite"):
            Polynomial(coeff_range=bad)
    with pytest.raises(ValueError, match="input_range must be a finite"):
        Polynomial(input_range=(2.0, -2.0))
    dist, g = Polynomial(degree=2), torch.Generator().manual_seed(0)
    with pytest.raises(ValueError, match="num_tasks must be an int >= 1"):
        dist.sample_tasks(0, generator=g)
    tasks = dist.sample_tasks(2, generator=g)
    with pytest.raises(ValueError, match="shots must be an int >= 1"):
        dist.sample_batch(tasks, 0, generator=g)
    with pytest.raises(ValueError, match=r"degree=2\) got tasks of degree \[1\]"):
        dist.sample_data([PolynomialTask((1.0, 2.0))], 3, generator=g)
    with pytest.raises(ValueError, match="at least one task"):
        dist.sample_data([], 3, generator=g)
    with pytest.raises(ValueError, match="at least one coefficient"):
        PolynomialTask(())
