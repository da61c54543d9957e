"""Batched environments reproduce the single gymnasium environments step for step."""

import numpy as np
import pytest
import torch

from metaops.envs import (
    BatchedEnv,
    DirectionTask,
    EnvError,
    NavigationTask,
    VelocityTask,
    env_names,
    make,
    make_batched,
    task_distribution,
)

STEPS = {"Navigation2D": 100, "HalfCheetahVel": 150, "HalfCheetahDir": 150}


def _run_both(name, *, num_tasks=2, episodes=2, steps=None, seed=0, num_threads=2):
    """Steps the batched env and one single env per (task, episode) with the same actions."""
    steps = steps or STEPS.get(name, 80)
    g = torch.Generator().manual_seed(seed)
    tasks = task_distribution(name).sample_tasks(num_tasks, generator=g)
    batched = make_batched(name, num_tasks=num_tasks, episodes_per_task=episodes, num_threads=num_threads)
    seeds = np.arange(batched.num_envs) + 100 * seed
    obs = batched.reset(tasks, seeds=seeds)
    singles = []
    for i in range(batched.num_envs):
        env = make(name, tasks[i // episodes])
        first, _ = env.reset(seed=int(seeds[i]))
        np.testing.assert_array_equal(first, obs[i], err_msg=f"{name}: reset of env {i}")
        singles.append(env)
    rng = np.random.default_rng(seed)
    active = np.ones(batched.num_envs, dtype=bool)
    scale = 1.2 * batched.action_high  # beyond the bounds: both sides clip/clamp alike
    history = []
    for t in range(steps):
        actions = rng.uniform(-scale, scale, (batched.num_envs, batched.action_dim))
        out = batched.step(actions, active)
        history.append(out)
        for i, env in enumerate(singles):
            if not active[i]:
                continue
            o, r, terminated, truncated, info = env.step(actions[i])
            where = f"{name}: env {i}, step {t}"
            np.testing.assert_array_equal(o, out.observations[i], err_msg=where)
            assert r == pytest.approx(out.rewards[i], rel=0, abs=1e-12), where
            assert bool(terminated) == bool(out.terminated[i]), where
            assert not truncated
            for key in batched.info_keys:
                assert info[key] == pytest.approx(out.infos[key][i], rel=0, abs=1e-12), key
        active &= ~out.terminated
    batched.close()
    return history, active


@pytest.mark.parametrize("name", env_names())
def test_batched_env_reproduces_single_env(name):
    _, active = _run_both(name)
    assert active.shape == (4,)


def test_batched_env_reproduces_single_env_for_other_seeds_and_shapes():
    _run_both("HalfCheetahVel", num_tasks=3, episodes=1, steps=60, seed=1)
    _run_both("AntDir", num_tasks=1, episodes=3, steps=40, seed=2)


def test_thread_count_does_not_change_results():
    one, _ = _run_both("AntGoal", steps=30, num_threads=1)
    two, _ = _run_both("AntGoal", steps=30, num_threads=2)
    for a, b in zip(one, two, strict=True):
        np.testing.assert_array_equal(a.observations, b.observations)
        np.testing.assert_array_equal(a.rewards, b.rewards)


@pytest.mark.parametrize(
    ("name", "base"),
    [("HalfCheetahVel", "half_cheetah_v5"), ("AntDir", "ant_v5"), ("AntGoal", "ant_v5")],
)
def test_task_envs_keep_gymnasium_v5_dynamics_and_observations(name, base, tmp_path, monkeypatch):
    """The task envs only change the reward: observations equal plain gymnasium v5's."""
    import importlib

    module = importlib.import_module(f"gymnasium.envs.mujoco.{base}")
    monkeypatch.chdir(tmp_path)  # gymnasium's loader may write MUJOCO_LOG.TXT
    kwargs = {"exclude_current_positions_from_observation": False} if name == "AntGoal" else {}
    plain = getattr(module, "AntEnv" if "ant" in base else "HalfCheetahEnv")(**kwargs)
    task = task_distribution(name).sample_tasks(1, generator=torch.Generator().manual_seed(0))[0]
    ours = make(name, task)
    np.testing.assert_array_equal(plain.reset(seed=3)[0], ours.reset(seed=3)[0])
    rng = np.random.default_rng(0)
    for _ in range(50):
        action = rng.uniform(-1, 1, plain.action_space.shape)
        o1, _, term1, *_ = plain.step(action)
        o2, _, term2, *_ = ours.step(action)
        np.testing.assert_array_equal(o1, o2)
        if name != "AntGoal":  # AntGoal never terminates
            assert term1 == term2


def test_rewards_follow_the_task():
    env = make_batched("HalfCheetahVel", num_tasks=2, episodes_per_task=1)
    env.reset([VelocityTask(0.0), VelocityTask(2.0)], seeds=np.array([0, 0]))
    out = env.step(np.zeros((2, 6)), np.ones(2, dtype=bool))
    v = out.infos["x_velocity"]
    np.testing.assert_allclose(out.rewards, [-abs(v[0]), -abs(v[1] - 2.0)])
    env = make_batched("HalfCheetahDir", num_tasks=2, episodes_per_task=1)
    env.reset([DirectionTask(1.0), DirectionTask(-1.0)], seeds=np.array([0, 0]))
    out = env.step(np.zeros((2, 6)), np.ones(2, dtype=bool))
    assert out.rewards[0] == -out.rewards[1] != 0


def test_inactive_envs_are_not_stepped_and_earn_nothing():
    env = make_batched("HalfCheetahDir", num_tasks=1, episodes_per_task=2)
    obs = env.reset([DirectionTask(1.0)], seeds=np.array([0, 0]))
    out = env.step(np.ones((2, 6)), np.array([True, False]))
    assert out.rewards[1] == 0.0
    np.testing.assert_array_equal(out.observations[1], obs[1])
    assert not np.array_equal(out.observations[0], obs[0])


def test_unstable_simulation_raises_an_error_naming_task_and_episode(tmp_path, monkeypatch):
    import dataclasses

    monkeypatch.chdir(tmp_path)  # MuJoCo logs its warnings to MUJOCO_LOG.TXT
    dist = task_distribution("HopperRandParams")
    good, task = dist.sample_tasks(2, generator=torch.Generator().manual_seed(0))
    heavy = dataclasses.replace(task, body_mass=tuple(1e30 for _ in task.body_mass))
    env = make_batched("HopperRandParams", num_tasks=2, episodes_per_task=2)
    env.reset([good, heavy], seeds=np.arange(4))
    with pytest.raises(EnvError, match=r"task 1 \(BodyParamsTask.*episode 0.*unstable") as info:
        for _ in range(5):
            env.step(np.ones((4, 3)), np.ones(4, dtype=bool))
    assert (info.value.task_index, info.value.episode) == (1, 0)
    assert info.value.task == heavy
    env.reset([good, good], seeds=np.arange(4))  # a reset clears the failure
    for _ in range(5):
        env.step(np.zeros((4, 3)), np.ones(4, dtype=bool))


def test_bad_arguments_raise_clear_errors():
    env = make_batched("Navigation2D", num_tasks=2, episodes_per_task=2)
    tasks = [NavigationTask((0.1, 0.1)), NavigationTask((0.2, 0.2))]
    with pytest.raises(RuntimeError, match="call reset"):
        env.step(np.zeros((4, 2)), np.ones(4, dtype=bool))
    with pytest.raises(ValueError, match="expected 2 tasks, got 1"):
        env.reset(tasks[:1], seeds=np.arange(4))
    with pytest.raises(TypeError, match="task 1 must be a NavigationTask"):
        env.reset([tasks[0], VelocityTask(1.0)], seeds=np.arange(4))
    with pytest.raises(ValueError, match=r"seeds must be integers of shape \(4,\)"):
        env.reset(tasks, seeds=np.arange(3))
    env.reset(tasks, seeds=np.arange(4))
    with pytest.raises(ValueError, match=r"expected actions \(4, 2\)"):
        env.step(np.zeros((4, 3)), np.ones(4, dtype=bool))
    with pytest.raises(ValueError, match="num_tasks must be a positive int"):
        make_batched("Navigation2D", num_tasks=0, episodes_per_task=1)
    with pytest.raises(ValueError, match="num_threads"):
        make_batched("HalfCheetahVel", num_tasks=1, episodes_per_task=1, num_threads=0)
    cheetah = make_batched("HalfCheetahVel", num_tasks=1, episodes_per_task=1)
    cheetah.close()
    with pytest.raises(RuntimeError, match="closed|call reset"):
        cheetah.reset([VelocityTask(1.0)], seeds=np.array([0]))


def test_batched_env_is_an_abstract_interface():
    with pytest.raises(TypeError):
        BatchedEnv(num_tasks=1, episodes_per_task=1)  # type: ignore[abstract]


def test_body_params_task_of_another_model_is_rejected():
    walker_task = task_distribution("Walker2dRandParams").sample_tasks(1, generator=torch.Generator())[0]
    env = make_batched("HopperRandParams", num_tasks=1, episodes_per_task=1)
    with pytest.raises(ValueError, match=r"BodyParamsTask.body_mass has shape \(8,\).*\(5,\)"):
        env.reset([walker_task], seeds=np.array([0]))
    with pytest.raises(RuntimeError, match="call reset"):
        env.step(np.zeros((1, 3)), np.ones(1, dtype=bool))
