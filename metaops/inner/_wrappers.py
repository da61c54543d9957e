"""Wrappers that turn one InnerOptimizer into another."""

from __future__ import annotations

from metaops.inner._base import InnerOptimizer
from metaops.tree import stop_gradient

__all__ = ["first_order"]


def first_order(optimizer: InnerOptimizer) -> InnerOptimizer:
    r"""Drops second-order terms: the inner gradients are treated as constants (FOMAML).

    Each step uses $\bot\big(\nabla_\phi \mathcal{L}_{\text{support}}(\phi_k)\big)$, so
    $\frac{d\phi_{k+1}}{d\phi_k} = I$ and the meta-gradient reduces to the query-loss
    gradient at the adapted point, $\nabla_\phi \mathcal{L}_{\text{query}}(\phi)$, without any
    Hessian-vector product. Gradients still reach tensor hyperparameters (Meta-SGD rates).

    Args:
        optimizer: The optimizer to wrap.

    Returns:
        An [metaops.inner.InnerOptimizer][] with the same state and hyperparameters.

    Examples:
        >>> import torch
        >>> from metaops.inner import adapt, sgd
        >>> loss_fn = lambda p, b: (p["w"] ** 2).sum()
        >>> theta = {"w": torch.tensor([1.0], requires_grad=True)}
        >>> phi = adapt(loss_fn, theta, None, first_order(sgd(0.25)), steps=1)
        >>> phi["w"].sum().backward()
        >>> theta["w"].grad        # identity Jacobian: 1, not 1 - 0.25 * 2
        tensor([1.])
    """
    if not isinstance(optimizer, InnerOptimizer):
        raise TypeError(f"first_order expects an InnerOptimizer, got {type(optimizer).__name__}")
    if optimizer.loop is not None:
        raise ValueError(
            f"first_order must wrap a plain optimizer, not {optimizer.name}: apply it first, "
            "e.g. checkpointed(first_order(sgd(lr)))"
        )
    step = optimizer.step
    return InnerOptimizer(
        init=optimizer.init,
        step=lambda params, grads, state, hp: step(params, stop_gradient(grads), state, hp),
        hyperparams=optimizer.hyperparams,
        name=f"first_order({optimizer.name})",
        second_order=False,
    )
