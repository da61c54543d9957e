"""Names, gymnasium registration, and the single environments' task handling."""

import gymnasium
import numpy as np
import pytest
import torch

from metaops.envs import (
    BodyParamsTask,
    DirectionTask,
    NavigationTask,
    VelocityTask,
    env_names,
    gymnasium_id,
    make,
    task_distribution,
)


def test_unknown_name_lists_the_valid_names():
    with pytest.raises(ValueError, match="unknown environment 'HalfCheetah'.*HalfCheetahVel"):
        make("HalfCheetah")
    with pytest.raises(ValueError, match="valid names: Navigation2D, HalfCheetahVel"):
        task_distribution("nope")


@pytest.mark.parametrize("name", env_names())
def test_gymnasium_ids_are_registered(name):
    task = task_distribution(name).sample_tasks(1, generator=torch.Generator().manual_seed(0))[0]
    env = gymnasium.make(gymnasium_id(name), task=task, disable_env_checker=True)
    assert env.spec is not None and env.spec.max_episode_steps in (100, 200)
    obs, _ = env.reset(seed=0)
    assert obs.shape == env.observation_space.shape
    assert env.unwrapped.get_task() == task
    assert make(gymnasium_id(name), task).get_task() == task  # ids are accepted too


def test_set_task_and_get_task():
    env = make("HalfCheetahDir")
    with pytest.raises(RuntimeError, match="no task set"):
        env.get_task()
    with pytest.raises(RuntimeError, match="no task set"):
        env.reset(seed=0)
        env.step(np.zeros(6))
    with pytest.raises(TypeError, match="takes a DirectionTask"):
        env.set_task(VelocityTask(1.0))
    env.set_task(DirectionTask(-1.0))
    assert env.get_task() == DirectionTask(-1.0)
    nav = make("Navigation2D")
    with pytest.raises(TypeError, match="takes a NavigationTask"):
        nav.set_task((0.1, 0.1))


def test_navigation_dynamics():
    env = make("Navigation2D", NavigationTask(goal=(0.25, -0.005)))
    obs, _ = env.reset(seed=0)
    assert obs.tolist() == [0.0, 0.0]
    obs, reward, terminated, *_ = env.step(np.array([1.0, 0.0]))  # clipped to 0.1
    assert obs.tolist() == [0.1, 0.0]
    assert reward == pytest.approx(-np.hypot(0.15, 0.005))
    assert not terminated
    env.step(np.array([0.1, 0.0]))
    _, reward, terminated, *_ = env.step(np.array([0.05, -0.005]))
    assert terminated and reward == pytest.approx(0.0, abs=1e-12)


def test_random_params_change_the_model_and_check_shapes():
    dist = task_distribution("HopperRandParams")
    task = dist.sample_tasks(1, generator=torch.Generator().manual_seed(0))[0]
    env = make("HopperRandParams")
    base_mass = env.unwrapped.model.body_mass.copy()
    env.set_task(task)
    np.testing.assert_allclose(env.model.body_mass, base_mass * np.array(task.body_mass))
    wrong = BodyParamsTask(body_mass=(1.0,), body_inertia=(), dof_damping=(), geom_friction=())
    with pytest.raises(ValueError, match=r"body_mass has shape \(1,\).*shape \(5,\)"):
        env.set_task(wrong)
    env.set_task(task)  # setting a task twice scales the original values, not the scaled ones
    np.testing.assert_allclose(env.model.body_mass, base_mass * np.array(task.body_mass))


def test_gymnasium_make_truncates_at_the_registered_horizon():
    env = gymnasium.make(gymnasium_id("Navigation2D"), task=NavigationTask((0.5, 0.5)))
    env.reset(seed=0)
    for t in range(100):
        _, _, terminated, truncated, _ = env.step(np.zeros(2, dtype=np.float32))
        assert not terminated
        assert truncated == (t == 99)


@pytest.mark.parametrize("name", env_names())
def test_single_envs_pickle_with_their_current_task(name):
    import copy
    import pickle

    first, second = task_distribution(name).sample_tasks(2, generator=torch.Generator().manual_seed(0))
    env = make(name, first)
    env.set_task(second)
    for clone in (pickle.loads(pickle.dumps(env)), copy.deepcopy(env)):
        assert clone.get_task() == second
        obs, _ = clone.reset(seed=1)
        np.testing.assert_array_equal(obs, env.reset(seed=1)[0])
        action = np.full(env.action_space.shape, 0.05)
        np.testing.assert_array_equal(clone.step(action)[0], env.step(action)[0])
