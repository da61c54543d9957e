"""Names of the environment families: `make`, `make_batched`, `task_distribution`, gymnasium ids."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import gymnasium

from ._ant import AntDir2DEnv, AntDirEnv, AntGoalEnv, _AntDir2DKernel, _AntDirKernel, _AntGoalKernel
from ._batched import BatchedEnv, MujocoBatchedEnv
from ._half_cheetah import (
    HalfCheetahDirEnv,
    HalfCheetahVelEnv,
    _HalfCheetahDirKernel,
    _HalfCheetahVelKernel,
)
from ._mujoco import _Kernel, load_model
from ._navigation import Navigation2DEnv, NavigationBatchedEnv
from ._random_params import (
    HopperRandParamsEnv,
    Walker2dRandParamsEnv,
    _HopperKernel,
    _Walker2dKernel,
)
from ._tasks import (
    BodyParamsTasks,
    Direction2DTasks,
    DirectionTasks,
    GoalTasks,
    NavigationTasks,
    TaskDistribution,
    VelocityTasks,
)

__all__ = ["env_names", "gymnasium_id", "make", "make_batched", "task_distribution"]


def _body_params_tasks(xml_file: str) -> BodyParamsTasks:
    model = load_model(xml_file)
    return BodyParamsTasks(num_bodies=model.nbody, num_dofs=model.nv, num_geoms=model.ngeom)


@dataclass(frozen=True)
class _Entry:
    env_cls: type[gymnasium.Env]
    distribution: Callable[[], TaskDistribution]
    horizon: int
    kernel: type[_Kernel] | None  # None: a numpy batched env (navigation)


_REGISTRY: dict[str, _Entry] = {
    "Navigation2D": _Entry(Navigation2DEnv, NavigationTasks, 100, None),
    "HalfCheetahVel": _Entry(HalfCheetahVelEnv, VelocityTasks, 200, _HalfCheetahVelKernel),
    "HalfCheetahDir": _Entry(HalfCheetahDirEnv, DirectionTasks, 200, _HalfCheetahDirKernel),
    "AntDir": _Entry(AntDirEnv, DirectionTasks, 200, _AntDirKernel),
    "AntDir2D": _Entry(AntDir2DEnv, Direction2DTasks, 200, _AntDir2DKernel),
    "AntGoal": _Entry(AntGoalEnv, GoalTasks, 200, _AntGoalKernel),
    "HopperRandParams": _Entry(HopperRandParamsEnv, lambda: _body_params_tasks("hopper.xml"), 200, _HopperKernel),
    "Walker2dRandParams": _Entry(
        Walker2dRandParamsEnv,
        lambda: _body_params_tasks("walker2d_v5.xml"),
        200,
        _Walker2dKernel,
    ),
}


def env_names() -> tuple[str, ...]:
    """Returns the registered environment names.

    Examples:
        >>> env_names()[:3]
        ('Navigation2D', 'HalfCheetahVel', 'HalfCheetahDir')
    """
    return tuple(_REGISTRY)


def gymnasium_id(name: str) -> str:
    """Returns the gymnasium id of a registered environment, `metaops/<name>-v0`.

    Examples:
        >>> gymnasium_id("HalfCheetahVel")
        'metaops/HalfCheetahVel-v0'
    """
    return f"metaops/{_canonical(name)}-v0"


def _canonical(name: str) -> str:
    if not isinstance(name, str):
        raise TypeError(f"environment name must be a str, got {name!r}")
    short = name
    if short.startswith("metaops/"):
        short = short[len("metaops/") :]
    if short.endswith("-v0"):
        short = short[: -len("-v0")]
    if short not in _REGISTRY:
        valid = ", ".join(_REGISTRY)
        raise ValueError(f"unknown environment {name!r}; valid names: {valid}")
    return short


def make(name: str, task: Any = None, **kwargs: Any) -> gymnasium.Env:
    """Builds one (single-task, gymnasium) environment by name.

    Args:
        name: A name from `env_names()` (or its gymnasium id).
        task: Optional initial task; otherwise call `env.set_task(task)` before `reset`.
        **kwargs: Passed to the environment class.

    Returns:
        The environment (no wrappers; `gymnasium.make(gymnasium_id(name))` adds the
        time limit and gymnasium's usual wrappers).

    Raises:
        ValueError: Unknown name (the message lists the valid names).

    Examples:
        >>> from metaops.envs import VelocityTask
        >>> env = make("HalfCheetahVel", VelocityTask(velocity=1.0))
        >>> env.get_task()
        VelocityTask(velocity=1.0)
    """
    return _REGISTRY[_canonical(name)].env_cls(task, **kwargs)


def make_batched(name: str, *, num_tasks: int, episodes_per_task: int, num_threads: int = 2) -> BatchedEnv:
    """Builds the batched version of an environment, for [metaops.envs.sample_episodes][].

    Args:
        name: A name from `env_names()` (or its gymnasium id).
        num_tasks: Tasks per batch.
        episodes_per_task: Episodes run in parallel for each task.
        num_threads: Physics threads for MuJoCo families (ignored for navigation).

    Returns:
        A [metaops.envs.BatchedEnv][] with `num_tasks * episodes_per_task` environments
        that reproduce the single environment step for step.

    Raises:
        ValueError: Unknown name or non-positive sizes.

    Examples:
        >>> env = make_batched("AntGoal", num_tasks=2, episodes_per_task=3)
        >>> env.num_envs, env.observation_dim, env.action_dim, env.horizon
        (6, 107, 8, 200)
    """
    entry = _REGISTRY[_canonical(name)]
    if entry.kernel is None:
        return NavigationBatchedEnv(num_tasks=num_tasks, episodes_per_task=episodes_per_task)
    return MujocoBatchedEnv(
        entry.kernel(),
        num_tasks=num_tasks,
        episodes_per_task=episodes_per_task,
        num_threads=num_threads,
    )


def task_distribution(name: str) -> TaskDistribution:
    """Returns the task distribution of a registered environment.

    Args:
        name: A name from `env_names()` (or its gymnasium id).

    Examples:
        >>> task_distribution("HalfCheetahVel")
        VelocityTasks(low=0.0, high=2.0)
    """
    return _REGISTRY[_canonical(name)].distribution()


def _register_with_gymnasium() -> None:
    for name, entry in _REGISTRY.items():
        env_id = gymnasium_id(name)
        if env_id not in gymnasium.registry:
            gymnasium.register(id=env_id, entry_point=entry.env_cls, max_episode_steps=entry.horizon)


_register_with_gymnasium()
