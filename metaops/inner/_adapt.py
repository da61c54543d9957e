"""The inner loop: ``adapt`` runs an InnerOptimizer for a fixed number of steps."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal, overload

import torch
from torch import Tensor

from metaops._batchnorm import BatchNormUnderVmapError, batch_norm_context
from metaops._compile import note_eager_only
from metaops.inner._base import InnerOptimizer
from metaops.inner._modes import Checkpointed, FirstOrder, Implicit, Mode, check_mode
from metaops.inner._partial import merge, split_by_pattern, with_frozen
from metaops.inner._validate import all_finite, check_params, check_steps, under_transform, unreached_params
from metaops.tree import stop_gradient, tree_stack
from metaops.typing import LossFn, Params, PyTree

__all__ = ["adapt", "BatchNormUnderVmapError", "NonFiniteError"]


class NonFiniteError(FloatingPointError):
    """Raised when a loss or gradient becomes NaN or infinite during adaptation."""


def checked_loss(loss_fn: LossFn, params: Params, batch: Any, *, has_aux: bool = False) -> Any:
    """Calls ``loss_fn`` and checks that it returned a scalar tensor (private helper).

    With ``has_aux`` it must return ``(loss, aux)``, and so does this.
    """
    out = loss_fn(params, batch)
    if has_aux and not (isinstance(out, tuple) and len(out) == 2):
        raise TypeError(
            f"with has_aux=True, loss_fn must return a pair (loss, aux), got {type(out).__name__}"
            + (f" of length {len(out)}" if isinstance(out, tuple) else "")
        )
    loss = out[0] if has_aux else out
    if not isinstance(loss, Tensor):
        hint = "" if has_aux or not isinstance(out, tuple) else " (a tuple: pass has_aux=True for a (loss, aux) pair)"
        raise TypeError(f"loss_fn must return a scalar Tensor, got {type(loss).__name__}{hint}")
    if loss.dim() != 0:
        raise ValueError(
            f"loss_fn must return a scalar (0-dim) loss, got shape {tuple(loss.shape)}; "
            "reduce it, e.g. with .mean()"
        )
    return out


def _loss_using_every_param(loss_fn: LossFn, params: Params, batch: Any, *, has_aux: bool = False) -> Any:
    """``checked_loss``, raising ``ValueError`` for params the loss does not depend on."""
    out = checked_loss(loss_fn, params, batch, has_aux=has_aux)
    loss = out[0] if has_aux else out
    unused = unreached_params(loss, params)
    if unused:
        raise ValueError(
            f"adapt: the loss does not depend on params {unused}: their gradient is 0 at every "
            "inner step, so adapt would silently leave them unchanged. "
            "torch.func.functional_call ignores names the module does not have: check the "
            "names against model.named_parameters() (or call the model with "
            "metaops.nn.functional_call, which checks names and shapes), and leave parameters "
            "the loss does not use out of params."
        )
    return out


def _probably_finite(loss: Tensor, grads: Params) -> bool:
    # NaN/inf anywhere propagates into this sum; an overflow of finite values can only raise a
    # false alarm, which the exact per-tensor checks that follow then clear.
    total = loss.detach()
    for g in grads.values():
        total = total + g.detach().sum()
    return bool(torch.isfinite(total))


def unrolled_steps(
    loss_fn: LossFn,
    params: Params,
    batch: Any,
    optimizer: InnerOptimizer,
    state: Any,
    hyperparams: Any,
    steps: int,
    *,
    check_finite: bool,
    first_order: bool = False,
    aux_out: list | None = None,
) -> tuple[Params, Any]:
    """Runs ``steps`` differentiable optimizer steps (private; the plain unroll).

    With ``check_finite`` (outside transforms) the first step also checks that the loss
    depends on every parameter, and every step that the loss and gradients are finite.
    With a list ``aux_out``, ``loss_fn`` returns ``(loss, aux)`` and each step's aux is appended.
    """
    has_aux = aux_out is not None
    grad_fn = torch.func.grad_and_value(lambda p, b: checked_loss(loss_fn, p, b, has_aux=has_aux), has_aux=has_aux)
    first_grad_fn = torch.func.grad_and_value(
        lambda p, b: _loss_using_every_param(loss_fn, p, b, has_aux=has_aux), has_aux=has_aux
    )
    for k in range(steps):
        grads, loss = (first_grad_fn if check_finite and k == 0 else grad_fn)(params, batch)
        if has_aux:
            loss, aux = loss
            aux_out.append(aux)
        if first_order:
            grads = stop_gradient(grads)
        if check_finite and not _probably_finite(loss, grads):  # one host sync per step
            if not all_finite(loss):
                raise NonFiniteError(
                    f"adapt: the inner loss is {loss.item()} at inner step {k}; if the inner "
                    "loop diverges, lower the inner learning rate, else check the support "
                    "data for NaN/inf"
                )
            if not all_finite(grads):
                bad = sorted(n for n, g in grads.items() if not bool(torch.isfinite(g).all()))
                raise NonFiniteError(
                    f"adapt: non-finite gradient at inner step {k} for parameters {bad}; if "
                    "the inner loop diverges, lower the inner learning rate"
                )
        params, state = optimizer.step(params, grads, state, hyperparams)
    return params, state


@overload
def adapt(
    loss_fn: LossFn,
    params: Params,
    batch: Any,
    optimizer: InnerOptimizer,
    *,
    steps: int,
    mode: Mode | None = None,
    only: str | Sequence[str] | None = None,
    has_aux: Literal[False] = False,
) -> Params: ...


@overload
def adapt(
    loss_fn: Callable[[Params, Any], tuple[Tensor, PyTree]],
    params: Params,
    batch: Any,
    optimizer: InnerOptimizer,
    *,
    steps: int,
    mode: Mode | None = None,
    only: str | Sequence[str] | None = None,
    has_aux: Literal[True],
) -> tuple[Params, PyTree]: ...


def adapt(
    loss_fn: Callable[[Params, Any], Any],
    params: Params,
    batch: Any,
    optimizer: InnerOptimizer,
    *,
    steps: int,
    mode: Mode | None = None,
    only: str | Sequence[str] | None = None,
    has_aux: bool = False,
) -> Params | tuple[Params, PyTree]:
    r"""Adapts parameters to one task by ``steps`` inner-optimizer steps; returns the new params.

    $$\phi_0 = \theta, \qquad \phi_{k+1} = \mathrm{step}\big(\phi_k,
      \nabla_\phi \mathcal{L}_{\text{support}}(\phi_k)\big), \qquad \phi = \phi_K.$$

    The ``optimizer`` says how to step; the ``mode`` says how the steps are differentiated.
    Every optimizer works in every mode:

    | mode | meta-gradient | memory in the number of steps $K$ | derivatives |
    |---|---|---|---|
    | [metaops.inner.unrolled][]`()` (default) | exact | activations of $K$ steps | all orders |
    | [metaops.inner.checkpointed][]`()` | exact | $K$ parameter copies + 1 step | all orders |
    | [metaops.inner.first_order][]`()` | FOMAML (no second-order terms) | one step | surrogate's |
    | [metaops.inner.implicit][]`(reg=...)` | iMAML, at the proximal solution | constant | first only |

    A second derivative through ``implicit`` raises rather than return the derivative of the
    CG iterations. ``first_order``'s derivatives are those of the surrogate whose inner
    gradients are constants.
    Measured time and memory of each mode are in the performance guide.

    **Partial adaptation.** ``only`` adapts the parameters whose names match a glob pattern
    (``fnmatch``, matched against the whole name) and holds the others, $\theta_F$, fixed:
    with $\phi = (\phi_A, \theta_F)$,

    $$\phi_{A,k+1} = \mathrm{step}\big(\phi_{A,k},
      \nabla_{\phi_A} \mathcal{L}_{\text{support}}(\phi_{A,k}, \theta_F)\big).$$

    ANIL adapts the head only (``only="head.*"``), BOIL the body only (``only="body.*"``).
    The frozen parameters come back unchanged (the same tensors) and still receive their
    meta-gradient, both directly through the outer loss and through their effect on the
    adapted ones, $\frac{\partial \phi_{A,K}}{\partial \theta_F}$, in every mode
    (``first_order`` drops the latter, as it drops every second-order term; ``implicit``
    differentiates the proximal problem in $\phi_A$ alone). The optimizer sees only the adapted
    parameters: Meta-SGD rates, say, are keyed by the adapted names.

    **Auxiliary outputs.** With ``has_aux=True``, ``loss_fn`` returns ``(loss, aux)``, any
    pytree of tensors computed in the same forward pass (an accuracy, or ProMP's inner KL
    penalty at $\theta$, which needs the very forward that the first step differentiates),
    and ``adapt`` returns ``(phi, aux)``: each leaf of ``aux`` stacks the ``steps`` values
    along a new first dimension, ``aux[k]`` taken at $\phi_k$. They are differentiable in
    ``params`` like $\phi$. The ``unrolled`` and ``first_order`` modes support it.

    Works for one task and under ``torch.func.vmap`` for a batch of tasks, under
    ``torch.func.grad`` and with plain ``.backward()``. Gradients are taken with
    ``torch.func.grad``, never ``torch.autograd.grad``. Outside ``torch.func`` transforms each
    step checks that the loss and gradients are finite. Standard ``nn.BatchNorm`` layers in
    training mode normalise with the batch statistics inside the loop and leave their
    running buffers untouched (see the known-traps guide).

    Args:
        loss_fn: ``loss_fn(params, batch) -> scalar`` to minimise, typically calling
            ``torch.func.functional_call(model, params, ...)``.
        params: Initial parameters $\theta$, e.g. ``dict(model.named_parameters())``.
        batch: The task's support data, any pytree; passed to ``loss_fn`` unchanged.
        optimizer: An [metaops.inner.InnerOptimizer][] such as [metaops.inner.sgd][].
        steps: Number of inner steps $K \ge 1$ (static, so the loop vmaps).
        mode: How to differentiate: [metaops.inner.unrolled][] (default, also for ``None``),
            [metaops.inner.first_order][], [metaops.inner.checkpointed][] or
            [metaops.inner.implicit][].
        only: Adapt only the parameters whose names match this glob pattern, or any of these
            patterns (e.g. ``"head.*"`` or ``["head.*", "body.2.*"]``); ``None`` (default)
            adapts all of them.
        has_aux: ``loss_fn`` returns ``(loss, aux)``; return ``(phi, aux)`` with every step's
            aux stacked (see above).

    Returns:
        The adapted parameters $\phi$, a new dict with the keys of ``params`` in their order
        (the frozen ones are the very tensors of ``params``); with ``has_aux``, the pair
        ``(phi, aux)``.

    Raises:
        TypeError: If ``params`` is not a dict of floating tensors, ``loss_fn`` does not
            return a tensor, ``mode`` is not a mode, or ``only`` is not a pattern or a
            non-empty list of patterns, or ``has_aux=True`` and ``loss_fn`` does not return
            a pair.
        ValueError: If ``steps < 1``, ``has_aux=True`` with the ``checkpointed`` or
            ``implicit`` mode, the loss is not a scalar, ``mode=implicit(...)`` is
            combined with optimizer hyperparameters that need a meta-gradient, or (outside
            transforms, except in ``implicit`` mode) the loss does not depend on some of
            ``params``, e.g. names that ``functional_call`` ignored; the message names them.
            Also if a pattern of ``only`` matches no parameter; the message lists the names.
        NonFiniteError: If a loss or gradient becomes NaN/inf (outside transforms); the
            message names the inner step and the parameters.
        BatchNormUnderVmapError: If a second-order loop computes batch-norm statistics under
            ``vmap``, where torch's second-order gradient is wrong.

    Examples:
        >>> import torch
        >>> from metaops.inner import adapt, sgd
        >>> loss_fn = lambda p, b: ((b[0] * p["w"] - b[1]) ** 2).mean()
        >>> theta = {"w": torch.tensor(0.0, requires_grad=True)}
        >>> batch = (torch.tensor([1.0, 2.0]), torch.tensor([2.0, 4.0]))
        >>> phi = adapt(loss_fn, theta, batch, sgd(0.1), steps=1)
        >>> phi["w"]
        tensor(1., grad_fn=<SubBackward0>)
        >>> loss_fn(phi, batch).backward()   # dL/dphi * dphi/dtheta = -5 * (1 - 0.1 * 5)
        >>> theta["w"].grad
        tensor(-2.5000)

        ANIL: adapt the head, keep the body; the body still gets its meta-gradient.

        >>> model = torch.nn.Sequential()
        >>> model.body, model.head = torch.nn.Linear(1, 4), torch.nn.Linear(4, 1)
        >>> loss_fn = lambda p, b: ((torch.func.functional_call(model, p, (b[0],)) - b[1]) ** 2).mean()
        >>> theta = dict(model.named_parameters())
        >>> batch = (torch.randn(8, 1), torch.randn(8, 1))
        >>> phi = adapt(loss_fn, theta, batch, sgd(0.1), steps=2, only="head.*")
        >>> phi["body.weight"] is theta["body.weight"], phi["head.weight"] is theta["head.weight"]
        (True, False)
        >>> loss_fn(phi, batch).backward()
        >>> model.body.weight.grad is not None
        True

        An auxiliary output of each step's forward pass, here the support residual:

        >>> loss_and_residual = lambda p, b: (((b[0] * p["w"] - b[1]) ** 2).mean(), (b[0] * p["w"] - b[1]).mean())
        >>> theta = {"w": torch.tensor(0.0)}
        >>> batch = (torch.tensor([1.0, 2.0]), torch.tensor([2.0, 4.0]))
        >>> phi, residual = adapt(loss_and_residual, theta, batch, sgd(0.1), steps=2, has_aux=True)
        >>> residual  # at phi_0 = 0 and at phi_1 = 1
        tensor([-3.0000, -1.5000])
    """
    check_params(params)
    check_steps(steps)
    mode = check_mode(mode)
    if not isinstance(optimizer, InnerOptimizer):
        raise TypeError(
            f"optimizer must be a metaops.inner.InnerOptimizer (e.g. sgd(0.01)), got "
            f"{type(optimizer).__name__}"
        )
    if not isinstance(has_aux, bool):
        raise TypeError(f"has_aux must be a bool, got {type(has_aux).__name__}")
    if has_aux and isinstance(mode, (Checkpointed, Implicit)):
        raise ValueError(
            f"adapt: has_aux=True is supported in the unrolled and first_order modes, not in "
            f"{type(mode).__name__.lower()}(); compute the auxiliary output from the adapted params instead"
        )
    adapted, frozen = split_by_pattern(params, only)
    aux: list | None = [] if has_aux else None
    with batch_norm_context(refuse_batch_statistics=not isinstance(mode, FirstOrder)):
        phi = _run(loss_fn, adapted, batch, optimizer, steps, mode, frozen, list(params), aux)
    phi = merge(phi, frozen, list(params)) if frozen else phi
    return (phi, tree_stack(aux)) if has_aux else phi


def _run(loss_fn, params, batch, optimizer, steps, mode, frozen, names, aux_out=None):
    if isinstance(mode, Checkpointed):
        from metaops.inner._checkpointed import checkpointed_loop

        note_eager_only(_EAGER_ONLY.format("checkpointed()", torch.__version__))
        return checkpointed_loop(loss_fn, params, batch, optimizer, steps, frozen=frozen, names=names)
    if isinstance(mode, Implicit):
        from metaops.inner._implicit import implicit_loop

        note_eager_only(_EAGER_ONLY.format("implicit()", torch.__version__))
        return implicit_loop(loss_fn, params, batch, optimizer, steps, mode, frozen=frozen, names=names)
    state = optimizer.init(params)
    params, _ = unrolled_steps(
        with_frozen(loss_fn, frozen, names), params, batch, optimizer, state, optimizer.hyperparams, steps,
        check_finite=not under_transform(), first_order=isinstance(mode, FirstOrder), aux_out=aux_out,
    )
    return params


_EAGER_ONLY = (
    "mode={}: its torch.autograd.Function is not traceable by torch.compile under torch.func "
    "transforms (torch {})"
)
