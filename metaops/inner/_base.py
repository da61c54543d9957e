"""The inner-optimizer abstraction: a pair of pure functions plus explicit hyperparameters."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

from metaops.typing import OptState, Params, PyTree

__all__ = ["InnerOptimizer"]

StepFn = Callable[[Params, Params, OptState, PyTree], tuple[Params, OptState]]


class InnerOptimizer(NamedTuple):
    r"""A differentiable inner-loop optimizer: pure ``init``/``step`` functions.

    ``step(params, grads, state, hyperparams) -> (new_params, new_state)`` returns the new
    parameters (not updates) and must be built from differentiable tensor operations only, so
    that meta-gradients flow through it to the initial parameters and to ``hyperparams``.

    Every tensor that should receive a meta-gradient (a learned learning rate, say) lives in
    ``hyperparams`` instead of being captured by the closure: the unrolled, checkpointed and
    implicit modes of [metaops.inner.adapt][] then all differentiate with respect to it.

    Attributes:
        init: ``init(params) -> state``.
        step: ``step(params, grads, state, hyperparams) -> (params, state)``.
        hyperparams: A pytree of tensors the step reads (``{}`` when there are none).
        loop: How [metaops.inner.adapt][] runs the steps; ``None`` is the plain, fully
            differentiable unroll. Set by wrappers such as [metaops.inner.checkpointed][] and
            [metaops.inner.implicit][]; users do not set it.
        name: A short description used in error messages and reprs.
        second_order: Whether meta-gradients through this optimizer contain second-order
            terms (``False`` after [metaops.inner.first_order][]).

    Examples:
        >>> import torch
        >>> opt = InnerOptimizer(
        ...     init=lambda params: (),
        ...     step=lambda params, grads, state, hp: (
        ...         {k: params[k] - 0.1 * grads[k] for k in params}, state),
        ...     hyperparams={},
        ... )
        >>> opt.step({"w": torch.ones(1)}, {"w": torch.ones(1)}, (), {})[0]
        {'w': tensor([0.9000])}
    """

    init: Callable[[Params], OptState]
    step: StepFn
    hyperparams: PyTree = {}
    loop: Any = None
    name: str = "custom"
    second_order: bool = True
