"""Shared MuJoCo plumbing: model loading, the single-env task mixin and batch kernels."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any, NamedTuple

import mujoco
import mujoco.batch
import numpy as np
from gymnasium.envs.mujoco.mujoco_env import expand_model_path
from gymnasium.utils import EzPickle


def load_model(xml_file: str) -> mujoco.MjModel:
    """Compiles a gymnasium v5 MuJoCo model by file name (or absolute path), quietly.

    gymnasium's `half_cheetah.xml` uses the `settotalmass` compiler attribute, which
    MuJoCo 4 deprecates with a warning (and a `MUJOCO_LOG.TXT` in the working
    directory when loaded through `MjModel.from_xml_path`); compiling through
    `MjSpec` with that one warning filtered gives the same model silently.
    """
    spec = mujoco.MjSpec.from_file(expand_model_path(xml_file))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="compiler attribute .settotalmass. is deprecated")
        return spec.compile()


class TaskEnvMixin:
    """Task handling shared by the single (gymnasium) environments.

    Subclasses set `task_type` and call `self._init_task(task, **constructor_kwargs)` at
    the end of `__init__`. Pickling (gymnasium's `EzPickle`) rebuilds the environment from
    those arguments and its current task.
    """

    task_type: type = object
    _task: Any = None

    def _initialize_simulation(self) -> tuple[mujoco.MjModel, mujoco.MjData]:
        # gymnasium's model, compiled quietly (see load_model)
        model = load_model(self.fullpath)  # type: ignore[attr-defined]
        model.vis.global_.offwidth = max(model.vis.global_.offwidth, self.width)  # type: ignore[attr-defined]
        model.vis.global_.offheight = max(model.vis.global_.offheight, self.height)  # type: ignore[attr-defined]
        return model, mujoco.MjData(model)

    def _init_task(self, task: Any, **constructor_kwargs: Any) -> None:
        # replaces the arguments gymnasium's base class recorded for EzPickle
        EzPickle.__init__(self, task, **constructor_kwargs)
        if task is not None:
            self.set_task(task)

    def __getstate__(self) -> dict[str, Any]:
        state = EzPickle.__getstate__(self)  # type: ignore[arg-type]
        return {**state, "_ezpickle_args": (self._task,)}

    def set_task(self, task: Any) -> None:
        """Sets the task used from the next step on (call `reset` to start an episode)."""
        if not isinstance(task, self.task_type):
            raise TypeError(f"{type(self).__name__} takes a {self.task_type.__name__}, got {task!r}")
        self._apply_task(task)
        self._task = task

    def get_task(self) -> Any:
        """Returns the current task."""
        if self._task is None:
            raise RuntimeError(f"{type(self).__name__}: no task set; call set_task(task) first")
        return self._task

    def _apply_task(self, task: Any) -> None:
        """Hook for tasks that change the model (random physical parameters)."""


class _State(NamedTuple):
    """Per-environment physics read after a step (batched over environments)."""

    qpos: np.ndarray  # (B, nq)
    qvel: np.ndarray  # (B, nv)
    xpos: np.ndarray  # (B, 3): position of the main body (body 1), as gymnasium reads it
    cfrc_ext: np.ndarray | None  # (B, nbody, 6) or None when the kernel does not use it


class _Kernel:
    """A task family on one gymnasium MuJoCo v5 model, vectorised over a batch.

    Subclasses mirror, array by array, the `step` of the matching single gymnasium
    environment class; the tests check that both agree step for step.
    """

    name: str = ""
    xml_file: str = ""
    frame_skip: int = 5
    task_type: type = object
    horizon: int = 200
    contact_forces: bool = False
    reset_noise_scale: float = 0.1
    reset_qvel_normal: bool = True  # qvel noise: scale * N(0, 1) (else U[-scale, scale])
    info_keys: tuple[str, ...] = ()

    def load_model(self) -> mujoco.MjModel:
        """Compiles this family's gymnasium v5 model."""
        return load_model(self.xml_file)

    def reset_state(
        self, rng: np.random.Generator, init_qpos: np.ndarray, init_qvel: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """The gymnasium v5 `reset_model` noise, drawn from the same generator in the same order."""
        s = self.reset_noise_scale
        qpos = init_qpos + rng.uniform(low=-s, high=s, size=init_qpos.shape[0])
        if self.reset_qvel_normal:
            qvel = init_qvel + s * rng.standard_normal(init_qvel.shape[0])
        else:
            qvel = init_qvel + rng.uniform(low=-s, high=s, size=init_qvel.shape[0])
        return qpos, qvel

    def task_arrays(self, tasks: Sequence[Any]) -> dict[str, np.ndarray]:
        """Task parameters as arrays with one row per task."""
        return {}

    def apply_tasks(self, batch: mujoco.batch.Batch, base: mujoco.MjModel, tasks: list) -> None:
        """Writes per-environment model parameters (random-parameter families only)."""

    def observe(self, s: _State) -> np.ndarray:
        raise NotImplementedError

    def reward(
        self,
        before: _State,
        after: _State,
        actions: np.ndarray,
        task: dict[str, np.ndarray],
        dt: float,
    ) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
        """Returns `(rewards, terminated, infos)`, each `(B,)`."""
        raise NotImplementedError
