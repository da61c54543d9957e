"""Fixed-iteration conjugate gradient on pytrees."""

from __future__ import annotations

from collections.abc import Callable

import torch

from metaops.tree import tree_axpy, tree_map, tree_vdot, tree_zeros_like
from metaops.typing import PyTree

__all__ = ["cg"]


def cg(
    matvec: Callable[[PyTree], PyTree],
    b: PyTree,
    *,
    steps: int,
    x0: PyTree | None = None,
    eps: float = 1e-30,
) -> PyTree:
    r"""Solves $A x = b$ for symmetric positive-definite $A$ by conjugate gradient.

    Runs exactly ``steps`` iterations with no data-dependent early exit, so it is safe under
    ``torch.func.vmap`` and ``torch.func.grad``. Once the residual vanishes the update is
    guarded by ``eps`` so further iterations leave $x$ unchanged instead of dividing by zero:

    $$\alpha_k = \frac{r_k^\top r_k}{p_k^\top A p_k + \epsilon},\quad
      x_{k+1} = x_k + \alpha_k p_k,\quad r_{k+1} = r_k - \alpha_k A p_k,\quad
      p_{k+1} = r_{k+1} + \frac{r_{k+1}^\top r_{k+1}}{r_k^\top r_k + \epsilon} p_k.$$

    In exact arithmetic CG solves an $n$-dimensional system in $n$ iterations.

    If $A$ is not positive definite, CG can meet a direction with $p_k^\top A p_k \le 0$,
    where the plain iteration returns meaningless (often huge) vectors. This one stops there
    and returns the current $x$, as Steihaug's truncated CG does (the test is a mask, not a
    branch, so it is vmap-safe). For symmetric positive-definite $A$ it never triggers.

    Args:
        matvec: The linear map $v \mapsto A v$ on pytrees shaped like ``b``.
        b: Right-hand side.
        steps: Number of CG iterations (at least 1).
        x0: Initial guess; zeros when omitted.
        eps: Guard added to denominators.

    Returns:
        The approximate solution $x$, a pytree shaped like ``b``.

    Raises:
        ValueError: If ``steps < 1``.

    Examples:
        >>> A = torch.tensor([[4.0, 1.0], [1.0, 3.0]])
        >>> x = cg(lambda v: {"x": A @ v["x"]}, {"x": torch.tensor([1.0, 2.0])}, steps=2)
        >>> torch.allclose(A @ x["x"], torch.tensor([1.0, 2.0]))
        True
    """
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"cg needs steps >= 1 (an int), got {steps!r}")
    x = tree_zeros_like(b) if x0 is None else x0
    r = b if x0 is None else tree_map(torch.sub, b, matvec(x0))
    p = r
    rs = tree_vdot(r, r)
    active = torch.ones_like(rs)  # 0 from the first direction of non-positive curvature on
    for _ in range(steps):
        ap = matvec(p)
        curvature = tree_vdot(p, ap)
        active = active * (curvature > 0).to(rs.dtype)
        alpha = active * rs / (torch.where(active > 0, curvature, torch.ones_like(curvature)) + eps)
        x = tree_axpy(alpha, p, x)
        r = tree_axpy(-alpha, ap, r)
        rs_new = tree_vdot(r, r)
        p = tree_axpy(rs_new / (rs + eps), p, r)
        rs = rs_new
    return x
