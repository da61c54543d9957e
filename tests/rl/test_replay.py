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


# --- where=: per-task selection, per-task rings and sizes ------------------------------------------------------


def _offer(tasks, n, start):
    """n transitions per task whose obs encode a unique id 1000 k + start + i (and the other fields follow it)."""
    ids = 1000.0 * torch.arange(tasks).unsqueeze(1) + start + torch.arange(n)
    return (ids[..., None].expand(tasks, n, *OBS).clone(), -ids[..., None].expand(tasks, n, *ACT).clone(), ids + 0.5,
            ids[..., None].expand(tasks, n, *OBS) + 1.0, (ids.long() % 3) == 0)


def _reference_ring(inserted, capacity):
    """What a task's ring must hold, from the list of its inserted ids: insertion i sits at slot i % capacity."""
    slots = [None] * capacity
    for i, x in enumerate(inserted):
        slots[i % capacity] = x
    return slots


def test_where_matches_a_per_task_list_reference():
    """Random offers and masks (one step or many, wrapping, more than the capacity at once) against plain lists."""
    g = torch.Generator().manual_seed(0)
    tasks, capacity = 3, 12
    keep = torch.tensor([[0.9], [0.5], [0.25]])  # tasks fill at different rates
    buffer, start, uneven_draws = _buffer(tasks=tasks, capacity=capacity, seed=4), 0, 0
    inserted = [[] for _ in range(tasks)]  # the reference: every id each task stored, in order
    draws = torch.Generator().manual_seed(4)  # the reference sampler: one randint per task, task after task
    for call in range(50):
        one_step = call % 3 == 0
        n = 1 if one_step else int(torch.randint(0, 9, (), generator=g))
        where = torch.rand(tasks, n, generator=g) < keep
        offer = _offer(tasks, n, start)
        start += n
        if one_step:
            buffer.add(*(x[:, 0] for x in offer), where=where[:, 0])
        else:
            buffer.add(*offer, where=where)
        for k in range(tasks):
            inserted[k] += [x for x, w in zip(offer[0][k, :, 0].tolist(), where[k].tolist()) if w]
        sizes = [min(len(ids), capacity) for ids in inserted]
        assert buffer.sizes.tolist() == sizes
        assert buffer.positions.tolist() == [len(ids) % capacity for ids in inserted]
        assert len(buffer) == min(sizes)
        for k in range(tasks):
            ring = _reference_ring(inserted[k], capacity)
            got = buffer.storage["obs"][k, :, 0].tolist()
            assert got[:sizes[k]] == ring[:sizes[k]], (call, k)
            stored = buffer.storage["rewards"][k, :sizes[k]]
            assert torch.equal(stored, buffer.storage["obs"][k, :sizes[k], 0] + 0.5)  # fields stay aligned
        if min(sizes) > 0:
            batch = buffer.sample(7)
            for k in range(tasks):
                want = torch.randint(0, sizes[k], (7,), generator=draws)
                ring = torch.tensor(_reference_ring(inserted[k], capacity)[:sizes[k]])
                assert torch.equal(batch.obs[k, :, 0], ring[want]), (call, k)
                assert set(batch.obs[k, :, 0].tolist()) <= set(inserted[k][-capacity:])  # only its own, live ones
            assert torch.equal(buffer.generator.get_state(), draws.get_state())
            uneven_draws += len(set(sizes)) > 1
    assert uneven_draws >= 5 and min(len(ids) for ids in inserted) > capacity  # uneven draws; every ring wrapped


def test_where_wraps_each_task_ring_on_its_own_by_hand():
    buffer = _buffer(tasks=2, capacity=3)
    keep_every_other = torch.tensor([[True] * 4, [True, False, True, False]])
    buffer.add(*_offer(2, 4, 0), where=keep_every_other)  # task 0: ids 0..3 (wraps), task 1: ids 1000, 1002
    assert buffer.storage["obs"][0, :, 0].tolist() == [3.0, 1.0, 2.0]
    assert buffer.storage["obs"][1, :2, 0].tolist() == [1000.0, 1002.0]
    assert buffer.positions.tolist() == [1, 2] and buffer.sizes.tolist() == [3, 2] and len(buffer) == 2
    buffer.add(*(x[:, 0] for x in _offer(2, 1, 10)), where=torch.tensor([False, True]))  # one step, task 1 only
    assert buffer.storage["obs"][1, :, 0].tolist() == [1000.0, 1002.0, 1010.0]
    assert buffer.positions.tolist() == [1, 0] and buffer.sizes.tolist() == [3, 3]
    buffer.add(*_offer(2, 5, 20), where=torch.tensor([[False] * 5, [True] * 5]))  # 5 > capacity: the last 3 stay
    assert buffer.storage["obs"][1, :, 0].tolist() == [1023.0, 1024.0, 1022.0]  # slots 0..4 -> 2 and 0 rewritten
    assert buffer.storage["obs"][0, :, 0].tolist() == [3.0, 1.0, 2.0]  # untouched
    assert buffer.positions.tolist() == [1, 2]
    with pytest.raises(ValueError, match=r"the tasks differ \(positions \[1, 2\].*ReplayBuffer.positions"):
        buffer.position  # noqa: B018 - the property raises
    assert buffer.size == 3  # both full: the sizes agree again
    buffer.position = buffer.size = 0  # PEARL's way to empty a buffer
    assert buffer.positions.tolist() == [0, 0] and len(buffer) == 0


def test_where_all_true_or_numpy_equals_no_where():
    plain, masked, numpy_masked = _buffer(capacity=4), _buffer(capacity=4), _buffer(capacity=4)
    for i in range(3):
        offer = _offer(2, 3, 10 * i)
        plain.add(*offer)
        masked.add(*offer, where=torch.ones(2, 3, dtype=torch.bool))
        numpy_masked.add(*(x.numpy() for x in offer), where=np.ones((2, 3), dtype=bool))
    want = plain.sample(6).obs
    for other in (masked, numpy_masked):
        for name in plain.storage:
            assert torch.equal(plain.storage[name], other.storage[name])
        assert (other.position, other.size) == (plain.position, plain.size) == (1, 4)
        assert torch.equal(other.sample(6).obs, want)


def test_sampling_uneven_tasks_draws_from_each_task_own_entries():
    buffer = _buffer(tasks=4, capacity=50, seed=2)
    where = torch.tensor([[True] * 6, [True] + [False] * 5, [True] * 6, [True] * 3 + [False] * 3])
    buffer.add(*_offer(4, 6, 0), where=where)
    assert buffer.sizes.tolist() == [6, 1, 6, 3]
    batch = buffer.sample(200)
    drawn = batch.obs[..., 0] - 1000.0 * torch.arange(4).unsqueeze(1)
    assert [sorted(set(row.long().tolist())) for row in drawn] == [list(range(6)), [0], list(range(6)), [0, 1, 2]]
    # one randint per run of equal sizes, in task order: here each task its own call
    g = torch.Generator().manual_seed(2)
    want = torch.cat([torch.randint(0, s, (1, 200), generator=g) for s in (6, 1, 6, 3)])
    assert torch.equal(drawn.long(), want)


def test_sampling_a_task_without_transitions_raises():
    buffer = _buffer(tasks=3)
    buffer.add(*_offer(3, 2, 0), where=torch.tensor([[True, True], [False, False], [True, False]]))
    state = buffer.generator.get_state()
    with pytest.raises(ValueError, match=r"task\(s\) \[1\] hold no transitions yet \(sizes \[2, 0, 1\]\)"):
        buffer.sample(4)
    assert torch.equal(buffer.generator.get_state(), state)  # nothing drawn
    assert len(buffer) == 0
    with pytest.raises(ValueError, match=r"the tasks differ \(sizes \[2, 0, 1\]"):
        buffer.size  # noqa: B018 - the property raises


def test_where_errors_are_clear_and_write_nothing():
    buffer = _buffer(tasks=2, capacity=5)
    offer = _offer(2, 3, 0)
    with pytest.raises(TypeError, match="where must be bool, got torch.float32"):
        buffer.add(*offer, where=torch.ones(2, 3))
    with pytest.raises(TypeError, match="where must be a bool tensor or array, got list"):
        buffer.add(*offer, where=[[True] * 3] * 2)
    with pytest.raises(ValueError, match=r"where has shape \(2,\), expected \(2, 3\) \(\(tasks, n\)"):
        buffer.add(*offer, where=torch.ones(2, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"where has shape \(3,\), expected \(2,\) \(\(tasks,\): one flag per task"):
        buffer.add(*(x[:, 0] for x in offer), where=torch.ones(3, dtype=torch.bool))
    assert len(buffer) == 0 and buffer.positions.tolist() == [0, 0]
    assert not buffer.storage["obs"].any()
    with pytest.raises(ValueError, match=r"size must be an int in \[0, 5\], got 6"):
        buffer.size = 6
    with pytest.raises(ValueError, match=r"position must be an int in \[0, 4\], got 5"):
        buffer.position = 5


def test_non_finite_transitions_are_refused_unless_left_out_with_where():
    buffer = _buffer(tasks=2, capacity=5)
    for field, value in ((0, float("nan")), (1, float("inf")), (2, float("-inf")), (3, float("nan"))):
        offer = list(_steps(2, 3))
        offer[field] = offer[field].clone()
        offer[field][1, 2] = value  # task 1, step 2
        name = ("obs", "actions", "rewards", "next_obs")[field]
        with pytest.raises(ValueError, match=rf"{name} of task 1, step 2 is NaN or infinite; nothing was stored"):
            buffer.add(*offer)
        assert len(buffer) == 0 and not buffer.storage["obs"].any()
        one = [x[:, 2] for x in offer]  # one transition per task: no step in the message
        with pytest.raises(ValueError, match=rf"{name} of task 1 is NaN or infinite"):
            buffer.add(*one)
    where = torch.ones(2, 3, dtype=torch.bool)
    where[1, 2] = False  # the bad transition is not selected: the rest is stored
    buffer.add(*offer, where=where)
    assert buffer.sizes.tolist() == [3, 2] and bool(torch.isfinite(buffer.storage["next_obs"]).all())


# --- one share of a batch: the whole batch's draws, this share's rows -----------------------------------------


def test_shares_draw_the_rows_a_whole_buffer_draws():
    """Shares (2 + 3 of 5 tasks, uneven sizes) sample exactly the whole buffer's rows, call after call."""
    where = torch.tensor([[True] * 6, [True, False] * 3, [True] * 6, [False, True, True, True, False, False],
                          [True] * 2 + [False] * 4])
    whole, uneven = _buffer(tasks=5, capacity=6, seed=9), 0
    shares = [(rows, _buffer(tasks=rows.stop - rows.start, capacity=6, seed=9)) for rows in (slice(0, 2), slice(2, 5))]
    for i in range(3):
        offer = _offer(5, 6, 10 * i)
        whole.add(*offer, where=where.roll(i, 0))
        for rows, share in shares:
            share.add(*(x[rows] for x in offer), where=where.roll(i, 0)[rows])
        uneven += len(set(whole.sizes.tolist())) > 1
        for batch_size in (1, 7):
            want = whole.sample(batch_size)
            for rows, share in shares:
                got = share.sample(batch_size, task_rows=rows, batch_tasks=5)
                for a, b in zip(got, want, strict=True):
                    assert torch.equal(a, b[rows])
                assert torch.equal(share.generator.get_state(), whole.generator.get_state())
    assert uneven >= 2 and whole.sizes.tolist() == [6] * 5  # drawn from uneven sizes; every ring full at the end
    # the whole batch as its own share is the plain call
    same = _buffer(tasks=5, capacity=6, seed=9)
    same.load_state_dict(whole.state_dict())
    assert torch.equal(same.sample(3, task_rows=slice(0, 5), batch_tasks=5).obs, whole.sample(3).obs)


def test_share_arguments_are_checked():
    buffer = _buffer(tasks=2)
    buffer.add(*_offer(2, 1, 0))
    for kwargs, message in [(dict(task_rows=slice(0, 2)), "task_rows and batch_tasks go together"),
                            (dict(task_rows=slice(0, 2), batch_tasks=0), "batch_tasks must be a positive int"),
                            (dict(task_rows=slice(0, 4, 2), batch_tasks=5), "contiguous slice"),
                            (dict(task_rows=slice(1, 4), batch_tasks=5), "does not hold this buffer's 2 tasks"),
                            (dict(task_rows=slice(4, 6), batch_tasks=5), "does not hold this buffer's 2 tasks")]:
        with pytest.raises(ValueError, match=message):
            buffer.sample(3, **kwargs)


# --- resume with per-task sizes, and the older state format ---------------------------------------------------


def test_resume_mid_fill_with_uneven_tasks_is_exact():
    g = torch.Generator().manual_seed(1)
    buffer = _buffer(tasks=3, capacity=6, seed=5)
    for i in range(3):
        buffer.add(*_offer(3, 4, 10 * i), where=torch.rand(3, 4, generator=g) < 0.5)
    buffer.add(*_offer(3, 1, 99), where=torch.ones(3, 1, dtype=torch.bool))  # no task is empty
    assert 0 < min(buffer.sizes.tolist()) and max(buffer.sizes.tolist()) <= 6 and len(set(buffer.sizes.tolist())) > 1
    file = io.BytesIO()
    torch.save(buffer.state_dict(), file)
    file.seek(0)
    resumed = _buffer(tasks=3, capacity=6, seed=0)
    resumed.load_state_dict(torch.load(file, weights_only=True))
    for i in range(4):
        offer, where = _offer(3, 3, 200 + 10 * i), torch.rand(3, 3, generator=g) < 0.5
        for b in (buffer, resumed):
            b.add(*offer, where=where)
        for a, b in zip(buffer.sample(9), resumed.sample(9), strict=True):
            assert torch.equal(a, b)
    assert torch.equal(buffer.sizes, resumed.sizes) and torch.equal(buffer.positions, resumed.positions)
    for name in buffer.storage:
        assert torch.equal(buffer.storage[name], resumed.storage[name])


def test_a_state_with_one_position_and_size_still_loads():
    """The format before per-task sizes (ints "position" and "size" for all tasks) loads into every task."""
    buffer = _buffer(tasks=2, capacity=5, seed=3)
    buffer.add(*_steps(2, 7))
    state = buffer.state_dict()
    old = {**{k: v for k, v in state.items() if k not in ("positions", "sizes")}, "position": 2, "size": 5}
    resumed = _buffer(tasks=2, capacity=5, seed=0)
    resumed.load_state_dict(old)
    assert resumed.positions.tolist() == [2, 2] and resumed.sizes.tolist() == [5, 5]
    assert torch.equal(resumed.sample(8).obs, buffer.sample(8).obs)


def test_load_state_dict_checks_positions_and_sizes():
    state = _buffer(tasks=2, capacity=5).state_dict()
    with pytest.raises(ValueError, match=r"lacks \['positions', 'sizes'\]"):
        _buffer().load_state_dict({k: v for k, v in state.items() if k not in ("positions", "sizes")})
    with pytest.raises(ValueError, match=r"sizes must be an integer tensor of shape \(2,\).*shape \(3,\)"):
        _buffer().load_state_dict({**state, "sizes": torch.zeros(3, dtype=torch.long)})
    with pytest.raises(ValueError, match=r"positions must be an integer tensor .* torch.float32"):
        _buffer().load_state_dict({**state, "positions": torch.zeros(2)})
    with pytest.raises(ValueError, match=r"positions \[0, 0\] and sizes \[6, 0\] do not fit capacity 5"):
        _buffer().load_state_dict({**state, "sizes": torch.tensor([6, 0])})
