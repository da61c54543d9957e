"""The held-out evaluation protocol shared by the meta-RL recipes."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import vmap

from metaops import envs
from metaops.tree import stop_gradient

__all__ = ["held_out_adaptation"]

AdaptStep = Callable[[dict[str, Tensor], Any], dict[str, Tensor]]


def held_out_adaptation(
    policy: nn.Module,
    params: Mapping[str, Tensor],
    *,
    env_name: str,
    adapt_step: AdaptStep | Sequence[AdaptStep],
    process: Callable[[envs.EpisodeBatch], Any],
    num_tasks: int,
    episodes: int,
    steps: int,
    seed: int,
    horizon: int | None = None,
    physics_threads: int = 2,
    on_step: Callable[[dict[str, Tensor], dict[str, Tensor], Any], Any] | None = None,
) -> Tensor:
    r"""Mean episode return of each held-out task after $0, 1, \dots, K$ adaptation steps.

    The protocol of every meta-RL recipe (MAML-TRPO, ProMP, GMPS), so that they compare on one
    table: ``num_tasks`` tasks drawn from the family's distribution with a generator seeded by
    ``seed`` (the same tasks for every recipe and run with that seed), ``episodes`` episodes per
    task sampled with the current per-task parameters, then one adaptation step per task on
    those episodes (``vmap(adapt_step)`` over tasks), re-sampling after each step. Reset seeds
    and action noise come from the same generator, so the whole curve is a deterministic
    function of the meta-parameters and ``seed``.

    Args:
        policy: The policy module (``sample``/``log_prob``, see [metaops.envs.sample_episodes][]).
        params: Meta-parameters, without a task dimension (each task starts from them).
        env_name: A registered environment family.
        adapt_step: ``adapt_step(params, data) -> params`` for ONE task (vmapped here), e.g.
            ``lambda p, d: metaops.inner.adapt(loss_fn, p, d, sgd(lr), steps=1)``. Or a non-empty
            sequence of such functions, a test-time schedule: the k-th one takes step k (counting
            from 0) and the last one every later step, e.g. ``[step(0.5), step(0.25)]`` for the
            MAML paper's navigation test (step size 0.5, then 0.25).
        process: ``process(batch) -> data``: per-task inner-loss data (advantages, ...) from an
            [metaops.envs.EpisodeBatch][], with a leading task dimension.
        num_tasks: Held-out tasks (at least 2 for a confidence interval).
        episodes: Episodes per task and step.
        steps: Adaptation steps $K$.
        seed: Seed of the tasks, reset seeds and action noise.
        horizon: Episode length (default: the environment's).
        physics_threads: MuJoCo stepping threads.
        on_step: Called as ``on_step(before, after, data)`` after each step (diagnostics).

    Raises:
        ValueError: If ``adapt_step`` is neither a function nor a non-empty sequence of functions.

    Returns:
        Returns of shape `(K + 1, num_tasks)`: row $k$ after $k$ steps. Pass it to
        [metaops.experiment.write_adaptation_evaluation][] and [metaops.experiment.paired_gains][].

    Examples:
        >>> import torch
        >>> import metaops as mo
        >>> from metaops import rl
        >>> policy = rl.GaussianMLPPolicy(2, 2, hidden_sizes=(8,), action_bounds=(-0.1, 0.1))
        >>> def process(batch):
        ...     adv = rl.linear_baseline_advantages(batch.observations, batch.rewards, mask=batch.mask,
        ...                                         gamma=0.99, gae_lambda=1.0)
        ...     return batch.observations, batch.actions, adv, batch.mask
        >>> def loss_fn(p, d):
        ...     obs, actions, adv, mask = d
        ...     lp = policy.log_prob(torch.func.functional_call(policy, p, (obs,)), actions)
        ...     return -(lp * adv * mask).sum() / mask.sum()
        >>> step = lambda p, d: mo.inner.adapt(loss_fn, p, d, mo.inner.sgd(0.1), steps=1)
        >>> curve = held_out_adaptation(policy, dict(policy.named_parameters()), env_name="Navigation2D",
        ...                             adapt_step=step, process=process, num_tasks=3, episodes=2, steps=1, seed=0)
        >>> curve.shape
        torch.Size([2, 3])
    """
    schedule = [adapt_step] if callable(adapt_step) else list(adapt_step) if isinstance(adapt_step, Sequence) else []
    if not schedule or not all(callable(f) for f in schedule):
        raise ValueError("adapt_step must be a function or a non-empty sequence of functions (one per adaptation "
                         f"step, the last one repeated), got {adapt_step!r}")
    g = torch.Generator().manual_seed(seed)
    tasks = envs.task_distribution(env_name).sample_tasks(num_tasks, generator=g)
    env = envs.make_batched(env_name, num_tasks=num_tasks, episodes_per_task=episodes, num_threads=physics_threads)
    current = {k: v.detach().expand(num_tasks, *v.shape) for k, v in params.items()}  # one copy per task
    curve = []
    try:
        for k in range(steps + 1):
            batch = envs.sample_episodes(env, policy, current, tasks, generator=g, horizon=horizon)
            curve.append(batch.returns.mean(-1))
            if k < steps:
                data = process(batch)
                adapted = stop_gradient(vmap(schedule[min(k, len(schedule) - 1)])(current, data))
                if on_step is not None:
                    on_step(current, adapted, data)
                current = adapted
    finally:
        env.close()
    return torch.stack(curve)
