"""Execution strategies over a batch of tasks: full vmap, chunked vmap or a per-task loop."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Literal

import torch
from torch import Tensor

from metaops.inner._adapt import BatchNormUnderVmapError, NonFiniteError
from metaops.tree import tree_add, tree_index, tree_leaves, tree_map, tree_stack
from metaops.typing import PyTree

__all__ = ["map_tasks", "meta_value_and_grad", "Strategy"]

Strategy = Literal["auto", "vmap", "chunked", "loop"]
_STRATEGIES = ("auto", "vmap", "chunked", "loop")
_log = logging.getLogger("metaops")


def _check_strategy(strategy: str, chunk_size: int | None) -> None:
    if strategy not in _STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; choose one of {list(_STRATEGIES)}")
    if strategy == "chunked":
        if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
            raise ValueError(f"strategy='chunked' needs chunk_size >= 1, got {chunk_size!r}")
    elif chunk_size is not None:
        raise ValueError(f"chunk_size is only used with strategy='chunked' (got {strategy!r})")


def _num_tasks(args: tuple, in_dims: tuple) -> int:
    sizes = set()
    for i, (arg, dim) in enumerate(zip(args, in_dims)):
        if dim is None:
            continue
        for leaf in tree_leaves(arg):
            if not isinstance(leaf, Tensor) or leaf.dim() == 0:
                raise ValueError(f"task argument {i} has a leaf without a leading task dimension")
            sizes.add(leaf.shape[0])
    if not sizes:
        raise ValueError("no argument is batched over tasks (all in_dims are None)")
    if len(sizes) > 1:
        raise ValueError(f"task arguments disagree on the number of tasks: {sorted(sizes)}")
    n = sizes.pop()
    if n == 0:
        raise ValueError("the task batch is empty")
    return n


def _normalise_in_dims(in_dims: int | None | tuple, num_args: int) -> tuple:
    if isinstance(in_dims, tuple):
        if len(in_dims) != num_args:
            raise ValueError(f"in_dims has {len(in_dims)} entries for {num_args} arguments")
        bad = [d for d in in_dims if d not in (0, None)]
        if bad:
            raise ValueError(f"in_dims entries must be 0 (batched over tasks) or None, got {bad}")
        return in_dims
    if in_dims not in (0, None):
        raise ValueError(f"in_dims must be 0, None or a tuple of those, got {in_dims!r}")
    return (in_dims,) * num_args


def _slice_args(args, in_dims, index):
    return tuple(a if d is None else tree_index(a, index) for a, d in zip(args, in_dims))


def map_tasks(
    fn: Callable[..., PyTree],
    *,
    in_dims: int | None | tuple = 0,
    strategy: Strategy = "auto",
    chunk_size: int | None = None,
) -> Callable[..., PyTree]:
    r"""Maps a per-task function over a task batch with a chosen execution strategy.

    A drop-in for ``torch.func.vmap`` over the leading (task) dimension, with the strategy
    as a choice, because the fastest one depends on the workload:

    - ``"vmap"``: all tasks in one batched computation; fastest for small, overhead-bound
      models (e.g. a sinusoid MLP).
    - ``"chunked"``: ``vmap`` over ``chunk_size`` tasks at a time; bounds peak memory.
    - ``"loop"``: a Python loop over tasks; on CPU often fastest and leanest for conv nets.
    - ``"auto"`` (default): ``"vmap"``, falling back to ``"loop"`` when a second-order inner
      loop meets batch norm under ``vmap`` (where torch's second-order gradient is wrong, see
      [metaops.inner.BatchNormUnderVmapError][]).

    All strategies give the same values and gradients (up to float rounding).

    Args:
        fn: Per-task function; returns a pytree of tensors.
        in_dims: Per argument, ``0`` if batched over tasks or ``None`` if shared.
        strategy: One of ``"auto"``, ``"vmap"``, ``"chunked"``, ``"loop"``.
        chunk_size: Tasks per chunk for ``"chunked"``.

    Returns:
        A function of the same arguments returning outputs stacked over tasks.

    Raises:
        ValueError: For an unknown strategy, a bad ``chunk_size``, or task arguments that
            disagree on the number of tasks.

    Examples:
        >>> f = lambda w, x: (w * x).sum()
        >>> xs = torch.arange(6.0).reshape(3, 2)
        >>> map_tasks(f, in_dims=(None, 0), strategy="loop")(torch.ones(2), xs)
        tensor([1., 5., 9.])
    """
    _check_strategy(strategy, chunk_size)

    def batched(*args):
        dims = _normalise_in_dims(in_dims, len(args))
        n = _num_tasks(args, dims)
        if strategy == "loop":
            return tree_stack([fn(*_slice_args(args, dims, i)) for i in range(n)])
        if strategy == "chunked":
            return torch.func.vmap(fn, in_dims=dims, chunk_size=chunk_size)(*args)
        if strategy == "vmap":
            return torch.func.vmap(fn, in_dims=dims)(*args)
        try:
            return torch.func.vmap(fn, in_dims=dims)(*args)
        except BatchNormUnderVmapError:
            _log.info("map_tasks: batch norm in a second-order inner loop; using strategy='loop'")
            return tree_stack([fn(*_slice_args(args, dims, i)) for i in range(n)])

    return batched


def meta_value_and_grad(
    task_loss_fn: Callable[..., Tensor],
    meta_params: PyTree,
    *task_args: Any,
    strategy: Strategy = "auto",
    chunk_size: int | None = None,
) -> tuple[Tensor, PyTree]:
    r"""Returns the mean meta-loss over a task batch and its meta-gradient.

    $$\mathcal{J}(\theta) = \frac{1}{N}\sum_{i=1}^{N} \ell_i(\theta),\qquad
      \ell_i(\theta) = \texttt{task\_loss\_fn}(\theta, \text{task}_i),$$

    where ``task_loss_fn`` typically adapts with [metaops.inner.adapt][] on the support set
    and evaluates on the query set. The strategies of [metaops.map_tasks][] apply; here
    ``"chunked"`` and ``"loop"`` also *accumulate gradients chunk by chunk*, so peak memory
    holds one chunk's graph, not the whole batch's.

    Args:
        task_loss_fn: ``task_loss_fn(meta_params, *task) -> scalar`` for one task.
        meta_params: Pytree of meta-parameters (e.g. ``{"params": ..., "lrs": ...}``).
        *task_args: Task data, every leaf with a leading task dimension ``N``.
        strategy: ``"auto"``, ``"vmap"``, ``"chunked"`` or ``"loop"``.
        chunk_size: Tasks per chunk for ``"chunked"``.

    Returns:
        ``(mean_loss, grads)``: the meta-loss to **minimise** (detached) and its gradient,
        a pytree shaped like ``meta_params``.

    Raises:
        NonFiniteError: If some task's meta-loss is NaN or infinite (names the tasks).
        ValueError: For bad strategies or inconsistent task batches.

    Examples:
        >>> from metaops.inner import adapt, sgd
        >>> loss_fn = lambda p, b: ((b[0] * p["w"] - b[1]) ** 2).mean()
        >>> def task_loss(theta, support, query):
        ...     return loss_fn(adapt(loss_fn, theta, support, sgd(0.1), steps=1), query)
        >>> x = torch.tensor([[1.0, 2.0], [1.0, 1.0]]); y = 2 * x
        >>> loss, grads = meta_value_and_grad(task_loss, {"w": torch.tensor(0.0)}, (x, y), (x, y))
        >>> loss                 # mean of 2.5 and 2.56
        tensor(2.5300)
        >>> grads["w"]           # mean of -5 * 0.5 and -3.2 * 0.8
        tensor(-2.5300)
    """
    _check_strategy(strategy, chunk_size)
    if not task_args:
        raise ValueError("meta_value_and_grad needs task arguments with a leading task dimension")
    dims = (0,) * len(task_args)
    n = _num_tasks(task_args, dims)

    def chunk_sum(meta, *chunk):
        losses = torch.func.vmap(task_loss_fn, in_dims=(None, *dims))(meta, *chunk)
        return losses.sum(), losses.detach()

    def one_sum(meta, *task):
        loss = task_loss_fn(meta, *task)
        return loss, loss.detach().reshape(1)

    grad_chunk = torch.func.grad(chunk_sum, has_aux=True)
    grad_one = torch.func.grad(one_sum, has_aux=True)

    def accumulate(step: int, use_vmap: bool):
        total, losses = None, []
        for start in range(0, n, step):
            index = slice(start, min(start + step, n))
            chunk = tuple(tree_index(a, index) for a in task_args)
            if use_vmap:
                g, l = grad_chunk(meta_params, *chunk)
            else:
                g, l = grad_one(meta_params, *tuple(tree_index(a, start) for a in task_args))
            total = g if total is None else tree_add(total, g)
            losses.append(l)
        return total, torch.cat(losses)

    if strategy == "vmap":
        grads, losses = grad_chunk(meta_params, *task_args)
    elif strategy == "chunked":
        grads, losses = accumulate(chunk_size, use_vmap=True)
    elif strategy == "loop":
        grads, losses = accumulate(1, use_vmap=False)
    else:
        try:
            grads, losses = grad_chunk(meta_params, *task_args)
        except BatchNormUnderVmapError:
            _log.info("meta_value_and_grad: batch norm in a second-order loop; using 'loop'")
            grads, losses = accumulate(1, use_vmap=False)

    finite = torch.isfinite(losses)
    if not torch.compiler.is_compiling() and not bool(finite.all()):
        bad = torch.nonzero(~finite).flatten().tolist()
        raise NonFiniteError(f"meta-loss is NaN/inf for tasks {bad} of {n}")
    return losses.mean(), tree_map(lambda g: g / n, grads)


