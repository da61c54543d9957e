"""2D navigation of a point robot to a goal (Finn et al., 2017)."""

from __future__ import annotations

from typing import Any

import gymnasium
import numpy as np

from ._batched import BatchedEnv, StepResult
from ._tasks import NavigationTask

__all__ = ["Navigation2DEnv", "NavigationBatchedEnv"]

_MAX_ACTION = 0.1
_GOAL_TOLERANCE = 0.01


class Navigation2DEnv(gymnasium.Env):
    r"""A point robot in the plane moving to a goal $g$.

    The state $s_t \in \mathbb{R}^2$ starts at the origin and is observed directly; an
    action moves it by $\operatorname{clip}(a_t, -0.1, 0.1)$ and earns

    $$r_t = -\lVert s_{t+1} - g \rVert_2 .$$

    The episode terminates when $|s_{t+1} - g| < 0.01$ on both axes; the registered
    horizon is 100 steps.

    Args:
        task: Initial task.

    Examples:
        >>> env = Navigation2DEnv(NavigationTask(goal=(0.3, 0.0)))
        >>> obs, _ = env.reset(seed=0)
        >>> obs.tolist()
        [0.0, 0.0]
        >>> obs, reward, terminated, truncated, info = env.step(np.array([0.5, 0.0]))
        >>> obs.tolist(), round(reward, 6), terminated
        ([0.1, 0.0], -0.2, False)
    """

    metadata: dict[str, Any] = {"render_modes": []}
    task_type = NavigationTask

    def __init__(self, task: NavigationTask | None = None) -> None:
        self.observation_space = gymnasium.spaces.Box(-np.inf, np.inf, (2,), np.float64)
        self.action_space = gymnasium.spaces.Box(-_MAX_ACTION, _MAX_ACTION, (2,), np.float32)
        self._state = np.zeros(2)
        self._task: NavigationTask | None = None
        if task is not None:
            self.set_task(task)

    def set_task(self, task: NavigationTask) -> None:
        """Sets the goal used from the next step on."""
        if not isinstance(task, NavigationTask):
            raise TypeError(f"Navigation2DEnv takes a NavigationTask, got {task!r}")
        self._task = task

    def get_task(self) -> NavigationTask:
        """Returns the current task."""
        if self._task is None:
            raise RuntimeError("Navigation2DEnv: no task set; call set_task(task) first")
        return self._task

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Puts the robot at the origin (the start is deterministic)."""
        super().reset(seed=seed)
        self._state = np.zeros(2)
        return self._state.copy(), {}

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        """Moves by the clipped action; see the class docstring."""
        goal = np.asarray(self.get_task().goal)
        action = np.clip(np.asarray(action, dtype=np.float64), -_MAX_ACTION, _MAX_ACTION)
        if action.shape != (2,):
            raise ValueError(f"Navigation2DEnv: action must have shape (2,), got {action.shape}")
        self._state = self._state + action
        delta = self._state - goal
        distance = float(np.sqrt(delta[0] ** 2 + delta[1] ** 2))
        terminated = bool(np.all(np.abs(delta) < _GOAL_TOLERANCE))
        return self._state.copy(), -distance, terminated, False, {"distance": distance}


class NavigationBatchedEnv(BatchedEnv):
    """Vectorised [metaops.envs.Navigation2DEnv][] (pure numpy, no threads needed).

    Use `metaops.envs.make_batched("Navigation2D", ...)`.

    Args:
        num_tasks: Tasks per batch.
        episodes_per_task: Parallel episodes per task.

    Examples:
        >>> env = NavigationBatchedEnv(num_tasks=1, episodes_per_task=1)
        >>> env.reset([NavigationTask(goal=(0.05, 0.0))], seeds=np.array([0])).tolist()
        [[0.0, 0.0]]
        >>> env.step(np.array([[0.05, 0.0]]), active=np.array([True])).terminated.tolist()
        [True]
    """

    name = "Navigation2D"
    task_type = NavigationTask
    horizon = 100
    info_keys = ("distance",)
    observation_dim = 2
    action_low = np.full(2, -_MAX_ACTION, dtype=np.float32)
    action_high = np.full(2, _MAX_ACTION, dtype=np.float32)

    def __init__(self, *, num_tasks: int, episodes_per_task: int) -> None:
        super().__init__(num_tasks=num_tasks, episodes_per_task=episodes_per_task)
        self._state = np.zeros((self.num_envs, 2))
        self._goals = np.zeros((self.num_envs, 2))

    def _reset(self, tasks: tuple[Any, ...], seeds: list[int]) -> np.ndarray:
        goals = np.array([t.goal for t in tasks], dtype=np.float64).reshape(-1, 2)
        self._goals = np.repeat(goals, self.episodes_per_task, axis=0)
        self._state = np.zeros((self.num_envs, 2))
        return self._state.copy()

    def _step(self, actions: np.ndarray, active: np.ndarray) -> StepResult:
        moved = self._state + np.clip(actions, -_MAX_ACTION, _MAX_ACTION)
        self._state = np.where(active[:, None], moved, self._state)
        delta = self._state - self._goals
        distance = np.sqrt(delta[:, 0] ** 2 + delta[:, 1] ** 2)
        terminated = np.all(np.abs(delta) < _GOAL_TOLERANCE, axis=1) & active
        return StepResult(self._state.copy(), -distance, terminated, {"distance": distance})
