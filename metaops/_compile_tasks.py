"""``meta_value_and_grad(..., compile=True)``: one task's (or chunk's) meta-gradient compiled (private)."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from metaops._batching import (
    Strategy,
    _auto_strategy,
    _check_strategy,
    _num_tasks,
    accumulate_units,
    mean_over_tasks,
    meta_value_and_grad,
    unit_grad_fn,
)
from metaops._batchnorm import BatchNormUnderVmapError
from metaops._compile import CompiledMetaStep
from metaops.tree import stop_gradient
from metaops.typing import PyTree

__all__ = ["compile_meta_value_and_grad", "CompiledMetaValueAndGrad"]


class CompiledMetaValueAndGrad:
    """[metaops.meta_value_and_grad][] for a fixed ``task_loss_fn``, compiled per unit of work.

    Behind ``meta_value_and_grad(..., compile=True)``; see there. Each unit function (the
    whole batch, a chunk or a task) is a [metaops.CompiledMetaStep][], with its eager first
    call, verification and eager fallback.

    Attributes:
        strategy: The strategy asked for (``"auto"`` is resolved on the first call).
        units: The compiled unit function of each strategy used so far.

    Examples:
        >>> fn = lambda theta, x: (theta["w"] * x).sum() ** 2
        >>> meta_grad = CompiledMetaValueAndGrad(fn, strategy="vmap", chunk_size=None,
        ...                                      verify=True, compile_kwargs={"backend": "eager"})
        >>> theta, xs = {"w": torch.tensor(1.0)}, torch.ones(2, 3)
        >>> [meta_grad(theta, xs)[1]["w"] for _ in range(2)], sorted(meta_grad.units)
        ([tensor(18.), tensor(18.)], ['vmap'])
    """

    def __init__(
        self,
        task_loss_fn: Callable[..., Tensor],
        *,
        strategy: Strategy,
        chunk_size: int | None,
        verify: bool,
        compile_kwargs: dict[str, Any],
    ) -> None:
        _check_strategy(strategy, chunk_size)
        self.task_loss_fn = task_loss_fn
        self.strategy = strategy
        self.chunk_size = chunk_size
        self.verify = verify
        self.compile_kwargs = compile_kwargs
        self.units: dict[str, CompiledMetaStep] = {}
        self._auto_choice: str | None = None

    @property
    def compiled(self) -> bool:
        """Whether every unit function compiled (``False`` once any fell back to eager)."""
        return bool(self.units) and all(unit.compiled for unit in self.units.values())

    @property
    def compile_seconds(self) -> float | None:
        """Total compile time of the unit functions, ``None`` before the first compile."""
        times = [u.compile_seconds for u in self.units.values() if u.compile_seconds is not None]
        return sum(times) if times else None

    @property
    def fallback_reason(self) -> str | None:
        """Why a unit function runs eagerly, if one does."""
        return next((u.fallback_reason for u in self.units.values() if u.fallback_reason), None)

    def _unit(self, strategy: str) -> CompiledMetaStep:
        if strategy not in self.units:
            if strategy == "vmap":  # one graph for the whole step, mean and division included
                fn = functools.partial(_vmapped_meta_value_and_grad, self.task_loss_fn)
            else:
                fn = unit_grad_fn(self.task_loss_fn, strategy)
            self.units[strategy] = CompiledMetaStep(fn, verify=self.verify, **self.compile_kwargs)
        return self.units[strategy]

    def _run(self, strategy: str, meta_params: PyTree, task_args: tuple) -> tuple[Tensor, PyTree]:
        if strategy == "vmap":
            loss, grads = self._unit("vmap")(meta_params, *task_args)
            if not bool(torch.isfinite(loss)):  # name the tasks: the eager step raises the error
                return meta_value_and_grad(self.task_loss_fn, meta_params, *task_args, strategy="vmap")
            return loss, grads
        dims = (0,) * len(task_args)
        n = _num_tasks(task_args, dims)
        unit = self._unit(strategy)
        grads, losses = accumulate_units(unit, stop_gradient(meta_params), task_args, n, strategy, self.chunk_size)
        return mean_over_tasks(losses, grads, n, check_finite=True)

    def __call__(self, meta_params: PyTree, *task_args: Any) -> tuple[Tensor, PyTree]:
        if not task_args:
            raise ValueError("the compiled meta-gradient needs task arguments with a leading task dimension")
        with torch.no_grad():  # graphs are built by torch.func.grad inside, never by autograd
            if self.strategy != "auto":
                return self._run(self.strategy, meta_params, task_args)
            if self._auto_choice is None:
                dims = (0,) * len(task_args)
                _num_tasks(task_args, dims)
                self._auto_choice = _auto_strategy(task_args, dims)
            try:
                return self._run(self._auto_choice, meta_params, task_args)
            except BatchNormUnderVmapError:  # raised on the eager first call of the vmap unit
                self._auto_choice = "loop"  # exact, and it compiles: no vmap inside
                return self._run("loop", meta_params, task_args)


def _vmapped_meta_value_and_grad(task_loss_fn, meta_params, *task_args):
    return meta_value_and_grad(task_loss_fn, meta_params, *task_args, strategy="vmap")


def compile_meta_value_and_grad(
    task_loss_fn: Callable[..., Tensor],
    *,
    strategy: Strategy = "auto",
    chunk_size: int | None = None,
    fullgraph: bool = True,
    mode: str | None = None,
    dynamic: bool | None = False,
    backend: str | Callable[..., Any] = "inductor",
    verify: bool = True,
) -> CompiledMetaValueAndGrad:
    r"""Returns [metaops.meta_value_and_grad][] for ``task_loss_fn`` with its unit compiled (private).

    Where [metaops.compile_meta_step][] compiles a whole meta-step into one graph, this
    compiles one *unit* of a strategy and runs the strategy's loop in Python:

    - ``"vmap"``: the unit is the whole vmapped batch (one graph, as ``compile_meta_step``).
    - ``"chunked"``: the unit is one chunk of ``chunk_size`` tasks; a smaller last chunk
      compiles a second graph.
    - ``"loop"``: the unit is one task's meta-gradient, compiled once and called per task,
      with gradients summed in between. Compile time is that of one task, not of the batch
      (a compiled Python loop over 32 conv tasks unrolls all 32 into one graph and does not
      finish compiling in minutes), and batch norm with batch statistics is exact here.
    - ``"auto"``: the rule of [metaops.map_tasks][] (``"loop"`` for big CPU tasks, e.g.
      conv nets; else ``"vmap"``), decided on the first call; batch norm in a second-order
      loop moves ``"vmap"`` to the compiled ``"loop"``.

    The returned callable takes ``(meta_params, *task_args)`` and returns ``(mean_loss,
    grads)`` like [metaops.meta_value_and_grad][], including its ``NonFiniteError`` for
    NaN/inf task losses. Compiled and eager results agree to float tolerance; each unit's
    first call runs eagerly and its second call compiles, verifies and, on any compiler
    failure or disagreement, falls back to eager with a ``RuntimeWarning``.

    Args:
        task_loss_fn: ``task_loss_fn(meta_params, *task) -> scalar`` for one task.
        strategy: ``"auto"``, ``"vmap"``, ``"chunked"`` or ``"loop"``.
        chunk_size: Tasks per chunk for ``"chunked"``.
        fullgraph: Require one graph per unit without breaks.
        mode: ``torch.compile`` mode, e.g. ``"reduce-overhead"`` for CUDA graphs.
        dynamic: Passed to ``torch.compile``; ``False`` keeps shape-specialised graphs.
        backend: ``torch.compile`` backend.
        verify: Check the compiling call against an eager run (see [metaops.CompiledMetaStep][]).

    Returns:
        A [metaops.CompiledMetaValueAndGrad][], called as ``(meta_params, *task_args)``.

    Raises:
        ValueError: For an unknown strategy or a bad ``chunk_size``.

    Examples:
        >>> def make_task_loss(lr):  # (dynamo resolves globals by module: closures in doctests)
        ...     from metaops.inner import adapt, sgd
        ...     loss_fn = lambda p, b: ((b[0] * p["w"] - b[1]) ** 2).mean()
        ...     return lambda theta, s, q: loss_fn(adapt(loss_fn, theta, s, sgd(lr), steps=1), q)
        >>> meta_grad = compile_meta_value_and_grad(make_task_loss(0.1), strategy="loop", backend="eager")
        >>> x = torch.tensor([[1.0, 2.0], [1.0, 1.0]]); y = 2 * x
        >>> for _ in range(3):  # eager, then compiled (and verified), then compiled
        ...     loss, grads = meta_grad({"w": torch.tensor(0.0)}, (x, y), (x, y))
        >>> loss, grads["w"], meta_grad.compiled
        (tensor(2.5300), tensor(-2.5300), True)
    """
    compile_kwargs = {"fullgraph": fullgraph, "mode": mode, "dynamic": dynamic, "backend": backend}
    return CompiledMetaValueAndGrad(
        task_loss_fn, strategy=strategy, chunk_size=chunk_size, verify=verify, compile_kwargs=compile_kwargs
    )
