"""Task dataclasses and task distributions."""

import dataclasses
import json
import math

import pytest
import torch

from metaops.envs import (
    BodyParamsTask,
    BodyParamsTasks,
    Direction2DTask,
    Direction2DTasks,
    DirectionTask,
    DirectionTasks,
    GoalTask,
    GoalTasks,
    NavigationTask,
    NavigationTasks,
    TaskDistribution,
    VelocityTask,
    VelocityTasks,
    env_names,
    task_distribution,
)

DISTRIBUTIONS = [
    NavigationTasks(),
    VelocityTasks(),
    DirectionTasks(),
    Direction2DTasks(),
    GoalTasks(),
    BodyParamsTasks(num_bodies=3, num_dofs=2, num_geoms=2),
]


@pytest.mark.parametrize("dist", DISTRIBUTIONS, ids=lambda d: type(d).__name__)
def test_sampling_is_seeded_and_tasks_roundtrip(dist):
    a = dist.sample_tasks(5, generator=torch.Generator().manual_seed(1))
    b = dist.sample_tasks(5, generator=torch.Generator().manual_seed(1))
    c = dist.sample_tasks(5, generator=torch.Generator().manual_seed(2))
    assert a == b
    assert isinstance(dist, TaskDistribution)
    if not isinstance(dist, DirectionTasks):  # only 2 possible values
        assert a != c
    for task in a:
        assert hash(task) is not None  # frozen
        data = dataclasses.asdict(task)
        assert type(task).from_dict(data) == task
        assert type(task).from_dict(json.loads(json.dumps(data))) == task  # lists -> tuples
        assert type(task).__name__ in repr(task)


def test_distribution_ranges():
    g = torch.Generator().manual_seed(0)
    goals = [t.goal for t in NavigationTasks().sample_tasks(500, generator=g)]
    assert all(-0.5 <= c <= 0.5 for goal in goals for c in goal)
    assert max(abs(c) for goal in goals for c in goal) > 0.45
    vels = [t.velocity for t in VelocityTasks().sample_tasks(500, generator=g)]
    assert 0.0 <= min(vels) < 0.05 and 1.95 < max(vels) <= 2.0
    dirs = [t.direction for t in DirectionTasks().sample_tasks(200, generator=g)]
    assert set(dirs) == {-1.0, 1.0}
    for t in Direction2DTasks().sample_tasks(50, generator=g):
        assert math.hypot(*t.direction) == pytest.approx(1.0)
    radii = [math.hypot(*t.goal) for t in GoalTasks(radius=3.0).sample_tasks(2000, generator=g)]
    assert max(radii) <= 3.0 and max(radii) > 2.9
    # uniform on the disk: half of the goals lie within radius 3 / sqrt(2)
    inside = sum(r < 3.0 / math.sqrt(2) for r in radii) / len(radii)
    assert inside == pytest.approx(0.5, abs=0.05)
    task = BodyParamsTasks(num_bodies=4, num_dofs=3, num_geoms=2).sample_tasks(1, generator=g)[0]
    assert len(task.body_mass) == 4 and len(task.body_inertia) == 4
    assert len(task.dof_damping) == 3 and len(task.geom_friction) == 2
    assert all(1.5**-3 <= s <= 1.5**3 for s in task.body_mass)
    assert all(1.3**-3 <= s <= 1.3**3 for s in task.dof_damping)


@pytest.mark.parametrize(
    ("build", "error", "match"),
    [
        (lambda: NavigationTask(goal=(0.1,)), ValueError, "2 entries"),
        (lambda: NavigationTask(goal=(0.1, float("nan"))), ValueError, "finite"),
        (lambda: NavigationTask(goal="ab"), TypeError, "real number"),
        (lambda: VelocityTask(velocity=float("inf")), ValueError, "finite"),
        (lambda: VelocityTask(velocity="fast"), TypeError, "real number"),
        (lambda: DirectionTask(direction=0.5), ValueError, "1.0 or -1.0"),
        (lambda: Direction2DTask(direction=(1.0, 1.0)), ValueError, "unit vector"),
        (lambda: GoalTask(goal=(1.0, 2.0, 3.0)), ValueError, "2 entries"),
        (
            lambda: BodyParamsTask(body_mass=(1.0, -1.0), body_inertia=(), dof_damping=(), geom_friction=()),
            ValueError,
            "positive",
        ),
        (
            lambda: BodyParamsTask(body_mass=(1.0,), body_inertia=((1.0, 1.0),), dof_damping=(), geom_friction=()),
            ValueError,
            "3 entries",
        ),
        (lambda: VelocityTask.from_dict({"velocity": 1.0, "speed": 2}), ValueError, "speed"),
        (lambda: NavigationTasks(low=1.0, high=0.0), ValueError, "low < high"),
        (lambda: GoalTasks(radius=0.0), ValueError, "positive"),
        (lambda: BodyParamsTasks(num_bodies=0, num_dofs=1, num_geoms=1), ValueError, "num_bodies"),
        (lambda: VelocityTasks().sample_tasks(0), ValueError, "num_tasks"),
        (lambda: VelocityTasks().sample_tasks(2.0), ValueError, "num_tasks"),
    ],
)
def test_invalid_task_parameters_raise_clear_errors(build, error, match):
    with pytest.raises(error, match=match):
        build()


def test_tasks_are_frozen():
    task = VelocityTask(velocity=1.0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        task.velocity = 2.0  # type: ignore[misc]


@pytest.mark.parametrize("name", env_names())
def test_every_env_has_a_distribution(name):
    tasks = task_distribution(name).sample_tasks(2, generator=torch.Generator().manual_seed(0))
    assert len(tasks) == 2
