import math

import pytest
import torch

from metaops.tasks import LineTask, SineOrLine, SinusoidTask


def test_kinds_and_parameters_follow_their_distributions():
    dist = SineOrLine(sine_fraction=0.3)
    tasks = dist.sample_tasks(4000, generator=torch.Generator().manual_seed(0))
    sines = [t for t in tasks if isinstance(t, SinusoidTask)]
    lines = [t for t in tasks if isinstance(t, LineTask)]
    assert len(sines) + len(lines) == 4000
    assert abs(len(sines) / 4000 - 0.3) < 0.03  # binomial standard error 0.007
    a = torch.tensor([t.amplitude for t in sines])
    p = torch.tensor([t.phase for t in sines])
    s = torch.tensor([t.slope for t in lines])
    c = torch.tensor([t.intercept for t in lines])
    assert 0.1 <= a.min() and a.max() <= 5.0 and 0.0 <= p.min() and p.max() <= math.pi
    assert -3.0 <= s.min() and s.max() <= 3.0 and -3.0 <= c.min() and c.max() <= 3.0
    assert abs(a.mean() - 2.55) < 0.15 and abs(s.mean()) < 0.15 and abs(c.mean()) < 0.15
    assert abs(s.var() - 3.0) < 0.3  # U[-3, 3]: variance 36 / 12


def test_targets_support_window_and_query_range():
    dist = SineOrLine(support_range=(0.5, 1.5))
    g = torch.Generator().manual_seed(1)
    tasks = [SinusoidTask(2.0, 0.5), LineTask(-1.0, 2.0)]
    (xs, ys), (xq, yq) = dist.sample_batch(tasks, 200, generator=g, query_shots=300)
    assert xs.shape == ys.shape == (2, 200, 1) and xq.shape == yq.shape == (2, 300, 1)
    assert xs.dtype == torch.float32 and xs.min() >= 0.5 and xs.max() <= 1.5
    assert xq.min() >= -5.0 and xq.max() <= 5.0 and xq.min() < -4.0 and xq.max() > 4.0
    torch.testing.assert_close(ys[0], 2.0 * torch.sin(xs[0] - 0.5))
    torch.testing.assert_close(yq[1], -xq[1] + 2.0)
    torch.testing.assert_close(tasks[1].target(xq[1]), yq[1])


def test_noise_has_the_given_standard_deviation():
    dist = SineOrLine(noise_std=0.3)
    g = torch.Generator().manual_seed(2)
    tasks = [LineTask(1.0, 0.0)] * 4
    x, y = dist.sample_data(tasks, 5000, generator=g, dtype=torch.float64)
    residual = y - x
    assert abs(residual.mean()) < 0.01 and abs(residual.std() - 0.3) < 0.01


def test_seeded_determinism_and_fixed_generator_consumption():
    def draw(seed, fraction):
        g = torch.Generator().manual_seed(seed)
        dist = SineOrLine(sine_fraction=fraction)
        tasks = dist.sample_tasks(5, generator=g)
        return tasks, dist.sample_batch(tasks, 3, generator=g), g.get_state()

    tasks_a, batch_a, state_a = draw(0, 0.5)
    tasks_b, batch_b, _ = draw(0, 0.5)
    assert tasks_a == tasks_b and all(torch.equal(u, v) for u, v in zip(batch_a[0] + batch_a[1],
                                                                        batch_b[0] + batch_b[1]))
    assert torch.equal(state_a, draw(0, 1.0)[2])  # the kinds drawn do not change the stream's position


@pytest.mark.parametrize("kwargs, message", [
    (dict(support_range=(1.0, 1.0)), "support_range"),
    (dict(input_range=(0.0, math.inf)), "input_range"),
    (dict(slope_range=(2.0, -2.0)), "slope_range"),
    (dict(sine_fraction=1.5), "sine_fraction"),
    (dict(noise_std=-1.0), "noise_std"),
])
def test_bad_arguments_raise(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SineOrLine(**kwargs)


def test_bad_calls_raise():
    dist, g = SineOrLine(), torch.Generator().manual_seed(0)
    with pytest.raises(ValueError, match="num_tasks"):
        dist.sample_tasks(0, generator=g)
    with pytest.raises(ValueError, match="shots"):
        dist.sample_data([LineTask(1.0, 0.0)], 0, generator=g)
    with pytest.raises(ValueError, match="at least one task"):
        dist.sample_data([], 3, generator=g)


def test_line_task_label_and_dict():
    task = LineTask(slope=0.5, intercept=-2.0)
    assert task.to_dict() == {"slope": 0.5, "intercept": -2.0}
    assert "slope=0.50" in task.label
