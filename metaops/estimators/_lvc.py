"""ProMP's low-variance curvature (LVC) objective and its likelihood-ratio form."""

from __future__ import annotations

import torch
from torch import Tensor

from metaops.estimators._dice import magic_box
from metaops.estimators._validate import apply_mask, check_rollout

__all__ = ["lvc_objective", "likelihood_ratio_objective"]


def lvc_objective(log_probs: Tensor, advantages: Tensor, *, mask: Tensor | None = None) -> Tensor:
    r"""Computes ProMP's low-variance curvature (LVC) objective.

    Each step's log-probability gets its own magic box, with no cumulative sum:

    $$\mathcal{J}^{\mathrm{LVC}} = \sum_{t=0}^{T-1} \square\big(\log\pi_\theta(a_t\mid s_t)\big)\,
      \bot(A_t), \qquad \square(x) = e^{\,x - \bot(x)} .$$

    With $A_t = R_t - b(s_t)$, $R_t = \sum_{t' \ge t} \gamma^{t'} r_{t'}$ the discounted reward to
    go and any state-dependent baseline $b$, the gradient is exact in expectation, and the
    expected Hessian contains exactly ProMP's $H_1 + H_2$,

    $$H_1 = \mathbb{E}\Big[\sum_t \nabla\log\pi_t\, \nabla\log\pi_t^\top R_t\Big], \qquad
      H_2 = \mathbb{E}\Big[\sum_t \nabla^2\log\pi_t\, R_t\Big],$$

    and drops the cross terms $H_{12} + H_{12}^\top$,
    $H_{12} = \mathbb{E}[\sum_t \nabla\log\pi_t \sum_{t' > t} \nabla\log\pi_{t'}^\top R_{t'}]$,
    which are the high-variance part of the DiCE Hessian. It is the inner-step objective of
    ProMP; its value is $\sum_t A_t$.

    Args:
        log_probs: $\log\pi_\theta(a_t\mid s_t)$, shape `(..., T)`, carrying the graph.
        advantages: $A_t$, shape `(..., T)`; treated as constants. For the exact gradient of the
            discounted return, include the $\gamma^t$ factor (reward to go discounted from 0).
        mask: Optional padding mask `(..., T)`, 1 for real steps and 0 for padding.
            Right padding: each row is one trajectory, `1...1 0...0` (it may end early, never
            restart); put separate episodes in separate rows.

    Returns:
        The objective, shape `(...)`. **Maximise** it; as a loss use ``-lvc_objective(...)``.

    Raises:
        TypeError: If a tensor is not floating point, or the dtypes differ.
        ValueError: If the shapes differ, the mask is all zeros, or (eagerly) a mask row has a 0
            followed by a 1, or the inputs are non-finite at real steps.

    Examples:
        >>> log_probs = torch.zeros(3, requires_grad=True)
        >>> objective = lvc_objective(log_probs, torch.tensor([3.0, 2.0, 1.0]))
        >>> objective
        tensor(6., grad_fn=<SumBackward1>)
        >>> torch.autograd.grad(objective, log_probs)[0]
        tensor([3., 2., 1.])

    References:
        Rothfuss et al., "ProMP: Proximal Meta-Policy Search", ICLR 2019.
    """
    bool_mask = check_rollout(
        "log_probs",
        log_probs,
        mask=mask,
        finite=("log_probs", "advantages"),
        right_padded=True,
        advantages=advantages,
    )
    log_probs = apply_mask(log_probs, bool_mask)
    advantages = apply_mask(advantages.detach(), bool_mask)
    return (magic_box(log_probs) * advantages).sum(-1)


def likelihood_ratio_objective(
    log_probs: Tensor,
    old_log_probs: Tensor,
    advantages: Tensor,
    *,
    mask: Tensor | None = None,
) -> Tensor:
    r"""Computes the likelihood-ratio (importance-sampled) objective used with old log-probs.

    $$\mathcal{J}^{\mathrm{LR}} = \sum_{t=0}^{T-1}
      \frac{\pi_\theta(a_t\mid s_t)}{\pi_{\theta_\text{old}}(a_t\mid s_t)}\, \bot(A_t)
      = \sum_t e^{\log\pi_\theta(a_t\mid s_t) - \bot(\log\pi_{\theta_\text{old}}(a_t\mid s_t))}
      \,\bot(A_t).$$

    At $\theta = \theta_\text{old}$ all its derivatives coincide with those of
    [metaops.estimators.lvc_objective][] (so the expected Hessian there is $H_1 + H_2$), and it
    remains a valid importance-weighted estimate of the improvement for nearby $\theta$: it is
    the surrogate of TRPO and of ProMP's outer step, for data sampled with
    $\pi_{\theta_\text{old}}$.

    Args:
        log_probs: $\log\pi_\theta(a_t\mid s_t)$ under the current parameters, shape `(..., T)`.
        old_log_probs: $\log\pi_{\theta_\text{old}}(a_t\mid s_t)$ of the sampling policy, shape
            `(..., T)`; treated as constants.
        advantages: $A_t$, shape `(..., T)`; treated as constants.
        mask: Optional padding mask `(..., T)`, 1 for real steps and 0 for padding.
            Right padding: each row is one trajectory, `1...1 0...0` (it may end early, never
            restart); put separate episodes in separate rows.

    Returns:
        The objective, shape `(...)`. **Maximise** it.

    Raises:
        TypeError: If a tensor is not floating point, or the dtypes differ.
        ValueError: If the shapes differ, the mask is all zeros, or (eagerly) a mask row has a 0
            followed by a 1, or the inputs are non-finite at real steps.

    Examples:
        >>> log_probs = torch.log(torch.tensor([0.5, 0.25]))
        >>> old_log_probs = torch.log(torch.tensor([0.25, 0.25]))
        >>> likelihood_ratio_objective(log_probs, old_log_probs, torch.tensor([1.0, 1.0]))
        tensor(3.)

    References:
        Schulman et al., "Trust Region Policy Optimization", ICML 2015.

        Rothfuss et al., "ProMP: Proximal Meta-Policy Search", ICLR 2019.
    """
    bool_mask = check_rollout(
        "log_probs",
        log_probs,
        mask=mask,
        finite=("log_probs", "old_log_probs", "advantages"),
        right_padded=True,
        old_log_probs=old_log_probs,
        advantages=advantages,
    )
    log_ratio = apply_mask(log_probs - old_log_probs.detach(), bool_mask)
    advantages = apply_mask(advantages.detach(), bool_mask)
    return (torch.exp(log_ratio) * advantages).sum(-1)
