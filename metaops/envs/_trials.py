"""Trials for recurrent meta-learners (RL²): several consecutive episodes per trial, one carry."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from einops import rearrange
from torch import Tensor
from torch.func import functional_call, vmap

from metaops.tree import tree_map

from ._batched import BatchedEnv, EnvError
from ._policy import RecurrentPolicy
from ._sampler import _check_randomness, _per_task, _policy_threads, _reset_seeds, _sample_actions

__all__ = ["TrialBatch", "sample_trials"]


@dataclass(frozen=True)
class TrialBatch:
    r"""Trials for a batch of tasks, shaped `(task, trial, time, ...)`.

    A trial is ``episodes_per_trial`` consecutive episodes of one task, run with one carry
    (the recurrent policy's memory is kept across the episodes of a trial and reset between
    trials). The time axis holds the real steps of the trial one after the other, episode after
    episode, then right padding up to ``episodes_per_trial * horizon`` steps: ``mask`` is 1 on
    the real steps and 0 on the padding (`1...1 0...0`, the rule of [metaops.rl.gae][]), every
    other field is 0 (`False`) there, except ``episode_index``, which is -1.

    Attributes:
        inputs: The policy inputs $x_t = [s_t,\ \tilde a_{t-1},\ r_{t-1},\ d_{t-1}]$ of every
            step (observation, previous action rescaled to $[-1, 1]$ by the bounds, previous
            reward, done flag), `(task, trial, time, obs_dim + act_dim + 2)` float32; see
            [metaops.envs.sample_trials][] for the layout.
        observations: $s_t$, `(task, trial, time, obs_dim)` float32.
        final_observations: The observation after the last real step of each episode,
            `(task, trial, episode, obs_dim)`.
        actions: $a_t$ as sampled (before clipping to the bounds), `(task, trial, time, act_dim)`.
        rewards: $r_t$, `(task, trial, time)`.
        log_probs: $\log\pi(a_t \mid x_{\le t})$ at sampling time (no graph), `(task, trial, time)`.
        mask: 1.0 for real steps, 0.0 for padding, `(task, trial, time)`.
        terminated: `True` at the step where an episode reached a terminal state.
        truncated: `True` at the last step of an episode cut by the horizon.
        episode_index: Index of the episode within its trial at each step, `(task, trial, time)`
            int64, -1 on padding.
        infos: Per-step diagnostics from the environment, each `(task, trial, time)`.
        tasks: The tasks, in order.

    Examples:
        >>> import torch
        >>> ep = torch.tensor([[[0, 0, 1, 1, 1, -1]]])  # 1 task, 1 trial: 2 episodes then padding
        >>> batch = TrialBatch(
        ...     inputs=torch.zeros(1, 1, 6, 5), observations=torch.zeros(1, 1, 6, 2),
        ...     final_observations=torch.zeros(1, 1, 2, 2), actions=torch.zeros(1, 1, 6, 1),
        ...     rewards=torch.tensor([[[1.0, 1.0, 2.0, 2.0, 2.0, 0.0]]]), log_probs=torch.zeros(1, 1, 6),
        ...     mask=(ep >= 0).float(), terminated=torch.zeros(1, 1, 6, dtype=torch.bool),
        ...     truncated=torch.tensor([[[False, True, False, False, True, False]]]),
        ...     episode_index=ep, infos={}, tasks=(None,))
        >>> batch.returns, batch.lengths  # per episode of the trial
        (tensor([[[2., 6.]]]), tensor([[[2, 3]]]))
    """

    inputs: Tensor
    observations: Tensor
    final_observations: Tensor
    actions: Tensor
    rewards: Tensor
    log_probs: Tensor
    mask: Tensor
    terminated: Tensor
    truncated: Tensor
    episode_index: Tensor
    infos: dict[str, Tensor]
    tasks: tuple[Any, ...]

    @property
    def episodes_per_trial(self) -> int:
        """Number of episodes in each trial."""
        return int(self.final_observations.shape[-2])

    @property
    def dones(self) -> Tensor:
        """`terminated | truncated`: the last step of each episode, `(task, trial, time)` bool."""
        return self.terminated | self.truncated

    def _per_episode(self, values: Tensor) -> Tensor:
        episodes = torch.arange(self.episodes_per_trial, device=values.device)
        one_hot = (self.episode_index.unsqueeze(-1) == episodes).to(values.dtype)  # (task, trial, time, episode)
        return (values.unsqueeze(-1) * one_hot).sum(-2)

    @property
    def returns(self) -> Tensor:
        r"""Undiscounted return of each episode of each trial, $\sum_{t \in \text{episode}} r_t$.

        Shape `(task, trial, episode)`.
        """
        return self._per_episode(self.rewards * self.mask)

    @property
    def lengths(self) -> Tensor:
        """Number of real steps of each episode, `(task, trial, episode)` int64."""
        return self._per_episode(self.mask).to(torch.int64)


def sample_trials(
    env: BatchedEnv,
    policy: RecurrentPolicy,
    params: Mapping[str, Tensor],
    tasks: Sequence[Any],
    *,
    episodes_per_trial: int,
    generator: torch.Generator,
    horizon: int | None = None,
    policy_threads: int | None = 1,
    task_rows: slice | None = None,
    batch_tasks: int | None = None,
) -> TrialBatch:
    r"""Samples one trial of ``episodes_per_trial`` consecutive episodes per environment copy.

    The batched environment's `episodes_per_task` copies of each task run one trial each
    (`trials = env.episodes_per_task` parallel trials per task). A trial starts from
    ``policy.initial_carry``; when one of its episodes ends (terminal state or ``horizon``
    steps) the environment is reset, from a seed drawn from ``generator``, and the next episode
    continues with the **same** carry, so the policy can use what it learnt about the task in
    the earlier episodes. Episodes run in lock-step: episode $k+1$ of every trial starts once
    episode $k$ has ended in all of them; a copy whose episode terminated early waits, without
    stepping the policy's carry, and its steps are packed without gaps on the time axis.

    **Inputs** (Duan et al., 2016). At every step the policy sees

    $$x_t = \big[\, s_t,\ \ a_{t-1},\ \ r_{t-1},\ \ d_{t-1} \,\big] \in
      \mathbb{R}^{\text{obs\_dim} + \text{act\_dim} + 2},$$

    in this order: the observation; the previous action *as executed* (clipped to the action
    bounds) and rescaled to $[-1, 1]$ by them, $(\operatorname{clip}(a) - c) / h$ with centre $c$ and
    half-range $h$ of the bounds (so that it is on the scale of the other inputs whatever the
    units of the actions); the previous reward; and the done flag $d_{t-1}$, 1.0 exactly at the first step of
    episodes $2, \dots, E$ of the trial (the previous step ended an episode, by termination or
    the horizon) and 0.0 otherwise. At the first step of a trial $a_{-1} = 0$, $r_{-1} = 0$,
    $d_{-1} = 0$; at the first step of a later episode, $a_{t-1}$ and $r_{t-1}$ are the last
    action and reward of the episode before. ``batch.inputs`` holds them all, to recompute the
    log-probabilities under new parameters with [metaops.rl.unroll][].

    Policy calls: with shared ``params``, ``functional_call(policy, params, (x, carry))`` on
    `(task, trial, ...)` inputs; with per-task ``params`` (a leading task dimension) the same
    under ``vmap`` over tasks. The batch is a deterministic function of the generator's state:
    the reset seeds of episode $k$ (one draw of `(num_envs,)` seeds per episode, before it
    starts) and the action noise come from it.

    Args:
        env: A batched environment ([metaops.envs.make_batched][]) with
            `env.num_tasks == len(tasks)`; each of its `episodes_per_task` copies runs one trial.
        policy: A [metaops.envs.RecurrentPolicy][], e.g. [metaops.rl.GaussianGRUPolicy][] with
            ``input_dim = env.observation_dim + env.action_dim + 2``.
        params: Shared parameters (`dict(policy.named_parameters())`) or per-task ones.
        tasks: The tasks, one per row of the batch.
        episodes_per_trial: Consecutive episodes $E$ per trial.
        generator: Source of all randomness.
        horizon: Episode length $H$; defaults to `env.horizon`. Trials have at most $E H$ steps.
        policy_threads: torch intra-op threads for the policy calls (as in
            [metaops.envs.sample_episodes][]), restored afterwards.
        task_rows: The rows of the whole batch that ``tasks`` are, with ``batch_tasks`` (one
            process's share): the generator draws for the whole batch and this call uses its
            rows, exactly as in [metaops.envs.sample_episodes][]; ``None``: the whole batch.
        batch_tasks: The number of tasks of the whole batch (with ``task_rows``).

    Returns:
        A [metaops.envs.TrialBatch][] shaped `(task, trial, time, ...)` with time $E H$.

    Raises:
        TypeError: If ``policy`` is not a [metaops.envs.RecurrentPolicy][] or ``generator`` is
            not a ``torch.Generator``.
        ValueError: Inconsistent params, tasks, shapes or sizes.
        EnvError: An environment failed or the policy produced non-finite actions; the message
            names the task, the trial, the episode within the trial and the step.

    Examples:
        >>> import torch
        >>> from metaops.envs import make_batched, task_distribution
        >>> from metaops.rl import GaussianGRUPolicy
        >>> g = torch.Generator().manual_seed(0)
        >>> tasks = task_distribution("Navigation2D").sample_tasks(3, generator=g)
        >>> env = make_batched("Navigation2D", num_tasks=3, episodes_per_task=2)  # 2 trials per task
        >>> policy = GaussianGRUPolicy(2 + 2 + 2, 2, hidden_size=16, action_bounds=(-0.1, 0.1))
        >>> batch = sample_trials(env, policy, dict(policy.named_parameters()), tasks,
        ...                       episodes_per_trial=2, generator=g, horizon=10)
        >>> batch.inputs.shape, batch.returns.shape  # (task, trial, E*H, 6), (task, trial, E)
        (torch.Size([3, 2, 20, 6]), torch.Size([3, 2, 2]))
        >>> batch.inputs[0, 0, 10, -1].item()  # the done flag at the first step of episode 2
        1.0
    """
    tasks = tuple(tasks)
    if not isinstance(policy, RecurrentPolicy):
        raise TypeError(
            f"sample_trials needs a recurrent policy (initial_carry, forward(inputs, carry), sample, log_prob, kl, "
            f"entropy: metaops.envs.RecurrentPolicy), got {type(policy).__name__}; use sample_episodes for "
            "stateless policies"
        )
    if len(tasks) != env.num_tasks:
        raise ValueError(f"env was built for {env.num_tasks} tasks, got {len(tasks)} tasks")
    shard = _check_randomness(generator, task_rows, batch_tasks, len(tasks))
    horizon = env.horizon if horizon is None else horizon
    for name, value in (("horizon", horizon), ("episodes_per_trial", episodes_per_trial)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    with _policy_threads(policy_threads):
        return _sample_trials(env, policy, dict(params), tasks, generator, horizon, episodes_per_trial, shard)


def _trial_error(env: BatchedEnv, tasks: tuple[Any, ...], env_index: int, message: str, *, episode: int,
                 step: int) -> EnvError:
    """An EnvError naming the task, the trial (= the env copy), the episode within the trial and the step."""
    task_index, trial = divmod(int(env_index), env.episodes_per_task)
    return EnvError(f"{message} (trial {trial}, step {step} of episode {episode} of the trial)",
                    task_index=task_index, episode=episode, task=tasks[task_index])


def _relabel(env: BatchedEnv, tasks: tuple[Any, ...], exc: EnvError, *, episode: int, step: int) -> EnvError:
    """The environment's own error (its "episode" is the env copy, i.e. the trial), relabelled for a trial."""
    if exc.task_index is None or exc.episode is None:
        return exc
    prefix = str(EnvError("", task_index=exc.task_index, episode=exc.episode, task=exc.task))
    message = str(exc)[len(prefix):] if str(exc).startswith(prefix) else str(exc)
    return _trial_error(env, tasks, exc.task_index * env.episodes_per_task + exc.episode, message,
                        episode=episode, step=step)


def _sample_trials(
    env: BatchedEnv,
    policy: RecurrentPolicy,
    params: dict[str, Tensor],
    tasks: tuple[Any, ...],
    generator: torch.Generator,
    horizon: int,
    episodes: int,
    shard: tuple[slice, int] | None = None,
) -> TrialBatch:
    num_tasks, trials = env.num_tasks, env.episodes_per_task
    num_envs, obs_dim, act_dim = env.num_envs, env.observation_dim, env.action_dim
    in_dim, length = obs_dim + act_dim + 2, episodes * horizon
    if _per_task(policy, params, num_tasks):  # type: ignore[arg-type]

        def step(x: Tensor, carry: Any) -> tuple[Any, Any]:
            return vmap(lambda p, x, h: functional_call(policy, p, (x, h)))(params, x, carry)

    else:

        def step(x: Tensor, carry: Any) -> tuple[Any, Any]:
            return functional_call(policy, params, (x, carry))

    param_dtype = next(iter(params.values())).dtype
    carry = policy.initial_carry((num_tasks, trials), dtype=param_dtype)
    inputs = np.zeros((num_envs, length, in_dim), dtype=np.float32)
    observations = np.zeros((num_envs, length, obs_dim), dtype=np.float32)
    final_observations = np.zeros((num_envs, episodes, obs_dim), dtype=np.float32)
    actions = np.zeros((num_envs, length, act_dim), dtype=np.float32)
    rewards = np.zeros((num_envs, length), dtype=np.float32)
    log_probs = np.zeros((num_envs, length), dtype=np.float32)
    mask = np.zeros((num_envs, length), dtype=np.float32)
    terminated = np.zeros((num_envs, length), dtype=bool)
    truncated = np.zeros((num_envs, length), dtype=bool)
    episode_index = np.full((num_envs, length), -1, dtype=np.int64)
    infos = {k: np.zeros((num_envs, length), dtype=np.float32) for k in env.info_keys}
    low, high = env.action_low.astype(np.float64), env.action_high.astype(np.float64)
    center, half_range = (high + low) / 2, (high - low) / 2
    position = np.zeros(num_envs, dtype=np.int64)  # next free time index of each trial
    previous = np.zeros((num_envs, act_dim + 2), dtype=np.float32)  # [a_{t-1}, r_{t-1}, d_{t-1}]

    for k in range(episodes):
        seeds = _reset_seeds(generator, num_envs, trials, shard).numpy()
        try:
            obs = env.reset(tasks, seeds=seeds)
        except EnvError as exc:
            raise _relabel(env, tasks, exc, episode=k, step=0) from exc
        if k:
            previous[:, -1] = 1.0  # every trial's previous episode has just ended
        active = np.ones(num_envs, dtype=bool)
        for t in range(horizon):
            x = np.concatenate([obs.astype(np.float32), previous], axis=1)
            with torch.no_grad():
                x_policy = rearrange(torch.from_numpy(x).to(param_dtype), "(task trial) d -> task trial d",
                                     task=num_tasks)
                dist, new_carry = step(x_policy, carry)
                action = _sample_actions(policy, dist, generator, shard)
                log_prob = policy.log_prob(dist, action)
                keep = rearrange(torch.from_numpy(active), "(task trial) -> task trial", task=num_tasks)
                carry = tree_map(  # waiting (finished) trials keep their carry
                    lambda new, old: torch.where(keep.reshape(*keep.shape, *[1] * (new.dim() - 2)), new, old),
                    new_carry, carry)
            if tuple(action.shape) != (num_tasks, trials, act_dim):
                raise ValueError(f"policy.sample returned actions of shape {tuple(action.shape)}, expected "
                                 f"{(num_tasks, trials, act_dim)}")
            if tuple(log_prob.shape) != (num_tasks, trials):
                raise ValueError(f"policy.log_prob returned shape {tuple(log_prob.shape)}, expected "
                                 f"{(num_tasks, trials)} (summed over action dimensions)")
            action_np = rearrange(action, "task trial act -> (task trial) act").to(torch.float64).numpy()
            bad = active & ~np.isfinite(action_np).all(axis=1)
            if bad.any():
                raise _trial_error(env, tasks, int(np.flatnonzero(bad)[0]), f"{env.name}: the policy produced "
                                   "non-finite actions", episode=k, step=t)
            executed = np.clip(action_np, low, high)
            try:
                result = env.step(executed, active)
            except EnvError as exc:
                raise _relabel(env, tasks, exc, episode=k, step=t) from exc
            rows = np.flatnonzero(active)
            cols = position[rows]
            inputs[rows, cols] = x[rows]
            observations[rows, cols] = obs[rows]
            actions[rows, cols] = action_np[rows]
            log_probs[rows, cols] = rearrange(log_prob, "task trial -> (task trial)").numpy()[rows]
            rewards[rows, cols] = result.rewards[rows]
            mask[rows, cols] = 1.0
            terminated[rows, cols] = result.terminated[rows]
            episode_index[rows, cols] = k
            for key in env.info_keys:
                infos[key][rows, cols] = result.infos[key][rows]
            final_observations[rows, k] = result.observations[rows]
            previous[rows, :act_dim] = (executed[rows] - center) / half_range
            previous[rows, act_dim] = result.rewards[rows]
            previous[rows, act_dim + 1] = 0.0
            position[rows] += 1
            active = active & ~result.terminated
            obs = result.observations
            if not active.any() and shard is None:  # (a share runs on: another share's may not have ended)
                break
        rows = np.flatnonzero(active)
        truncated[rows, position[rows] - 1] = True

    def out(x: np.ndarray) -> Tensor:
        # env i runs trial i % trials of task i // trials
        return rearrange(torch.from_numpy(x), "(task trial) ... -> task trial ...", task=num_tasks)

    return TrialBatch(
        inputs=out(inputs), observations=out(observations), final_observations=out(final_observations),
        actions=out(actions), rewards=out(rewards), log_probs=out(log_probs), mask=out(mask),
        terminated=out(terminated), truncated=out(truncated), episode_index=out(episode_index),
        infos={k: out(v) for k, v in infos.items()}, tasks=tasks,
    )
