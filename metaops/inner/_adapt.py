"""The inner loop: ``adapt`` runs an InnerOptimizer for a fixed number of steps."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.overrides import TorchFunctionMode

from metaops._compile import note_eager_only
from metaops.inner._base import InnerOptimizer
from metaops.inner._validate import all_finite, check_params, check_steps, under_transform
from metaops.typing import LossFn, Params

__all__ = ["adapt", "BatchNormUnderVmapError", "NonFiniteError"]


class NonFiniteError(FloatingPointError):
    """Raised when a loss or gradient becomes NaN or infinite during adaptation."""


class BatchNormUnderVmapError(RuntimeError):
    """Raised when a second-order inner loop runs batch norm under ``torch.func.vmap``.

    torch (checked on 2.13) returns a silently wrong second-order meta-gradient through batch
    statistics under ``vmap`` (errors of 1e-3 to 3e-2; GroupNorm, no norm, and the same code
    without ``vmap`` are exact). metaops refuses rather than return that gradient.
    [metaops.map_tasks][] and [metaops.meta_value_and_grad][] with ``strategy="auto"`` catch
    this error and fall back to the exact per-task loop.
    """


_BATCH_STAT_FUNCS = (F.batch_norm, torch.batch_norm)


class _BatchNormGuard(TorchFunctionMode):
    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _BATCH_STAT_FUNCS and _uses_batch_statistics(func, args, kwargs):
            raise BatchNormUnderVmapError(
                "batch norm with batch statistics inside a second-order inner loop under "
                "torch.func.vmap: torch computes a silently wrong second-order meta-gradient "
                "here (see metaops docs, 'Known traps'). Use metaops.map_tasks / "
                "metaops.meta_value_and_grad with strategy='loop' (or 'auto'), "
                "replace BatchNorm by GroupNorm, or wrap the optimizer in "
                "metaops.inner.first_order (first-order gradients are exact)."
            )
        return func(*args, **kwargs)


def _uses_batch_statistics(func, args, kwargs) -> bool:
    if func is F.batch_norm:
        running_mean = args[1] if len(args) > 1 else kwargs.get("running_mean")
        training = args[5] if len(args) > 5 else kwargs.get("training", False)
        return bool(training) or running_mean is None
    # torch.batch_norm(input, weight, bias, running_mean, running_var, training, ...)
    running_mean = args[3] if len(args) > 3 else kwargs.get("running_mean")
    training = args[5] if len(args) > 5 else kwargs.get("training", False)
    return bool(training) or running_mean is None


def _under_vmap() -> bool:
    if torch.compiler.is_compiling():
        # Not traceable; compile_meta_step runs the first call eagerly, where this guard acts.
        return False
    stack = torch._C._functorch.get_interpreter_stack()
    if not stack:
        return False
    vmap = torch._C._functorch.TransformType.Vmap
    return any(level.key() == vmap for level in stack)


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
) -> tuple[Params, Any]:
    """Runs ``steps`` differentiable optimizer steps (private; the plain unroll)."""
    grad_fn = torch.func.grad_and_value(lambda p, b: checked_loss(loss_fn, p, b))
    for k in range(steps):
        grads, loss = grad_fn(params, batch)
        if check_finite and not _probably_finite(loss, grads):  # one host sync per step
            if not all_finite(loss):
                raise NonFiniteError(f"adapt: the inner loss is {loss.item()} at inner step {k}")
            if not all_finite(grads):
                bad = sorted(n for n, g in grads.items() if not bool(torch.isfinite(g).all()))
                raise NonFiniteError(
                    f"adapt: non-finite gradient at inner step {k} for parameters {bad}"
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
) -> Params:
    r"""Adapts parameters to one task by ``steps`` inner-optimizer steps; returns the new params.

    With a plain optimizer (e.g. [metaops.inner.sgd][]) the loop is fully unrolled and
    differentiable, so the result carries the exact MAML meta-gradient
    $\frac{d}{d\theta}\mathcal{L}_{\text{query}}(\phi(\theta))$ including second-order terms:

    $$\phi_0 = \theta, \qquad \phi_{k+1} = \mathrm{step}\big(\phi_k,
      \nabla_\phi \mathcal{L}_{\text{support}}(\phi_k)\big), \qquad \phi = \phi_K.$$

    The same call gives four memory/accuracy trade-offs through the optimizer it is handed:

    | optimizer | meta-gradient | memory in the number of steps $K$ |
    |---|---|---|
    | `opt` (full unroll) | exact | activations of all $K$ steps |
    | [metaops.inner.checkpointed][]`(opt)` | exact | $K$ parameter copies + one step's activations |
    | [metaops.inner.first_order][]`(opt)` | drops second-order terms (FOMAML) | one step |
    | [metaops.inner.implicit][]`(opt, reg=...)` | implicit (iMAML) at the proximal solution | constant |

    Works for one task and under ``torch.func.vmap`` for a batch of tasks, under
    ``torch.func.grad`` and with plain ``.backward()``. Gradients are taken with
    ``torch.func.grad``, never ``torch.autograd.grad``. Outside ``torch.func`` transforms each
    step checks that the loss and gradients are finite.

    Args:
        loss_fn: ``loss_fn(params, batch) -> scalar`` to minimise, typically calling
            ``torch.func.functional_call(model, params, ...)``.
        params: Initial parameters $\theta$, e.g. ``dict(model.named_parameters())``.
        batch: The task's support data, any pytree; passed to ``loss_fn`` unchanged.
        optimizer: An [metaops.inner.InnerOptimizer][].
        steps: Number of inner steps $K \ge 1$ (static, so the loop vmaps).

    Returns:
        The adapted parameters $\phi$, a new dict with the keys of ``params``.

    Raises:
        TypeError: If ``params`` is not a dict of floating tensors or ``loss_fn`` does not
            return a tensor.
        ValueError: If ``steps < 1`` or the loss is not a scalar.
        NonFiniteError: If a loss or gradient becomes NaN/inf (outside transforms).
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
    """
    check_params(params)
    check_steps(steps)
    if not isinstance(optimizer, InnerOptimizer):
        raise TypeError(
            f"optimizer must be a metaops.inner.InnerOptimizer (e.g. sgd(0.01)), got "
            f"{type(optimizer).__name__}"
        )
    guard = optimizer.second_order and _under_vmap()
    if guard:
        with _BatchNormGuard():
            return _run(loss_fn, params, batch, optimizer, steps)
    return _run(loss_fn, params, batch, optimizer, steps)


def _run(loss_fn, params, batch, optimizer, steps):
    if optimizer.loop is not None:
        note_eager_only(
            f"{optimizer.name}: its torch.autograd.Function is not traceable by torch.compile "
            f"under torch.func transforms (torch {torch.__version__})"
        )
        return optimizer.loop(loss_fn, params, batch, steps)
    state = optimizer.init(params)
    params, _ = unrolled_steps(
        loss_fn, params, batch, optimizer, state, optimizer.hyperparams, steps,
        check_finite=not under_transform(),
    )
    return params
