"""Implicit MAML: the inner loop as a proximal problem, differentiated at its solution."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import torch
from torch import Tensor

from metaops.inner._adapt import checked_loss, unrolled_steps
from metaops.inner._base import InnerOptimizer
from metaops.inner._modes import Implicit, check_implicit_args
from metaops.inner._partial import with_frozen
from metaops.inner._validate import check_params, check_steps, split_tensors, under_transform
from metaops.linalg._cg import cg
from metaops.linalg._hvp import hvp
from metaops.tree import tree_axpy, tree_sq_dist
from metaops.typing import LossFn, Params

__all__ = ["implicit_loop", "implicit_value_and_grad", "proximal_loss"]


def proximal_loss(loss_fn: LossFn, anchor: Params, *, reg: float) -> LossFn:
    r"""Returns the proximal inner objective $\mathcal{L}(\phi) + \frac{\lambda}{2}\lVert\phi-\theta\rVert^2$.

    Args:
        loss_fn: Task loss ``loss_fn(params, batch)``.
        anchor: The meta-parameters $\theta$ the solution is pulled towards.
        reg: Regularisation strength $\lambda > 0$.

    Returns:
        A loss function with the same signature as ``loss_fn``.

    Examples:
        >>> import torch
        >>> prox = proximal_loss(lambda p, b: p["w"].sum(), {"w": torch.zeros(1)}, reg=2.0)
        >>> prox({"w": torch.ones(1)}, None)
        tensor(2.)
    """
    return lambda params, batch: loss_fn(params, batch) + 0.5 * reg * tree_sq_dist(params, anchor)


def implicit_loop(
    loss_fn: LossFn, params: Params, batch: Any, optimizer: InnerOptimizer, steps: int, mode: Implicit,
    *, frozen: Params | None = None, names: list[str] | None = None,
) -> Params:
    r"""Solves the proximal problem and differentiates at the solution (see [metaops.inner.implicit][]).

    With ``frozen`` parameters $\beta$ (partial adaptation; ``names`` orders all parameters for
    ``loss_fn``) the problem is over the adapted ones only, and the implicit function theorem
    applied to $\nabla_\phi \hat{\mathcal{L}}(\phi^\star, \beta) + \lambda(\phi^\star - \theta) = 0$
    also gives $\beta$ its gradient, $-\frac{1}{\lambda}\big(\nabla^2_{\phi\beta}
    \hat{\mathcal{L}}\big)^{\top} (I + H/\lambda)^{-1} g$.
    """
    frozen = frozen or {}
    needing = [
        name for name, leaf in _named_leaves(optimizer.hyperparams)
        if isinstance(leaf, Tensor) and leaf.requires_grad
    ]
    if needing:
        raise ValueError(
            f"mode=implicit(...) differentiates only with respect to the initial parameters, but "
            f"the optimizer {optimizer.name}'s hyperparameters {needing} need a meta-gradient "
            "(the proximal solution does not depend on them, so they would get none). Use "
            "mode=unrolled() or checkpointed() to learn them, or detach them."
        )
    all_names = names if names is not None else list(params)
    names = list(params)
    tensors, rebuild_batch = split_tensors(batch)
    spec = _Spec(
        loss_fn=loss_fn,
        optimizer=optimizer,
        steps=steps,
        reg=mode.reg,
        cg_steps=mode.cg_steps,
        names=names,
        rebuild_batch=rebuild_batch,
        check_finite=not under_transform(),
        frozen_names=list(frozen),
        all_names=all_names,
    )
    out = _ImplicitSolve.apply(spec, *[params[n] for n in names], *frozen.values(), *tensors)
    return dict(zip(names, out))


def _named_leaves(tree: Any, prefix: str = "") -> list[tuple[str, Any]]:
    if isinstance(tree, dict):
        return [item for k, v in tree.items() for item in _named_leaves(v, f"{prefix}{k}.")]
    if isinstance(tree, (list, tuple)):
        return [item for i, v in enumerate(tree) for item in _named_leaves(v, f"{prefix}{i}.")]
    return [(prefix.rstrip("."), tree)]


def _solve_proximal(
    loss_fn: LossFn, anchor: Params, batch: Any, optimizer: InnerOptimizer, reg: float, steps: int,
    *, check_finite: bool,
) -> Params:
    """Runs ``optimizer`` on the proximal problem from ``anchor`` (detached) without a graph."""
    prox = proximal_loss(loss_fn, anchor, reg=reg)
    phi, _ = unrolled_steps(
        prox, anchor, batch, optimizer, optimizer.init(anchor), optimizer.hyperparams, steps,
        check_finite=check_finite,
    )
    return {name: value.detach() for name, value in phi.items()}


def _inverse_hessian_product(
    loss_fn: LossFn, phi: Params, batch: Any, g: Params, reg: float, cg_steps: int
) -> Params:
    r"""$(I + H/\lambda)^{-1} g$ by ``cg_steps`` iterations of CG, $H$ the support Hessian at ``phi``."""
    support_loss = lambda p: checked_loss(loss_fn, p, batch)  # noqa: E731
    matvec = lambda v: tree_axpy(1.0 / reg, hvp(support_loss, phi, v), v)  # noqa: E731
    return cg(matvec, g, steps=cg_steps)


def implicit_value_and_grad(
    outer_loss_fn: Callable[[Params], Tensor],
    loss_fn: LossFn,
    params: Params,
    batch: Any,
    optimizer: InnerOptimizer,
    *,
    reg: float,
    steps: int,
    cg_steps: int = 5,
) -> tuple[Tensor, Params]:
    r"""One task's iMAML outer loss and implicit meta-gradient, computed explicitly.

    The same numbers as differentiating ``outer_loss_fn(adapt(loss_fn, params, batch,
    optimizer, steps=steps, mode=implicit(reg=reg, cg_steps=cg_steps)))``, without a custom
    ``torch.autograd.Function``: the proximal solution $\phi^\star$ is found without a graph,
    then

    $$\nabla_\theta\, \mathcal{L}_{\text{out}}(\phi^\star) =
      \Big(I + \frac{1}{\lambda} \nabla^2 \hat{\mathcal{L}}(\phi^\star)\Big)^{-1}
      \nabla_\phi \mathcal{L}_{\text{out}}(\phi^\star)$$

    is solved by ``cg_steps`` iterations of CG (see [metaops.inner.implicit][] for the
    derivation and for how large $\lambda$ must be). Because it is plain ``torch.func`` code,
    it works under ``vmap`` and compiles with [metaops.compile_meta_step][] (torch.compile
    silently drops a custom ``autograd.Function``'s backward under ``torch.func`` transforms,
    so [metaops.inner.implicit][] itself always runs eagerly). Use it to average over tasks
    with [metaops.map_tasks][], as in the example.

    Args:
        outer_loss_fn: The outer (e.g. query) loss as a function of the adapted parameters
            only, ``phi -> scalar``; it may capture the query batch.
        loss_fn: Inner (support) loss ``loss_fn(params, batch)``.
        params: Meta-parameters $\theta$, the start and anchor of the inner problem.
        batch: Support batch passed to ``loss_fn``.
        optimizer: Inner optimizer that solves the proximal problem (e.g. ``sgd(0.1)``).
        reg: Proximal regularisation $\lambda > 0$.
        steps: Inner steps.
        cg_steps: Conjugate-gradient iterations.

    Returns:
        ``(outer_loss, grads)``: the outer loss at $\phi^\star$ (detached) and its implicit
        gradient with respect to ``params``.

    Raises:
        ValueError: For ``reg <= 0``, ``cg_steps < 1``, ``steps < 1`` or a non-scalar loss.
        NonFiniteError: If the inner loss or its gradient turns NaN/inf (outside transforms).

    Examples:
        >>> from metaops import map_tasks
        >>> from metaops.inner import sgd
        >>> loss_fn = lambda p, b: 0.5 * 3.0 * ((p["w"] - b) ** 2).sum()   # H = 3 I
        >>> def task(theta, support, query):
        ...     outer = lambda phi: ((phi["w"] - query) ** 2).sum()
        ...     return implicit_value_and_grad(outer, loss_fn, theta, support, sgd(0.1),
        ...                                    reg=1.0, steps=100, cg_steps=3)
        >>> theta = {"w": torch.zeros(1)}
        >>> losses, grads = map_tasks(task, in_dims=(None, 0, 0))(
        ...     theta, torch.ones(2, 1), torch.ones(2, 1))
        >>> grads["w"].mean(0)            # (1 + 3)^-1 * 2 (phi* - 1), phi* = 3/4
        tensor([-0.1250])
    """
    if not isinstance(optimizer, InnerOptimizer):
        raise TypeError(f"implicit_value_and_grad expects an InnerOptimizer, got {type(optimizer).__name__}")
    check_implicit_args("implicit_value_and_grad", reg, cg_steps)
    check_params(params)
    check_steps(steps)
    check_finite = not under_transform()
    anchor = {name: value.detach() for name, value in params.items()}
    phi = _solve_proximal(loss_fn, anchor, batch, optimizer, float(reg), steps, check_finite=check_finite)

    def outer(p: Params) -> Tensor:
        return checked_loss(lambda q, _: outer_loss_fn(q), p, None)

    g, value = torch.func.grad_and_value(outer)(phi)
    return value.detach(), _inverse_hessian_product(loss_fn, phi, batch, g, float(reg), cg_steps)


class _Spec(NamedTuple):
    loss_fn: Any
    optimizer: InnerOptimizer
    steps: int
    reg: float
    cg_steps: int
    names: list
    rebuild_batch: Any
    check_finite: bool
    frozen_names: list
    all_names: list

    def split(self, inputs):
        n, f = len(self.names), len(self.frozen_names)
        frozen = dict(zip(self.frozen_names, inputs[n : n + f]))
        return dict(zip(self.names, inputs[:n])), frozen, self.rebuild_batch(inputs[n + f :])

    def loss(self, frozen):
        return with_frozen(self.loss_fn, frozen, self.all_names)


class _ImplicitSolve(torch.autograd.Function):
    generate_vmap_rule = True

    @staticmethod
    def forward(spec: _Spec, *inputs: Tensor):
        theta, frozen, batch = spec.split(inputs)
        anchor = {k: v.detach() for k, v in theta.items()}
        frozen = {k: v.detach() for k, v in frozen.items()}
        phi = _solve_proximal(
            spec.loss(frozen), anchor, batch, spec.optimizer, spec.reg, spec.steps, check_finite=spec.check_finite
        )
        return tuple(phi[n] for n in spec.names)

    @staticmethod
    def setup_context(ctx, inputs, output):
        spec, *tensor_inputs = inputs
        ctx.spec = spec
        n = len(spec.names)
        ctx.save_for_backward(*output, *tensor_inputs[n:])

    @staticmethod
    def backward(ctx, *grad_outputs):
        spec: _Spec = ctx.spec
        n = len(spec.names)
        saved = ctx.saved_tensors
        phi, frozen, batch = spec.split(saved)
        g = {
            name: (gi if gi is not None else torch.zeros_like(phi[name]))
            for name, gi in zip(spec.names, grad_outputs)
        }
        loss_fn = spec.loss(frozen)
        solution = _inverse_hessian_product(loss_fn, phi, batch, g, spec.reg, spec.cg_steps)
        frozen_grads = []
        if frozen:  # -(1/reg) (d^2 L / d phi d frozen)^T solution
            _, vjp_fn = torch.func.vjp(
                lambda fz: torch.func.grad(lambda p: checked_loss(spec.loss(fz), p, batch))(phi), frozen
            )
            (mixed,) = vjp_fn(solution)
            frozen_grads = [-mixed[name] / spec.reg for name in spec.frozen_names]
        # The implicit gradient is first-order only: any attempt to differentiate it again
        # reaches _FirstOrderOnly's backward and raises, instead of returning the derivative of
        # the CG iterations (which is not the second derivative of the meta-loss).
        connect = [*phi.values(), *g.values(), *frozen.values()]
        out = [_FirstOrderOnly.apply(solution[name].detach(), *connect) for name in spec.names]
        out += [_FirstOrderOnly.apply(grad.detach(), *connect) for grad in frozen_grads]
        return (None, *out, *([None] * (len(saved) - n - len(frozen_grads))))


class _FirstOrderOnly(torch.autograd.Function):
    generate_vmap_rule = True

    @staticmethod
    def forward(value, *connect):
        return value.clone()

    @staticmethod
    def setup_context(ctx, inputs, output):
        pass

    @staticmethod
    def backward(ctx, *grad_outputs):
        raise RuntimeError(
            "mode=implicit(...) gives first derivatives of the meta-loss only: its gradient "
            "(I + H/reg)^-1 g cannot be differentiated again (a Hessian-vector product, TRPO's "
            "Fisher products or torch.func.hessian through it). Use mode=unrolled() or "
            "checkpointed() where a second derivative is needed."
        )
