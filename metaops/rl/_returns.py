"""Discounted returns, generalised advantage estimation and advantage normalisation."""

from __future__ import annotations

import torch
from torch import Tensor

from metaops.estimators._validate import _is_plain, apply_mask, check_float, check_rollout

__all__ = ["discounted_returns", "gae", "normalize_advantages"]


def _check_unit(name: str, value: float) -> float:
    if not isinstance(value, (int, float)) or not 0.0 <= float(value) <= 1.0:
        raise ValueError(f"{name} must be a float in [0, 1], got {value!r}")
    return float(value)


def _continues(mask: Tensor | None, like: Tensor, dones: Tensor | None = None) -> Tensor:
    """(..., T) float: 1 where step t+1 exists and continues the episode of step t (no done at t)."""
    if mask is None:
        nxt = torch.ones_like(like)
    else:
        nxt = mask.to(like.dtype)
    continues = torch.cat([nxt[..., 1:], torch.zeros_like(nxt[..., :1])], dim=-1)
    return continues if dones is None else continues * (~dones).to(like.dtype)


def _check_dones(dones: Tensor | None, rewards: Tensor) -> Tensor | None:
    if dones is None:
        return None
    if not isinstance(dones, Tensor) or dones.dtype != torch.bool:
        kind = dones.dtype if isinstance(dones, Tensor) else type(dones).__name__
        raise TypeError(f"dones must be a bool tensor (True at the last step of an episode), got {kind}")
    if dones.shape != rewards.shape:
        raise ValueError(f"dones must have the shape of rewards {tuple(rewards.shape)}, got {tuple(dones.shape)}")
    return dones


def discounted_returns(
    rewards: Tensor, *, gamma: float, mask: Tensor | None = None, dones: Tensor | None = None
) -> Tensor:
    r"""Computes the discounted rewards to go $G_t = \sum_{t' \ge t} \gamma^{t'-t} r_{t'}$.

    Computed by the backward recursion $G_t = r_t + \gamma\, (1 - d_t)\, m_{t+1}\, G_{t+1}$
    (with $G_T = 0$), where $m$ is the mask, so the padding after the end of an episode
    contributes nothing, and $d$ the optional ``dones``, so that a row may hold several
    consecutive episodes (an RL² trial): the sum stops at the last step of each. Padded entries
    of the result are zero. This is a data-preparation function: the result is detached.

    Args:
        rewards: $r_t$, shape `(..., T)`.
        gamma: Discount $\gamma \in [0, 1]$.
        mask: Optional padding mask `(..., T)`, 1 for real steps and 0 for padding.
            Right padding: each row is one trajectory, `1...1 0...0` (it may end early, never
            restart).
        dones: Optional bool `(..., T)`, True at the last step of each episode that ends inside
            a row (terminated or cut by a time limit); a row's last real step needs none.

    Returns:
        $G_t$, shape `(..., T)`, detached (zero on padding).

    Raises:
        TypeError: If ``rewards`` is not floating point.
        ValueError: If the shapes differ, ``gamma`` is outside $[0, 1]$, the mask is all zeros,
            or (eagerly) a mask row has a 0 followed by a 1, or rewards are non-finite at real
            steps.

    Examples:
        >>> rewards = torch.tensor([[1.0, 1.0, 1.0], [1.0, 2.0, 9.0]])
        >>> mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
        >>> discounted_returns(rewards, gamma=0.5, mask=mask)
        tensor([[1.7500, 1.5000, 1.0000],
                [2.0000, 2.0000, 0.0000]])

        Two episodes in one row, the first ending at step 1:

        >>> discounted_returns(torch.ones(4), gamma=0.5, dones=torch.tensor([False, True, False, False]))
        tensor([1.5000, 1.0000, 1.5000, 1.0000])
    """
    bool_mask = check_rollout("rewards", rewards, mask=mask, finite=("rewards",), right_padded=True)
    gamma = _check_unit("gamma", gamma)
    dones = _check_dones(dones, rewards)
    rewards = apply_mask(rewards.detach(), bool_mask)
    continues = _continues(bool_mask, rewards, dones)
    out = []
    running = torch.zeros_like(rewards[..., 0])
    for t in reversed(range(rewards.shape[-1])):
        running = rewards[..., t] + gamma * continues[..., t] * running
        out.append(running)
    return apply_mask(torch.stack(out[::-1], dim=-1), bool_mask)


def gae(
    rewards: Tensor,
    values: Tensor,
    *,
    gamma: float,
    gae_lambda: float,
    mask: Tensor | None = None,
    last_values: Tensor | None = None,
    dones: Tensor | None = None,
    done_values: Tensor | None = None,
) -> Tensor:
    r"""Computes generalised advantage estimates $A_t^{\mathrm{GAE}(\gamma, \lambda)}$ with masks.

    $$\delta_t = r_t + \gamma\, V_{t+1}^{\text{next}} - V(s_t), \qquad
      A_t = \delta_t + \gamma\lambda\, (1 - d_t)\, m_{t+1} A_{t+1},$$

    where $V^{\text{next}}_{t+1} = V(s_{t+1})$ if step $t+1$ is real ($m_{t+1} = 1$) and
    continues the episode, and otherwise the bootstrap value of the episode that ends at $t$:
    ``last_values`` for a row's last episode, ``done_values`` for one that ends inside the row
    at a step marked by ``dones`` ($d_t = 1$; several consecutive episodes per row, e.g. an RL²
    trial). Both default to zero (the episode terminated); pass $V(s_{t+1})$ of the final
    observation for an episode cut by a time limit. $\lambda = 1$ gives $G_t - V(s_t)$,
    $\lambda = 0$ the one-step TD error. Padded entries are zero and the result is detached.

    Args:
        rewards: $r_t$, shape `(..., T)`.
        values: $V(s_t)$, shape `(..., T)`, e.g. from a critic or
            [metaops.rl.LinearFeatureBaseline][].
        gamma: Discount $\gamma \in [0, 1]$.
        gae_lambda: $\lambda \in [0, 1]$.
        mask: Optional padding mask `(..., T)`, 1 for real steps and 0 for padding.
            Right padding: each row is one trajectory, `1...1 0...0` (it may end early, never
            restart).
        last_values: Optional bootstrap values, shape `(...)`, used after each row's last
            real step; zeros when omitted.
        dones: Optional bool `(..., T)`, True at the last step of each episode that ends inside
            a row (a row's last real step needs none).
        done_values: Optional bootstrap values `(..., T)`, read at the ``dones`` steps: $V$ of
            the final observation of an episode cut by a time limit, 0 for a terminated one
            (zeros when omitted).

    Returns:
        $A_t$, shape `(..., T)`, detached (zero on padding).

    Raises:
        TypeError: If a tensor is not floating point, or the dtypes differ.
        ValueError: If the shapes differ, a hyperparameter is outside $[0, 1]$, the mask is all
            zeros, or (eagerly) a mask row has a 0 followed by a 1, or rewards or values are
            non-finite at real steps.

    Examples:
        >>> rewards = torch.tensor([1.0, 1.0, 1.0])
        >>> values = torch.tensor([0.5, 0.5, 0.5])
        >>> gae(rewards, values, gamma=1.0, gae_lambda=1.0)  # G_t - V(s_t)
        tensor([2.5000, 1.5000, 0.5000])
        >>> gae(rewards, values, gamma=1.0, gae_lambda=0.0)  # TD errors
        tensor([1.0000, 1.0000, 0.5000])
        >>> gae(rewards, values, gamma=1.0, gae_lambda=1.0, dones=torch.tensor([True, False, False]))
        tensor([0.5000, 1.5000, 0.5000])

    References:
        Schulman et al., "High-Dimensional Continuous Control Using Generalized Advantage
        Estimation", ICLR 2016.
    """
    bool_mask = check_rollout(
        "rewards", rewards, mask=mask, finite=("rewards", "values"), right_padded=True, values=values
    )
    gamma = _check_unit("gamma", gamma)
    gae_lambda = _check_unit("gae_lambda", gae_lambda)
    rewards = apply_mask(rewards.detach(), bool_mask)
    values = apply_mask(values.detach(), bool_mask)
    if last_values is None:
        last_values = torch.zeros_like(rewards[..., 0])
    else:
        check_float("last_values", last_values)
        if last_values.shape != rewards.shape[:-1]:
            raise ValueError(
                f"last_values must have shape {tuple(rewards.shape[:-1])} (the batch shape of "
                f"rewards), got {tuple(last_values.shape)}"
            )
        last_values = last_values.detach().to(rewards.dtype)
    dones = _check_dones(dones, rewards)
    bootstrap = last_values.unsqueeze(-1).expand_as(rewards)
    if done_values is not None:
        if dones is None:
            raise ValueError("done_values needs dones (the steps where those episodes end)")
        check_float("done_values", done_values)
        if done_values.shape != rewards.shape:
            raise ValueError(f"done_values must have the shape of rewards {tuple(rewards.shape)}, got "
                             f"{tuple(done_values.shape)}")
    if dones is not None:
        at_done = torch.zeros_like(rewards) if done_values is None else done_values.detach().to(rewards.dtype)
        bootstrap = torch.where(dones, at_done, bootstrap)
    continues = _continues(bool_mask, rewards, dones)
    shifted = torch.cat([values[..., 1:], torch.zeros_like(values[..., :1])], dim=-1)
    next_values = continues * shifted + (1 - continues) * bootstrap
    deltas = rewards + gamma * next_values - values
    out = []
    running = torch.zeros_like(rewards[..., 0])
    for t in reversed(range(rewards.shape[-1])):
        running = deltas[..., t] + gamma * gae_lambda * continues[..., t] * running
        out.append(running)
    return apply_mask(torch.stack(out[::-1], dim=-1), bool_mask)


def normalize_advantages(
    advantages: Tensor,
    *,
    mask: Tensor | None = None,
    dim: int | tuple[int, ...] | None = (-2, -1),
    eps: float = 1e-8,
) -> Tensor:
    r"""Standardises advantages to zero mean and unit variance over the real steps, detached.

    $$\hat A = \frac{A - \mu}{\sigma + \epsilon}, \qquad
      \mu = \frac{\sum m A}{\sum m}, \quad \sigma^2 = \frac{\sum m (A - \mu)^2}{\sum m},$$

    with sums over ``dim``. The default normalises **per task**: for advantages shaped
    `(..., E, T)` (a task's $E$ episodes of $T$ steps, as for
    [metaops.rl.fit_linear_baseline][]) the statistics are taken over each task's episodes and
    steps, the last two dimensions, so tasks with different reward scales do not mix; every
    leading dimension (e.g. `tasks` in `(tasks, E, T)`) indexes a separate slice. A 1-D `(T,)`
    input is one episode. Pass ``dim=None`` to normalise over all dimensions at once (across
    tasks), or ``dim=-1`` for per-episode statistics. The statistics are computed outside the
    graph (the result is detached).

    Args:
        advantages: $A_t$, shape `(..., E, T)` or `(T,)`.
        mask: Optional padding mask shaped like ``advantages``, 1 for real steps and 0 for
            padding. Right padding: each row is one trajectory, `1...1 0...0` (it may end early,
            never restart); put separate episodes in separate rows.
        dim: Dimensions to normalise over: the last two (per task) by default; ``None`` for all
            dimensions (across tasks).
        eps: $\epsilon$ added to the standard deviation.

    Returns:
        Normalised advantages shaped like ``advantages``, detached (zero on padding).

    Raises:
        TypeError: If ``advantages`` is not floating point.
        ValueError: If the mask is all zeros, or (eagerly) a mask row has a 0 followed by a 1, the
            advantages are non-finite at real steps or some normalised slice has no real step.

    Examples:
        >>> advantages = torch.tensor([[1.0, 3.0, 100.0], [2.0, 6.0, 4.0]])
        >>> mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
        >>> normalize_advantages(advantages, mask=mask, dim=-1)
        tensor([[-1.0000,  1.0000,  0.0000],
                [-1.2247,  1.2247,  0.0000]])
        >>> two_tasks = torch.tensor([[[1.0, 3.0]], [[100.0, 300.0]]])  # (tasks, E, T)
        >>> normalize_advantages(two_tasks)  # per task: the scales do not mix
        tensor([[[-1.,  1.]],
        <BLANKLINE>
                [[-1.,  1.]]])
        >>> normalize_advantages(two_tasks, dim=None)  # across tasks: task 0 is flattened
        tensor([[[-0.8220, -0.8055]],
        <BLANKLINE>
                [[-0.0082,  1.6357]]])
    """
    bool_mask = check_rollout("advantages", advantages, mask=mask, finite=("advantages",), right_padded=True)
    advantages = apply_mask(advantages.detach(), bool_mask)
    weights = torch.ones_like(advantages) if bool_mask is None else bool_mask.to(advantages.dtype)
    if dim is None:
        dims = tuple(range(advantages.dim()))
    elif dim == (-2, -1) and advantages.dim() == 1:
        dims = (-1,)  # the per-task default on a single episode
    else:
        dims = dim
    count = weights.sum(dims, keepdim=True)
    if bool_mask is not None and _is_plain(count):
        if bool((count == 0).any()):
            raise ValueError("normalize_advantages: some slice along dim has no real (unmasked) step")
    count = count.clamp(min=1)
    mean = (weights * advantages).sum(dims, keepdim=True) / count
    var = (weights * (advantages - mean) ** 2).sum(dims, keepdim=True) / count
    return apply_mask((advantages - mean) / (var.sqrt() + eps), bool_mask)
