"""Task-batched episode sampler: N episodes per task, one batched policy call per step."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from einops import rearrange
from torch import Tensor, nn
from torch.func import functional_call, vmap

from metaops.tree import tree_map

from ._batched import BatchedEnv

__all__ = ["EpisodeBatch", "sample_episodes"]


@dataclass(frozen=True)
class EpisodeBatch:
    r"""Episodes for a batch of tasks, shaped `(task, episode, time, ...)`.

    Time steps after an episode terminated are padding: `mask` is 0 there and every
    other field is 0 (`False`).

    Attributes:
        observations: $s_t$, `(task, episode, time, obs_dim)` float32.
        final_observations: The observation after each episode's last real step (terminal
            or cut by the horizon), `(task, episode, obs_dim)`, for bootstrapping a critic.
        actions: $a_t$ as sampled by the policy (before clipping to the action
            bounds for the environment), `(task, episode, time, action_dim)`.
        rewards: $r_t$, `(task, episode, time)`.
        log_probs: $\log\pi(a_t \mid s_t)$ at sampling time (no graph),
            `(task, episode, time)`.
        mask: 1.0 for real steps, 0.0 for padding, `(task, episode, time)`.
        terminated: `True` at the step where an episode reached a terminal state.
        truncated: `True` at the last step of an episode cut by the horizon.
        infos: Per-step diagnostics from the environment, each `(task, episode, time)`.
        tasks: The tasks, in order.

    Examples:
        >>> import torch
        >>> batch = EpisodeBatch(
        ...     observations=torch.zeros(2, 3, 4, 1), final_observations=torch.zeros(2, 3, 1),
        ...     actions=torch.zeros(2, 3, 4, 1),
        ...     rewards=torch.ones(2, 3, 4), log_probs=torch.zeros(2, 3, 4),
        ...     mask=torch.ones(2, 3, 4), terminated=torch.zeros(2, 3, 4, dtype=torch.bool),
        ...     truncated=torch.zeros(2, 3, 4, dtype=torch.bool), infos={}, tasks=(None, None))
        >>> batch.returns.shape, batch.returns[0, 0].item()
        (torch.Size([2, 3]), 4.0)
    """

    observations: Tensor
    final_observations: Tensor
    actions: Tensor
    rewards: Tensor
    log_probs: Tensor
    mask: Tensor
    terminated: Tensor
    truncated: Tensor
    infos: dict[str, Tensor]
    tasks: tuple[Any, ...]

    @property
    def dones(self) -> Tensor:
        """`terminated | truncated`, `(task, episode, time)` bool."""
        return self.terminated | self.truncated

    @property
    def returns(self) -> Tensor:
        r"""Undiscounted episode returns $\sum_t r_t$, `(task, episode)`."""
        return (self.rewards * self.mask).sum(-1)

    @property
    def lengths(self) -> Tensor:
        """Number of real steps per episode, `(task, episode)` int64."""
        return self.mask.sum(-1).to(torch.int64)

    @property
    def next_observations(self) -> Tensor:
        r"""$s_{t+1}$ for every real step, `(task, episode, time, obs_dim)`, zero on padding.

        The next step's observation inside an episode, and `final_observations` at each
        episode's last real step (terminal or cut by the horizon), never the first observation
        of another episode: what an off-policy critic bootstraps from.

        Examples:
            >>> import torch
            >>> obs = torch.arange(4.0).reshape(1, 1, 4, 1)  # one episode, 3 real steps
            >>> batch = EpisodeBatch(
            ...     observations=obs * torch.tensor([1.0, 1, 1, 0]).reshape(1, 1, 4, 1),
            ...     final_observations=torch.full((1, 1, 1), 9.0), actions=torch.zeros(1, 1, 4, 1),
            ...     rewards=torch.zeros(1, 1, 4), log_probs=torch.zeros(1, 1, 4),
            ...     mask=torch.tensor([[[1.0, 1, 1, 0]]]), terminated=torch.zeros(1, 1, 4, dtype=torch.bool),
            ...     truncated=torch.zeros(1, 1, 4, dtype=torch.bool), infos={}, tasks=(None,))
            >>> batch.next_observations[0, 0, :, 0]
            tensor([1., 2., 9., 0.])
        """
        mask = self.mask.unsqueeze(-1)
        shifted = torch.cat([self.observations[..., 1:, :], torch.zeros_like(self.observations[..., :1, :])], dim=-2)
        continues = torch.cat([self.mask[..., 1:], torch.zeros_like(self.mask[..., :1])], dim=-1).unsqueeze(-1)
        final = self.final_observations.unsqueeze(-2).to(shifted.dtype)
        return (continues * shifted + (1 - continues) * final) * mask

    def transitions(self) -> tuple[dict[str, Tensor], ...]:
        r"""The real steps of each task as flat transitions $(s, a, r, s', d, \text{trunc})$.

        One dict per task (tasks may have different numbers of real steps when episodes
        terminate early), with keys ``obs`` `(n, obs_dim)`, ``actions`` `(n, act_dim)`,
        ``rewards`` `(n,)`, ``next_obs`` `(n, obs_dim)` (see `next_observations`),
        ``terminated`` and ``truncated`` `(n,)` bool, in episode then time order. The first five
        are the arguments of [metaops.rl.ReplayBuffer][]'s ``add`` (add a leading task
        dimension of 1 for a one-task buffer); ``truncated`` is there for learners that need it.

        Examples:
            >>> import torch
            >>> batch = EpisodeBatch(
            ...     observations=torch.zeros(2, 1, 3, 4), final_observations=torch.zeros(2, 1, 4),
            ...     actions=torch.zeros(2, 1, 3, 1), rewards=torch.ones(2, 1, 3), log_probs=torch.zeros(2, 1, 3),
            ...     mask=torch.tensor([[[1.0, 1, 1]], [[1.0, 0, 0]]]),
            ...     terminated=torch.tensor([[[False, False, False]], [[True, False, False]]]),
            ...     truncated=torch.tensor([[[False, False, True]], [[False, False, False]]]),
            ...     infos={}, tasks=(None, None))
            >>> [(t["obs"].shape, t["terminated"].tolist()) for t in batch.transitions()]
            [(torch.Size([3, 4]), [False, False, False]), (torch.Size([1, 4]), [True])]
        """
        fields = {"obs": self.observations, "actions": self.actions, "rewards": self.rewards,
                  "next_obs": self.next_observations, "terminated": self.terminated, "truncated": self.truncated}
        out = []
        for task in range(self.mask.shape[0]):
            real = self.mask[task] > 0  # (episode, time)
            out.append({name: value[task][real] for name, value in fields.items()})
        return tuple(out)


def _per_task(policy: nn.Module, params: Mapping[str, Tensor], num_tasks: int) -> bool:
    """Whether `params` carry a leading task dimension (and are consistent)."""
    reference = dict(policy.named_parameters())
    reference.update(dict(policy.named_buffers()))
    if not params:
        raise ValueError("params is empty; pass dict(policy.named_parameters()) or adapted params")
    kinds = {}
    for name, value in params.items():
        if name not in reference:
            raise ValueError(f"params has key {name!r}, which the policy does not have")
        shape = tuple(reference[name].shape)
        if tuple(value.shape) == shape:
            kinds[name] = "shared"
        elif tuple(value.shape) == (num_tasks, *shape):
            kinds[name] = "per-task"
        else:
            raise ValueError(
                f"params[{name!r}] has shape {tuple(value.shape)}; expected {shape} (shared) "
                f"or {(num_tasks, *shape)} (one per task, {num_tasks} tasks)"
            )
    if len(set(kinds.values())) > 1:
        raise ValueError(f"params mix shared and per-task leaves: {kinds}")
    return next(iter(kinds.values())) == "per-task"


def sample_episodes(
    env: BatchedEnv,
    policy: nn.Module,
    params: Mapping[str, Tensor],
    tasks: Sequence[Any],
    *,
    generator: torch.Generator,
    horizon: int | None = None,
    policy_threads: int | None = 1,
    latent: Tensor | None = None,
    task_rows: slice | None = None,
    batch_tasks: int | None = None,
) -> EpisodeBatch:
    r"""Samples `env.episodes_per_task` episodes for each task with a (per-task) policy.

    At every step the policy is evaluated once for all tasks and episodes: with shared
    `params` as `functional_call(policy, params, (obs,))` on `(task, episode, obs_dim)`
    observations, with per-task `params` (leaves with a leading task dimension, e.g.
    adapted parameters) as `vmap(lambda p, o: functional_call(policy, p, (o,)))`.
    Actions come from `policy.sample(dist, generator=generator)` and are clipped to the
    action bounds only when passed to the environment; log-probabilities
    `policy.log_prob(dist, actions)` are recorded under `torch.no_grad()`.

    **A per-task latent or context** (PEARL's $z$): with `latent` the policy sees
    $[s_t, z]$, the observation concatenated with the latent of its task (`(task, dim)`) or
    of its episode (`(task, episode, dim)`), so its input size is `obs_dim + dim`; the
    recorded `observations` stay the environment's. `latent` is a constant of the rollout
    (drawn by the caller, e.g. from a posterior); it works with shared and per-task `params`.

    The batch is a deterministic function of the generator's state: reset seeds and
    action noise are both drawn from it, and the physics is bit-reproducible.

    **One share of a larger batch** (a process of a distributed run): with ``task_rows`` and
    ``batch_tasks`` the call samples rows ``task_rows`` of a batch of ``batch_tasks`` tasks
    (``tasks`` and ``env`` hold only those rows). The generator then draws the reset seeds and
    the action noise of the whole batch, as a call holding every task would, and each share uses
    its rows: sampling tasks ``0..3`` in one call, or ``0..1`` and ``2..3`` in two calls from
    generators in the same state, gives the same episodes (the actions up to the float rounding
    of the batched policy call) and leaves the generators in the same state. For that, a sharded
    call runs to the horizon even when all its episodes ended early (another share's may not
    have), and the policy's distribution must have the task dimension first.

    Args:
        env: A batched environment from [metaops.envs.make_batched][], with
            `env.num_tasks == len(tasks)`.
        policy: Module whose forward maps observations to distribution parameters and
            that has `sample(dist, *, generator)` and `log_prob(dist, actions)`.
        params: Shared parameters (`dict(policy.named_parameters())`) or per-task ones.
        tasks: The tasks, one per row of the batch.
        generator: Source of all randomness.
        horizon: Episode length; defaults to `env.horizon`.
        policy_threads: torch intra-op threads for the policy calls, restored afterwards
            (`None` leaves torch's setting). One thread is the fast choice for per-step
            policy calls on a few cores: with more, torch's worker threads wait on cores
            that are busy with physics or other processes.
        latent: Optional floating tensor `(task, dim)` or `(task, episode, dim)`, appended to
            every observation the policy sees (converted to the parameters' dtype).
        task_rows: The rows of the whole batch that ``tasks`` are (with ``batch_tasks``), e.g.
            [metaops.distributed.task_slice][]; ``None``: ``tasks`` is the whole batch.
        batch_tasks: The number of tasks of the whole batch (with ``task_rows``).

    Returns:
        An [metaops.envs.EpisodeBatch][] shaped `(task, episode, time, ...)`.

    Raises:
        ValueError: Inconsistent params, tasks or shapes.
        EnvError: An environment failed or the policy produced non-finite actions; the
            message names the task and episode.

    Examples:
        >>> import torch
        >>> from metaops.envs import make_batched, task_distribution
        >>> class Policy(torch.nn.Module):  # stand-in for a Gaussian MLP policy
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.mean = torch.nn.Linear(2, 2)
        ...         self.log_std = torch.nn.Parameter(torch.zeros(2))
        ...     def forward(self, obs):
        ...         return self.mean(obs), self.log_std.expand(obs.shape[:-1] + (2,))
        ...     def sample(self, dist, *, generator=None):
        ...         mean, log_std = dist
        ...         noise = torch.randn(mean.shape, generator=generator)
        ...         return mean + log_std.exp() * noise
        ...     def log_prob(self, dist, actions):
        ...         mean, log_std = dist
        ...         normal = torch.distributions.Normal(mean, log_std.exp())
        ...         return normal.log_prob(actions).sum(-1)
        >>> g = torch.Generator().manual_seed(0)
        >>> policy = Policy()
        >>> tasks = task_distribution("Navigation2D").sample_tasks(4, generator=g)
        >>> env = make_batched("Navigation2D", num_tasks=4, episodes_per_task=5)
        >>> batch = sample_episodes(env, policy, dict(policy.named_parameters()), tasks,
        ...                         generator=g)
        >>> batch.observations.shape, batch.rewards.shape
        (torch.Size([4, 5, 100, 2]), torch.Size([4, 5, 100]))

        A policy on `[obs, z]` with one latent per task (here `z` has one entry):

        >>> class LatentPolicy(Policy):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.mean = torch.nn.Linear(3, 2)
        >>> latent_policy = LatentPolicy()
        >>> batch = sample_episodes(env, latent_policy, dict(latent_policy.named_parameters()), tasks,
        ...                         generator=g, latent=torch.zeros(4, 1))
        >>> batch.observations.shape
        torch.Size([4, 5, 100, 2])
    """
    tasks = tuple(tasks)
    if len(tasks) != env.num_tasks:
        raise ValueError(f"env was built for {env.num_tasks} tasks, got {len(tasks)} tasks")
    shard = _check_randomness(generator, task_rows, batch_tasks, len(tasks))
    horizon = env.horizon if horizon is None else horizon
    if isinstance(horizon, bool) or not isinstance(horizon, int) or horizon < 1:
        raise ValueError(f"horizon must be a positive int, got {horizon!r}")
    latent = _check_latent(latent, env.num_tasks, env.episodes_per_task)
    with _policy_threads(policy_threads):
        return _sample(env, policy, dict(params), tasks, generator, horizon, latent, shard)


_Shard = tuple[slice, int]  # (rows of the whole batch, tasks in the whole batch)


@contextmanager
def _policy_threads(policy_threads: int | None) -> Iterator[None]:
    """torch's intra-op threads set to ``policy_threads`` (checked) inside, restored after; None: untouched."""
    if policy_threads is not None and (
        isinstance(policy_threads, bool) or not isinstance(policy_threads, int) or policy_threads < 1
    ):
        raise ValueError(f"policy_threads must be a positive int or None, got {policy_threads!r}")
    previous_threads = torch.get_num_threads()
    if policy_threads is not None:
        torch.set_num_threads(policy_threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous_threads)


def _check_randomness(generator: Any, task_rows: slice | None, batch_tasks: int | None,
                      num_tasks: int) -> _Shard | None:
    """The generator checked, and ``(task_rows, batch_tasks)`` against the call's ``num_tasks`` (None: whole batch)."""
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
    if task_rows is None and batch_tasks is None:
        return None
    if task_rows is None or batch_tasks is None:
        raise ValueError("task_rows and batch_tasks go together: pass both (one share of a batch) or neither")
    if isinstance(batch_tasks, bool) or not isinstance(batch_tasks, int) or batch_tasks < 1:
        raise ValueError(f"batch_tasks must be a positive int, got {batch_tasks!r}")
    if not isinstance(task_rows, slice) or task_rows.step not in (None, 1):
        raise ValueError(f"task_rows must be a contiguous slice, got {task_rows!r}")
    start, stop, _ = task_rows.indices(batch_tasks)
    if (task_rows.start or 0) != start or stop - start != num_tasks or (task_rows.stop is not None
                                                                        and task_rows.stop != stop):
        raise ValueError(f"task_rows {task_rows} of a batch of {batch_tasks} tasks does not hold the call's "
                         f"{num_tasks} tasks")
    return slice(start, stop), batch_tasks


def _reset_seeds(generator: torch.Generator, num_envs: int, num_episodes: int, shard: _Shard | None) -> Tensor:
    """One reset seed per environment, task-major; for a share, the whole batch's are drawn."""
    if shard is None:
        return torch.randint(0, 2**31 - 1, (num_envs,), generator=generator)
    rows, batch_tasks = shard
    seeds = torch.randint(0, 2**31 - 1, (batch_tasks, num_episodes), generator=generator)
    return seeds[rows].reshape(-1)


def _sample_actions(policy: nn.Module, dist: Any, generator: torch.Generator, shard: _Shard | None) -> Tensor:
    """``policy.sample`` on `(task, episode, ...)` distributions; for a share, as rows of the whole batch's draw."""
    if shard is None:
        return policy.sample(dist, generator=generator)
    rows, batch_tasks = shard

    def pad(x: Tensor) -> Tensor:  # the other shares' rows: zeros, sampled and thrown away
        if x.dim() == 0 or x.shape[0] != rows.stop - rows.start:
            raise ValueError(f"with task_rows, the policy's distribution must have the task dimension first; got "
                             f"a leaf of shape {tuple(x.shape)} for {rows.stop - rows.start} tasks")
        full = x.new_zeros((batch_tasks, *x.shape[1:]))
        full[rows] = x
        return full

    return policy.sample(tree_map(pad, dist), generator=generator)[rows]


def _check_latent(latent: Tensor | None, num_tasks: int, num_episodes: int) -> Tensor | None:
    """`latent` as `(task, episode, dim)`, detached, or None; clear errors for anything else."""
    if latent is None:
        return None
    if not isinstance(latent, Tensor) or not latent.is_floating_point():
        kind = latent.dtype if isinstance(latent, Tensor) else type(latent).__name__
        raise TypeError(f"latent must be a floating point tensor, got {kind}")
    if latent.dim() == 2 and latent.shape[0] == num_tasks:
        latent = latent.unsqueeze(1).expand(num_tasks, num_episodes, latent.shape[1])
    if latent.dim() != 3 or tuple(latent.shape[:2]) != (num_tasks, num_episodes) or latent.shape[2] == 0:
        raise ValueError(
            f"latent has shape {tuple(latent.shape)}; expected (task, dim) = ({num_tasks}, dim) or "
            f"(task, episode, dim) = ({num_tasks}, {num_episodes}, dim) for an env of {num_tasks} tasks x "
            f"{num_episodes} episodes"
        )
    if not bool(torch.isfinite(latent).all()):
        raise ValueError("latent has non-finite entries")
    return latent.detach()


def _sample(
    env: BatchedEnv,
    policy: nn.Module,
    params: dict[str, Tensor],
    tasks: tuple[Any, ...],
    generator: torch.Generator,
    horizon: int,
    latent: Tensor | None = None,
    shard: _Shard | None = None,
) -> EpisodeBatch:
    num_tasks, num_episodes = env.num_tasks, env.episodes_per_task
    num_envs, obs_dim, act_dim = env.num_envs, env.observation_dim, env.action_dim
    if _per_task(policy, params, num_tasks):

        def distribution(obs: Tensor) -> Any:
            return vmap(lambda p, o: functional_call(policy, p, (o,)))(params, obs)

    else:

        def distribution(obs: Tensor) -> Any:
            return functional_call(policy, params, (obs,))

    param_dtype = next(iter(params.values())).dtype  # observations are fed in this dtype
    if latent is not None:
        latent = latent.to(param_dtype)
    seeds = _reset_seeds(generator, num_envs, num_episodes, shard).numpy()
    observations = np.zeros((num_envs, horizon, obs_dim), dtype=np.float32)
    final_observations = np.zeros((num_envs, obs_dim), dtype=np.float32)
    actions = np.zeros((num_envs, horizon, act_dim), dtype=np.float32)
    rewards = np.zeros((num_envs, horizon), dtype=np.float32)
    log_probs = np.zeros((num_envs, horizon), dtype=np.float32)
    mask = np.zeros((num_envs, horizon), dtype=np.float32)
    terminated = np.zeros((num_envs, horizon), dtype=bool)
    truncated = np.zeros((num_envs, horizon), dtype=bool)
    infos = {k: np.zeros((num_envs, horizon), dtype=np.float32) for k in env.info_keys}
    active = np.ones(num_envs, dtype=bool)
    low, high = env.action_low.astype(np.float64), env.action_high.astype(np.float64)

    obs = env.reset(tasks, seeds=seeds)
    for t in range(horizon):
        obs32 = obs.astype(np.float32)
        with torch.no_grad():
            policy_obs = torch.from_numpy(obs32).to(param_dtype)
            policy_obs = rearrange(policy_obs, "(task episode) obs -> task episode obs", task=num_tasks)
            if latent is not None:
                policy_obs = torch.cat([policy_obs, latent], dim=-1)
            dist = distribution(policy_obs)
            action = _sample_actions(policy, dist, generator, shard)
            log_prob = policy.log_prob(dist, action)
        if tuple(action.shape) != (num_tasks, num_episodes, act_dim):
            raise ValueError(
                f"policy.sample returned actions of shape {tuple(action.shape)}, expected "
                f"{(num_tasks, num_episodes, act_dim)}"
            )
        if tuple(log_prob.shape) != (num_tasks, num_episodes):
            raise ValueError(
                f"policy.log_prob returned shape {tuple(log_prob.shape)}, expected "
                f"{(num_tasks, num_episodes)} (summed over action dimensions)"
            )
        action_np = rearrange(action, "task episode act -> (task episode) act").to(torch.float64).numpy()
        bad = active & ~np.isfinite(action_np).all(axis=1)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise env.error(i, f"the policy produced non-finite actions at step {t}")
        result = env.step(np.clip(action_np, low, high), active)
        observations[active, t] = obs32[active]
        actions[active, t] = action_np[active]
        log_probs[active, t] = rearrange(log_prob, "task episode -> (task episode)").numpy()[active]
        rewards[:, t] = result.rewards
        mask[:, t] = active
        terminated[:, t] = result.terminated & active
        for key in env.info_keys:
            infos[key][active, t] = result.infos[key][active]
        final_observations[active] = result.observations[active]
        active = active & ~result.terminated
        obs = result.observations
        if not active.any() and shard is None:  # (a share runs on: another share's episodes may not have ended)
            break
    truncated[:, horizon - 1] = active

    def out(x: np.ndarray) -> Tensor:
        # env i runs episode i % num_episodes of task i // num_episodes
        return rearrange(torch.from_numpy(x), "(task episode) ... -> task episode ...", task=num_tasks)

    return EpisodeBatch(
        observations=out(observations),
        final_observations=out(final_observations),
        actions=out(actions),
        rewards=out(rewards),
        log_probs=out(log_probs),
        mask=out(mask),
        terminated=out(terminated),
        truncated=out(truncated),
        infos={k: out(v) for k, v in infos.items()},
        tasks=tasks,
    )
