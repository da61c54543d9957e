"""A user-facing check of meta-gradients against finite differences."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from metaops._batching import _check_scalar, _num_tasks, meta_value_and_grad
from metaops.inner._adapt import NonFiniteError
from metaops.tree import tree_flatten, tree_index, tree_map, tree_unflatten, tree_vdot
from metaops.typing import PyTree

__all__ = ["check_meta_grad", "MetaGradReport"]

# A meta-loss whose value moves by less than this (relative) along a step of _PROBE is taken
# to be independent of theta; a magic-box surrogate is constant to the last bit.
_PROBE = 1e-3
_CONSTANT_RTOL = 1e-12
_IMPLICIT_NODE = "_ImplicitSolveBackward"


@dataclass(frozen=True)
class MetaGradReport:
    r"""What [metaops.check_meta_grad][] found; ``print(report)`` gives the verdict.

    The directional derivatives are along the same random unit directions $u_i$:
    $\langle g, u_i\rangle$ for a gradient $g$, and the central differences of the meta-loss
    for ``finite_difference``. Exactly one verdict applies; the boolean fields say which.

    Attributes:
        finite_difference: Central-difference directional derivatives of the meta-loss
            (float64).
        claimed: Directional derivatives of the gradient under test.
        first_order: Those of ``first_order_fn``'s gradient, or ``None`` if none was given.
        max_relative_error: Largest $|\langle g, u_i\rangle - \mathrm{fd}_i|$ over the
            directions, relative to the largest directional derivative (``nan`` if the
            gradient is not finite).
        matches_finite_differences: Whether the gradient under test is correct.
        finite: Whether the gradient under test and the meta-loss are free of NaN and inf.
        non_finite_parameters: Names of the parameters whose gradient holds NaN or inf
            (nested keys joined by ``"."``).
        value_depends_on_theta: ``False`` when the meta-loss's *value* is constant in
            $\theta$ while its gradient is not: a magic-box surrogate (DiCE, LVC), which finite
            differences cannot check.
        second_order_missing: Whether the gradient equals ``first_order_fn``'s but not the
            finite differences.
        uses_implicit: Whether ``task_loss_fn`` differentiates an inner loop with
            ``mode=implicit(...)`` (found in its autograd graph).
        verdict: The diagnosis in words.

    Examples:
        >>> from metaops.inner import adapt, sgd
        >>> loss_fn = lambda p, b: (p["w"] * b).sin().pow(2).mean()
        >>> def task_loss(meta, support, query):
        ...     return loss_fn(adapt(loss_fn, meta, support, sgd(0.3), steps=1), query)
        >>> report = check_meta_grad(task_loss, {"w": torch.tensor(1.0)}, torch.ones(2, 3),
        ...                          torch.ones(2, 3))
        >>> report.matches_finite_differences, report.finite, report.value_depends_on_theta
        (True, True, True)
        >>> print(report)                                  # doctest: +ELLIPSIS
        meta-gradient matches finite differences (max relative error ...)
    """

    finite_difference: list[float]
    claimed: list[float]
    first_order: list[float] | None
    max_relative_error: float
    matches_finite_differences: bool
    finite: bool
    non_finite_parameters: list[str]
    value_depends_on_theta: bool
    second_order_missing: bool
    uses_implicit: bool
    verdict: str

    def __str__(self) -> str:
        return self.verdict


def check_meta_grad(
    task_loss_fn: Callable[..., Tensor],
    meta_params: PyTree,
    *task_args: Any,
    meta_grad: PyTree | None = None,
    first_order_fn: Callable[..., Tensor] | None = None,
    num_directions: int = 4,
    eps: float = 1e-6,
    rtol: float = 1e-4,
    seed: int = 0,
) -> MetaGradReport:
    r"""Checks a meta-gradient against finite differences and says what is wrong when it is not.

    Takes the arguments of [metaops.meta_value_and_grad][]: the meta-loss is the mean over
    tasks

    $$\mathcal{J}(\theta) = \frac{1}{N}\sum_{i=1}^{N} \ell_i(\theta),\qquad
      \ell_i(\theta) = \texttt{task\_loss\_fn}(\theta, \text{task}_i),$$

    evaluated task by task in float64 (the meta-parameters and the floating-point task data
    are cast; integer data such as actions are kept). Along ``num_directions`` random unit
    directions $u$ the check compares $\langle g, u\rangle$ with the central difference
    $\frac{\mathcal{J}(\theta + \epsilon u) - \mathcal{J}(\theta - \epsilon u)}{2\epsilon}$.
    Whatever ``task_loss_fn`` does is what is checked: which parameters it adapts (ANIL adapts
    only the head, ``adapt(..., only="head.*")``), which inner optimizer and which mode of
    [metaops.inner.adapt][] it uses. A hand-written split that adapts the head in a closure
    over the body is judged wrong in the checkpointed and implicit modes, which treat what the
    loss captures as constants; ``only=`` gives the body its full meta-gradient in every mode.

    The verdict is one of:

    - **matches finite differences**: the gradient is correct.
    - **NaN/inf**: names the parameters and the likely cause (a diverging inner loop, the log
      of zero, or Adam's $\sqrt{v}$ differentiated at a zero inner gradient).
    - **the objective's value does not depend on $\theta$**: a magic-box surrogate such as
      [metaops.estimators.dice_objective][] evaluates to the return whatever $\theta$ is, so
      its finite differences are zero and say nothing about its gradient, which is correct
      only in expectation. This is not called wrong; check the surrogate's expectation
      instead, e.g. by exact enumeration of a tiny MDP (as metaops' ``tests/estimators`` do).
    - **second-order terms are missing**: the gradient equals that of ``first_order_fn``
      (the same task loss with ``mode=first_order()``) but not the finite differences; the
      usual cause is a forgotten ``create_graph=True`` or parameters detached before adapting.
    - **implicit mode**: for a task loss using ``mode=implicit(...)`` (detected in its
      autograd graph), a mismatch is expected unless the proximal inner problem is solved
      and CG has converged; the verdict suggests more ``steps`` and ``cg_steps``. An iMAML
      gradient computed with [metaops.inner.implicit_value_and_grad][] and passed as
      ``meta_grad`` is not detected: its mismatch reads as WRONG, with the same caveat.
    - **WRONG**, with the relative error.

    Args:
        task_loss_fn: ``task_loss_fn(meta_params, *task) -> scalar`` for one task, as for
            [metaops.meta_value_and_grad][]; must accept float64 parameters and data.
        meta_params: Pytree of meta-parameters $\theta$ (floating-point tensors).
        *task_args: Task data, every leaf with a leading task dimension ``N``.
        meta_grad: The gradient under test, shaped like ``meta_params`` (any float dtype),
            e.g. computed by your own code. When ``None``, metaops' own: that of
            [metaops.meta_value_and_grad][] in float64.
        first_order_fn: Optional task loss with the same signature that adapts with
            ``mode=first_order()``; when given, a gradient equal to its gradient is reported
            as missing second-order terms.
        num_directions: Random directions to probe.
        eps: Finite-difference step $\epsilon$.
        rtol: Relative tolerance for a match.
        seed: Seed of the random directions.

    Returns:
        A [metaops.MetaGradReport][]; ``print(report)`` gives the verdict.

    Raises:
        ValueError: If there are no task arguments, the tasks disagree on their number, the
            hyperparameters are out of range, ``meta_grad`` is not shaped like
            ``meta_params``, or (for metaops' own gradient) [metaops.meta_value_and_grad][]
            refuses the inputs, e.g. a meta-parameter that no task's loss uses.
        TypeError: If a meta-parameter is not a floating-point tensor, or ``task_loss_fn``
            fails in float64 because it holds tensors of another dtype.

    Examples:
        Second-order MAML from metaops is right; the same loss adapted first-order is not:

        >>> from metaops.inner import adapt, first_order, sgd
        >>> loss_fn = lambda p, b: ((b[0] * p["w"]).tanh() - b[1]).pow(2).mean()
        >>> def task_loss(meta, support, query, mode=None):
        ...     return loss_fn(adapt(loss_fn, meta, support, sgd(0.5), steps=2, mode=mode), query)
        >>> def fo_task_loss(meta, support, query):
        ...     return task_loss(meta, support, query, mode=first_order())
        >>> x = torch.linspace(-1, 1, 5).expand(3, 5); batch = (x, x ** 2)
        >>> theta = {"w": torch.tensor(0.5)}
        >>> check_meta_grad(task_loss, theta, batch, batch).matches_finite_differences
        True
        >>> from metaops import meta_value_and_grad
        >>> _, fo_grad = meta_value_and_grad(fo_task_loss, theta, batch, batch)
        >>> report = check_meta_grad(task_loss, theta, batch, batch, meta_grad=fo_grad,
        ...                          first_order_fn=fo_task_loss)
        >>> report.second_order_missing
        True
    """
    _check_hyperparams(num_directions, eps, rtol)
    if not task_args:
        raise ValueError("check_meta_grad needs task arguments with a leading task dimension")
    n = _num_tasks(task_args, (0,) * len(task_args))
    _check_meta_params(meta_params)
    theta = tree_map(lambda x: x.detach().to(torch.float64), meta_params)
    args64 = tuple(_to64(a) for a in task_args)

    def task_losses(leaves: PyTree) -> Tensor:
        """The per-task meta-losses, with their graph."""
        try:
            losses = [_check_scalar(task_loss_fn(leaves, *tree_index(args64, i))) for i in range(n)]
        except RuntimeError as e:
            if isinstance(e, NonFiniteError) or not _is_dtype_error(e):
                raise
            raise TypeError(
                "check_meta_grad evaluates task_loss_fn in float64 (meta-parameters and task "
                "data cast), and it failed on a dtype mismatch; make the loss follow the dtype "
                "of its inputs (e.g. a model's buffers: model.double()). The error was: "
                f"{e}"
            ) from e
        return torch.stack(losses)

    # The meta-loss at theta, with its graph: tells whether an implicit mode is inside.
    try:
        losses0 = task_losses(_requiring_grad(theta))
        j0, implicit_spec = float(losses0.detach().mean()), _find_implicit(losses0)
        del losses0
    except NonFiniteError as e:
        j0, implicit_spec, loss_error = math.nan, None, str(e)
    else:
        loss_error = None if math.isfinite(j0) else f"its value is {j0}"

    def j(p: PyTree) -> float:
        try:
            return float(task_losses(_requiring_grad(p)).detach().mean())
        except NonFiniteError:
            return math.nan

    claimed_grad = None
    if meta_grad is not None:
        claimed_grad = _aligned_grad(meta_params, meta_grad)
    elif loss_error is None:
        try:
            claimed_grad = meta_value_and_grad(task_loss_fn, theta, *args64, strategy="loop")[1]
        except NonFiniteError:
            # The meta-loss is finite, so its gradient is not: recompute it without the
            # check to name the parameters.
            claimed_grad = _unchecked_grad(task_losses, theta)
    fo_grad = None
    if first_order_fn is not None and loss_error is None:
        fo_grad = meta_value_and_grad(first_order_fn, theta, *args64, strategy="loop")[1]

    gen = torch.Generator().manual_seed(seed)
    fd, claimed, fo, directions = [], [], [], []
    for _ in range(num_directions):
        u = tree_map(lambda x: torch.randn(x.shape, generator=gen, dtype=x.dtype).to(x.device), theta)
        norm = tree_vdot(u, u).sqrt()
        u = tree_map(lambda x: x / norm, u)
        directions.append(u)
        plus, minus = j(_step(theta, u, eps)), j(_step(theta, u, -eps))
        fd.append((plus - minus) / (2 * eps))
        if claimed_grad is not None:
            claimed.append(float(tree_vdot(claimed_grad, u)))
        if fo_grad is not None:
            fo.append(float(tree_vdot(fo_grad, u)))

    report = dict(
        finite_difference=fd, claimed=claimed, first_order=fo if fo_grad is not None else None,
        max_relative_error=math.nan, matches_finite_differences=False, finite=True,
        non_finite_parameters=[], value_depends_on_theta=True, second_order_missing=False,
        uses_implicit=implicit_spec is not None,
    )

    bad = [] if claimed_grad is None else _non_finite_names(claimed_grad)
    if loss_error is not None or bad:
        return MetaGradReport(
            **{**report, "finite": False, "non_finite_parameters": bad},
            verdict=_non_finite_verdict(bad, loss_error, fd),
        )
    if not all(math.isfinite(v) for v in fd):
        return MetaGradReport(
            **report,
            verdict=(
                f"cannot check: the meta-loss is finite at theta ({j0:.6g}) but NaN/inf within "
                f"eps={eps:g} of it (finite differences {_fmt(fd)}); is theta at the edge of "
                "the loss's domain (e.g. a log of a probability that reaches zero)?"
            ),
        )

    scale = max(max(abs(v) for v in fd + claimed), 1e-300)
    max_err = max(abs(c - f) for c, f in zip(claimed, fd)) / scale
    report["max_relative_error"] = max_err
    fo_err = None if fo_grad is None else max(abs(c - f) for c, f in zip(claimed, fo)) / scale
    fo_gap = None if fo_grad is None else max(abs(a - f) for a, f in zip(fo, fd)) / scale

    if max_err <= rtol:
        verdict = f"meta-gradient matches finite differences (max relative error {max_err:.1e})"
        if fo_gap is not None:
            verdict += (
                "; second-order terms are negligible for this problem (the first-order "
                "gradient matches too)"
                if fo_gap <= rtol
                else f"; it has the second-order terms (the first-order gradient is off by {fo_gap:.1e})"
            )
        return MetaGradReport(**{**report, "matches_finite_differences": True}, verdict=verdict)

    fd_vanishes = max(abs(v) for v in fd) <= rtol * max(abs(v) for v in claimed)
    if fd_vanishes and _value_is_constant(j, j0, theta, directions):
        return MetaGradReport(
            **{**report, "value_depends_on_theta": False},
            verdict=(
                "the objective's value does not depend on theta (a magic-box surrogate such as "
                "DiCE); finite differences cannot check it; check the surrogate's expectation "
                "instead (e.g. exact enumeration, see tests/estimators). The gradient's "
                f"directional derivatives are {_fmt(claimed)}, the finite differences "
                f"{_fmt(fd)}."
            ),
        )
    if fo_err is not None and fo_err <= rtol:
        return MetaGradReport(
            **{**report, "second_order_missing": True},
            verdict=(
                f"meta-gradient equals the FIRST-ORDER gradient, off from finite differences by "
                f"{max_err:.1e}: second-order terms are missing (a forgotten create_graph=True, "
                "or a detached copy of the parameters before adaptation?)"
            ),
        )
    if implicit_spec is not None:
        return MetaGradReport(
            **report,
            verdict=(
                f"meta-gradient does not match finite differences (max relative error "
                f"{max_err:.1e}), as expected when the inner problem is not solved: the task "
                f"loss uses adapt(..., mode=implicit(...)){_describe_implicit(implicit_spec)}, "
                "whose gradient (I + H/reg)^-1 g is exact only at the proximal solution with "
                "converged CG, while finite differences differentiate the inner loop as run. "
                "Give it more steps (or a larger, still stable, inner learning rate) and more "
                "cg_steps, and check again"
            ),
        )
    verdict = f"meta-gradient is WRONG: max relative error {max_err:.1e} against finite differences"
    if fd_vanishes:
        verdict += (
            f" (which are ~0, {_fmt(fd)}, while the gradient is not: theta is a stationary point "
            "of the meta-loss, or part of the objective is a magic-box surrogate whose value "
            "does not depend on theta)"
        )
    return MetaGradReport(**report, verdict=verdict)


def _check_hyperparams(num_directions: object, eps: object, rtol: object) -> None:
    if isinstance(num_directions, bool) or not isinstance(num_directions, int) or num_directions < 1:
        raise ValueError(f"check_meta_grad needs num_directions >= 1 (an int), got {num_directions!r}")
    for name, value in (("eps", eps), ("rtol", rtol)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
            raise ValueError(f"check_meta_grad needs {name} > 0, got {value!r}")


def _named_leaves(tree: Any, prefix: str = "") -> list[tuple[str, Any]]:
    if isinstance(tree, dict):
        return [item for k, v in tree.items() for item in _named_leaves(v, f"{prefix}{k}.")]
    if isinstance(tree, (list, tuple)):
        return [item for i, v in enumerate(tree) for item in _named_leaves(v, f"{prefix}{i}.")]
    return [(prefix.rstrip(".") or "<root>", tree)]


def _check_meta_params(meta_params: PyTree) -> None:
    named = _named_leaves(meta_params)
    bad = [name for name, x in named if not (isinstance(x, Tensor) and x.is_floating_point())]
    if bad or not named:
        raise TypeError(
            "check_meta_grad needs meta_params to be a pytree of floating-point tensors; "
            f"not so for {bad or 'an empty tree'}"
        )


def _aligned_grad(meta_params: PyTree, meta_grad: PyTree) -> PyTree:
    """``meta_grad`` in float64, keyed like ``meta_params``, with its shapes checked."""
    names = {name for name, _ in _named_leaves(meta_params)}
    given = {name for name, _ in _named_leaves(meta_grad)}
    if names != given:
        raise ValueError(
            f"meta_grad is not shaped like meta_params: missing {sorted(names - given)}, "
            f"unexpected {sorted(given - names)}"
        )

    def cast(p: Tensor, g: Any) -> Tensor:
        if not isinstance(g, Tensor) or g.shape != p.shape:
            shape = tuple(g.shape) if isinstance(g, Tensor) else type(g).__name__
            raise ValueError(f"meta_grad has a leaf of shape {shape} for a parameter of shape {tuple(p.shape)}")
        return g.detach().to(device=p.device, dtype=torch.float64)

    return tree_map(cast, meta_params, meta_grad)


def _to64(tree: Any) -> Any:
    return tree_map(
        lambda x: x.detach().to(torch.float64) if isinstance(x, Tensor) and x.is_floating_point() else x,
        tree,
    )


def _is_dtype_error(e: RuntimeError) -> bool:
    text = str(e)
    return any(word in text for word in ("dtype", "Double", "scalar type"))


def _step(theta: PyTree, u: PyTree, h: float) -> PyTree:
    return tree_map(lambda t, d: t + h * d, theta, u)


def _find_implicit(losses: Tensor) -> Any:
    """The spec of an ``implicit`` inner loop in ``losses``'s autograd graph, else ``None``."""
    seen, stack = set(), [losses.grad_fn]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        if type(node).__name__ == _IMPLICIT_NODE:
            return getattr(node, "spec", True)
        stack.extend(fn for fn, _ in node.next_functions)
    return None


def _describe_implicit(spec: Any) -> str:
    try:
        return f" with steps={spec.steps}, reg={spec.reg:g}, cg_steps={spec.cg_steps}"
    except AttributeError:
        return ""


def _value_is_constant(j: Callable[[PyTree], float], j0: float, theta: PyTree, directions: list) -> bool:
    """Whether the meta-loss keeps its value (to rounding) a step of _PROBE away along every direction."""
    tol = _CONSTANT_RTOL * max(abs(j0), 1.0)
    return all(abs(j(_step(theta, u, _PROBE)) - j0) <= tol for u in directions)


def _requiring_grad(theta: PyTree) -> PyTree:
    """Fresh leaves that require grad, as meta_value_and_grad passes them to the task loss."""
    return tree_map(lambda x: x.detach().requires_grad_(), theta)


def _unchecked_grad(task_losses: Callable[[PyTree], Tensor], theta: PyTree) -> PyTree:
    """The gradient of the mean meta-loss by plain autograd, NaN/inf included."""
    flat, spec = tree_flatten(_requiring_grad(theta))
    loss = task_losses(tree_unflatten(flat, spec)).mean()
    grads = torch.autograd.grad(loss, flat, allow_unused=True) if loss.requires_grad else [None] * len(flat)
    return tree_unflatten([torch.zeros_like(x) if g is None else g for x, g in zip(flat, grads)], spec)


def _non_finite_names(grads: PyTree) -> list[str]:
    return sorted(name for name, g in _named_leaves(grads) if not bool(torch.isfinite(g).all()))


def _non_finite_verdict(bad: list[str], loss_error: str | None, fd: list[float]) -> str:
    if loss_error is not None:
        what = f"meta-gradient is NaN/inf for parameters {bad} and " if bad else ""
        return (
            f"{what}the meta-loss is not finite at theta ({loss_error}); likely causes: an inner "
            "learning rate too large (the inner loop diverges), or the log of a zero probability"
        )
    fd_note = (
        "finite differences are finite, so the meta-loss is differentiable here and "
        if all(math.isfinite(v) for v in fd)
        else ""
    )
    return (
        f"meta-gradient is NaN/inf for parameters {bad} while the meta-loss is finite: "
        f"{fd_note}the NaN comes from the backward pass (0 * inf). Likely causes: an "
        "adaptive inner optimizer differentiated at a zero inner gradient (Adam's sqrt(v) at "
        "v = 0: put an epsilon inside the square root, e.g. torchopt.adam(..., "
        "eps_root=1e-8)); the log, sqrt or norm of zero hidden behind torch.where (mask the "
        "input, not the output); an inner learning rate so large that the backward pass "
        "overflows"
    )


def _fmt(values: list[float]) -> str:
    return "[" + ", ".join(f"{v:.3g}" for v in values) + "]"
