"""Hopper and Walker2d with random physical parameters (gymnasium v5 models)."""

from __future__ import annotations

from typing import Any

import mujoco
import mujoco.batch
import numpy as np
from gymnasium.envs.mujoco.hopper_v5 import HopperEnv
from gymnasium.envs.mujoco.walker2d_v5 import Walker2dEnv

from ._mujoco import TaskEnvMixin, _Kernel, _State
from ._tasks import BodyParamsTask

__all__ = ["HopperRandParamsEnv", "Walker2dRandParamsEnv"]

_FIELDS = ("body_mass", "body_inertia", "dof_damping", "geom_friction")
_STEP = tuple[np.ndarray, float, bool, bool, dict[str, Any]]


def _scales(task: BodyParamsTask, model: mujoco.MjModel, name: str) -> np.ndarray:
    """The task's factors for `model.<name>`, checked against the model's shape."""
    factors = np.asarray(getattr(task, name), dtype=np.float64)
    expected = getattr(model, name).shape
    if factors.shape != expected:
        raise ValueError(
            f"BodyParamsTask.{name} has shape {factors.shape}, but this model's {name} has "
            f"shape {expected}; sample tasks from this environment's task distribution"
        )
    return factors


class _RandParamsMixin(TaskEnvMixin):
    task_type = BodyParamsTask

    def __init__(self, task: BodyParamsTask | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)  # the gymnasium environment (next in the MRO)
        self._base_params = {k: getattr(self.model, k).copy() for k in _FIELDS}  # type: ignore[attr-defined]
        self._init_task(task, **kwargs)

    def _apply_task(self, task: BodyParamsTask) -> None:
        for name in _FIELDS:
            scaled = self._base_params[name] * _scales(task, self.model, name)  # type: ignore[attr-defined]
            getattr(self.model, name)[:] = scaled  # type: ignore[attr-defined]

    def step(self, action: np.ndarray) -> _STEP:
        """Steps the gymnasium environment (its reward) under the task's parameters."""
        self.get_task()
        return super().step(action)  # type: ignore[misc]


class HopperRandParamsEnv(_RandParamsMixin, HopperEnv):
    r"""gymnasium Hopper-v5 with the task's body masses, inertias, damping and friction.

    The reward is gymnasium's, $r_t = v_x + 1_\text{healthy} - 10^{-3}\lVert a_t\rVert_2^2$,
    with termination when unhealthy; the task scales `model.body_mass`,
    `model.body_inertia`, `model.dof_damping` and `model.geom_friction` entry by entry
    (without `mj_setConst`, as ProMP's `rand_param_envs`). Registered horizon: 200.

    Args:
        task: Initial task.
        **kwargs: Passed to gymnasium's `HopperEnv`.

    Examples:
        >>> import torch
        >>> from metaops.envs import task_distribution
        >>> g = torch.Generator().manual_seed(0)
        >>> task = task_distribution("HopperRandParams").sample_tasks(1, generator=g)[0]
        >>> env = HopperRandParamsEnv(task)
        >>> obs, _ = env.reset(seed=0)
        >>> obs.shape
        (11,)
    """


class Walker2dRandParamsEnv(_RandParamsMixin, Walker2dEnv):
    r"""gymnasium Walker2d-v5 with the task's body masses, inertias, damping and friction.

    As [metaops.envs.HopperRandParamsEnv][], on the Walker2d-v5 model and reward.

    Args:
        task: Initial task.
        **kwargs: Passed to gymnasium's `Walker2dEnv`.

    Examples:
        >>> import torch
        >>> from metaops.envs import task_distribution
        >>> g = torch.Generator().manual_seed(0)
        >>> task = task_distribution("Walker2dRandParams").sample_tasks(1, generator=g)[0]
        >>> env = Walker2dRandParamsEnv(task)
        >>> obs, _ = env.reset(seed=0)
        >>> obs.shape
        (17,)
    """


class _RandParamsKernel(_Kernel):
    frame_skip = 4
    horizon = 200
    task_type = BodyParamsTask
    reset_noise_scale = 5e-3
    reset_qvel_normal = False
    info_keys = ("x_velocity", "reward_forward", "reward_ctrl", "reward_survive")

    def apply_tasks(self, batch: mujoco.batch.Batch, base: mujoco.MjModel, tasks: list[BodyParamsTask]) -> None:
        for name in _FIELDS:
            values = batch.expand(name)
            base_value = getattr(base, name)
            values[:] = np.stack([base_value * _scales(t, base, name) for t in tasks])

    def observe(self, s: _State) -> np.ndarray:
        return np.concatenate([s.qpos[:, 1:], np.clip(s.qvel, -10.0, 10.0)], axis=1)

    def healthy(self, s: _State) -> np.ndarray:
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
        healthy = self.healthy(after)
        survive = healthy * 1.0
        ctrl = -1e-3 * np.sum(np.square(actions), axis=1)
        infos = {
            "x_velocity": x_velocity,
            "reward_forward": x_velocity,
            "reward_ctrl": ctrl,
            "reward_survive": survive,
        }
        return x_velocity + survive + ctrl, ~healthy, infos


class _HopperKernel(_RandParamsKernel):
    name = "HopperRandParams"
    xml_file = "hopper.xml"

    def healthy(self, s: _State) -> np.ndarray:
        z, angle = s.qpos[:, 1], s.qpos[:, 2]
        state = np.concatenate([s.qpos[:, 2:], s.qvel], axis=1)
        ok_state = np.all((-100.0 < state) & (state < 100.0), axis=1)
        return ok_state & (0.7 < z) & (z < np.inf) & (-0.2 < angle) & (angle < 0.2)


class _Walker2dKernel(_RandParamsKernel):
    name = "Walker2dRandParams"
    xml_file = "walker2d_v5.xml"

    def healthy(self, s: _State) -> np.ndarray:
        z, angle = s.qpos[:, 1], s.qpos[:, 2]
        return (0.8 < z) & (z < 2.0) & (-1.0 < angle) & (angle < 1.0)
