"""Differentiable plain SGD."""

from __future__ import annotations

from torch import Tensor

from metaops.inner._base import InnerOptimizer
from metaops.inner._validate import check_lr
from metaops.tree import tree_map
from metaops.typing import Params

__all__ = ["sgd", "sgd_step"]


def sgd_step(params: Params, grads: Params, lr: float | Tensor) -> Params:
    r"""Returns one SGD step, $\theta - \alpha \nabla_\theta \mathcal{L}$, differentiably.

    Args:
        params: Current parameters $\theta$.
        grads: Gradients $\nabla_\theta \mathcal{L}$, same keys and shapes as ``params``.
        lr: Step size $\alpha$ (float, or a scalar tensor that may itself be meta-learned).

    Returns:
        New parameters; the inputs are not modified.

    Examples:
        >>> import torch
        >>> sgd_step({"w": torch.tensor([1.0])}, {"w": torch.tensor([2.0])}, 0.25)
        {'w': tensor([0.5000])}
    """
    return tree_map(lambda p, g: p - lr * g, params, grads)


def sgd(lr: float | Tensor) -> InnerOptimizer:
    r"""Builds differentiable SGD, $\theta_{k+1} = \theta_k - \alpha \nabla \mathcal{L}(\theta_k)$.

    A tensor ``lr`` is a hyperparameter that receives meta-gradients in every mode of
    [metaops.inner.adapt][] (build the optimizer inside the differentiated function).

    Args:
        lr: Step size $\alpha > 0$, a float or a scalar tensor.

    Returns:
        An [metaops.inner.InnerOptimizer][].

    Raises:
        ValueError: If ``lr`` is not a positive finite number or a scalar tensor.

    Examples:
        >>> import torch
        >>> from metaops.inner import adapt
        >>> loss_fn = lambda p, b: ((p["w"] - b) ** 2).sum()
        >>> adapt(loss_fn, {"w": torch.tensor([0.0])}, torch.tensor([1.0]), sgd(0.25), steps=1)
        {'w': tensor([0.5000])}
    """
    check_lr(lr, "sgd")
    if isinstance(lr, Tensor):
        return InnerOptimizer(
            init=lambda params: (),
            step=lambda params, grads, state, hp: (sgd_step(params, grads, hp["lr"]), state),
            hyperparams={"lr": lr},
            name="sgd",
        )
    return InnerOptimizer(
        init=lambda params: (),
        step=lambda params, grads, state, hp: (sgd_step(params, grads, lr), state),
        hyperparams={},
        name=f"sgd(lr={lr})",
    )


