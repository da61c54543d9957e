"""The per-task replay buffer: ring insertion by hand, seeded sampling, exact resume, errors."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

from metaops.rl import ReplayBuffer, Transitions

OBS, ACT = (3,), (2,)


def _steps(tasks, n, start=0.0, dtype=torch.float32):
    """n transitions per task whose values encode (task, step): obs[k, i] = 100 k + start + i."""
    ids = 100.0 * torch.arange(tasks, dtype=dtype).unsqueeze(1) + start + torch.arange(n, dtype=dtype)
    return (ids.unsqueeze(-1).expand(tasks, n, *OBS).clone(), -ids.unsqueeze(-1).expand(tasks, n, *ACT).clone(),
            ids + 0.5, ids.unsqueeze(-1).expand(tasks, n, *OBS) + 1.0, (ids.long() % 3) == 0)


def _buffer(tasks=2, capacity=5, seed=0, **kw):
    return ReplayBuffer(tasks, capacity, obs_shape=OBS, act_shape=ACT, seed=seed, **kw)


def test_ring_insertion_by_hand():
    buffer = _buffer(capacity=5)
    buffer.add(*_steps(2, 3))  # steps 0, 1, 2 at positions 0, 1, 2
    assert (buffer.position, len(buffer)) == (3, 3)
    buffer.add(*_steps(2, 4, start=3))  # steps 3, 4 at 3, 4; steps 5, 6 overwrite 0, 1
    assert (buffer.position, len(buffer)) == (2, 5)
    assert buffer.storage["obs"][0, :, 0].tolist() == [5.0, 6.0, 2.0, 3.0, 4.0]
    assert buffer.storage["obs"][1, :, 0].tolist() == [105.0, 106.0, 102.0, 103.0, 104.0]
    assert buffer.storage["actions"][1, :, 1].tolist() == [-105.0, -106.0, -102.0, -103.0, -104.0]
    assert buffer.storage["rewards"][0].tolist() == [5.5, 6.5, 2.5, 3.5, 4.5]
    assert buffer.storage["next_obs"][0, :, 2].tolist() == [6.0, 7.0, 3.0, 4.0, 5.0]
    assert buffer.storage["terminated"][0].tolist() == [False, True, False, True, False]  # steps 5, 6, 2, 3, 4


def test_more_than_capacity_at_once_keeps_the_last_ones_in_ring_order():
    buffer = _buffer(capacity=4)
    buffer.add(*_steps(2, 1))  # position 1
    buffer.add(*_steps(2, 9, start=1))  # steps 1..9; the last 4 (6..9) survive
    assert (buffer.position, len(buffer)) == ((1 + 9) % 4, 4)
    # step s sits at position s % 4 (every step went to 1 + (s - 1) = s modulo 4)
    assert buffer.storage["obs"][0, :, 0].tolist() == [8.0, 9.0, 6.0, 7.0]


def test_one_transition_per_task_without_a_step_dimension():
    buffer, reference = _buffer(), _buffer()
    for i in range(7):
        step = _steps(2, 1, start=float(i))
        buffer.add(*(x[:, 0] for x in step))
        reference.add(*step)
    for name in buffer.storage:
        assert torch.equal(buffer.storage[name], reference.storage[name])
    assert (buffer.position, buffer.size) == (reference.position, reference.size) == (2, 5)


def test_numpy_float64_inputs_are_converted():
    buffer = _buffer(tasks=1)
    obs, actions, rewards, next_obs, terminated = (x.numpy() for x in _steps(1, 2, dtype=torch.float64))
    buffer.add(obs, actions, rewards, next_obs, terminated)
    assert buffer.storage["obs"].dtype == torch.float32 and buffer.storage["obs"][0, 1, 0].item() == 1.0
    assert isinstance(terminated, np.ndarray) and buffer.storage["terminated"][0, :2].tolist() == [True, False]


def test_sampling_is_per_task_seeded_and_returns_copies():
    buffer = _buffer(tasks=3, capacity=50, seed=7)
    buffer.add(*_steps(3, 40))
    batch = buffer.sample(64)
    assert isinstance(batch, Transitions)
    assert batch.obs.shape == (3, 64, 3) and batch.actions.shape == (3, 64, 2) and batch.terminated.dtype == torch.bool
    step = batch.obs[..., 0] - 100.0 * torch.arange(3).unsqueeze(1)  # which step was drawn, per task
    assert bool(((step >= 0) & (step < 40)).all())  # only stored transitions, each from its own task
    assert torch.equal(batch.actions[..., 0], -batch.obs[..., 0])  # fields stay aligned
    assert torch.equal(batch.rewards, batch.obs[..., 0] + 0.5)
    assert not torch.equal(step[0], step[1])  # tasks draw their own indices
    # the indices are torch.randint from a generator seeded with the seed
    g = torch.Generator().manual_seed(7)
    assert torch.equal(step.long(), torch.randint(0, 40, (3, 64), generator=g))
    batch.obs.zero_()  # a copy: the storage is untouched
    assert buffer.storage["obs"][0, 5, 0].item() == 5.0


def test_same_seed_same_indices_other_seed_other_indices():
    draws = []
    for seed in (3, 3, 4):
        buffer = _buffer(capacity=100, seed=seed)
        buffer.add(*_steps(2, 100))
        draws.append(torch.stack([buffer.sample(16).obs for _ in range(3)]))
    assert torch.equal(draws[0], draws[1])
    assert not torch.equal(draws[0], draws[2])


def test_resume_is_exact_through_torch_save():
    buffer = _buffer(capacity=30, seed=11)
    for i in range(5):
        buffer.add(*_steps(2, 8, start=8.0 * i))  # wraps around
        buffer.sample(4)
    file = io.BytesIO()
    torch.save(buffer.state_dict(), file)
    file.seek(0)
    resumed = _buffer(capacity=30, seed=999)
    resumed.load_state_dict(torch.load(file, weights_only=True))
    for i in range(4):  # the same future: inserts and samples interleaved
        step = _steps(2, 3, start=1000.0 + 3 * i)
        buffer.add(*step)
        resumed.add(*step)
        for a, b in zip(buffer.sample(32), resumed.sample(32), strict=True):
            assert torch.equal(a, b)
    assert (buffer.position, buffer.size) == (resumed.position, resumed.size)
    for name in buffer.storage:
        assert torch.equal(buffer.storage[name], resumed.storage[name])


def test_load_state_dict_copies_rather_than_aliases():
    source = _buffer()
    source.add(*_steps(2, 2))
    target = _buffer()
    target.load_state_dict(source.state_dict())
    source.add(*_steps(2, 1, start=50.0))
    assert target.storage["obs"][0, 2, 0].item() == 0.0 and len(target) == 2


def test_shape_and_dtype_errors_are_clear():
    buffer = _buffer(tasks=2, capacity=5)
    obs, actions, rewards, next_obs, terminated = _steps(2, 3)
    with pytest.raises(ValueError, match=r"actions has shape \(2, 3, 4\), expected \(2, 3, 2\)"):
        buffer.add(obs, torch.zeros(2, 3, 4), rewards, next_obs, terminated)
    with pytest.raises(ValueError, match=r"obs has shape \(3, 3, 3\), expected \(2, 3, 3\)"):
        buffer.add(*_steps(3, 3))
    with pytest.raises(ValueError, match=r"rewards has shape \(2, 2\), expected \(2, 3\)"):
        buffer.add(obs, actions, rewards[:, :2], next_obs, terminated)
    with pytest.raises(ValueError, match=r"next_obs has shape \(2, 3\), expected \(2, 3, 3\)"):
        buffer.add(obs, actions, rewards, next_obs[..., 0], terminated)
    with pytest.raises(TypeError, match="terminated must be bool, got torch.float32"):
        buffer.add(obs, actions, rewards, next_obs, terminated.float())
    with pytest.raises(TypeError, match="obs must be floating point, got torch.int64"):
        buffer.add(obs.long(), actions, rewards, next_obs, terminated)
    with pytest.raises(TypeError, match="rewards must be a tensor or array, got list"):
        buffer.add(obs, actions, [0.0], next_obs, terminated)
    assert len(buffer) == 0  # nothing was written by the failed calls
    with pytest.raises(ValueError, match="the buffer is empty"):
        buffer.sample(4)
    buffer.add(obs, actions, rewards, next_obs, terminated)
    with pytest.raises(ValueError, match="batch_size must be a positive int, got 0"):
        buffer.sample(0)
    with pytest.raises(ValueError, match="capacity must be a positive int"):
        ReplayBuffer(2, 0, obs_shape=3, act_shape=2)
    with pytest.raises(TypeError, match="dtype must be floating point"):
        ReplayBuffer(2, 5, obs_shape=3, act_shape=2, dtype=torch.int32)


def test_load_state_dict_refuses_a_different_buffer():
    state = _buffer(tasks=2, capacity=5).state_dict()
    with pytest.raises(ValueError, match="capacity 5, this buffer 6"):
        _buffer(tasks=2, capacity=6).load_state_dict(state)
    with pytest.raises(ValueError, match=r"obs is \(2, 5, 3\) torch.float32 in the state but \(3, 5, 3\)"):
        _buffer(tasks=3, capacity=5).load_state_dict(state)
    with pytest.raises(ValueError, match=r"obs is .* torch.float32 in the state but .* torch.float64"):
        _buffer(tasks=2, capacity=5, dtype=torch.float64).load_state_dict(state)
    with pytest.raises(ValueError, match=r"lacks \['generator'\]"):
        _buffer().load_state_dict({k: v for k, v in state.items() if k != "generator"})
