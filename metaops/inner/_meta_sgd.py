"""Meta-SGD: SGD with learned per-parameter learning rates."""

from __future__ import annotations

from torch import Tensor

from metaops.inner._base import InnerOptimizer
from metaops.inner._validate import check_same_keys_and_shapes
from metaops.tree import tree_map
from metaops.typing import Params

__all__ = ["meta_sgd", "meta_sgd_step"]


def meta_sgd_step(params: Params, grads: Params, lrs: Params) -> Params:
    r"""Returns one Meta-SGD step, $\theta - \alpha \odot \nabla_\theta \mathcal{L}$.

    Args:
        params: Current parameters $\theta$.
        grads: Gradients, same names and shapes as ``params``.
        lrs: Learning rates $\alpha$ keyed by parameter name: each a scalar tensor or a tensor
            of the parameter's shape (elementwise rates).

    Returns:
        New parameters; differentiable in ``params``, ``grads`` and ``lrs``.

    Examples:
        >>> import torch
        >>> meta_sgd_step({"w": torch.ones(2)}, {"w": torch.ones(2)},
        ...               {"w": torch.tensor([0.1, 0.5])})
        {'w': tensor([0.9000, 0.5000])}
    """
    return tree_map(lambda p, g, a: p - a * g, params, grads, lrs)


def meta_sgd(lrs: Params) -> InnerOptimizer:
    r"""Builds Meta-SGD (Li et al., 2017): SGD whose per-parameter learning rates are learned.

    $$\theta' = \theta - \alpha \odot \nabla_\theta \mathcal{L}_{\text{support}}(\theta),$$

    where $\alpha$ has one entry per parameter tensor (scalar rates) or per element
    (elementwise rates). The rates are the optimizer's ``hyperparams``: build the optimizer
    inside the differentiated function and they receive meta-gradients. Rates are paired with
    parameters **by name**, never by position.

    Args:
        lrs: Learning rates keyed by parameter name (scalar or parameter-shaped tensors).
            Negative rates are allowed (Meta-SGD learns sign as well as size).

    Returns:
        An [metaops.inner.InnerOptimizer][]; ``init(params)`` checks that names and shapes
        of ``lrs`` match ``params``.

    Raises:
        TypeError: If ``lrs`` is not a dict of tensors.
        ValueError: (at ``init``) if names or shapes do not match the parameters.

    Examples:
        >>> import torch
        >>> from metaops.inner import adapt
        >>> loss_fn = lambda p, b: ((p["w"] - b) ** 2).sum()
        >>> lrs = {"w": torch.tensor(0.25, requires_grad=True)}
        >>> phi = adapt(loss_fn, {"w": torch.tensor([0.0])}, torch.tensor([1.0]),
        ...             meta_sgd(lrs), steps=1)
        >>> phi["w"].sum().backward()
        >>> lrs["w"].grad          # d(w - lr * 2 (w - 1)) / d lr at w = 0
        tensor(2.)

    References:
        Li, Zhou, Chen, Li, "Meta-SGD: Learning to Learn Quickly for Few-Shot Learning", 2017.
    """
    if not isinstance(lrs, dict) or not all(isinstance(v, Tensor) for v in lrs.values()):
        raise TypeError("meta_sgd(lrs) needs a dict mapping parameter names to tensors")

    def init(params: Params) -> tuple:
        check_same_keys_and_shapes(params, lrs, "meta_sgd lrs", scalar_ok=True)
        return ()

    def step(params, grads, state, hp):
        return meta_sgd_step(params, grads, hp["lrs"]), state

    return InnerOptimizer(init=init, step=step, hyperparams={"lrs": lrs}, name="meta_sgd")


