"""A user-facing check of meta-gradients against finite differences."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from metaops.inner._adapt import adapt
from metaops.inner._base import InnerOptimizer
from metaops.inner._modes import first_order
from metaops.tree import tree_map, tree_vdot
from metaops.typing import LossFn, Params

__all__ = ["check_meta_grad", "MetaGradReport"]


@dataclass(frozen=True)
class MetaGradReport:
    """What [metaops.check_meta_grad][] found, direction by direction.

    Attributes:
        finite_difference: Central-difference directional derivatives (float64), the truth.
        claimed: The same directional derivatives of the gradient under test.
        first_order: Those of the first-order (FOMAML) meta-gradient, for comparison.
        max_relative_error: Largest relative error of ``claimed`` against ``finite_difference``.
        matches_finite_differences: Whether the gradient under test is correct.
        second_order_present: Whether it contains the second-order terms (it is closer to the
            finite differences than to the first-order gradient).
        verdict: A one-line human-readable diagnosis.

    Examples:
        >>> from metaops.inner import sgd
        >>> loss_fn = lambda p, b: (p["w"] * b).sin().pow(2).mean()
        >>> report = check_meta_grad(loss_fn, {"w": torch.tensor(1.0)}, torch.ones(3),
        ...                          torch.ones(3), sgd(0.3), steps=1)
        >>> print(report)                                  # doctest: +ELLIPSIS
        meta-gradient matches finite differences (max relative error ...)
    """

    finite_difference: list[float]
    claimed: list[float]
    first_order: list[float]
    max_relative_error: float
    matches_finite_differences: bool
    second_order_present: bool
    verdict: str

    def __str__(self) -> str:
        return self.verdict


def _to64(tree: Any) -> Any:
    return tree_map(
        lambda x: x.detach().to(torch.float64)
        if isinstance(x, Tensor) and x.is_floating_point()
        else x,
        tree,
    )


def check_meta_grad(
    loss_fn: LossFn,
    params: Params,
    support: Any,
    query: Any,
    optimizer: InnerOptimizer,
    *,
    steps: int,
    meta_grad: Params | None = None,
    num_directions: int = 4,
    eps: float = 1e-6,
    rtol: float = 1e-4,
    seed: int = 0,
) -> MetaGradReport:
    r"""Checks a MAML meta-gradient against finite differences and tells if second-order terms are there.

    The meta-loss is $J(\theta) = \mathcal{L}_{\text{query}}(\mathrm{adapt}(\theta))$. Along
    random unit directions $u$ the check compares $\langle g, u\rangle$ with the central
    difference $\frac{J(\theta + \epsilon u) - J(\theta - \epsilon u)}{2\epsilon}$, all in
    float64 (parameters and floating-point batch tensors are cast). It also computes the
    first-order (FOMAML) meta-gradient, so it can tell a correct second-order gradient from
    the most common silent bug in MAML code: second-order terms lost to a forgotten
    ``create_graph=True`` or a detached copy of the parameters.

    Args:
        loss_fn: ``loss_fn(params, batch) -> scalar``; must accept float64 params and data.
        params: Meta-parameters $\theta$.
        support: Support batch for adaptation.
        query: Query batch for the meta-loss.
        optimizer: The inner optimizer (unrolled, checkpointed, ...).
        steps: Inner steps.
        meta_grad: The gradient under test (e.g. computed by your own code, keyed like
            ``params``); when ``None``, metaops' own meta-gradient through ``optimizer``.
        num_directions: Random directions to probe.
        eps: Finite-difference step.
        rtol: Relative tolerance for a match.
        seed: Seed of the random directions.

    Returns:
        A [metaops.MetaGradReport][]; ``print(report)`` gives the verdict.

    Examples:
        >>> from metaops.inner import sgd
        >>> loss_fn = lambda p, b: ((b[0] * p["w"]).tanh() - b[1]).pow(2).mean()
        >>> x = torch.linspace(-1, 1, 5); batch = (x, x ** 2)
        >>> report = check_meta_grad(loss_fn, {"w": torch.tensor(0.5)}, batch, batch,
        ...                          sgd(0.5), steps=2)
        >>> report.matches_finite_differences, report.second_order_present
        (True, True)
    """
    theta = _to64(params)
    support64, query64 = _to64(support), _to64(query)

    def meta_loss(p: Params, mode: Any = None) -> Tensor:
        return loss_fn(adapt(loss_fn, p, support64, optimizer, steps=steps, mode=mode), query64)

    if meta_grad is None:
        claimed_grad = torch.func.grad(meta_loss)(theta)
    else:
        missing = sorted(set(params) - set(meta_grad))
        if missing:
            raise ValueError(f"meta_grad is missing parameters {missing}")
        claimed_grad = _to64({k: meta_grad[k] for k in params})
    fo_grad = torch.func.grad(lambda p: meta_loss(p, first_order()))(theta)

    gen = torch.Generator().manual_seed(seed)
    fd, claimed, fo = [], [], []
    with torch.no_grad():
        for _ in range(num_directions):
            u = tree_map(lambda x: torch.randn(x.shape, generator=gen, dtype=x.dtype).to(x.device), theta)
            norm = tree_vdot(u, u).sqrt()
            u = tree_map(lambda x: x / norm, u)
            plus = meta_loss(tree_map(lambda t, d: t + eps * d, theta, u))
            minus = meta_loss(tree_map(lambda t, d: t - eps * d, theta, u))
            fd.append(float((plus - minus) / (2 * eps)))
            claimed.append(float(tree_vdot(claimed_grad, u)))
            fo.append(float(tree_vdot(fo_grad, u)))

    scale = max(max(abs(v) for v in fd), 1e-12)
    errors = [abs(c - f) / scale for c, f in zip(claimed, fd)]
    fo_errors = [abs(c - f) / scale for c, f in zip(claimed, fo)]
    max_err = max(errors)
    ok = max_err <= rtol
    fo_gap = max(abs(a - b) / scale for a, b in zip(fo, fd))
    second = max_err < max(fo_errors) if fo_gap > rtol else ok
    if ok:
        verdict = f"meta-gradient matches finite differences (max relative error {max_err:.1e})"
        if fo_gap <= rtol:
            verdict += "; second-order terms are negligible for this problem"
    elif max(fo_errors) <= rtol:
        verdict = (
            f"meta-gradient equals the FIRST-ORDER gradient, off from finite differences by "
            f"{max_err:.1e}: second-order terms are missing (a forgotten create_graph=True, or "
            "a detached copy of the parameters before adaptation?)"
        )
    else:
        verdict = f"meta-gradient is WRONG: max relative error {max_err:.1e} against finite differences"
    return MetaGradReport(fd, claimed, fo, max_err, ok, bool(second and ok), verdict)
