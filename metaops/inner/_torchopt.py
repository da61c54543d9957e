"""Adapter from torchopt's functional GradientTransformation to an InnerOptimizer."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from metaops.inner._base import InnerOptimizer
from metaops.tree import tree_leaves, tree_map
from metaops.typing import Params

__all__ = ["from_torchopt"]


def from_torchopt(transform: Any, *, name: str | None = None) -> InnerOptimizer:
    r"""Wraps any torchopt ``GradientTransformation`` as a differentiable inner optimizer.

    Gives differentiable momentum, Adam, RMSProp and every other torchopt optimizer or chain,
    run out of place (``inplace=False``) so second-order terms flow through the optimizer
    state. Hyperparameters are whatever the transformation captured (floats); to meta-learn
    one, use [metaops.inner.sgd][] or [metaops.inner.meta_sgd][] with tensors instead.

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
    """
    if not (callable(getattr(transform, "init", None)) and callable(getattr(transform, "update", None))):
        raise TypeError(
            "from_torchopt needs a torchopt GradientTransformation (with init and update), "
            f"got {type(transform).__name__}"
        )
    import torchopt

    def init(params: Params) -> Any:
        return transform.init(params)

    def step(params, grads, state, hp):
        # torchopt updates some state with in-place ops (``t.mul(decay).add_(g)``), which fails
        # under vmap when the state is shared but the gradients are per task. Adding a zero
        # that depends on the gradients makes every floating state leaf carry the task batch.
        zero = tree_leaves(grads)[0].sum() * 0
        state = tree_map(lambda s: s + zero.to(s.dtype) if _is_float_tensor(s) else s, state)
        updates, state = transform.update(grads, state, params=params, inplace=False)
        return torchopt.apply_updates(params, updates, inplace=False), state

    return InnerOptimizer(init=init, step=step, hyperparams={}, name=name or "torchopt")


def _is_float_tensor(x: Any) -> bool:
    return isinstance(x, Tensor) and x.is_floating_point()
