"""Expert demonstrations per task: collect them with any expert, store them on disk, load them back.

On-disk format (a directory, version 1):

* ``manifest.json``: ``{"format": "metaops-demonstrations", "version": 1, "env": name,
  "expert": description, "horizon": T, "episodes": E, "tasks": [{"type": class name,
  "fields": dataclasses.asdict(task)}, ...], "returns": [mean return per task, ...],
  "cost": {"env_steps": ..., "seconds": ...}}``;
* ``task_0000.npz``, ``task_0001.npz``, ...: one file per task (in manifest order) with the
  arrays ``observations (E, T, obs_dim)``, ``actions (E, T, act_dim)``, ``rewards (E, T)``
  and ``mask (E, T)`` (1 for real steps, 0 for padding after an episode ended; right
  padding), all float32.

numpy's ``.npz`` and JSON keep the files readable without this library.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ._registration import make_batched
from ._sampler import EpisodeBatch, sample_episodes
from ._tasks import NavigationTask

__all__ = [
    "Demonstrations",
    "collect_demonstrations",
    "load_demonstrations",
    "navigation_expert",
    "save_demonstrations",
]

FORMAT, VERSION = "metaops-demonstrations", 1
_ARRAYS = ("observations", "actions", "rewards", "mask")

Expert = Callable[[Tensor], Tensor]
"""``expert(observations) -> actions``: observations `(task, n, obs_dim)` float32 (dimension 0 in the
order of the task list, any number ``n`` of states per task), actions `(task, n, act_dim)`."""


@dataclass(frozen=True)
class Demonstrations:
    """Expert episodes for a list of tasks, shaped `(task, episode, time, ...)`.

    Attributes:
        env: Registered name of the environment family.
        tasks: The tasks, one per row.
        observations: `(task, episode, time, obs_dim)` float32.
        actions: The expert's actions, `(task, episode, time, act_dim)`.
        rewards: `(task, episode, time)`.
        mask: 1.0 for real steps, 0.0 for padding after an episode ended, `(task, episode, time)`.
        expert: A description of the expert.
        env_steps: Environment steps it took to collect the demonstrations (the expert's own
            training cost is not included).
        seconds: Wall-clock seconds it took to collect them.

    Examples:
        >>> import torch
        >>> from metaops.envs import NavigationTask
        >>> demos = Demonstrations(env="Navigation2D", tasks=(NavigationTask(goal=(0.1, 0.0)),),
        ...     observations=torch.zeros(1, 2, 3, 2), actions=torch.zeros(1, 2, 3, 2),
        ...     rewards=-torch.ones(1, 2, 3), mask=torch.ones(1, 2, 3))
        >>> demos.returns.tolist()
        [[-3.0, -3.0]]
    """

    env: str
    tasks: tuple[Any, ...]
    observations: Tensor
    actions: Tensor
    rewards: Tensor
    mask: Tensor
    expert: str = ""
    env_steps: int = 0
    seconds: float = 0.0

    @property
    def returns(self) -> Tensor:
        """Undiscounted episode returns, `(task, episode)`."""
        return (self.rewards * self.mask).sum(-1)

    def __post_init__(self) -> None:
        n, e, t = self.mask.shape if self.mask.dim() == 3 else (None, None, None)
        if n is None:
            raise ValueError(f"mask must have shape (task, episode, time), got {tuple(self.mask.shape)}")
        shapes = {
            "observations": self.observations.shape[:3],
            "actions": self.actions.shape[:3],
            "rewards": self.rewards.shape,
        }
        for name, shape in shapes.items():
            if tuple(shape) != (n, e, t):
                raise ValueError(
                    f"{name} has leading shape {tuple(shape)}, expected (task, episode, time) = {(n, e, t)} as the mask"
                )
        if len(self.tasks) != n:
            raise ValueError(f"{len(self.tasks)} tasks for {n} rows of demonstrations")
        for name in _ARRAYS:
            if not bool(torch.isfinite(getattr(self, name)).all()):
                raise ValueError(f"demonstrations: {name} contain NaN or inf")


class _ExpertPolicy(nn.Module):
    """Makes ``expert(obs) -> actions`` look like a policy to the sampler: the expert's action plus optional noise."""

    def __init__(self, expert: Expert, noise_std: Tensor) -> None:
        super().__init__()
        self.expert = expert
        self.noise_std = noise_std  # (act_dim,), absolute units
        self.register_buffer("_unused", torch.zeros(()))  # the sampler passes params by name

    def forward(self, obs: Tensor) -> Tensor:
        return torch.as_tensor(self.expert(obs), dtype=torch.float32)

    def sample(self, dist: Tensor, *, generator: torch.Generator | None = None) -> Tensor:
        if not bool(self.noise_std.any()):
            return dist
        return dist + self.noise_std * torch.randn(dist.shape, generator=generator)

    def log_prob(self, dist: Tensor, actions: Tensor) -> Tensor:
        return torch.zeros(actions.shape[:-1])


def navigation_expert(tasks: Sequence[NavigationTask]) -> Expert:
    r"""A scripted expert for ``Navigation2D``: step straight towards the goal, at most 0.1 per axis.

    $a = \operatorname{clip}(g - s, -0.1, 0.1)$, the largest move the environment allows on each
    axis, so every goal of the default square is reached (return about -1 to -4, against about
    -40 for a random policy).

    Args:
        tasks: The navigation tasks, in the order of the rows the expert will see.

    Returns:
        ``expert(observations) -> actions`` for [metaops.envs.collect_demonstrations][].

    Examples:
        >>> import torch
        >>> expert = navigation_expert([NavigationTask(goal=(0.3, -0.05))])
        >>> expert(torch.zeros(1, 2, 2))
        tensor([[[ 0.1000, -0.0500],
                 [ 0.1000, -0.0500]]])
    """
    goals = torch.tensor([t.goal for t in tasks], dtype=torch.float32)  # (task, 2)

    def expert(observations: Tensor) -> Tensor:
        return (goals[:, None, :] - observations.float()).clamp(-0.1, 0.1)

    return expert


def collect_demonstrations(
    env_name: str,
    tasks: Sequence[Any],
    expert: Expert,
    *,
    episodes: int,
    generator: torch.Generator,
    horizon: int | None = None,
    description: str = "",
    action_noise: float = 0.0,
    physics_threads: int = 2,
) -> Demonstrations:
    """Runs an expert on every task and records its episodes.

    The expert may be anything that maps a batch of observations to actions: a scripted
    controller ([metaops.envs.navigation_expert][]), per-task SAC experts, or a
    stable-baselines3 model wrapped as ``lambda obs: torch.as_tensor(model.predict(obs)[0])``.
    Actions are clipped to the action bounds by the environment, as in the sampler.

    With ``action_noise`` $> 0$ the executed actions are the expert's plus Gaussian noise of
    that standard deviation (a fraction of the action half-range), while the stored actions
    are the expert's own, noise-free, at the states visited (noise injection as in DART,
    Laskey et al. 2017): the demonstrations then show how the expert recovers from the
    deviations an imitating policy makes, not only its own path.

    Args:
        env_name: A registered environment name.
        tasks: The tasks; row ``i`` of the expert's input belongs to ``tasks[i]``.
        expert: ``expert(observations (task, episode, obs_dim)) -> actions (task, episode, act_dim)``.
        episodes: Episodes per task.
        generator: Source of the reset seeds.
        horizon: Episode length; defaults to the environment's.
        description: Stored with the demonstrations (e.g. ``"scripted"`` or the expert's path).
        action_noise: Standard deviation of the exploration noise, as a fraction of the action
            half-range (0: the expert's actions are executed as they are).
        physics_threads: MuJoCo stepping threads.

    Returns:
        The [metaops.envs.Demonstrations][], with their collection cost.

    Raises:
        ValueError: If the expert returns actions of the wrong shape or non-finite values.

    Examples:
        >>> import torch
        >>> from metaops.envs import task_distribution
        >>> g = torch.Generator().manual_seed(0)
        >>> tasks = task_distribution("Navigation2D").sample_tasks(3, generator=g)
        >>> demos = collect_demonstrations("Navigation2D", tasks, navigation_expert(tasks), episodes=2,
        ...                                generator=g)
        >>> demos.actions.shape, bool(demos.returns.mean() > -5)
        (torch.Size([3, 2, 100, 2]), True)
    """
    if isinstance(episodes, bool) or not isinstance(episodes, int) or episodes < 1:
        raise ValueError(f"episodes must be a positive int, got {episodes!r}")
    if not 0 <= action_noise < float("inf"):
        raise ValueError(f"action_noise must be >= 0, got {action_noise!r}")
    tasks = tuple(tasks)
    env = make_batched(env_name, num_tasks=len(tasks), episodes_per_task=episodes, num_threads=physics_threads)
    half_range = torch.as_tensor((env.action_high - env.action_low) / 2, dtype=torch.float32)
    policy = _ExpertPolicy(expert, action_noise * half_range)
    start = time.perf_counter()
    try:
        batch: EpisodeBatch = sample_episodes(
            env, policy, dict(policy.named_buffers()), tasks, generator=generator, horizon=horizon
        )
    finally:
        env.close()
    seconds = time.perf_counter() - start
    actions = batch.actions
    if action_noise:  # the labels: the expert's own actions at the visited states
        n, e, t, _ = batch.observations.shape
        with torch.no_grad():
            actions = policy(batch.observations.reshape(n, e * t, -1)).reshape(n, e, t, -1)
        actions = actions * batch.mask[..., None]  # zero on padding, like every other field
    return Demonstrations(
        env=env_name,
        tasks=tasks,
        observations=batch.observations,
        actions=actions,
        rewards=batch.rewards,
        mask=batch.mask,
        expert=description,
        env_steps=int(batch.mask.sum()),
        seconds=seconds,
    )


def save_demonstrations(path: str | os.PathLike, demos: Demonstrations) -> Path:
    """Writes demonstrations in the directory format of this module (see the module docstring).

    The files are written under a temporary name and renamed, so an interrupted save never
    leaves a directory that looks complete.

    Args:
        path: Directory to create (it must not exist, or be empty).
        demos: The demonstrations.

    Returns:
        The directory.

    Raises:
        FileExistsError: If ``path`` exists and is not empty.

    Examples:
        >>> import tempfile, pathlib, torch
        >>> from metaops.envs import NavigationTask
        >>> demos = Demonstrations(env="Navigation2D", tasks=(NavigationTask(goal=(0.1, 0.0)),),
        ...     observations=torch.zeros(1, 1, 2, 2), actions=torch.zeros(1, 1, 2, 2),
        ...     rewards=torch.zeros(1, 1, 2), mask=torch.ones(1, 1, 2), expert="example")
        >>> out = save_demonstrations(pathlib.Path(tempfile.mkdtemp()) / "demos", demos)
        >>> sorted(p.name for p in out.iterdir())
        ['manifest.json', 'task_0000.npz']
    """
    path = Path(path)
    if path.exists() and any(path.iterdir()):
        raise FileExistsError(f"{path} exists and is not empty; choose a new directory for the demonstrations")
    path.mkdir(parents=True, exist_ok=True)
    for i in range(len(demos.tasks)):
        tmp = path / f"task_{i:04d}.tmp.npz"
        np.savez(tmp, **{name: getattr(demos, name)[i].to(torch.float32).numpy() for name in _ARRAYS})
        os.replace(tmp, path / f"task_{i:04d}.npz")
    manifest = {
        "format": FORMAT,
        "version": VERSION,
        "env": demos.env,
        "expert": demos.expert,
        "horizon": int(demos.mask.shape[2]),
        "episodes": int(demos.mask.shape[1]),
        "tasks": [{"type": type(t).__name__, "fields": dataclasses.asdict(t)} for t in demos.tasks],
        "returns": demos.returns.mean(-1).tolist(),
        "cost": {"env_steps": demos.env_steps, "seconds": demos.seconds},
    }
    tmp = path / "manifest.json.tmp"
    tmp.write_text(json.dumps(manifest, indent=1) + "\n")
    os.replace(tmp, path / "manifest.json")  # last: its presence means the directory is complete
    return path


def load_demonstrations(path: str | os.PathLike) -> Demonstrations:
    """Reads demonstrations written by [metaops.envs.save_demonstrations][] (or by hand in that format).

    Args:
        path: The directory.

    Returns:
        The [metaops.envs.Demonstrations][].

    Raises:
        FileNotFoundError: No ``manifest.json`` (not a demonstrations directory, or an
            interrupted save) or a missing task file.
        ValueError: A manifest of another format or version, an unknown task type, arrays of
            inconsistent shapes, or non-finite values; the message names the file.

    Examples:
        >>> import tempfile, pathlib, torch
        >>> from metaops.envs import NavigationTask
        >>> demos = Demonstrations(env="Navigation2D", tasks=(NavigationTask(goal=(0.1, 0.0)),),
        ...     observations=torch.zeros(1, 1, 2, 2), actions=torch.ones(1, 1, 2, 2),
        ...     rewards=torch.zeros(1, 1, 2), mask=torch.ones(1, 1, 2))
        >>> out = save_demonstrations(pathlib.Path(tempfile.mkdtemp()) / "demos", demos)
        >>> back = load_demonstrations(out)
        >>> back.tasks, torch.equal(back.actions, demos.actions)
        ((NavigationTask(goal=(0.1, 0.0)),), True)
    """
    from metaops import envs  # the task classes, by name

    path = Path(path)
    manifest_path = path / "manifest.json"
    if not manifest_path.is_file():
        raise FileNotFoundError(
            f"{manifest_path} not found: {path} is not a demonstrations directory "
            "(or its save was interrupted); write one with save_demonstrations"
        )
    try:
        manifest = json.loads(manifest_path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{manifest_path} is not valid JSON ({exc}); the file is corrupt") from exc
    if manifest.get("format") != FORMAT or manifest.get("version") != VERSION:
        raise ValueError(
            f"{manifest_path}: expected format {FORMAT!r} version {VERSION}, got "
            f"{manifest.get('format')!r} version {manifest.get('version')!r}"
        )
    tasks = []
    for i, entry in enumerate(manifest["tasks"]):
        cls = getattr(envs, str(entry.get("type")), None)
        if not isinstance(cls, type) or not hasattr(cls, "from_dict"):
            raise ValueError(f"{manifest_path}: task {i} has unknown type {entry.get('type')!r}")
        tasks.append(cls.from_dict(entry["fields"]))
    arrays: dict[str, list[Tensor]] = {name: [] for name in _ARRAYS}
    for i in range(len(tasks)):
        file = path / f"task_{i:04d}.npz"
        if not file.is_file():
            raise FileNotFoundError(f"{file} is missing ({len(tasks)} tasks in the manifest)")
        try:
            with np.load(file) as data:
                for name in _ARRAYS:
                    arrays[name].append(torch.from_numpy(np.asarray(data[name], dtype=np.float32)))
        except (KeyError, ValueError, OSError) as exc:
            raise ValueError(f"{file} is corrupt or lacks one of {_ARRAYS}: {exc}") from exc
        shapes = {name: tuple(arrays[name][-1].shape) for name in _ARRAYS}
        if shapes != {name: tuple(arrays[name][0].shape) for name in _ARRAYS}:
            raise ValueError(f"{file}: array shapes {shapes} differ from task_0000.npz's")
    try:
        return Demonstrations(
            env=manifest["env"],
            tasks=tuple(tasks),
            expert=manifest.get("expert", ""),
            env_steps=int(manifest.get("cost", {}).get("env_steps", 0)),
            seconds=float(manifest.get("cost", {}).get("seconds", 0.0)),
            **{name: torch.stack(v) for name, v in arrays.items()},
        )
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from exc
