"""Tasks (frozen, serialisable dataclasses) and the distributions that sample them."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar, runtime_checkable

import torch

__all__ = [
    "BodyParamsTask",
    "BodyParamsTasks",
    "Direction2DTask",
    "Direction2DTasks",
    "DirectionTask",
    "DirectionTasks",
    "GoalTask",
    "GoalTasks",
    "NavigationTask",
    "NavigationTasks",
    "Task",
    "TaskDistribution",
    "VelocityTask",
    "VelocityTasks",
]

_T = TypeVar("_T")


def _finite(value: Any, what: str) -> float:
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{what} must be a real number, got {value!r}") from None
    if not math.isfinite(out):
        raise ValueError(f"{what} must be finite, got {out}")
    return out


def _vector(value: Any, size: int, what: str) -> tuple[float, ...]:
    try:
        items = tuple(value)
    except TypeError:
        raise TypeError(f"{what} must be a sequence of {size} numbers, got {value!r}") from None
    if len(items) != size:
        raise ValueError(f"{what} must have {size} entries, got {len(items)}: {value!r}")
    return tuple(_finite(v, f"{what}[{i}]") for i, v in enumerate(items))


def _positive_scales(value: Any, inner: int | None, what: str) -> tuple:
    """Validates a tuple (of tuples of `inner` entries) of positive finite scale factors."""
    try:
        items = tuple(value)
    except TypeError:
        raise TypeError(f"{what} must be a sequence of scale factors, got {value!r}") from None
    if inner is None:
        out: tuple = tuple(_finite(v, f"{what}[{i}]") for i, v in enumerate(items))
        flat: Iterable[float] = out
    else:
        out = tuple(_vector(v, inner, f"{what}[{i}]") for i, v in enumerate(items))
        flat = (x for row in out for x in row)
    if any(x <= 0 for x in flat):
        raise ValueError(f"{what} must hold positive scale factors, got {value!r}")
    return out


class _TaskMixin:
    """`from_dict` shared by all tasks: the inverse of `dataclasses.asdict`."""

    @classmethod
    def from_dict(cls: type[_T], data: dict[str, Any]) -> _T:
        """Builds a task from `dataclasses.asdict(task)` (lists are accepted for tuples)."""
        names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = set(data) - names
        if unknown:
            raise ValueError(f"unknown field(s) {sorted(unknown)} for {cls.__name__}; expected {sorted(names)}")
        return cls(**data)


@dataclass(frozen=True)
class NavigationTask(_TaskMixin):
    """A goal position for the 2D point robot.

    Args:
        goal: Goal $(g_x, g_y)$.

    Examples:
        >>> import dataclasses
        >>> task = NavigationTask(goal=(0.1, -0.2))
        >>> task
        NavigationTask(goal=(0.1, -0.2))
        >>> NavigationTask.from_dict(dataclasses.asdict(task)) == task
        True
    """

    goal: tuple[float, float]

    def __post_init__(self) -> None:
        object.__setattr__(self, "goal", _vector(self.goal, 2, "NavigationTask.goal"))


@dataclass(frozen=True)
class VelocityTask(_TaskMixin):
    r"""A target forward velocity $v_\text{goal}$ (m/s) for a runner.

    Args:
        velocity: Target velocity along $x$.

    Examples:
        >>> VelocityTask(velocity=1.5)
        VelocityTask(velocity=1.5)
    """

    velocity: float

    def __post_init__(self) -> None:
        object.__setattr__(self, "velocity", _finite(self.velocity, "VelocityTask.velocity"))


@dataclass(frozen=True)
class DirectionTask(_TaskMixin):
    """A running direction along $x$: `+1.0` forward, `-1.0` backward.

    Args:
        direction: `1.0` or `-1.0`.

    Examples:
        >>> DirectionTask(direction=-1)
        DirectionTask(direction=-1.0)
    """

    direction: float

    def __post_init__(self) -> None:
        value = _finite(self.direction, "DirectionTask.direction")
        if value not in (1.0, -1.0):
            raise ValueError(f"DirectionTask.direction must be 1.0 or -1.0, got {value}")
        object.__setattr__(self, "direction", value)


@dataclass(frozen=True)
class Direction2DTask(_TaskMixin):
    r"""A unit running direction $d \in \mathbb{R}^2$, $\|d\|_2 = 1$, in the $xy$ plane.

    Args:
        direction: Unit vector $(d_x, d_y)$; its norm must be 1 within `1e-6`.

    Examples:
        >>> Direction2DTask(direction=(0.6, 0.8))
        Direction2DTask(direction=(0.6, 0.8))
    """

    direction: tuple[float, float]

    def __post_init__(self) -> None:
        value = _vector(self.direction, 2, "Direction2DTask.direction")
        norm = math.hypot(*value)
        if abs(norm - 1.0) > 1e-6:
            raise ValueError(f"Direction2DTask.direction must be a unit vector, got {value} (norm {norm:.6g})")
        object.__setattr__(self, "direction", value)


@dataclass(frozen=True)
class GoalTask(_TaskMixin):
    r"""A goal position $g \in \mathbb{R}^2$ for a robot's torso in the $xy$ plane.

    Args:
        goal: Goal $(g_x, g_y)$ in metres.

    Examples:
        >>> GoalTask(goal=(1.0, 2.0))
        GoalTask(goal=(1.0, 2.0))
    """

    goal: tuple[float, float]

    def __post_init__(self) -> None:
        object.__setattr__(self, "goal", _vector(self.goal, 2, "GoalTask.goal"))


@dataclass(frozen=True)
class BodyParamsTask(_TaskMixin):
    """Multiplicative scale factors for a MuJoCo model's physical parameters.

    Each field multiplies the model's value of the same name, entry by entry
    (`model.body_mass * body_mass`, ...). All factors must be positive.

    Args:
        body_mass: One factor per body, shape `(nbody,)`.
        body_inertia: Three factors per body, shape `(nbody, 3)`.
        dof_damping: One factor per degree of freedom, shape `(nv,)`.
        geom_friction: Three factors per geom, shape `(ngeom, 3)`.

    Examples:
        >>> task = BodyParamsTask(body_mass=(1.0, 2.0), body_inertia=((1, 1, 1), (1, 1, 1)),
        ...                       dof_damping=(0.5,), geom_friction=((1.5, 1, 1),))
        >>> task.body_mass
        (1.0, 2.0)
    """

    body_mass: tuple[float, ...]
    body_inertia: tuple[tuple[float, float, float], ...]
    dof_damping: tuple[float, ...]
    geom_friction: tuple[tuple[float, float, float], ...]

    def __post_init__(self) -> None:
        for name, inner in (
            ("body_mass", None),
            ("body_inertia", 3),
            ("dof_damping", None),
            ("geom_friction", 3),
        ):
            value = _positive_scales(getattr(self, name), inner, f"BodyParamsTask.{name}")
            object.__setattr__(self, name, value)


Task = NavigationTask | VelocityTask | DirectionTask | Direction2DTask | GoalTask | BodyParamsTask
"""Any of the task dataclasses."""


@runtime_checkable
class TaskDistribution(Protocol):
    """What every task distribution provides: seeded sampling of a list of tasks.

    Examples:
        >>> isinstance(VelocityTasks(), TaskDistribution)
        True
    """

    def sample_tasks(self, num_tasks: int, *, generator: torch.Generator | None = None) -> list[Any]:
        """Samples `num_tasks` independent tasks using `generator`."""
        ...


def _check_num_tasks(num_tasks: int) -> None:
    if isinstance(num_tasks, bool) or not isinstance(num_tasks, int) or num_tasks < 1:
        raise ValueError(f"num_tasks must be a positive int, got {num_tasks!r}")


def _uniform(shape: Sequence[int], generator: torch.Generator | None) -> torch.Tensor:
    return torch.rand(*shape, generator=generator, dtype=torch.float64)


@dataclass(frozen=True)
class NavigationTasks:
    r"""Goals drawn uniformly from the square $[\text{low}, \text{high}]^2$.

    Args:
        low: Lower bound of each goal coordinate.
        high: Upper bound of each goal coordinate.

    Examples:
        >>> g = torch.Generator().manual_seed(0)
        >>> tasks = NavigationTasks().sample_tasks(3, generator=g)
        >>> len(tasks), all(-0.5 <= c <= 0.5 for t in tasks for c in t.goal)
        (3, True)
    """

    low: float = -0.5
    high: float = 0.5

    def __post_init__(self) -> None:
        if not (_finite(self.low, "low") < _finite(self.high, "high")):
            raise ValueError(f"need low < high, got low={self.low}, high={self.high}")

    def sample_tasks(self, num_tasks: int, *, generator: torch.Generator | None = None) -> list[NavigationTask]:
        """Samples `num_tasks` goals; see the class docstring."""
        _check_num_tasks(num_tasks)
        goals = self.low + (self.high - self.low) * _uniform((num_tasks, 2), generator)
        return [NavigationTask(goal=tuple(g)) for g in goals.tolist()]


@dataclass(frozen=True)
class VelocityTasks:
    r"""Target velocities drawn uniformly from $[\text{low}, \text{high}]$.

    Args:
        low: Smallest velocity.
        high: Largest velocity.

    Examples:
        >>> g = torch.Generator().manual_seed(0)
        >>> [round(t.velocity, 3) for t in VelocityTasks().sample_tasks(2, generator=g)]
        [1.94, 1.416]
    """

    low: float = 0.0
    high: float = 2.0

    def __post_init__(self) -> None:
        if not (_finite(self.low, "low") < _finite(self.high, "high")):
            raise ValueError(f"need low < high, got low={self.low}, high={self.high}")

    def sample_tasks(self, num_tasks: int, *, generator: torch.Generator | None = None) -> list[VelocityTask]:
        """Samples `num_tasks` velocities; see the class docstring."""
        _check_num_tasks(num_tasks)
        values = self.low + (self.high - self.low) * _uniform((num_tasks,), generator)
        return [VelocityTask(velocity=v) for v in values.tolist()]


@dataclass(frozen=True)
class DirectionTasks:
    """Directions `+1` (forward) or `-1` (backward), each with probability 1/2.

    Examples:
        >>> g = torch.Generator().manual_seed(0)
        >>> [t.direction for t in DirectionTasks().sample_tasks(4, generator=g)]
        [-1.0, 1.0, 1.0, -1.0]
    """

    def sample_tasks(self, num_tasks: int, *, generator: torch.Generator | None = None) -> list[DirectionTask]:
        """Samples `num_tasks` directions; see the class docstring."""
        _check_num_tasks(num_tasks)
        signs = torch.randint(0, 2, (num_tasks,), generator=generator) * 2 - 1
        return [DirectionTask(direction=float(s)) for s in signs.tolist()]


@dataclass(frozen=True)
class Direction2DTasks:
    r"""Unit directions drawn uniformly on the circle.

    $d = z / \|z\|_2$ with $z \sim \mathcal{N}(0, I_2)$, as in ProMP's `AntRandDirec2DEnv`.

    Examples:
        >>> g = torch.Generator().manual_seed(0)
        >>> d = Direction2DTasks().sample_tasks(1, generator=g)[0].direction
        >>> round(d[0] ** 2 + d[1] ** 2, 6)
        1.0
    """

    def sample_tasks(self, num_tasks: int, *, generator: torch.Generator | None = None) -> list[Direction2DTask]:
        """Samples `num_tasks` directions; see the class docstring."""
        _check_num_tasks(num_tasks)
        z = torch.randn(num_tasks, 2, generator=generator, dtype=torch.float64)
        z = z / z.norm(dim=1, keepdim=True).clamp_min(1e-12)
        return [Direction2DTask(direction=tuple(d)) for d in z.tolist()]


@dataclass(frozen=True)
class GoalTasks:
    r"""Goals drawn uniformly on the disk of radius $R$: $g = R\sqrt{u}\,(\cos\phi, \sin\phi)$.

    With $u \sim U[0, 1]$ and $\phi \sim U[0, 2\pi)$, as in ProMP's `AntRandGoalEnv`.

    Args:
        radius: Disk radius $R$ (metres).

    Examples:
        >>> g = torch.Generator().manual_seed(0)
        >>> tasks = GoalTasks(radius=3.0).sample_tasks(5, generator=g)
        >>> all(t.goal[0] ** 2 + t.goal[1] ** 2 <= 9.0 for t in tasks)
        True
    """

    radius: float = 3.0

    def __post_init__(self) -> None:
        if not _finite(self.radius, "radius") > 0:
            raise ValueError(f"radius must be positive, got {self.radius}")

    def sample_tasks(self, num_tasks: int, *, generator: torch.Generator | None = None) -> list[GoalTask]:
        """Samples `num_tasks` goals; see the class docstring."""
        _check_num_tasks(num_tasks)
        u = _uniform((num_tasks, 2), generator)
        angle = 2 * math.pi * u[:, 0]
        r = self.radius * u[:, 1].sqrt()
        goals = torch.stack([r * angle.cos(), r * angle.sin()], dim=1)
        return [GoalTask(goal=tuple(g)) for g in goals.tolist()]


@dataclass(frozen=True)
class BodyParamsTasks:
    r"""Random physical parameters: log-uniform scale factors, as in ProMP's `rand_param_envs`.

    Each entry is scaled independently by $b^{u}$ with $u \sim U[-L, L]$ ($L$ =
    `log_scale_limit`): base $b = 1.5$ for body masses, body inertias and geom
    frictions, $b = 1.3$ for dof damping.

    Args:
        num_bodies: `model.nbody`.
        num_dofs: `model.nv`.
        num_geoms: `model.ngeom`.
        log_scale_limit: $L$.

    Examples:
        >>> g = torch.Generator().manual_seed(0)
        >>> task = BodyParamsTasks(num_bodies=2, num_dofs=1, num_geoms=1).sample_tasks(
        ...     1, generator=g)[0]
        >>> all(1.5 ** -3 <= s <= 1.5 ** 3 for s in task.body_mass)
        True
    """

    num_bodies: int
    num_dofs: int
    num_geoms: int
    log_scale_limit: float = 3.0

    def __post_init__(self) -> None:
        for name in ("num_bodies", "num_dofs", "num_geoms"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if not _finite(self.log_scale_limit, "log_scale_limit") >= 0:
            raise ValueError(f"log_scale_limit must be >= 0, got {self.log_scale_limit}")

    def sample_tasks(self, num_tasks: int, *, generator: torch.Generator | None = None) -> list[BodyParamsTask]:
        """Samples `num_tasks` parameter sets; see the class docstring."""
        _check_num_tasks(num_tasks)
        lim = self.log_scale_limit

        def scales(base: float, *shape: int) -> torch.Tensor:
            return base ** (lim * (2 * _uniform((num_tasks, *shape), generator) - 1))

        mass = scales(1.5, self.num_bodies).tolist()
        inertia = scales(1.5, self.num_bodies, 3).tolist()
        damping = scales(1.3, self.num_dofs).tolist()
        friction = scales(1.5, self.num_geoms, 3).tolist()
        return [
            BodyParamsTask(
                body_mass=tuple(mass[i]),
                body_inertia=tuple(tuple(row) for row in inertia[i]),
                dof_damping=tuple(damping[i]),
                geom_friction=tuple(tuple(row) for row in friction[i]),
            )
            for i in range(num_tasks)
        ]
