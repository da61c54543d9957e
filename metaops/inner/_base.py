"""The inner-optimizer abstraction: a pair of pure functions plus explicit hyperparameters."""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

from metaops.typing import OptState, Params, PyTree

__all__ = ["InnerOptimizer"]

StepFn = Callable[[Params, Params, OptState, PyTree], tuple[Params, OptState]]


class InnerOptimizer(NamedTuple):
    r"""A differentiable inner-loop optimizer: pure ``init``/``step`` functions.

    ``step(params, grads, state, hyperparams) -> (new_params, new_state)`` returns the new
    parameters (not updates) and must be built from differentiable tensor operations only, so
    that meta-gradients flow through it to the initial parameters and to ``hyperparams``.

    Every tensor that should receive a meta-gradient (a learned learning rate, say) lives in
    ``hyperparams`` instead of being captured by the closure: the unrolled, first-order and
    checkpointed modes of [metaops.inner.adapt][] then all differentiate with respect to it.

    An optimizer only says how to step. How the steps are differentiated (unrolled,
    first-order, checkpointed or implicit) is the ``mode`` of [metaops.inner.adapt][], so every
    optimizer works in every mode and nothing can be wrapped in the wrong order.

    Attributes:
        init: ``init(params) -> state``.
        step: ``step(params, grads, state, hyperparams) -> (params, state)``.
        hyperparams: A pytree of tensors the step reads (``{}`` when there are none).
        name: A short description used in error messages and reprs.

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
    name: str = "custom"
