"""A TRPO (meta-)step: natural gradient by conjugate gradient and a backtracking line search."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import torch
from torch import Tensor

from metaops.linalg import cg
from metaops.tree import stop_gradient, tree_add, tree_axpy, tree_scale, tree_vdot
from metaops.typing import Params

__all__ = ["TRPOInfo", "trpo_step"]


class TRPOInfo(NamedTuple):
    """Diagnostics of one [metaops.rl.trpo_step][] (plain Python numbers, for logging).

    Examples:
        >>> TRPOInfo(True, 0, 0.01, 0.5, 1.0, 1.5, {})._fields[:4]
        ('accepted', 'backtracks', 'kl', 'improvement')
    """

    accepted: bool
    """Whether a step satisfying both line-search conditions was found (else params unchanged)."""
    backtracks: int
    """Number of step shrinks before acceptance (``max_backtracks`` when rejected)."""
    kl: float
    """KL of the returned parameters (zero when rejected)."""
    improvement: float
    """Surrogate at the returned parameters minus the surrogate before (zero when rejected)."""
    surrogate_before: float
    """Surrogate at the input parameters."""
    surrogate_after: float
    """Surrogate at the returned parameters."""
    full_step: Params
    r"""The full natural step $\sqrt{2\delta / x^\top F x}\; x$ before backtracking."""


def _linearized_kl_hvp(
    kl_fn: Callable[[Params], Tensor], params: Params, *, damping: float
) -> Callable[[Params], Params]:
    """v -> (H + damping I) v for the Hessian H of kl_fn at params, with the gradient graph built once.

    The same products as [metaops.rl.kl_hvp][] (a vector-Jacobian product of the gradient), but
    the forward pass and the gradient are taken once and their graph is kept for all products.
    """
    _, vjp_fn = torch.func.vjp(torch.func.grad(kl_fn), params)

    def fvp(v: Params) -> Params:
        product = vjp_fn(v)[0]
        return tree_axpy(damping, v, product) if damping else product

    return fvp


def trpo_step(
    surrogate_fn: Callable[[Params], Tensor],
    kl_fn: Callable[[Params], Tensor],
    params: Params,
    *,
    max_kl: float = 0.01,
    damping: float = 1e-5,
    cg_steps: int = 10,
    backtrack_ratio: float = 0.8,
    max_backtracks: int = 15,
    fisher_kl_fn: Callable[[Params], Tensor] | None = None,
    line_search_fn: Callable[[Params], tuple[Tensor, Tensor]] | None = None,
    reduce: Callable[[Any], Any] | None = None,
    fisher_reduce: Callable[[Any], Any] | None = None,
) -> tuple[Params, TRPOInfo]:
    r"""Takes one TRPO step on a (meta-)objective under a KL trust region.

    With $g = \nabla_\theta \mathcal{J}(\theta)$ and $F = \nabla^2_\theta D(\theta)$ the Hessian
    of the KL (the Fisher matrix at $\theta$), conjugate gradient
    ([metaops.linalg.cg][], ``cg_steps`` iterations) solves $(F + \beta I) x = g$, the full step
    is scaled to the trust-region boundary of the quadratic model,

    $$\Delta = \sqrt{\frac{2\delta}{x^\top (F + \beta I) x}}\; x,$$

    and a backtracking line search tries $\theta + r^k \Delta$ for $k = 0, 1, \dots$, accepting
    the first candidate whose surrogate **improves** on $\mathcal{J}(\theta)$ and whose KL
    satisfies $D \le \delta$. If none does, the parameters are returned unchanged.

    ``surrogate_fn`` may contain an inner adaptation step (MAML-TRPO): the Fisher-vector
    products are HVPs of ``kl_fn`` at ``params`` (as [metaops.rl.kl_hvp][] computes them), which
    differentiate through the inner step. The gradient of the KL and its graph are computed
    **once** per step and every product of the conjugate-gradient solve reuses them (one
    backward pass per product instead of a forward, a backward and a double backward).
    ``fisher_kl_fn`` makes the products cheaper still: the KL on a subsample of the data
    (e.g. a quarter of the tasks, as rllab's ``subsample_factor``) defines $F$ while the line
    search checks the full ``kl_fn``. ``line_search_fn`` evaluates a candidate's surrogate and
    KL in one call, so that the work they share (MAML-TRPO's inner adaptation of every task) is
    done once per candidate instead of twice. The line search branches on values, so this
    function is not meant for ``vmap`` (vmap *inside* ``surrogate_fn`` and ``kl_fn`` over tasks
    instead).

    **Many processes.** With ``reduce``, each process's ``surrogate_fn`` and ``kl_fn`` cover its
    share of the data (e.g. its tasks) and ``reduce`` maps a pytree of this process's values to
    the values of the whole batch, e.g.
    ``lambda t: metaops.distributed.all_reduce_mean(t, count=my_tasks, group=group)``. It is
    applied to the surrogate's value and gradient (one call), to every Fisher-vector product and
    to each line-search candidate's surrogate and KL (one call), so every process takes the same
    step as one process holding all the data (up to float rounding). ``fisher_reduce`` (default
    ``reduce``) does the same for ``fisher_kl_fn``'s products when its share is counted
    differently (a subsample of the tasks).

    Args:
        surrogate_fn: $\mathcal{J}(\theta)$, a scalar to **maximise** (e.g. the mean over tasks
            of a likelihood-ratio objective on post-update data).
        kl_fn: $D(\theta)$, a scalar KL from the policy that sampled the data (held constant) to
            the policy at $\theta$, e.g. built with [metaops.rl.mean_kl][].
        params: Current parameters $\theta$ (treated as constants: the step is not
            differentiable).
        max_kl: Trust-region radius $\delta > 0$.
        damping: $\beta \ge 0$, added to $F$ for conditioning.
        cg_steps: Conjugate-gradient iterations.
        backtrack_ratio: Shrink factor $r \in (0, 1)$.
        max_backtracks: Number of candidates tried.
        fisher_kl_fn: The KL whose Hessian defines the Fisher products (default ``kl_fn``),
            for instance ``kl_fn`` restricted to a subsample of tasks or states. It must be
            zero with a zero gradient at ``params``, as ``kl_fn`` is.
        line_search_fn: ``theta -> (surrogate_fn(theta), kl_fn(theta))`` computed together
            (default: the two functions, one after the other). It must return the same values
            as the two functions; it is called without gradients.
        reduce: This process's values -> the whole batch's (see above); ``None``: one process.
        fisher_reduce: The same for ``fisher_kl_fn``'s products (default ``reduce``).

    Returns:
        ``(new_params, info)``: detached new parameters and a [metaops.rl.TRPOInfo][].

    Raises:
        ValueError: If a hyperparameter is out of range or the surrogate is not a finite
            scalar.

    Examples:
        >>> from metaops.estimators import lvc_objective
        >>> from metaops.rl import CategoricalMLPPolicy, mean_kl
        >>> _ = torch.manual_seed(0)
        >>> policy = CategoricalMLPPolicy(3, 2, hidden_sizes=(8,))
        >>> old = {k: v.detach() for k, v in policy.named_parameters()}
        >>> obs, actions, adv = torch.randn(16, 3), torch.randint(2, (16,)), torch.randn(16)
        >>> old_lp = policy.log_prob(policy(obs), actions).detach()
        >>> def surrogate_fn(p):
        ...     lp = policy.log_prob(torch.func.functional_call(policy, p, (obs,)), actions)
        ...     return lvc_objective(lp, adv, sampling_log_probs=old_lp) / 16
        >>> kl_fn = lambda p: mean_kl(policy, old, p, obs)
        >>> new, info = trpo_step(surrogate_fn, kl_fn, old, max_kl=0.01)
        >>> info.accepted, info.kl <= 0.01, info.improvement > 0
        (True, True, True)

    References:
        Schulman et al., "Trust Region Policy Optimization", ICML 2015.

        Finn et al., "Model-Agnostic Meta-Learning for Fast Adaptation of Deep Networks",
        ICML 2017 (MAML-TRPO).
    """
    if not max_kl > 0:
        raise ValueError(f"max_kl must be positive, got {max_kl!r}")
    if damping < 0:
        raise ValueError(f"damping must be non-negative, got {damping!r}")
    if not 0 < backtrack_ratio < 1:
        raise ValueError(f"backtrack_ratio must be in (0, 1), got {backtrack_ratio!r}")
    if not isinstance(max_backtracks, int) or max_backtracks < 1:
        raise ValueError(f"max_backtracks must be a positive int, got {max_backtracks!r}")
    params = stop_gradient(params)
    reduce = (lambda tree: tree) if reduce is None else reduce
    fisher_reduce = reduce if fisher_reduce is None else fisher_reduce
    grads, before = reduce(torch.func.grad_and_value(surrogate_fn)(params))
    if before.dim() != 0 or not bool(torch.isfinite(before)):
        raise ValueError(
            f"surrogate_fn must return a finite scalar, got shape {tuple(before.shape)} value {before.detach()}"
        )
    before_value = float(before)

    local_fvp = _linearized_kl_hvp(kl_fn if fisher_kl_fn is None else fisher_kl_fn, params, damping=damping)
    fvp = lambda v: fisher_reduce(local_fvp(v))  # noqa: E731

    direction = cg(fvp, grads, steps=cg_steps)
    curvature = float(tree_vdot(direction, fvp(direction)))
    if math.isfinite(curvature) and curvature > 0:
        scale = math.sqrt(2 * max_kl / curvature)
    else:
        scale = 0.0
    full_step = tree_scale(direction, scale)

    if line_search_fn is None:
        line_search_fn = lambda theta: (surrogate_fn(theta), kl_fn(theta))  # noqa: E731
    with torch.no_grad():
        for k in range(max_backtracks):
            candidate = tree_add(params, tree_scale(full_step, backtrack_ratio**k))
            values = line_search_fn(candidate)
            if not (isinstance(values, tuple) and len(values) == 2
                    and all(isinstance(v, Tensor) and v.dim() == 0 for v in values)):
                got = (", ".join(f"a tensor of shape {tuple(v.shape)}" if isinstance(v, Tensor) else type(v).__name__
                                 for v in values) if isinstance(values, tuple) else type(values).__name__)
                raise ValueError(f"line_search_fn must return a tuple (surrogate, kl) of two scalar tensors, got {got}")
            after, kl = (float(x) for x in reduce(values))
            improvement = after - before_value
            if math.isfinite(after) and math.isfinite(kl) and improvement > 0 and kl <= max_kl:
                info = TRPOInfo(True, k, kl, improvement, before_value, after, full_step)
                return stop_gradient(candidate), info
    info = TRPOInfo(False, max_backtracks, 0.0, 0.0, before_value, before_value, full_step)
    return params, info
