"""Meta-RL task distributions (gymnasium API) and a fast task-batched episode sampler.

Every environment family has a task dataclass, a task distribution with
`sample_tasks(num_tasks, *, generator)`, a single gymnasium environment with
`set_task`/`get_task` (registered as `metaops/<Name>-v0`), and a batched version that
steps all `(task, episode)` copies together and reproduces the single environment
step for step. `sample_episodes` drives stateless policies (`Policy`), `sample_trials` recurrent
ones (`RecurrentPolicy`) over trials of consecutive episodes (RL²). Users call
`make`/`make_batched`/`task_distribution` by name (`env_names()`);
the concrete batched classes are internal. See `docs/envs.md` for the specifications and the differences from
the MAML and ProMP reference code.
"""

from ._ant import AntDir2DEnv, AntDirEnv, AntGoalEnv
from ._batched import BatchedEnv, EnvError, StepResult
from ._demos import Demonstrations, collect_demonstrations, load_demonstrations, navigation_expert, save_demonstrations
from ._half_cheetah import HalfCheetahDirEnv, HalfCheetahVelEnv
from ._navigation import Navigation2DEnv
from ._policy import Policy, RecurrentPolicy
from ._random_params import HopperRandParamsEnv, Walker2dRandParamsEnv
from ._registration import env_names, gymnasium_id, make, make_batched, task_distribution
from ._sampler import EpisodeBatch, sample_episodes
from ._tasks import (
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
    Task,
    TaskDistribution,
    VelocityTask,
    VelocityTasks,
)
from ._trials import TrialBatch, sample_trials

__all__ = [
    "AntDir2DEnv",
    "AntDirEnv",
    "AntGoalEnv",
    "BatchedEnv",
    "BodyParamsTask",
    "BodyParamsTasks",
    "Demonstrations",
    "Direction2DTask",
    "Direction2DTasks",
    "DirectionTask",
    "DirectionTasks",
    "EnvError",
    "EpisodeBatch",
    "GoalTask",
    "GoalTasks",
    "HalfCheetahDirEnv",
    "HalfCheetahVelEnv",
    "HopperRandParamsEnv",
    "Navigation2DEnv",
    "NavigationTask",
    "NavigationTasks",
    "Policy",
    "RecurrentPolicy",
    "StepResult",
    "Task",
    "TaskDistribution",
    "TrialBatch",
    "VelocityTask",
    "VelocityTasks",
    "Walker2dRandParamsEnv",
    "collect_demonstrations",
    "load_demonstrations",
    "navigation_expert",
    "save_demonstrations",
    "env_names",
    "gymnasium_id",
    "make",
    "make_batched",
    "sample_episodes",
    "sample_trials",
    "task_distribution",
]
