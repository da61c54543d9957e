"""PPO's clipped surrogate and ProMP's outer objective."""

from __future__ import annotations

import torch
from torch import Tensor

from metaops.estimators._validate import apply_mask, check_rollout

__all__ = ["ppo_clip_objective", "promp_objective"]


def ppo_clip_objective(
    log_probs: Tensor,
    old_log_probs: Tensor,
    advantages: Tensor,
    *,
    clip: float = 0.2,
    mask: Tensor | None = None,
) -> Tensor:
    r"""Computes PPO's clipped likelihood-ratio objective, summed over time.

    With $\rho_t = \pi_\theta(a_t\mid s_t) / \pi_{\theta_\text{old}}(a_t\mid s_t)$:

    $$\mathcal{J}^{\mathrm{CLIP}} = \sum_{t=0}^{T-1}
      \min\big(\rho_t A_t,\ \operatorname{clip}(\rho_t, 1-\epsilon, 1+\epsilon) A_t\big).$$

    The old log-probabilities and the advantages are constants. At $\theta = \theta_\text{old}$
    its gradient equals that of [metaops.estimators.lvc_objective][] with ``sampling_log_probs``; away from it
    the clip removes the incentive to move $\rho_t$ outside $[1-\epsilon, 1+\epsilon]$.

    Args:
        log_probs: $\log\pi_\theta(a_t\mid s_t)$, shape `(..., T)`.
        old_log_probs: $\log\pi_{\theta_\text{old}}(a_t\mid s_t)$, shape `(..., T)`.
        advantages: $A_t$, shape `(..., T)` (often normalised per task).
        clip: $\epsilon > 0$.
        mask: Optional padding mask `(..., T)`, 1 for real steps and 0 for padding.

    Returns:
        Shape `(...)`, one sum per trajectory. **Maximise** it; divide by the number of real
        steps for the per-step mean that PPO implementations usually report.

    Raises:
        TypeError: If a tensor is not floating point, or the dtypes differ.
        ValueError: If the shapes differ, ``clip`` is not positive, the mask is all zeros, or
            (eagerly) the inputs are non-finite at real steps.

    Examples:
        >>> old = torch.log(torch.tensor([0.5, 0.5]))
        >>> new = torch.log(torch.tensor([0.9, 0.1]))
        >>> ppo_clip_objective(new, old, torch.tensor([1.0, 1.0]), clip=0.2)
        tensor(1.4000)

    References:
        Schulman et al., "Proximal Policy Optimization Algorithms", 2017.
    """
    bool_mask = check_rollout(
        "log_probs",
        log_probs,
        mask=mask,
        finite=("log_probs", "old_log_probs", "advantages"),
        old_log_probs=old_log_probs,
        advantages=advantages,
    )
    if not isinstance(clip, (int, float)) or clip <= 0:
        raise ValueError(f"clip must be a positive float, got {clip!r}")
    ratio = torch.exp(apply_mask(log_probs - old_log_probs.detach(), bool_mask))
    advantages = apply_mask(advantages.detach(), bool_mask)
    clipped = torch.clamp(ratio, 1.0 - clip, 1.0 + clip)
    return torch.minimum(ratio * advantages, clipped * advantages).sum(-1)


def promp_objective(
    log_probs: Tensor,
    old_log_probs: Tensor,
    advantages: Tensor,
    *,
    kl: Tensor,
    kl_coeff: float | Tensor,
    clip: float = 0.2,
    mask: Tensor | None = None,
) -> Tensor:
    r"""Computes ProMP's outer objective: clipped ratio on post-update data minus a KL penalty.

    $$\mathcal{J}^{\mathrm{ProMP}}(\theta) = \mathcal{J}^{\mathrm{CLIP}}_{\theta_\text{o}'}
      \big(\theta'\big) - \eta\, \overline{\mathrm{KL}}\big(\pi_{\theta_\text{o}} \,\|\,
      \pi_\theta\big),$$

    where $\theta' = \theta + \alpha \nabla_\theta \mathcal{J}^{\mathrm{LVC}}(\theta)$ is the
    adapted policy, the clipped term ([metaops.estimators.ppo_clip_objective][]) is evaluated on
    post-update trajectories sampled with $\pi_{\theta_\text{o}'}$, and the KL penalty keeps the
    *pre-update* policy close to the one that sampled the pre-update data (compute it with
    [metaops.rl.mean_kl][] on pre-update observations).

    Args:
        log_probs: $\log\pi_{\theta'}(a_t\mid s_t)$ of the post-update data under the adapted
            parameters (carrying the graph through the inner step), shape `(..., T)`.
        old_log_probs: Log-probs of the sampling (old adapted) policy, shape `(..., T)`.
        advantages: Post-update advantages $A_t$, shape `(..., T)`.
        kl: The KL penalty term, broadcastable to `(...)` (a scalar or one value per task).
        kl_coeff: $\eta \ge 0$ (ProMP adapts it per task; pass a tensor for that).
        clip: $\epsilon > 0$.
        mask: Optional padding mask `(..., T)`, 1 for real steps and 0 for padding.

    Returns:
        Shape `(...)`. **Maximise** it.

    Raises:
        TypeError: If a tensor is not floating point, or the dtypes differ.
        ValueError: As for [metaops.estimators.ppo_clip_objective][].

    Examples:
        >>> lp = torch.log(torch.tensor([0.5, 0.5]))
        >>> promp_objective(lp, lp, torch.ones(2), kl=torch.tensor(0.5), kl_coeff=0.1)
        tensor(1.9500)

    References:
        Rothfuss et al., "ProMP: Proximal Meta-Policy Search", ICLR 2019.
    """
    surrogate = ppo_clip_objective(log_probs, old_log_probs, advantages, clip=clip, mask=mask)
    return surrogate - kl_coeff * kl
