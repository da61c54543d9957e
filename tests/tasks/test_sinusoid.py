import math

import pytest
import torch

from metaops.tasks import Sinusoid, SinusoidTask


def test_ranges_shapes_and_the_function():
    g = torch.Generator().manual_seed(0)
    dist = Sinusoid()
    tasks = dist.sample_tasks(2000, generator=g)
    amps = torch.tensor([t.amplitude for t in tasks])
    phases = torch.tensor([t.phase for t in tasks])
    assert amps.min() >= 0.1 and amps.max() <= 5.0 and phases.min() >= 0 and phases.max() <= math.pi
    assert abs(amps.mean().item() - 2.55) < 0.1  # uniform on [0.1, 5]
    (xs, ys), (xq, yq) = dist.sample_batch(tasks[:3], 10, generator=g, query_shots=7)
    assert xs.shape == (3, 10, 1) and yq.shape == (3, 7, 1)
    assert xs.min() >= -5 and xs.max() <= 5
    expected = torch.tensor([t.amplitude for t in tasks[:3]]).view(3, 1, 1) * torch.sin(
        xq - torch.tensor([t.phase for t in tasks[:3]]).view(3, 1, 1)
    )
    torch.testing.assert_close(yq, expected)


def test_determinism_and_plain_data():
    a = Sinusoid().sample_tasks(4, generator=torch.Generator().manual_seed(3))
    b = Sinusoid().sample_tasks(4, generator=torch.Generator().manual_seed(3))
    assert a == b
    assert SinusoidTask(**a[0].to_dict()) == a[0]


def test_bad_config():
    with pytest.raises(ValueError, match="amplitude_range"):
        Sinusoid(amplitude_range=(5.0, 0.1))
    with pytest.raises(ValueError, match="shots must be >= 1"):
        Sinusoid().sample_data([SinusoidTask(1.0, 0.0)], 0, generator=torch.Generator())
