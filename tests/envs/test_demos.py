"""Expert demonstrations: the scripted navigation expert, noise injection, the on-disk format and its errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from metaops import envs
from metaops.envs import (
    Demonstrations,
    NavigationTask,
    collect_demonstrations,
    load_demonstrations,
    navigation_expert,
    save_demonstrations,
)


def _tasks(n=5, seed=0):
    return envs.task_distribution("Navigation2D").sample_tasks(n, generator=torch.Generator().manual_seed(seed))


def test_navigation_expert_reaches_every_goal_by_the_shortest_path():
    tasks = _tasks()
    demos = collect_demonstrations("Navigation2D", tasks, navigation_expert(tasks), episodes=2,
                                   generator=torch.Generator().manual_seed(1), description="scripted")
    goals = torch.tensor([t.goal for t in tasks])
    # fewest steps with moves of at most 0.1 per axis: ceil(max |g_i| / 0.1) (minus rounding slack)
    shortest = torch.ceil(goals.abs().max(-1).values / 0.1 - 1e-6)
    lengths = demos.mask.sum(-1)  # (task, episode)
    assert torch.equal(lengths, shortest[:, None].expand_as(lengths))
    last = lengths.long() - 1
    final = demos.observations[torch.arange(5)[:, None], torch.arange(2)[None], last] + demos.actions[
        torch.arange(5)[:, None], torch.arange(2)[None], last]
    assert (final - goals[:, None]).abs().max() < 0.01  # it stopped at the goal
    assert demos.env_steps == int(lengths.sum()) and demos.expert == "scripted"


def test_noise_injection_stores_the_experts_clean_actions_at_visited_states():
    tasks = _tasks(3)
    demos = collect_demonstrations("Navigation2D", tasks, navigation_expert(tasks), episodes=4, action_noise=0.5,
                                   generator=torch.Generator().manual_seed(2))
    goals = torch.tensor([t.goal for t in tasks])[:, None, None, :]
    real = demos.mask.bool()
    # labels: clip(g - s, -0.1, 0.1), computed here from the visited states
    expected = (goals - demos.observations).clamp(-0.1, 0.1)
    torch.testing.assert_close(demos.actions[real], expected[real])
    # executed: the next state is not s + label (the noise moved it), on most steps
    moved = demos.observations[:, :, 1:] - demos.observations[:, :, :-1]
    both = real[:, :, 1:]
    assert ((moved - demos.actions[:, :, :-1]).abs().sum(-1) > 1e-4)[both].float().mean() > 0.5
    # the noise makes episodes longer and visits states off the straight path: more to imitate
    clean = collect_demonstrations("Navigation2D", tasks, navigation_expert(tasks), episodes=4,
                                   generator=torch.Generator().manual_seed(2))
    assert demos.mask.sum() > clean.mask.sum()


def test_save_load_round_trip_is_exact(tmp_path):
    tasks = _tasks(3)
    demos = collect_demonstrations("Navigation2D", tasks, navigation_expert(tasks), episodes=2, action_noise=0.2,
                                   generator=torch.Generator().manual_seed(3), description="scripted")
    path = save_demonstrations(tmp_path / "demos", demos)
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["format"] == "metaops-demonstrations" and manifest["version"] == 1
    assert manifest["env"] == "Navigation2D" and manifest["episodes"] == 2 and manifest["horizon"] == 100
    assert manifest["tasks"][0] == {"type": "NavigationTask", "fields": {"goal": list(tasks[0].goal)}}
    np.testing.assert_allclose(manifest["returns"], demos.returns.mean(-1).numpy(), rtol=1e-6)
    with np.load(path / "task_0001.npz") as data:  # readable without metaops
        np.testing.assert_array_equal(data["actions"], demos.actions[1].numpy())
    back = load_demonstrations(path)
    assert back.tasks == tuple(tasks) and back.env == "Navigation2D" and back.expert == "scripted"
    for name in ("observations", "actions", "rewards", "mask"):
        assert torch.equal(getattr(back, name), getattr(demos, name)), name
    assert back.env_steps == demos.env_steps


def test_save_refuses_a_non_empty_directory(tmp_path):
    (tmp_path / "other.txt").write_text("x")
    demos = Demonstrations(env="Navigation2D", tasks=(NavigationTask(goal=(0.1, 0.0)),),
                           observations=torch.zeros(1, 1, 2, 2), actions=torch.zeros(1, 1, 2, 2),
                           rewards=torch.zeros(1, 1, 2), mask=torch.ones(1, 1, 2))
    with pytest.raises(FileExistsError, match="not empty"):
        save_demonstrations(tmp_path, demos)


@pytest.fixture
def saved(tmp_path):
    tasks = _tasks(2)
    demos = collect_demonstrations("Navigation2D", tasks, navigation_expert(tasks), episodes=1,
                                   generator=torch.Generator().manual_seed(4))
    return save_demonstrations(tmp_path / "demos", demos)


def test_load_errors_name_the_problem(saved, tmp_path):
    with pytest.raises(FileNotFoundError, match="not a demonstrations directory"):
        load_demonstrations(tmp_path / "nowhere")
    (saved / "task_0001.npz").write_bytes(b"not an npz")
    with pytest.raises(ValueError, match="task_0001.npz is corrupt"):
        load_demonstrations(saved)
    (saved / "task_0001.npz").unlink()
    with pytest.raises(FileNotFoundError, match="task_0001.npz is missing"):
        load_demonstrations(saved)
    manifest = json.loads((saved / "manifest.json").read_text())
    (saved / "manifest.json").write_text(json.dumps({**manifest, "version": 2}))
    with pytest.raises(ValueError, match="version 1"):
        load_demonstrations(saved)
    manifest["tasks"][0]["type"] = "NoSuchTask"
    (saved / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="unknown type 'NoSuchTask'"):
        load_demonstrations(saved)
    (saved / "manifest.json").write_text("{")
    with pytest.raises(ValueError, match="corrupt"):
        load_demonstrations(saved)


def test_non_finite_or_inconsistent_demonstrations_raise(saved):
    demos = load_demonstrations(saved)
    with pytest.raises(ValueError, match="actions contain NaN"):
        Demonstrations(env=demos.env, tasks=demos.tasks, observations=demos.observations,
                       actions=demos.actions * torch.nan, rewards=demos.rewards, mask=demos.mask)
    with pytest.raises(ValueError, match="rewards has leading shape"):
        Demonstrations(env=demos.env, tasks=demos.tasks, observations=demos.observations, actions=demos.actions,
                       rewards=demos.rewards[:, :, :5], mask=demos.mask)
    with pytest.raises(ValueError, match="1 tasks for 2 rows"):
        Demonstrations(env=demos.env, tasks=demos.tasks[:1], observations=demos.observations,
                       actions=demos.actions, rewards=demos.rewards, mask=demos.mask)


def test_an_expert_with_wrongly_shaped_actions_raises():
    tasks = _tasks(2)
    with pytest.raises(ValueError, match="actions of shape"):
        collect_demonstrations("Navigation2D", tasks, lambda obs: torch.zeros(2, 3), episodes=1,
                               generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="action_noise"):
        collect_demonstrations("Navigation2D", tasks, navigation_expert(tasks), episodes=1, action_noise=-1.0,
                               generator=torch.Generator().manual_seed(0))


def test_a_mujoco_family_takes_any_callable_expert():
    tasks = envs.task_distribution("HalfCheetahVel").sample_tasks(2, generator=torch.Generator().manual_seed(0))
    zero = lambda obs: torch.zeros(*obs.shape[:-1], 6)  # e.g. a stable-baselines3 model wrapped like this
    demos = collect_demonstrations("HalfCheetahVel", tasks, zero, episodes=1, horizon=5,
                                   generator=torch.Generator().manual_seed(0))
    assert demos.actions.shape == (2, 1, 5, 6) and demos.mask.sum() == 10
