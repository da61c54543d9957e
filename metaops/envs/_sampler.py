"""Task-batched episode sampler: N episodes per task, one batched policy call per step."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from einops import rearrange
from torch import Tensor, nn
from torch.func import functional_call, vmap

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
) -> EpisodeBatch:
    r"""Samples `env.episodes_per_task` episodes for each task with a (per-task) policy.

    At every step the policy is evaluated once for all tasks and episodes: with shared
    `params` as `functional_call(policy, params, (obs,))` on `(task, episode, obs_dim)`
    observations, with per-task `params` (leaves with a leading task dimension, e.g.
    adapted parameters) as `vmap(lambda p, o: functional_call(policy, p, (o,)))`.
    Actions come from `policy.sample(dist, generator=generator)` and are clipped to the
    action bounds only when passed to the environment; log-probabilities
    `policy.log_prob(dist, actions)` are recorded under `torch.no_grad()`.

    The batch is a deterministic function of the generator's state: reset seeds and
    action noise are both drawn from it, and the physics is bit-reproducible.

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
    """
    tasks = tuple(tasks)
    if len(tasks) != env.num_tasks:
        raise ValueError(f"env was built for {env.num_tasks} tasks, got {len(tasks)} tasks")
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
    horizon = env.horizon if horizon is None else horizon
    if isinstance(horizon, bool) or not isinstance(horizon, int) or horizon < 1:
        raise ValueError(f"horizon must be a positive int, got {horizon!r}")
    if policy_threads is not None and (
        isinstance(policy_threads, bool) or not isinstance(policy_threads, int) or policy_threads < 1
    ):
        raise ValueError(f"policy_threads must be a positive int or None, got {policy_threads!r}")
    previous_threads = torch.get_num_threads()
    if policy_threads is not None:
        torch.set_num_threads(policy_threads)
    try:
        return _sample(env, policy, dict(params), tasks, generator, horizon)
    finally:
        torch.set_num_threads(previous_threads)


def _sample(
    env: BatchedEnv,
    policy: nn.Module,
    params: dict[str, Tensor],
    tasks: tuple[Any, ...],
    generator: torch.Generator,
    horizon: int,
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
    seeds = torch.randint(0, 2**31 - 1, (num_envs,), generator=generator).numpy()
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
            dist = distribution(rearrange(policy_obs, "(task episode) obs -> task episode obs", task=num_tasks))
            action = policy.sample(dist, generator=generator)
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
        if not active.any():
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
