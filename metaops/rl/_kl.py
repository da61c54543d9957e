"""Differentiable KL between policies and its Hessian-vector products (Fisher products)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from metaops.estimators._validate import as_mask
from metaops.linalg import hvp
from metaops.tree import tree_axpy
from metaops.typing import Params

__all__ = ["mean_kl", "kl_hvp"]


def mean_kl(
    policy: nn.Module,
    params_p: Params,
    params_q: Params,
    observations: Tensor,
    *,
    mask: Tensor | None = None,
) -> Tensor:
    r"""Average $\mathrm{KL}(\pi_p(\cdot\mid s)\,\|\,\pi_q(\cdot\mid s))$ over the real steps.

    $$\overline{\mathrm{KL}} = \frac{\sum_{t} m_t\, \mathrm{KL}\big(\pi_{\theta_p}(\cdot\mid s_t)
      \,\|\, \pi_{\theta_q}(\cdot\mid s_t)\big)}{\sum_t m_t}.$$

    Both parameter dicts are applied to ``policy`` with ``torch.func.functional_call`` and the
    KL comes from ``policy.kl``, so it is differentiable in both (stop the gradient of the
    reference yourself, e.g. with ``metaops.tree.stop_gradient(params_p)`` for TRPO's
    $\mathrm{KL}(\pi_{\text{old}}\,\|\,\pi_\theta)$). Either set may be the output of an inner
    adaptation step, which makes this the constraint of MAML-TRPO and ProMP's KL penalty.

    Args:
        policy: A policy module such as [metaops.rl.GaussianMLPPolicy][].
        params_p: Parameters of $\pi_p$ (the first KL argument).
        params_q: Parameters of $\pi_q$.
        observations: States $s_t$, shape `(..., T, obs_dim)`.
        mask: Optional padding mask `(..., T)`, 1 for real steps and 0 for padding.

    Returns:
        A scalar: the mean KL over real steps (minimise it, or constrain it).

    Raises:
        ValueError: If the mask shape does not match the observations, or it is all zeros.

    Examples:
        >>> from metaops.rl import CategoricalMLPPolicy
        >>> policy = CategoricalMLPPolicy(2, 3, hidden_sizes=(4,))
        >>> params = dict(policy.named_parameters())
        >>> mean_kl(policy, params, params, torch.randn(5, 2))
        tensor(0., grad_fn=<MeanBackward0>)
    """
    dist_p = torch.func.functional_call(policy, params_p, (observations,))
    dist_q = torch.func.functional_call(policy, params_q, (observations,))
    kl = policy.kl(dist_p, dist_q)  # (..., T)
    if mask is None:
        return kl.mean()
    bool_mask = as_mask(mask, "kl per step", kl)
    weights = bool_mask.to(kl.dtype)
    kl = torch.where(bool_mask, kl, torch.zeros((), dtype=kl.dtype, device=kl.device))
    return (kl * weights).sum() / weights.sum()


def kl_hvp(kl_fn: Callable[[Params], Tensor], params: Params, v: Params, *, damping: float = 0.0) -> Params:
    r"""Fisher-vector product: the damped Hessian-vector product of a KL, $(\nabla^2 D + \beta I)v$.

    For $D(\theta) = \overline{\mathrm{KL}}(\pi_{\bot(\theta_\text{old})} \,\|\, \pi_\theta)$ the
    Hessian at $\theta = \theta_\text{old}$ is the Fisher information matrix (of the action
    distributions, averaged over states), the metric of natural gradients and TRPO. Computed
    with [metaops.linalg.hvp][], so the matrix is never formed, and it
    works when ``kl_fn`` runs through an inner adaptation step (the HVP then differentiates
    through the inner gradient: a third-order product, still exact).

    Args:
        kl_fn: Scalar KL as a function of the parameters, e.g. built with
            [metaops.rl.mean_kl][].
        params: Point $\theta$ where the Hessian is taken.
        v: Direction, shaped like ``params``.
        damping: $\beta \ge 0$ added to the diagonal.

    Returns:
        $(\nabla^2 D(\theta) + \beta I)\, v$, shaped like ``params``.

    Examples:
        >>> kl_fn = lambda p: 0.5 * (3.0 * p["w"] ** 2).sum()
        >>> kl_hvp(kl_fn, {"w": torch.zeros(2)}, {"w": torch.ones(2)}, damping=0.1)
        {'w': tensor([3.1000, 3.1000])}
    """
    product = hvp(kl_fn, params, v)
    if damping:
        product = tree_axpy(damping, v, product)
    return product
