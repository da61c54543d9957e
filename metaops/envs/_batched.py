"""Batched environments: many (task, episode) copies stepped together.

`BatchedEnv` is the interface the sampler drives. `MujocoBatchedEnv` steps every
copy of a MuJoCo model in C on a thread pool (`mujoco.batch.Batch`, which is
bit-identical to a loop over one `MjData` per copy) and computes observations and
rewards vectorised over the batch with a task family's `_Kernel`.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from typing import Any, NamedTuple

import mujoco
import mujoco.batch
import numpy as np
from gymnasium.utils import seeding

from ._mujoco import _Kernel, _State

__all__ = ["BatchedEnv", "EnvError", "MujocoBatchedEnv", "StepResult"]


class EnvError(RuntimeError):
    """An environment failed (exception, instability or non-finite observation).

    Attributes:
        task_index: Index of the failing task in the task list, or `None` if unknown.
        episode: Index of the failing episode within that task, or `None`.
        task: The failing task, or `None`.

    Examples:
        >>> from metaops.envs import VelocityTask
        >>> err = EnvError("boom", task_index=3, episode=1, task=VelocityTask(1.0))
        >>> print(err)
        task 3 (VelocityTask(velocity=1.0)), episode 1: boom
    """

    def __init__(
        self,
        message: str,
        *,
        task_index: int | None = None,
        episode: int | None = None,
        task: Any = None,
    ) -> None:
        self.task_index = task_index
        self.episode = episode
        self.task = task
        where = []
        if task_index is not None:
            shown = "" if task is None else repr(task)
            shown = shown if len(shown) <= 120 else shown[:117] + "..."
            where.append(f"task {task_index}" + (f" ({shown})" if shown else ""))
        if episode is not None:
            where.append(f"episode {episode}")
        super().__init__(", ".join(where) + ": " + message if where else message)


class StepResult(NamedTuple):
    """What `BatchedEnv.step` returns, flat over environments `(num_envs, ...)`.

    Attributes:
        observations: `(num_envs, obs_dim)` float64.
        rewards: `(num_envs,)` float64 (zero where the environment was inactive).
        terminated: `(num_envs,)` bool.
        infos: Named per-step diagnostics, each `(num_envs,)` float64.

    Examples:
        >>> out = StepResult(np.zeros((2, 3)), np.zeros(2), np.zeros(2, dtype=bool), {})
        >>> out.observations.shape
        (2, 3)
    """

    observations: np.ndarray
    rewards: np.ndarray
    terminated: np.ndarray
    infos: dict[str, np.ndarray]


class BatchedEnv(abc.ABC):
    """`num_tasks * episodes_per_task` environments stepped as one batch.

    Environment `i` runs episode `i % episodes_per_task` of task
    `i // episodes_per_task`, so `(num_envs, ...)` arrays reshape to
    `(num_tasks, episodes_per_task, ...)`. Errors name the task and episode.

    Attributes:
        name: Registered name of the environment family.
        num_tasks: Number of tasks per batch.
        episodes_per_task: Episodes run in parallel for each task.
        observation_dim: Size of one observation.
        action_low: Lower action bounds, `(action_dim,)`.
        action_high: Upper action bounds, `(action_dim,)`.
        horizon: Default episode length (time steps).
        info_keys: Names of the per-step `infos`.

    Examples:
        >>> import numpy as np
        >>> from metaops.envs import NavigationTask, make_batched
        >>> env = make_batched("Navigation2D", num_tasks=1, episodes_per_task=2)
        >>> env.reset([NavigationTask(goal=(0.2, 0.0))], seeds=np.array([0, 1])).shape
        (2, 2)
        >>> out = env.step(np.full((2, 2), 0.1), active=np.array([True, True]))
        >>> out.rewards.round(3).tolist()  # both at (0.1, 0.1): distance 0.141 to the goal
        [-0.141, -0.141]
    """

    name: str
    num_tasks: int
    episodes_per_task: int
    observation_dim: int
    action_low: np.ndarray
    action_high: np.ndarray
    horizon: int
    info_keys: tuple[str, ...]
    task_type: type

    def __init__(self, *, num_tasks: int, episodes_per_task: int) -> None:
        for what, value in (("num_tasks", num_tasks), ("episodes_per_task", episodes_per_task)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{what} must be a positive int, got {value!r}")
        self.num_tasks = num_tasks
        self.episodes_per_task = episodes_per_task
        self._tasks: tuple[Any, ...] | None = None

    @property
    def num_envs(self) -> int:
        """`num_tasks * episodes_per_task`."""
        return self.num_tasks * self.episodes_per_task

    @property
    def action_dim(self) -> int:
        """Size of one action."""
        return int(self.action_low.shape[0])

    @property
    def tasks(self) -> tuple[Any, ...]:
        """The tasks of the last `reset`."""
        if self._tasks is None:
            raise RuntimeError(f"{type(self).__name__}: call reset(tasks, seeds=...) first")
        return self._tasks

    def reset(self, tasks: Sequence[Any], *, seeds: np.ndarray) -> np.ndarray:
        """Sets the tasks and starts every episode from a seeded initial state.

        Args:
            tasks: `num_tasks` tasks of this family's task type.
            seeds: `(num_envs,)` integer seeds; environment `i` starts exactly as the
                single gymnasium environment does after `reset(seed=int(seeds[i]))`.

        Returns:
            Initial observations, `(num_envs, obs_dim)`.

        Raises:
            ValueError: Wrong number of tasks or seeds.
            TypeError: A task of the wrong type.
            EnvError: A non-finite initial observation.
        """
        tasks = tuple(tasks)
        if len(tasks) != self.num_tasks:
            raise ValueError(f"{self.name}: expected {self.num_tasks} tasks, got {len(tasks)}")
        for i, task in enumerate(tasks):
            if not isinstance(task, self.task_type):
                raise TypeError(f"{self.name}: task {i} must be a {self.task_type.__name__}, got {task!r}")
        seeds = np.asarray(seeds)
        if seeds.shape != (self.num_envs,) or seeds.dtype.kind not in "iu":
            raise ValueError(
                f"{self.name}: seeds must be integers of shape ({self.num_envs},), got {seeds.dtype} {seeds.shape}"
            )
        self._tasks = tasks
        try:
            obs = self._reset(tasks, [int(s) for s in seeds])
            self._check_finite(obs, np.ones(self.num_envs, dtype=bool), "initial observation")
        except Exception:
            self._tasks = None  # a failed reset leaves nothing to step
            raise
        return obs

    def step(self, actions: np.ndarray, active: np.ndarray) -> StepResult:
        """Advances the active environments by one time step.

        Args:
            actions: `(num_envs, action_dim)`; rows of inactive environments are ignored.
            active: `(num_envs,)` bool; inactive (finished) environments are not stepped.

        Returns:
            A `StepResult`; rows of inactive environments are unspecified except that
            their rewards are zero.

        Raises:
            EnvError: The simulation failed or produced a non-finite observation or reward.
        """
        actions = np.asarray(actions, dtype=np.float64)
        active = np.asarray(active, dtype=bool)
        if actions.shape != (self.num_envs, self.action_dim) or active.shape != (self.num_envs,):
            raise ValueError(
                f"{self.name}: expected actions ({self.num_envs}, {self.action_dim}) and active "
                f"({self.num_envs},), got {actions.shape} and {active.shape}"
            )
        self.tasks  # noqa: B018 -- raises if reset was never called
        result = self._step(actions, active)
        self._check_finite(result.observations, active, "observation")
        self._check_finite(result.rewards[:, None], active, "reward")
        return result._replace(rewards=np.where(active, result.rewards, 0.0))

    def close(self) -> None:
        """Releases resources (threads); the environment cannot be used afterwards."""
        self._tasks = None

    def __enter__(self) -> BatchedEnv:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def error(self, env_index: int, message: str) -> EnvError:
        """Builds an `EnvError` naming the task and episode of environment `env_index`."""
        task_index, episode = divmod(int(env_index), self.episodes_per_task)
        task = self._tasks[task_index] if self._tasks is not None else None
        return EnvError(f"{self.name}: {message}", task_index=task_index, episode=episode, task=task)

    def _check_finite(self, values: np.ndarray, active: np.ndarray, what: str) -> None:
        bad = active & ~np.isfinite(values).all(axis=1)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise self.error(i, f"non-finite {what} {values[i].tolist()}")

    @abc.abstractmethod
    def _reset(self, tasks: tuple[Any, ...], seeds: list[int]) -> np.ndarray: ...

    @abc.abstractmethod
    def _step(self, actions: np.ndarray, active: np.ndarray) -> StepResult: ...


_BAD_STATE_WARNINGS = (
    mujoco.mjtWarning.mjWARN_BADQPOS,
    mujoco.mjtWarning.mjWARN_BADQVEL,
    mujoco.mjtWarning.mjWARN_BADQACC,
)


class MujocoBatchedEnv(BatchedEnv):
    """Steps all copies of a gymnasium v5 MuJoCo model in C, on `num_threads` threads.

    Physics runs in `mujoco.batch.Batch` (bit-identical to one `MjData` per copy),
    and observations, rewards and terminations are computed with numpy over the
    whole batch. Use `metaops.envs.make_batched` rather than this constructor.

    Args:
        kernel: The task family.
        num_tasks: Tasks per batch.
        episodes_per_task: Parallel episodes per task.
        num_threads: Physics threads (2 uses both cores of the reference machine).

    Examples:
        >>> import numpy as np
        >>> from metaops.envs import VelocityTask, make_batched
        >>> env = make_batched("HalfCheetahVel", num_tasks=2, episodes_per_task=1)
        >>> obs = env.reset([VelocityTask(0.5), VelocityTask(1.0)], seeds=np.array([0, 1]))
        >>> out = env.step(np.zeros((2, 6)), active=np.array([True, True]))
        >>> out.observations.shape, sorted(out.infos)
        ((2, 17), ['reward_ctrl', 'reward_forward', 'x_velocity'])
        >>> env.close()
    """

    def __init__(
        self,
        kernel: _Kernel,
        *,
        num_tasks: int,
        episodes_per_task: int,
        num_threads: int = 2,
    ) -> None:
        super().__init__(num_tasks=num_tasks, episodes_per_task=episodes_per_task)
        if isinstance(num_threads, bool) or not isinstance(num_threads, int) or num_threads < 1:
            raise ValueError(f"num_threads must be a positive int, got {num_threads!r}")
        self._kernel = kernel
        self.name = kernel.name
        self.task_type = kernel.task_type
        self.horizon = kernel.horizon
        self.info_keys = kernel.info_keys
        self._model = kernel.load_model()
        self._dt = float(self._model.opt.timestep) * kernel.frame_skip
        # persistent: one MjData per environment, so that contact forces can be
        # recomputed exactly as gymnasium does (mj_rnePostConstraint after mj_step)
        self._batch: mujoco.batch.Batch | None = mujoco.batch.Batch(
            self._model, self.num_envs, nthread=num_threads, persistent=True
        )
        b = self._batch
        self._qpos, self._qvel, self._ctrl = b.bind("qpos"), b.bind("qvel"), b.bind("ctrl")
        self._xpos = b.bind("xpos")
        self._cfrc: np.ndarray | None = None
        if kernel.contact_forces:
            self._cfrc = np.zeros((self.num_envs, self._model.nbody, 6))
        self._scratch = mujoco.MjData(self._model)
        data = mujoco.MjData(self._model)
        self._init_qpos, self._init_qvel = data.qpos.copy(), data.qvel.copy()
        low, high = self._model.actuator_ctrlrange.copy().astype(np.float32).T
        self.action_low, self.action_high = low, high
        self._task_arrays: dict[str, np.ndarray] = {}
        self._state: _State | None = None
        self.observation_dim = int(self._kernel.observe(self._read_state()).shape[1])

    @property
    def dt(self) -> float:
        """Seconds of simulated time per step (`timestep * frame_skip`)."""
        return self._dt

    def _read_state(self) -> _State:
        return _State(
            qpos=self._qpos.copy(),
            qvel=self._qvel.copy(),
            xpos=self._xpos[:, 1, :].copy(),
            cfrc_ext=None if self._cfrc is None else self._cfrc.copy(),
        )

    def _update_contact_forces(self, b: mujoco.batch.Batch, ids: np.ndarray) -> None:
        # gymnasium's _step_mujoco_simulation calls mj_rnePostConstraint after mj_step
        # (stale kinematics, new velocities); the batch only runs mj_step, so redo that
        # call on a copy of each stepped environment's data (~15 us per environment).
        assert self._cfrc is not None
        data, model = self._scratch, self._model
        for i in ids.tolist():
            b.get_data(i, data)
            mujoco.mj_rnePostConstraint(model, data)
            self._cfrc[i] = data.cfrc_ext

    def _live_batch(self) -> mujoco.batch.Batch:
        if self._batch is None:
            raise RuntimeError(f"{self.name}: the batched environment is closed")
        return self._batch

    def _reset(self, tasks: tuple[Any, ...], seeds: list[int]) -> np.ndarray:
        b = self._live_batch()
        per_env = [task for task in tasks for _ in range(self.episodes_per_task)]
        b.reset(stage=mujoco.mjtStage.mjSTAGE_NONE)
        self._kernel.apply_tasks(b, self._model, per_env)
        for i, seed in enumerate(seeds):
            rng, _ = seeding.np_random(seed)
            self._qpos[i], self._qvel[i] = self._kernel.reset_state(rng, self._init_qpos, self._init_qvel)
        self._run(b.forward)
        if self._cfrc is not None:
            self._cfrc[:] = 0.0  # gymnasium: mj_resetData zeroes cfrc_ext, mj_forward keeps it
        arrays = self._kernel.task_arrays(tasks)
        self._task_arrays = {k: np.repeat(v, self.episodes_per_task, axis=0) for k, v in arrays.items()}
        self._state = self._read_state()
        return self._kernel.observe(self._state)

    def _run(self, fn: Any, *args: Any, **kwargs: Any) -> None:
        try:
            fn(*args, **kwargs)
        except mujoco.batch.SimulationError as exc:
            raise self.error(int(exc.ids[0]), f"MuJoCo raised: {exc}") from exc

    def _step(self, actions: np.ndarray, active: np.ndarray) -> StepResult:
        b = self._live_batch()
        assert self._state is not None
        before = self._state
        ids = np.flatnonzero(active)
        self._ctrl[:] = actions
        self._run(b.step, ids, nstep=self._kernel.frame_skip)
        bad = np.zeros(self.num_envs, dtype=bool)
        for w in _BAD_STATE_WARNINGS:
            bad |= b.warning[:, int(w), 1] > 0  # (lastinfo, number)
        bad &= active
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise self.error(
                i,
                "the simulation became unstable (MuJoCo warned of a non-finite or huge "
                "qpos/qvel/qacc and reset the state)",
            )
        if self._cfrc is not None:
            self._update_contact_forces(b, ids)
        after = self._read_state()
        self._state = after
        obs = self._kernel.observe(after)
        rewards, terminated, infos = self._kernel.reward(before, after, actions, self._task_arrays, self._dt)
        return StepResult(obs, rewards, terminated & active, infos)

    def close(self) -> None:
        """Releases the physics thread pool."""
        super().close()
        self._batch = None
