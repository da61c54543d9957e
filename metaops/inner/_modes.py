r"""How [metaops.inner.adapt][] differentiates its inner loop: the four differentiation modes.

An inner optimizer says *how to step*; a mode says *how to differentiate* the steps. The two
are independent: every mode works with every optimizer, and the mode is chosen in one place,
the ``mode=`` argument of [metaops.inner.adapt][].
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Unrolled", "FirstOrder", "Checkpointed", "Implicit", "Mode",
           "unrolled", "first_order", "checkpointed", "implicit"]


@dataclass(frozen=True)
class Unrolled:
    """The full unroll: the exact meta-gradient at every order (see [metaops.inner.unrolled][])."""


@dataclass(frozen=True)
class FirstOrder:
    """First-order MAML: inner gradients are constants (see [metaops.inner.first_order][])."""


@dataclass(frozen=True)
class Checkpointed:
    """Gradient checkpointing: exact, bounded activations (see [metaops.inner.checkpointed][])."""


@dataclass(frozen=True)
class Implicit:
    """Implicit differentiation at the proximal solution (see [metaops.inner.implicit][])."""

    reg: float
    cg_steps: int = 5


Mode = Unrolled | FirstOrder | Checkpointed | Implicit
MODES = (Unrolled, FirstOrder, Checkpointed, Implicit)


def unrolled() -> Unrolled:
    r"""Differentiates through every inner step: the exact meta-gradient, at every order.

    $$\phi_0 = \theta, \qquad \phi_{k+1} = \mathrm{step}\big(\phi_k,
      \nabla_\phi \hat{\mathcal{L}}(\phi_k)\big), \qquad
      \frac{d\phi_K}{d\theta} = \prod_{k=K-1}^{0} \frac{\partial \phi_{k+1}}{\partial \phi_k}.$$

    Memory holds the activations of all $K$ steps. Meta-gradients reach the initial
    parameters, the optimizer's tensor hyperparameters (e.g. Meta-SGD rates) and anything the
    loss captures. This is the default mode of [metaops.inner.adapt][].

    Returns:
        The mode, for ``adapt(..., mode=unrolled())``.

    Examples:
        >>> import torch
        >>> from metaops.inner import adapt, sgd, unrolled
        >>> loss_fn = lambda p, b: ((p["w"] - b) ** 2).sum()
        >>> theta = {"w": torch.tensor([0.0], requires_grad=True)}
        >>> phi = adapt(loss_fn, theta, torch.ones(1), sgd(0.25), steps=1, mode=unrolled())
        >>> loss_fn(phi, torch.ones(1)).backward()   # d/dw (1 - 0.5) (w - 1))^2 = -0.5
        >>> theta["w"].grad
        tensor([-0.5000])
    """
    return Unrolled()


def first_order(*args: object) -> FirstOrder:
    r"""Drops second-order terms: the inner gradients are treated as constants (FOMAML).

    Each step uses $\bot\big(\nabla_\phi \hat{\mathcal{L}}(\phi_k)\big)$ ($\bot$: stop
    gradient), so $\frac{d\phi_{k+1}}{d\phi_k} = I$ for SGD and the meta-gradient reduces to
    the query-loss gradient at the adapted point, $\nabla_\phi \mathcal{L}_{\text{query}}(\phi)$,
    without any Hessian-vector product. Gradients still reach tensor hyperparameters (Meta-SGD
    rates) and the optimizer state's dependence on the parameters (e.g. Adam's normalisation).

    Returns:
        The mode, for ``adapt(..., mode=first_order())``.

    Raises:
        TypeError: If called with an optimizer (the pre-0.2 wrapper form ``first_order(opt)``).

    Examples:
        >>> import torch
        >>> from metaops.inner import adapt, first_order, sgd
        >>> loss_fn = lambda p, b: ((p["w"] - b) ** 2).sum()
        >>> theta = {"w": torch.tensor([0.0], requires_grad=True)}
        >>> phi = adapt(loss_fn, theta, torch.ones(1), sgd(0.25), steps=1, mode=first_order())
        >>> loss_fn(phi, torch.ones(1)).backward()   # 2 (phi - 1) = 2 (0.5 - 1)
        >>> theta["w"].grad
        tensor([-1.])
    """
    _no_optimizer("first_order", args)
    return FirstOrder()


def checkpointed(*args: object) -> Checkpointed:
    r"""Runs the inner loop with gradient checkpointing: the exact meta-gradient, less memory.

    The forward pass keeps only the parameters (and optimizer state) after each step,
    $\phi_0, \dots, \phi_{K-1}$, without an autograd graph. The backward pass walks the steps
    in reverse, recomputing one step at a time and pulling the adjoint back through it:

    $$\bar\phi_{k} = \Big(\frac{\partial \phi_{k+1}}{\partial \phi_k}\Big)^{\!\top} \bar\phi_{k+1},
      \qquad \bar h \mathrel{+}= \Big(\frac{\partial \phi_{k+1}}{\partial h}\Big)^{\!\top}
      \bar\phi_{k+1},$$

    where $h$ are the optimizer's tensor ``hyperparams`` (e.g. Meta-SGD rates). The backward
    pass is itself differentiable, so second derivatives (Hessian-vector products of the
    meta-loss, TRPO's Fisher products) are exact as well. Memory holds $K$ parameter copies
    plus the activations of one step, instead of the activations of all $K$ steps, at the
    price of recomputing each step once more. The support ``batch`` and anything ``loss_fn``
    captures are treated as constants: parameters held fixed in the inner loop that need a
    meta-gradient belong in ``params`` with ``adapt(..., only=...)``. It runs eagerly inside
    [metaops.compile_meta_step][] (torch.compile would drop its ``torch.autograd.Function``'s
    backward).

    Returns:
        The mode, for ``adapt(..., mode=checkpointed())``.

    Raises:
        TypeError: If called with an optimizer (the pre-0.2 wrapper form ``checkpointed(opt)``).

    Examples:
        >>> import torch
        >>> from metaops.inner import adapt, checkpointed, sgd
        >>> loss_fn = lambda p, b: ((p["w"] - b) ** 4).sum()
        >>> def meta_grad(mode):
        ...     theta = {"w": torch.tensor([0.0, 1.0], requires_grad=True)}
        ...     phi = adapt(loss_fn, theta, torch.ones(2), sgd(0.1), steps=5, mode=mode)
        ...     loss_fn(phi, torch.ones(2)).backward()
        ...     return theta["w"].grad
        >>> torch.allclose(meta_grad(checkpointed()), meta_grad(None))
        True
    """
    _no_optimizer("checkpointed", args)
    return Checkpointed()


def implicit(*args: object, reg: float, cg_steps: int = 5) -> Implicit:
    r"""Differentiates the inner loop implicitly, as iMAML does: memory independent of steps.

    The inner loop minimises the proximal objective (see [metaops.inner.proximal_loss][])

    $$\phi^\star(\theta) = \arg\min_\phi \hat{\mathcal{L}}(\phi) + \frac{\lambda}{2}
      \lVert \phi - \theta \rVert^2$$

    by running the optimizer from $\theta$ without recording a graph. At the solution,
    $\nabla\hat{\mathcal{L}}(\phi^\star) + \lambda(\phi^\star - \theta) = 0$, and the implicit
    function theorem gives $\frac{d\phi^\star}{d\theta} = (I + \tfrac{1}{\lambda} H)^{-1}$ with
    $H = \nabla^2 \hat{\mathcal{L}}(\phi^\star)$. The backward pass maps an incoming gradient
    $g$ (e.g. $\nabla \mathcal{L}_{\text{query}}(\phi^\star)$) to

    $$\Big(I + \frac{1}{\lambda} H\Big)^{-1} g,$$

    solved by ``cg_steps`` iterations of [metaops.linalg.cg][] with Hessian-vector products
    ([metaops.linalg.hvp][]). The gradient is exact when the inner problem is solved exactly
    (enough steps) and CG has converged. Nothing is stored per inner step. Meta-gradients flow
    only to the initial parameters (with ``adapt(..., only=...)`` also to the frozen ones,
    through $\nabla^2_{\phi\beta}\hat{\mathcal{L}}$; anything ``loss_fn`` captures is a
    constant): an optimizer hyperparameter that needs a meta-gradient
    (a Meta-SGD rate being learned) raises, since the solution does not depend on it.
    The backward pass is not differentiable again: a second derivative raises.

    CG needs $I + H/\lambda$ positive definite, i.e. $\lambda > -\lambda_{\min}(H)$. Neural
    network losses often have negative curvature (about $-6$ on the sinusoid MLP); with too
    small a $\lambda$ [metaops.linalg.cg][] stops at the first direction of negative curvature,
    which keeps the result bounded but makes it a truncated, not the implicit, gradient.

    This mode runs eagerly inside [metaops.compile_meta_step][]; to compile iMAML use
    [metaops.inner.implicit_value_and_grad][], which computes the same meta-gradient.

    Args:
        reg: Proximal regularisation $\lambda > 0$.
        cg_steps: Conjugate-gradient iterations (fixed, so the whole thing vmaps).

    Returns:
        The mode, for ``adapt(..., mode=implicit(reg=..., cg_steps=...))``.

    Raises:
        ValueError: If ``reg <= 0`` or ``cg_steps < 1``.
        TypeError: If called with an optimizer (the pre-0.2 form ``implicit(opt, reg=...)``).

    Examples:
        >>> import torch
        >>> from metaops.inner import adapt, implicit, sgd
        >>> loss_fn = lambda p, b: 0.5 * ((p["w"] - b) ** 2).sum()   # H = I
        >>> theta = {"w": torch.tensor([0.0], requires_grad=True)}
        >>> phi = adapt(loss_fn, theta, torch.ones(1), sgd(0.5), steps=50,
        ...             mode=implicit(reg=1.0))           # phi* = (b + theta) / 2
        >>> phi["w"].detach()
        tensor([0.5000])
        >>> phi["w"].sum().backward()                     # (I + H / reg)^-1 1 = 0.5
        >>> theta["w"].grad
        tensor([0.5000])

    References:
        Rajeswaran, Finn, Kakade, Levine, "Meta-Learning with Implicit Gradients", NeurIPS 2019.
    """
    _no_optimizer("implicit", args, extra="reg=..., ")
    check_implicit_args("implicit", reg, cg_steps)
    return Implicit(reg=float(reg), cg_steps=cg_steps)


def check_implicit_args(where: str, reg: object, cg_steps: object) -> None:
    if isinstance(reg, bool) or not isinstance(reg, (int, float)) or not reg > 0:
        raise ValueError(f"{where} needs reg > 0 (a float), got {reg!r}")
    if isinstance(cg_steps, bool) or not isinstance(cg_steps, int) or cg_steps < 1:
        raise ValueError(f"{where} needs cg_steps >= 1 (an int), got {cg_steps!r}")


def _no_optimizer(name: str, args: tuple, extra: str = "") -> None:
    if args:
        raise TypeError(
            f"{name}() is a differentiation mode and takes no optimizer: write "
            f"adapt(loss_fn, params, batch, optimizer, steps=K, mode={name}({extra.rstrip(', ')})) "
            f"instead of wrapping the optimizer in {name}(...)"
        )


def check_mode(mode: object) -> Mode:
    """``mode`` itself, or ``Unrolled()`` for ``None``; a clear error for anything else."""
    if mode is None:
        return Unrolled()
    if isinstance(mode, MODES):
        return mode
    if callable(mode) and mode in (unrolled, first_order, checkpointed):
        raise TypeError(f"mode={mode.__name__} must be called: write mode={mode.__name__}()")
    raise TypeError(
        "mode must be one of metaops.inner.unrolled(), first_order(), checkpointed() or "
        f"implicit(reg=...), got {mode!r}"
    )
