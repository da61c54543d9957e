"""held_out_adaptation: one step function or a test-time schedule of them; bad schedules raise."""

from __future__ import annotations

import pytest
import torch

from metaops import rl
from metaops.experiment import held_out_adaptation

NAME = "mean_net.2.bias"  # the last layer's bias: shifting it moves every action's mean


def _policy() -> rl.GaussianMLPPolicy:
    torch.manual_seed(0)
    return rl.GaussianMLPPolicy(2, 2, hidden_sizes=(8,), action_bounds=(-0.1, 0.1))


def _shift(amount: float):
    """An 'adaptation step' that adds `amount` to the last bias, whatever the data."""
    return lambda params, data: {**params, NAME: params[NAME] + amount}


def _run(policy, adapt_step, steps: int, on_step=None) -> torch.Tensor:
    return held_out_adaptation(policy, dict(policy.named_parameters()), env_name="Navigation2D",
                               adapt_step=adapt_step, process=lambda batch: batch.observations, num_tasks=3,
                               episodes=2, steps=steps, seed=0, horizon=5, on_step=on_step)


def test_schedule_takes_step_k_with_its_kth_function_and_repeats_the_last():
    policy = _policy()
    assert NAME in dict(policy.named_parameters())
    shifts = []
    record = lambda before, after, data: shifts.append((after[NAME] - before[NAME]).flatten().tolist())
    curve = _run(policy, [_shift(0.02), _shift(-0.01)], steps=3, on_step=record)
    assert curve.shape == (4, 3) and torch.isfinite(curve).all()
    expected = [0.02, -0.01, -0.01]  # step 0, step 1, and the last function again for step 2
    assert [pytest.approx([e] * 6) for e in expected] == shifts  # 3 tasks x 2 action dimensions


def test_schedule_changes_only_the_returns_after_its_steps():
    """Same seed: the 0-step returns agree; a different first step changes the later ones, and a one-item schedule
    is the single function."""
    policy = _policy()
    single = _run(policy, _shift(0.05), steps=2)
    assert torch.equal(_run(policy, [_shift(0.05)], steps=2), single)
    other = _run(policy, [_shift(-0.05), _shift(0.05)], steps=2)
    assert torch.equal(other[0], single[0])
    assert not torch.equal(other[1], single[1])


@pytest.mark.parametrize("bad", [[], [0.5], (_shift(0.1), "step"), 0.5])
def test_bad_schedule_raises(bad):
    with pytest.raises(ValueError, match="adapt_step must be a function or a non-empty sequence"):
        _run(_policy(), bad, steps=1)
