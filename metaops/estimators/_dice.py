"""DiCE: the magic-box operator and the any-order score-function objectives built on it."""

from __future__ import annotations

import torch
from torch import Tensor

from metaops.estimators._validate import apply_mask, check_rollout

__all__ = ["magic_box", "dice_objective", "loaded_dice_objective"]


def magic_box(x: Tensor) -> Tensor:
    r"""Applies DiCE's magic-box operator $\square(x) = e^{\,x - \bot(x)}$.

    $\bot$ is the stop-gradient. The result always *evaluates* to one, but differentiates like
    an exponential, for every order:

    $$\square(x) \rightsquigarrow 1, \qquad
      \nabla_\theta \square(x) = \square(x)\, \nabla_\theta x .$$

    Applied to a sum of log-probabilities, it turns any downstream cost into a surrogate whose
    $n$-th derivative is an unbiased estimate of the $n$-th derivative of the expected cost.
    ``detach`` acts as a true stop-gradient at every ``torch.func`` level, so the operator is safe
    under nested ``grad``, ``jvp`` and ``vmap``.

    Args:
        x: Any tensor, usually a (cumulative) sum of log-probabilities.

    Returns:
        A tensor of ones shaped like ``x`` that carries $x$'s graph.

    Raises:
        TypeError: If ``x`` is not a floating-point tensor.

    Examples:
        >>> x = torch.tensor([0.5, -2.0], requires_grad=True)
        >>> y = magic_box(x)
        >>> y
        tensor([1., 1.], grad_fn=<ExpBackward0>)
        >>> torch.autograd.grad(y.sum(), x)[0]
        tensor([1., 1.])

    References:
        Foerster et al., "DiCE: The Infinitely Differentiable Monte Carlo Estimator", ICML 2018.
    """
    if not isinstance(x, Tensor) or not x.is_floating_point():
        raise TypeError(f"magic_box needs a floating-point tensor, got {_describe(x)}")
    return torch.exp(x - x.detach())


def _describe(x: object) -> str:
    return f"dtype {x.dtype}" if isinstance(x, Tensor) else type(x).__name__


def _discount(gamma: float, like: Tensor) -> Tensor:
    """Returns $(\\gamma^0, \\dots, \\gamma^{T-1})$ with the dtype and device of ``like``."""
    if not isinstance(gamma, (int, float)) or not 0.0 <= float(gamma) <= 1.0:
        raise ValueError(f"gamma must be a float in [0, 1], got {gamma!r}")
    t = torch.arange(like.shape[-1], dtype=like.dtype, device=like.device)
    return torch.full((), float(gamma), dtype=like.dtype, device=like.device) ** t


def _exclusive_cumsum(x: Tensor) -> Tensor:
    """$\\sum_{t' < t} x_{t'}$ along the last dimension (zero at $t = 0$)."""
    return torch.cat([torch.zeros_like(x[..., :1]), x[..., :-1]], dim=-1).cumsum(-1)


def dice_objective(
    log_probs: Tensor,
    rewards: Tensor,
    *,
    gamma: float,
    baseline: Tensor | None = None,
    mask: Tensor | None = None,
) -> Tensor:
    r"""Computes the DiCE objective of a trajectory batch, optionally with any-order baselines.

    With $W_t = \sum_{t' \le t} \log \pi_\theta(a_{t'} \mid s_{t'})$ the cumulative log-probability
    of the actions that can influence $r_t$:

    $$\mathcal{J}_\square = \sum_{t=0}^{T-1} \gamma^t\, r_t\, \square(W_t)
      \;+\; \sum_{t=0}^{T-1} \gamma^t\, b_t\,
      \big(1 - \square(\log\pi_\theta(a_t \mid s_t))\big)\, \square(W_{t-1}).$$

    It evaluates to the discounted return $\sum_t \gamma^t r_t$ and, for every order $n$,
    $\mathbb{E}[\nabla_\theta^n \mathcal{J}_\square] = \nabla_\theta^n\, \mathbb{E}[\sum_t \gamma^t
    r_t]$: the gradient is exact in expectation, and so is the whole Hessian
    $H_1 + H_2 + H_{12} + H_{12}^\top$ (ProMP's notation), including the terms that couple
    actions with the later rewards they cause.

    The second sum is the baseline of Mao et al. (2019): the baseline term is multiplied by the
    magic box of the *earlier* log-probabilities $W_{t-1}$. Its value is zero and every
    derivative has zero mean (if $b_t$ depends only on the history up to $s_t$, not on $a_t$), so
    it lowers the variance of the gradient and of the higher-order derivatives without bias.
    The tempting form $\sum_t \gamma^t (r_t - b_t) \square(W_t)$ (subtracting the baseline inside
    the cumulative magic box, as ProMP's released sample processor does) is **biased**, already
    for the gradient. A good baseline is $b_t \approx V(s_t)$, the value from step $t$ on.

    Padded steps (``mask == 0``) contribute nothing: their log-probabilities, rewards and
    baselines are replaced by zeros with ``torch.where``, so padding may hold any finite garbage.

    Args:
        log_probs: $\log\pi_\theta(a_t \mid s_t)$, shape `(..., T)`; must carry the graph to
            $\theta$ (summed over action dimensions).
        rewards: $r_t$, shape `(..., T)`; treated as constants.
        gamma: Discount $\gamma \in [0, 1]$.
        baseline: Optional $b_t$, shape `(..., T)`; gradients are stopped through it.
        mask: Optional padding mask `(..., T)`, bool or float, 1 for real steps and 0 for padding.
            Right padding: each row is one trajectory, `1...1 0...0` (it may end early, never
            restart); put separate episodes in separate rows.

    Returns:
        The objective, shape `(...)` (one value per trajectory). **Maximise** it; as a loss use
        ``-dice_objective(...).mean()``.

    Raises:
        TypeError: If a tensor is not floating point, or the dtypes differ.
        ValueError: If the shapes differ, ``gamma`` is outside $[0, 1]$, the mask is all zeros,
            or (eagerly) a mask row has a 0 followed by a 1, or rewards or log-probabilities
            are non-finite at real steps.

    Examples:
        >>> log_probs = torch.zeros(2, 3, requires_grad=True)
        >>> rewards = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
        >>> mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
        >>> dice_objective(log_probs, rewards, gamma=0.5, mask=mask)
        tensor([1.7500, 1.5000], grad_fn=<SumBackward1>)
        >>> torch.autograd.grad(dice_objective(log_probs, rewards, gamma=1.0).sum(), log_probs)[0]
        tensor([[3., 2., 1.],
                [2., 1., 0.]])

    References:
        Foerster et al., "DiCE: The Infinitely Differentiable Monte Carlo Estimator", ICML 2018.

        Mao et al., "A Baseline for Any Order Gradient Estimation in Stochastic Computation
        Graphs", ICML 2019.
    """
    bool_mask = check_rollout(
        "log_probs",
        log_probs,
        mask=mask,
        finite=("log_probs", "rewards", "baseline"),
        right_padded=True,
        rewards=rewards,
        baseline=baseline,
    )
    discount = _discount(gamma, rewards)
    log_probs = apply_mask(log_probs, bool_mask)
    rewards = apply_mask(rewards.detach(), bool_mask)
    cumulative = log_probs.cumsum(-1)
    objective = (magic_box(cumulative) * rewards * discount).sum(-1)
    if baseline is not None:
        baseline = apply_mask(baseline.detach(), bool_mask)
        earlier = magic_box(_exclusive_cumsum(log_probs))
        objective = objective + ((1 - magic_box(log_probs)) * earlier * baseline * discount).sum(-1)
    return objective


def loaded_dice_objective(
    log_probs: Tensor,
    advantages: Tensor,
    *,
    gamma: float,
    decay: float,
    mask: Tensor | None = None,
) -> Tensor:
    r"""Computes the Loaded DiCE objective, whose decay $\lambda$ trades bias for variance.

    With the $\lambda$-discounted cumulative log-probability
    $w_t = \sum_{t' \le t} \lambda^{t - t'} \log\pi_\theta(a_{t'} \mid s_{t'})$
    (so $w_t = \lambda w_{t-1} + \log\pi_\theta(a_t\mid s_t)$):

    $$\mathcal{J}^\lambda_\square = \sum_{t=0}^{T-1} \gamma^t
      \big(\square(w_t) - \square(\lambda\, w_{t-1})\big)\, \bot(A_t).$$

    Its value is zero; its gradient is $\sum_t \gamma^t \nabla\log\pi_\theta(a_t\mid s_t) A_t$, the
    usual (GAE) policy gradient. Higher derivatives weight the dependence of $A_t$ on an earlier
    action $a_{t'}$ by $\lambda^{t - t'}$: $\lambda = 1$ keeps all of it (with Monte Carlo
    advantages $A_t = \sum_{t' \ge t}\gamma^{t'-t} r_{t'} - b_t$ it equals
    [metaops.estimators.dice_objective][] with a baseline, exact at every order in expectation),
    while $\lambda < 1$ discounts distant credit, which biases the Hessian (the $H_{12}$ terms
    are shrunk) but lowers its variance. $\lambda = 0$ keeps only $H_1 + H_2$, the same
    curvature as [metaops.estimators.lvc_objective][]. Pass GAE advantages
    ([metaops.rl.gae][]); Farquhar et al. use the GAE $\lambda$ for the decay as well.

    Args:
        log_probs: $\log\pi_\theta(a_t \mid s_t)$, shape `(..., T)`, carrying the graph.
        advantages: $A_t$, shape `(..., T)`, e.g. GAE; treated as constants.
        gamma: Discount $\gamma \in [0, 1]$ weighting step $t$ by $\gamma^t$; ``1.0`` gives the
            undiscounted weighting that most policy-gradient code uses.
        decay: $\lambda \in [0, 1]$, the discount on the dependence of later advantages on
            earlier actions.
        mask: Optional padding mask `(..., T)`, 1 for real steps and 0 for padding.
            Right padding: each row is one trajectory, `1...1 0...0` (it may end early, never
            restart); put separate episodes in separate rows.

    Returns:
        The objective, shape `(...)`, value zero. **Maximise** it.

    Raises:
        TypeError: If a tensor is not floating point, or the dtypes differ.
        ValueError: If the shapes differ, ``gamma`` or ``decay`` is outside $[0, 1]$, the mask is
            all zeros, or (eagerly) a mask row has a 0 followed by a 1, or the inputs are
            non-finite at real steps.

    Examples:
        >>> log_probs = torch.zeros(3, requires_grad=True)
        >>> advantages = torch.tensor([1.0, -1.0, 2.0])
        >>> objective = loaded_dice_objective(log_probs, advantages, gamma=1.0, decay=0.9)
        >>> objective
        tensor(0., grad_fn=<SumBackward1>)
        >>> torch.autograd.grad(objective, log_probs)[0]
        tensor([ 1., -1.,  2.])

    References:
        Farquhar et al., "Loaded DiCE: Trading off Bias and Variance in Any-Order Score Function
        Gradient Estimators for Reinforcement Learning", NeurIPS 2019.
    """
    bool_mask = check_rollout(
        "log_probs",
        log_probs,
        mask=mask,
        finite=("log_probs", "advantages"),
        right_padded=True,
        advantages=advantages,
    )
    if not isinstance(decay, (int, float)) or not 0.0 <= float(decay) <= 1.0:
        raise ValueError(f"decay must be a float in [0, 1], got {decay!r}")
    discount = _discount(gamma, advantages)
    log_probs = apply_mask(log_probs, bool_mask)
    advantages = apply_mask(advantages.detach(), bool_mask)
    t = torch.arange(log_probs.shape[-1], device=log_probs.device)
    lag = t[None, :] - t[:, None]  # lag[t', t] = t - t'
    decay_t = torch.full((), float(decay), dtype=log_probs.dtype, device=log_probs.device)
    weights = torch.where(lag >= 0, decay_t ** lag.clamp(min=0), torch.zeros_like(decay_t))
    w = log_probs @ weights  # w_t = sum_{t' <= t} decay^(t - t') log_probs_t'
    objective = (magic_box(w) - magic_box(w - log_probs)) * advantages * discount
    return objective.sum(-1)
