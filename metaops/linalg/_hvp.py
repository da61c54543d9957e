"""Hessian-vector products with torch.func."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from metaops.typing import Params

__all__ = ["hvp"]


def hvp(f: Callable[[Params], Tensor], params: Params, v: Params) -> Params:
    r"""Returns the Hessian-vector product $\nabla^2 f(\theta)\, v$ (reverse-over-reverse).

    Computed as the vector-Jacobian product of $\nabla f$ with $v$, which equals $H v$
    because the Hessian is symmetric; the Hessian is never formed and the cost is a small
    constant times one gradient evaluation. Differentiable, and safe under
    ``torch.func.vmap``. (Reverse-over-reverse is used rather than forward-over-reverse
    because torch 2.13's forward-mode rules fail on some losses, e.g. ``mse_loss`` through
    ``functional_call``, with "ZeroTensors are immutable".)

    Args:
        f: Scalar function of the parameters.
        params: Point $\theta$ at which the Hessian is taken.
        v: Direction, a pytree shaped like ``params``.

    Returns:
        $H v$, a pytree shaped like ``params``.

    Examples:
        >>> f = lambda p: (p["w"] ** 3).sum()      # Hessian diag(6 w)
        >>> hvp(f, {"w": torch.tensor([1.0, 2.0])}, {"w": torch.tensor([1.0, 1.0])})
        {'w': tensor([ 6., 12.])}
    """
    _, vjp_fn = torch.func.vjp(torch.func.grad(f), params)
    return vjp_fn(v)[0]
