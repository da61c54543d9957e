"""The inner loop: ``adapt`` runs an InnerOptimizer for a fixed number of steps."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from metaops._batchnorm import BatchNormUnderVmapError, batch_norm_context
from metaops._compile import note_eager_only
from metaops.inner._base import InnerOptimizer
from metaops.inner._modes import Checkpointed, FirstOrder, Implicit, Mode, check_mode
from metaops.inner._partial import merge, split_by_pattern, with_frozen
from metaops.inner._validate import all_finite, check_params, check_steps, under_transform, unreached_params
from metaops.tree import stop_gradient
from metaops.typing import LossFn, Params

__all__ = ["adapt", "BatchNormUnderVmapError", "NonFiniteError"]


class NonFiniteError(FloatingPointError):
    """Raised when a loss or gradient becomes NaN or infinite during adaptation."""


def checked_loss(loss_fn: LossFn, params: Params, batch: Any) -> Tensor:
    """Calls ``loss_fn`` and checks that it returned a scalar tensor (private helper)."""
    loss = loss_fn(params, batch)
    if not isinstance(loss, Tensor):
        raise TypeError(f"loss_fn must return a scalar Tensor, got {type(loss).__name__}")
    if loss.dim() != 0:
        raise ValueError(
            f"loss_fn must return a scalar (0-dim) loss, got shape {tuple(loss.shape)}; "
            "reduce it, e.g. with .mean()"
        )
    return loss


def _loss_using_every_param(loss_fn: LossFn, params: Params, batch: Any) -> Tensor:
    """``checked_loss``, raising ``ValueError`` for params the loss does not depend on."""
    loss = checked_loss(loss_fn, params, batch)
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
    return loss


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
) -> tuple[Params, Any]:
    """Runs ``steps`` differentiable optimizer steps (private; the plain unroll).

    With ``check_finite`` (outside transforms) the first step also checks that the loss
    depends on every parameter, and every step that the loss and gradients are finite.
    """
    grad_fn = torch.func.grad_and_value(lambda p, b: checked_loss(loss_fn, p, b))
    first_grad_fn = torch.func.grad_and_value(lambda p, b: _loss_using_every_param(loss_fn, p, b))
    for k in range(steps):
        grads, loss = (first_grad_fn if check_finite and k == 0 else grad_fn)(params, batch)
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


def adapt(
    loss_fn: LossFn,
    params: Params,
    batch: Any,
    optimizer: InnerOptimizer,
    *,
    steps: int,
    mode: Mode | None = None,
    only: str | Sequence[str] | None = None,
) -> Params:
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

    Returns:
        The adapted parameters $\phi$, a new dict with the keys of ``params`` in their order
        (the frozen ones are the very tensors of ``params``).

    Raises:
        TypeError: If ``params`` is not a dict of floating tensors, ``loss_fn`` does not
            return a tensor, ``mode`` is not a mode, or ``only`` is not a pattern or a
            non-empty list of patterns.
        ValueError: If ``steps < 1``, the loss is not a scalar, ``mode=implicit(...)`` is
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
    """
    check_params(params)
    check_steps(steps)
    mode = check_mode(mode)
    if not isinstance(optimizer, InnerOptimizer):
        raise TypeError(
            f"optimizer must be a metaops.inner.InnerOptimizer (e.g. sgd(0.01)), got "
            f"{type(optimizer).__name__}"
        )
    adapted, frozen = split_by_pattern(params, only)
    with batch_norm_context(refuse_batch_statistics=not isinstance(mode, FirstOrder)):
        phi = _run(loss_fn, adapted, batch, optimizer, steps, mode, frozen, list(params))
    return merge(phi, frozen, list(params)) if frozen else phi


def _run(loss_fn, params, batch, optimizer, steps, mode, frozen, names):
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
        check_finite=not under_transform(), first_order=isinstance(mode, FirstOrder),
    )
    return params


_EAGER_ONLY = (
    "mode={}: its torch.autograd.Function is not traceable by torch.compile under torch.func "
    "transforms (torch {})"
)
