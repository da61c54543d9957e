"""AntDir, AntDir2D and AntGoal on gymnasium's Ant-v5 model."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from gymnasium.envs.mujoco.ant_v5 import AntEnv

from ._mujoco import TaskEnvMixin, _Kernel, _State
from ._tasks import Direction2DTask, DirectionTask, GoalTask

__all__ = ["AntDir2DEnv", "AntDirEnv", "AntGoalEnv"]

_CONTACT_COST_WEIGHT = 5e-4  # 0.5 * 1e-3, as gymnasium v5 and ProMP
_HEALTHY_Z = (0.2, 1.0)
_STEP = tuple[np.ndarray, float, bool, bool, dict[str, Any]]


def _costs(info: dict[str, Any]) -> float:
    """Survival bonus minus control and contact costs (float64, whatever the action dtype)."""
    return float(info["reward_survive"]) + float(info["reward_ctrl"]) + float(info["reward_contact"])


class _AntTaskEnv(TaskEnvMixin, AntEnv):
    def _xy_position(self) -> np.ndarray:
        return self.data.body(self._main_body).xpos[:2].copy()


class AntDirEnv(_AntTaskEnv):
    r"""Ant running forward or backward along $x$ (gymnasium Ant-v5 physics and costs).

    $$r_t = d\, v_x + 1_\text{healthy} - 0.5\lVert a_t\rVert_2^2
      - 5\cdot 10^{-4} \lVert \operatorname{clip}(F_\text{ext}, -1, 1)\rVert_2^2,$$

    with $d \in \{-1, +1\}$, $v_x$ the torso's velocity over the step ($dt = 0.05$ s)
    and $F_\text{ext}$ the external (contact) forces on all bodies. The episode
    terminates when the torso height leaves $[0.2, 1.0]$. Observations are gymnasium's
    105-dim ones (with clipped contact forces). Registered horizon: 200 steps.

    Args:
        task: Initial task.
        **kwargs: Passed to gymnasium's `AntEnv`.

    Examples:
        >>> env = AntDirEnv(DirectionTask(direction=1.0))
        >>> obs, _ = env.reset(seed=0)
        >>> obs.shape
        (105,)
    """

    task_type = DirectionTask

    def __init__(self, task: DirectionTask | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._init_task(task, **kwargs)

    def step(self, action: np.ndarray) -> _STEP:
        """Steps gymnasium's Ant and replaces its reward by the task reward."""
        task = self.get_task()
        obs, _, terminated, truncated, info = super().step(action)
        forward = task.direction * float(info["x_velocity"])
        info["reward_forward"] = forward
        reward = forward + _costs(info)
        return obs, float(reward), terminated, truncated, info


class AntDir2DEnv(_AntTaskEnv):
    r"""Ant running along a unit direction $d$ in the plane (gymnasium Ant-v5 physics and costs).

    $$r_t = d^\top v_{xy} + 1_\text{healthy} - 0.5\lVert a_t\rVert_2^2
      - 5\cdot 10^{-4} \lVert \operatorname{clip}(F_\text{ext}, -1, 1)\rVert_2^2.$$

    Everything else is as in [metaops.envs.AntDirEnv][].

    Args:
        task: Initial task.
        **kwargs: Passed to gymnasium's `AntEnv`.

    Examples:
        >>> env = AntDir2DEnv(Direction2DTask(direction=(0.0, 1.0)))
        >>> _ = env.reset(seed=0)
        >>> _, reward, *_, info = env.step(env.action_space.sample())
        >>> bool(info["reward_forward"] == info["y_velocity"])
        True
    """

    task_type = Direction2DTask

    def __init__(self, task: Direction2DTask | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._init_task(task, **kwargs)

    def step(self, action: np.ndarray) -> _STEP:
        """Steps gymnasium's Ant and replaces its reward by the task reward."""
        dx, dy = self.get_task().direction
        obs, _, terminated, truncated, info = super().step(action)
        forward = dx * float(info["x_velocity"]) + dy * float(info["y_velocity"])
        info["reward_forward"] = forward
        reward = forward + _costs(info)
        return obs, float(reward), terminated, truncated, info


class AntGoalEnv(_AntTaskEnv):
    r"""Ant walking to a goal position $g$ in the plane (gymnasium Ant-v5 physics).

    $$r_t = -\lVert p_{xy} - g \rVert_1 - 0.1\lVert a_t\rVert_2^2
      - 5\cdot 10^{-4} \lVert \operatorname{clip}(F_\text{ext}, -1, 1)\rVert_2^2,$$

    with $p_{xy}$ the torso position after the step, as in ProMP's `AntRandGoalEnv`:
    no survival bonus and no termination. Unlike the other Ant tasks, observations keep
    the torso's $x, y$ (107 dims), as in ProMP: reaching a position needs it.
    Registered horizon: 200 steps.

    Args:
        task: Initial task.
        **kwargs: Passed to gymnasium's `AntEnv`.

    Examples:
        >>> env = AntGoalEnv(GoalTask(goal=(1.0, 1.0)))
        >>> _ = env.reset(seed=0)
        >>> _, reward, terminated, *_ = env.step(env.action_space.sample())
        >>> reward < 0, terminated
        (True, False)
    """

    task_type = GoalTask

    def __init__(self, task: GoalTask | None = None, **kwargs: Any) -> None:
        kwargs.setdefault("ctrl_cost_weight", 0.1)
        kwargs.setdefault("healthy_reward", 0.0)
        kwargs.setdefault("terminate_when_unhealthy", False)
        kwargs.setdefault("exclude_current_positions_from_observation", False)
        super().__init__(**kwargs)
        self._init_task(task, **kwargs)

    def step(self, action: np.ndarray) -> _STEP:
        """Steps gymnasium's Ant and replaces its reward by the task reward."""
        goal = np.asarray(self.get_task().goal)
        obs, _, terminated, truncated, info = super().step(action)
        forward = -float(np.sum(np.abs(self._xy_position() - goal)))
        info["reward_forward"] = forward
        reward = forward + _costs(info)
        return obs, float(reward), terminated, truncated, info


class _AntKernel(_Kernel):
    xml_file = "ant.xml"
    frame_skip = 5
    horizon = 200
    contact_forces = True
    reset_noise_scale = 0.1
    reset_qvel_normal = True
    info_keys = (
        "x_velocity",
        "y_velocity",
        "reward_forward",
        "reward_ctrl",
        "reward_contact",
        "reward_survive",
    )
    ctrl_cost_weight = 0.5
    healthy_reward = 1.0
    terminate_when_unhealthy = True

    observe_xy = False

    def observe(self, s: _State) -> np.ndarray:
        assert s.cfrc_ext is not None
        forces = np.clip(s.cfrc_ext[:, 1:], -1.0, 1.0).reshape(len(s.qpos), -1)
        qpos = s.qpos if self.observe_xy else s.qpos[:, 2:]
        return np.concatenate([qpos, s.qvel, forces], axis=1)

    def forward_reward(self, velocity: np.ndarray, after: _State, task: dict[str, np.ndarray]) -> np.ndarray:
        raise NotImplementedError

    def reward(
        self,
        before: _State,
        after: _State,
        actions: np.ndarray,
        task: dict[str, np.ndarray],
        dt: float,
    ) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
        assert after.cfrc_ext is not None
        velocity = (after.xpos[:, :2] - before.xpos[:, :2]) / dt
        z = after.qpos[:, 2]
        finite = np.isfinite(after.qpos).all(axis=1) & np.isfinite(after.qvel).all(axis=1)
        healthy = finite & (_HEALTHY_Z[0] <= z) & (z <= _HEALTHY_Z[1])
        forward = self.forward_reward(velocity, after, task)
        survive = healthy * self.healthy_reward
        ctrl = -self.ctrl_cost_weight * np.sum(np.square(actions), axis=1)
        forces = np.clip(after.cfrc_ext, -1.0, 1.0).reshape(len(actions), -1)
        contact = -_CONTACT_COST_WEIGHT * np.sum(np.square(forces), axis=1)
        terminated = ~healthy if self.terminate_when_unhealthy else np.zeros_like(healthy)
        infos = {
            "x_velocity": velocity[:, 0],
            "y_velocity": velocity[:, 1],
            "reward_forward": forward,
            "reward_ctrl": ctrl,
            "reward_contact": contact,
            "reward_survive": survive,
        }
        return forward + survive + ctrl + contact, terminated, infos


class _AntDirKernel(_AntKernel):
    name = "AntDir"
    task_type = DirectionTask

    def task_arrays(self, tasks: Sequence[DirectionTask]) -> dict[str, np.ndarray]:
        return {"direction": np.array([t.direction for t in tasks])}

    def forward_reward(self, velocity: np.ndarray, after: _State, task: dict[str, np.ndarray]) -> np.ndarray:
        return task["direction"] * velocity[:, 0]


class _AntDir2DKernel(_AntKernel):
    name = "AntDir2D"
    task_type = Direction2DTask

    def task_arrays(self, tasks: Sequence[Direction2DTask]) -> dict[str, np.ndarray]:
        return {"direction": np.array([t.direction for t in tasks]).reshape(-1, 2)}

    def forward_reward(self, velocity: np.ndarray, after: _State, task: dict[str, np.ndarray]) -> np.ndarray:
        d = task["direction"]
        return d[:, 0] * velocity[:, 0] + d[:, 1] * velocity[:, 1]


class _AntGoalKernel(_AntKernel):
    name = "AntGoal"
    task_type = GoalTask
    ctrl_cost_weight = 0.1
    healthy_reward = 0.0
    terminate_when_unhealthy = False
    observe_xy = True

    def task_arrays(self, tasks: Sequence[GoalTask]) -> dict[str, np.ndarray]:
        return {"goal": np.array([t.goal for t in tasks]).reshape(-1, 2)}

    def forward_reward(self, velocity: np.ndarray, after: _State, task: dict[str, np.ndarray]) -> np.ndarray:
        return -np.sum(np.abs(after.xpos[:, :2] - task["goal"]), axis=1)
