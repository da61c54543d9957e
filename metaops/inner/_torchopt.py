"""Adapter from torchopt's functional GradientTransformation to an InnerOptimizer."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from metaops.inner._base import InnerOptimizer
from metaops.tree import tree_leaves, tree_map
from metaops.typing import Params

__all__ = ["from_torchopt"]

# State fields that torchopt (like optax) takes a square root of: Adam's, AdamW's, RAdam's and
# RMSProp's ``nu``, AdaGrad's ``sum_of_squares``.
_SECOND_MOMENTS = ("nu", "sum_of_squares")
# Where they start instead of 0. Small enough to leave every value unchanged in practice
# (``sqrt(floor / (1 - beta2))`` is about 3e-14 for float32, far below Adam's ``eps``), large
# enough to stay positive for thousands of steps of exactly zero gradients. float16 has no
# such number, so it is left alone (meta_value_and_grad then reports the NaN).
_FLOORS = {torch.float64: 1e-200, torch.float32: 1e-30, torch.bfloat16: 1e-30}


def from_torchopt(transform: Any, *, name: str | None = None) -> InnerOptimizer:
    r"""Wraps any torchopt ``GradientTransformation`` as a differentiable inner optimizer.

    Gives differentiable momentum, Adam, RMSProp and every other torchopt optimizer or chain,
    run out of place (``inplace=False``) so second-order terms flow through the optimizer
    state. Hyperparameters are whatever the transformation captured (floats); to meta-learn
    one, use [metaops.inner.sgd][] or [metaops.inner.meta_sgd][] with tensors instead.

    Second-moment accumulators (the state fields ``nu`` of Adam, AdamW, RAdam and RMSProp, and
    ``sum_of_squares`` of AdaGrad) start at a tiny positive value $\delta$ (``1e-30`` in
    float32, ``1e-200`` in float64) instead of $0$. With $0$, a gradient entry that is exactly
    zero (a feature absent from the support set, a dead ReLU) puts $\sqrt{v}$ at $v = 0$,
    whose derivative is infinite, and the meta-gradient becomes NaN: the problem torchopt's
    ``eps_root`` addresses for Adam only, and RMSProp's ``initial_scale`` and AdaGrad's
    ``initial_accumulator_value`` address the same way. The update changes by less than
    float rounding: $\sqrt{v}$ grows by at most $\sqrt{\delta/(1-\beta_2)}$, about ``3e-14``
    in float32.

    Args:
        transform: A torchopt ``GradientTransformation`` such as ``torchopt.adam(1e-2)``.
        name: Optional name used in messages.

    Returns:
        An [metaops.inner.InnerOptimizer][] whose state is torchopt's state.

    Raises:
        TypeError: If ``transform`` has no ``init``/``update`` pair.

    Examples:
        >>> import torch, torchopt
        >>> from metaops.inner import adapt
        >>> loss_fn = lambda p, b: ((p["w"] - b) ** 2).sum()
        >>> opt = from_torchopt(torchopt.sgd(0.1, momentum=0.9))
        >>> adapt(loss_fn, {"w": torch.tensor([0.0])}, torch.tensor([1.0]), opt, steps=2)
        {'w': tensor([0.5400])}

        Adam through a gradient entry that is exactly zero (``x[1] = 0`` in the support set):

        >>> loss_fn = lambda p, x: ((x * p["w"]).sum() - 1.0) ** 2
        >>> theta = {"w": torch.zeros(2, requires_grad=True)}
        >>> phi = adapt(loss_fn, theta, torch.tensor([1.0, 0.0]), from_torchopt(torchopt.adam(0.1)), steps=2)
        >>> loss_fn(phi, torch.tensor([1.0, 1.0])).backward()
        >>> theta["w"].grad      # finite; d phi_1 / d theta_1 = 1
        tensor([-1.5999, -1.6008])
    """
    if not (callable(getattr(transform, "init", None)) and callable(getattr(transform, "update", None))):
        raise TypeError(
            "from_torchopt needs a torchopt GradientTransformation (with init and update), "
            f"got {type(transform).__name__}"
        )
    import torchopt

    def init(params: Params) -> Any:
        return _floor_second_moments(transform.init(params))

    def step(params, grads, state, hp):
        # torchopt updates some state with in-place ops (``t.mul(decay).add_(g)``), which fails
        # under vmap when the state is shared but the gradients are per task. Adding a zero
        # that depends on the gradients makes every floating state leaf carry the task batch.
        zero = tree_leaves(grads)[0].sum() * 0
        state = tree_map(lambda s: s + zero.to(s.dtype) if _is_float_tensor(s) else s, state)
        updates, state = transform.update(grads, state, params=params, inplace=False)
        return torchopt.apply_updates(params, updates, inplace=False), state

    return InnerOptimizer(init=init, step=step, hyperparams={}, name=name or "torchopt")


def _floor_second_moments(state: Any) -> Any:
    """Adds the dtype's floor to every second-moment field in torchopt's (nested) state."""
    if isinstance(state, tuple) and hasattr(state, "_fields"):  # a state NamedTuple
        return type(state)(*(
            tree_map(_add_floor, value) if field in _SECOND_MOMENTS else _floor_second_moments(value)
            for field, value in zip(state._fields, state)
        ))
    if isinstance(state, (tuple, list)):  # a chain's states
        return type(state)(_floor_second_moments(s) for s in state)
    return state


def _add_floor(x: Any) -> Any:
    if _is_float_tensor(x) and x.dtype in _FLOORS:
        return x + _FLOORS[x.dtype]
    return x


def _is_float_tensor(x: Any) -> bool:
    return isinstance(x, Tensor) and x.is_floating_point()
