"""Reptile's outer update."""

from __future__ import annotations

from metaops.tree import stop_gradient, tree_map, tree_structure_equal
from metaops.typing import Params

__all__ = ["reptile_grad"]


def reptile_grad(meta_params: Params, adapted_params: Params) -> Params:
    r"""Returns Reptile's meta-gradient $\theta - \bar\phi$, to hand to any outer optimizer.

    Reptile moves the initialisation towards the adapted parameters,
    $\theta \leftarrow \theta + \epsilon(\bar\phi - \theta)$; written as a gradient for
    ``torch.optim`` (which subtracts), that is $g = \theta - \bar\phi$. With a task batch
    (leaves of ``adapted_params`` carrying a leading task dimension) $\bar\phi$ is the mean
    over tasks. No gradient flows through either argument.

    Args:
        meta_params: Initial parameters $\theta$.
        adapted_params: Adapted parameters $\phi$ for one task, or stacked over tasks with a
            leading dimension (e.g. the output of ``vmap(adapt)``).

    Returns:
        The meta-gradient, shaped like ``meta_params``. Write it to ``.grad`` with
        [metaops.nn.set_grads][] and call ``optimizer.step()``; with plain SGD at rate
        $\epsilon$ this is exactly Reptile.

    Raises:
        ValueError: If names differ or shapes are incompatible.

    Examples:
        >>> import torch
        >>> theta = {"w": torch.zeros(2)}
        >>> phis = {"w": torch.tensor([[1.0, 2.0], [3.0, 4.0]])}   # two tasks
        >>> reptile_grad(theta, phis)
        {'w': tensor([-2., -3.])}

    References:
        Nichol, Achiam, Schulman, "On First-Order Meta-Learning Algorithms", 2018.
    """
    if not tree_structure_equal(meta_params, adapted_params):
        raise ValueError(
            f"reptile_grad: names differ: {sorted(meta_params)} vs {sorted(adapted_params)}"
        )

    def one(theta, phi):
        if phi.shape == theta.shape:
            return theta - phi
        if phi.shape[1:] == theta.shape:
            return theta - phi.mean(0)
        raise ValueError(
            f"reptile_grad: adapted shape {tuple(phi.shape)} is neither {tuple(theta.shape)} "
            f"nor (tasks, *{tuple(theta.shape)})"
        )

    return tree_map(one, stop_gradient(meta_params), stop_gradient(adapted_params))
