"""ProMP's low-variance curvature (LVC) objective, optionally importance-weighted."""

from __future__ import annotations

import torch
from torch import Tensor

from metaops.estimators._dice import magic_box
from metaops.estimators._validate import apply_mask, check_rollout

__all__ = ["lvc_objective"]


def lvc_objective(
    log_probs: Tensor,
    advantages: Tensor,
    *,
    sampling_log_probs: Tensor | None = None,
    mask: Tensor | None = None,
) -> Tensor:
    r"""Computes ProMP's low-variance curvature (LVC) objective, importance-weighted if asked.

    Each step's likelihood ratio against the policy that sampled the data, with no cumulative
    sum over time:

    $$\mathcal{J}^{\mathrm{LVC}} = \sum_{t=0}^{T-1}
      \frac{\pi_\theta(a_t\mid s_t)}{\bot\big(\pi_{\text{sampling}}(a_t\mid s_t)\big)}\,
      \bot(A_t).$$

    Without ``sampling_log_probs`` the data are taken to be sampled by the current policy and
    the ratio is the magic box $\square(\log\pi_\theta) = e^{\log\pi_\theta -
    \bot(\log\pi_\theta)}$: value 1, and every derivative that of $\pi_\theta$ itself. With
    $A_t = R_t - b(s_t)$ (reward to go discounted from 0, any state-dependent baseline) the
    gradient is exact in expectation, and the expected Hessian is exactly ProMP's $H_1 + H_2$,

    $$H_1 = \mathbb{E}\Big[\sum_t \nabla\log\pi_t\, \nabla\log\pi_t^\top R_t\Big], \qquad
      H_2 = \mathbb{E}\Big[\sum_t \nabla^2\log\pi_t\, R_t\Big],$$

    without the cross terms $H_{12} + H_{12}^\top$,
    $H_{12} = \mathbb{E}[\sum_t \nabla\log\pi_t \sum_{t' > t} \nabla\log\pi_{t'}^\top R_{t'}]$,
    the high-variance part of the DiCE Hessian.

    With ``sampling_log_probs`` of the policy that sampled the data, the objective is the same
    at $\theta = \theta_\text{sampling}$, in value and in every derivative, and stays a valid
    importance-weighted estimate for nearby $\theta$: pass them whenever $\theta$ has moved
    since sampling, i.e. in ProMP's inner step from the second outer step on, in TRPO's
    surrogate, and in MAML-TRPO's post-update surrogate. It is the one estimator for both uses.

    Args:
        log_probs: $\log\pi_\theta(a_t\mid s_t)$, shape `(..., T)`, carrying the graph.
        advantages: $A_t$, shape `(..., T)`; treated as constants.
        sampling_log_probs: Optional $\log\pi_{\text{sampling}}(a_t\mid s_t)$ of the policy that
            sampled the data, shape `(..., T)`; treated as constants. ``None``: the current
            policy (the magic box).
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
        >>> lvc_objective(torch.log(torch.tensor([0.5, 0.25])), torch.tensor([1.0, 1.0]),
        ...               sampling_log_probs=torch.log(torch.tensor([0.25, 0.25])))
        tensor(3.)

    References:
        Rothfuss et al., "ProMP: Proximal Meta-Policy Search", ICLR 2019.

        Schulman et al., "Trust Region Policy Optimization", ICML 2015.
    """
    extra = {} if sampling_log_probs is None else {"sampling_log_probs": sampling_log_probs}
    bool_mask = check_rollout(
        "log_probs",
        log_probs,
        mask=mask,
        finite=("log_probs", *extra, "advantages"),
        right_padded=True,
        **extra,
        advantages=advantages,
    )
    if sampling_log_probs is None:
        ratio = magic_box(apply_mask(log_probs, bool_mask))
    else:
        ratio = torch.exp(apply_mask(log_probs - sampling_log_probs.detach(), bool_mask))
    return (ratio * apply_mask(advantages.detach(), bool_mask)).sum(-1)
