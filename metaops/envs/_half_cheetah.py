"""HalfCheetahVel and HalfCheetahDir on gymnasium's HalfCheetah-v5 model."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from gymnasium.envs.mujoco.half_cheetah_v5 import HalfCheetahEnv

from ._mujoco import TaskEnvMixin, _Kernel, _State
from ._tasks import DirectionTask, VelocityTask

__all__ = ["HalfCheetahDirEnv", "HalfCheetahVelEnv"]

_CTRL_COST_WEIGHT = 0.05  # MAML / ProMP: 0.5 * 1e-1 * ||a||^2


class _HalfCheetahTaskEnv(TaskEnvMixin, HalfCheetahEnv):
    """gymnasium's HalfCheetah with its forward reward replaced by the task's (private base)."""

    def __init__(self, task: Any = None, *, ctrl_cost_weight: float = _CTRL_COST_WEIGHT, **kwargs: Any) -> None:
        super().__init__(ctrl_cost_weight=ctrl_cost_weight, **kwargs)
        self._init_task(task, ctrl_cost_weight=ctrl_cost_weight, **kwargs)

    def _forward_reward(self, task: Any, x_velocity: float) -> float:
        raise NotImplementedError

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        """Steps gymnasium's HalfCheetah and replaces its reward by the task reward."""
        task = self.get_task()
        obs, _, terminated, truncated, info = super().step(action)
        forward = self._forward_reward(task, float(info["x_velocity"]))
        info["reward_forward"] = forward
        return obs, forward + float(info["reward_ctrl"]), terminated, truncated, info


class HalfCheetahVelEnv(_HalfCheetahTaskEnv):
    r"""HalfCheetah running at a target velocity (gymnasium HalfCheetah-v5 physics).

    $$r_t = -\lvert v_x - v_\text{goal} \rvert - 0.05\,\lVert a_t \rVert_2^2,$$

    with $v_x$ the forward velocity of the root over the step ($dt = 0.05$ s, 5 substeps
    of 0.01 s). Observations are gymnasium's (17-dim, without the root's $x$). Episodes
    never terminate; the registered horizon is 200 steps.

    Args:
        task: Initial task (set one with `set_task` before `reset` otherwise).
        ctrl_cost_weight: Weight of $\lVert a \rVert_2^2$.
        **kwargs: Passed to gymnasium's `HalfCheetahEnv` (e.g. `render_mode`).

    Examples:
        >>> env = HalfCheetahVelEnv(VelocityTask(velocity=1.0))
        >>> obs, info = env.reset(seed=0)
        >>> obs.shape
        (17,)
        >>> obs, reward, terminated, truncated, info = env.step(env.action_space.sample())
        >>> bool(abs(reward - info["reward_forward"] - info["reward_ctrl"]) < 1e-12)
        True
    """

    task_type = VelocityTask

    def __init__(
        self, task: VelocityTask | None = None, *, ctrl_cost_weight: float = _CTRL_COST_WEIGHT, **kwargs: Any
    ) -> None:
        super().__init__(task, ctrl_cost_weight=ctrl_cost_weight, **kwargs)

    def _forward_reward(self, task: VelocityTask, x_velocity: float) -> float:
        return -abs(x_velocity - task.velocity)


class HalfCheetahDirEnv(_HalfCheetahTaskEnv):
    r"""HalfCheetah running forward or backward (gymnasium HalfCheetah-v5 physics).

    $$r_t = d\, v_x - 0.05\,\lVert a_t \rVert_2^2, \qquad d \in \{-1, +1\}.$$

    Everything else is as in [metaops.envs.HalfCheetahVelEnv][].

    Args:
        task: Initial task.
        ctrl_cost_weight: Weight of $\lVert a \rVert_2^2$.
        **kwargs: Passed to gymnasium's `HalfCheetahEnv`.

    Examples:
        >>> env = HalfCheetahDirEnv(DirectionTask(direction=-1.0))
        >>> _ = env.reset(seed=0)
        >>> _, reward, *_, info = env.step(env.action_space.sample() * 0)
        >>> reward == -float(info["x_velocity"])  # zero action: no control cost
        True
    """

    task_type = DirectionTask

    def __init__(
        self, task: DirectionTask | None = None, *, ctrl_cost_weight: float = _CTRL_COST_WEIGHT, **kwargs: Any
    ) -> None:
        super().__init__(task, ctrl_cost_weight=ctrl_cost_weight, **kwargs)

    def _forward_reward(self, task: DirectionTask, x_velocity: float) -> float:
        return task.direction * x_velocity


class _HalfCheetahKernel(_Kernel):
    xml_file = "half_cheetah.xml"
    frame_skip = 5
    horizon = 200
    reset_noise_scale = 0.1
    reset_qvel_normal = True
    info_keys = ("x_velocity", "reward_forward", "reward_ctrl")

    def observe(self, s: _State) -> np.ndarray:
        return np.concatenate([s.qpos[:, 1:], s.qvel], axis=1)

    def forward_reward(self, x_velocity: np.ndarray, task: dict[str, np.ndarray]) -> np.ndarray:
        raise NotImplementedError

    def reward(
        self,
        before: _State,
        after: _State,
        actions: np.ndarray,
        task: dict[str, np.ndarray],
        dt: float,
    ) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
        x_velocity = (after.qpos[:, 0] - before.qpos[:, 0]) / dt
        forward = self.forward_reward(x_velocity, task)
        ctrl = -_CTRL_COST_WEIGHT * np.sum(np.square(actions), axis=1)
        infos = {"x_velocity": x_velocity, "reward_forward": forward, "reward_ctrl": ctrl}
        return forward + ctrl, np.zeros(len(actions), dtype=bool), infos


class _HalfCheetahVelKernel(_HalfCheetahKernel):
    name = "HalfCheetahVel"
    task_type = VelocityTask

    def task_arrays(self, tasks: Sequence[VelocityTask]) -> dict[str, np.ndarray]:
        return {"velocity": np.array([t.velocity for t in tasks])}

    def forward_reward(self, x_velocity: np.ndarray, task: dict[str, np.ndarray]) -> np.ndarray:
        return -np.abs(x_velocity - task["velocity"])


class _HalfCheetahDirKernel(_HalfCheetahKernel):
    name = "HalfCheetahDir"
    task_type = DirectionTask

    def task_arrays(self, tasks: Sequence[DirectionTask]) -> dict[str, np.ndarray]:
        return {"direction": np.array([t.direction for t in tasks])}

    def forward_reward(self, x_velocity: np.ndarray, task: dict[str, np.ndarray]) -> np.ndarray:
        return task["direction"] * x_velocity
