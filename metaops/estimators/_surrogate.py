"""The plain score-function (REINFORCE) surrogate used by most MAML-RL code."""

from __future__ import annotations

from torch import Tensor

from metaops.estimators._validate import apply_mask, check_rollout

__all__ = ["score_function_objective"]


def score_function_objective(log_probs: Tensor, advantages: Tensor, *, mask: Tensor | None = None) -> Tensor:
    r"""Computes the plain score-function surrogate $\sum_t \log\pi_\theta(a_t\mid s_t)\,\bot(A_t)$.

    $$\mathcal{J}^{\mathrm{SF}} = \sum_{t=0}^{T-1} \log\pi_\theta(a_t\mid s_t)\, \bot(A_t).$$

    This is what most MAML-RL implementations differentiate (twice). With
    $A_t = R_t - b(s_t)$, $R_t = \sum_{t' \ge t}\gamma^{t'} r_{t'}$, its **gradient** is the exact
    REINFORCE gradient in expectation, but its expected **Hessian** is only

    $$\mathbb{E}[\nabla^2 \mathcal{J}^{\mathrm{SF}}] = H_2 =
      \mathbb{E}\Big[\sum_t \nabla^2\log\pi_t\, R_t\Big],$$

    which is missing $H_1 = \mathbb{E}[\sum_t \nabla\log\pi_t\nabla\log\pi_t^\top R_t]$ and the
    cross terms $H_{12} + H_{12}^\top$ (stated for $b = 0$: a baseline shifts the expected
    Hessian further, by $-\mathbb{E}[\sum_t b(s_t) \nabla^2\log\pi_t]$, which is not zero). The
    surrogate's value is not the return, so differentiating its gradient ignores how the
    sampling distribution itself depends on $\theta$. Meta-gradients through an inner step
    built on it are therefore biased. Use
    [metaops.estimators.dice_objective][] (exact) or [metaops.estimators.lvc_objective][]
    ($H_1 + H_2$) when the inner step must be differentiated; use this one knowingly, e.g. for
    first-order methods or as an outer objective.

    Args:
        log_probs: $\log\pi_\theta(a_t\mid s_t)$, shape `(..., T)`, carrying the graph.
        advantages: $A_t$, shape `(..., T)`; treated as constants.
        mask: Optional padding mask `(..., T)`, 1 for real steps and 0 for padding.
            Right padding: each row is one trajectory, `1...1 0...0` (it may end early, never
            restart); put separate episodes in separate rows.

    Returns:
        The surrogate, shape `(...)` (its value is not an estimate of the return).
        **Maximise** it.

    Raises:
        TypeError: If a tensor is not floating point, or the dtypes differ.
        ValueError: If the shapes differ, the mask is all zeros, or (eagerly) a mask row has a 0
            followed by a 1, or the inputs are non-finite at real steps.

    Examples:
        >>> import torch
        >>> log_probs = torch.tensor([-1.0, -2.0], requires_grad=True)
        >>> objective = score_function_objective(log_probs, torch.tensor([1.0, 0.5]))
        >>> objective
        tensor(-2., grad_fn=<SumBackward1>)
        >>> torch.autograd.grad(objective, log_probs)[0]
        tensor([1.0000, 0.5000])

    References:
        Williams, "Simple statistical gradient-following algorithms for connectionist
        reinforcement learning", Machine Learning 1992.

        Rothfuss et al., "ProMP: Proximal Meta-Policy Search", ICLR 2019 (Hessian terms).
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
    return (log_probs * advantages).sum(-1)
