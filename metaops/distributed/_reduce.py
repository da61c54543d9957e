"""Collectives over pytrees: one flat bucket per reduction, parameters broadcast from one rank."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import torch
import torch.distributed as dist
import torch.distributed._functional_collectives as _functional_collectives  # the traceable all_reduce
from torch import Tensor, nn

from metaops.distributed._setup import ProcessGroup, is_main_process, rank, world_size
from metaops.tree import tree_flatten, tree_unflatten
from metaops.typing import PyTree

__all__ = ["all_reduce_mean", "any_process", "broadcast_params", "flat_all_reduce_sum", "broadcast_object",
           "gather_to_main", "on_main_process"]


def flat_all_reduce_sum(tensors: list[Tensor], group: ProcessGroup) -> list[Tensor]:
    """Sums ``tensors`` over the group with one ``all_reduce`` per (dtype, device) (private).

    The tensors are flattened into one contiguous bucket (in list order, the same on every
    rank), reduced with ``SUM`` and split back into new tensors of the original shapes.
    Normally every tensor has the same dtype and device: one bucket, one collective. Inside
    ``torch.compile`` it uses torch's functional collective, which dynamo traces into the graph.
    """
    out: list[Tensor | None] = [None] * len(tensors)
    buckets: dict[tuple[torch.dtype, torch.device], list[int]] = {}
    for i, t in enumerate(tensors):
        buckets.setdefault((t.dtype, t.device), []).append(i)
    for indices in buckets.values():
        flat = torch.cat([tensors[i].detach().reshape(-1) for i in indices])
        if torch.compiler.is_compiling():  # traceable form of the same collective (a compiled meta-step)
            flat = _functional_collectives.all_reduce(flat, "sum", group)
        else:
            dist.all_reduce(flat, op=dist.ReduceOp.SUM, group=group)
        for i, piece in zip(indices, flat.split([tensors[i].numel() for i in indices])):
            out[i] = piece.view(tensors[i].shape)
    return out  # type: ignore[return-value]


def all_reduce_mean(tree: PyTree, *, count: int, group: ProcessGroup | None = None) -> PyTree:
    r"""Averages a pytree of per-process means over all processes, weighted by their counts.

    If process $r$ computed means $\bar x_r$ over its $n_r$ items (tasks, episodes, ...), every
    process receives the mean over all items,

    $$\bar x = \frac{\sum_r n_r\,\bar x_r}{\sum_r n_r},$$

    which is what one process computing over all items would get (up to float rounding). The
    sums $n_r \bar x_r$ and the count travel in **one** flat buffer per dtype (a single
    ``all_reduce`` for the usual all-float32 tree) whose layout is the leaves' order, the same on
    every process. A process with ``count=0`` contributes nothing (its ``tree`` values are
    ignored, NaN included). Gradients do not flow through the reduction: the result is
    constant (stop-gradient).

    Every process of ``group`` must call it, with a tree of the same structure and shapes.

    Args:
        tree: Pytree of floating tensors: this process's means.
        count: The number of items this process averaged over ($n_r \ge 0$).
        group: The process group, or ``None`` (one process: ``tree`` returned unchanged).

    Returns:
        A pytree like ``tree`` holding the means over all processes' items (detached).

    Raises:
        ValueError: If ``count`` is negative, or every process had ``count=0``.
        TypeError: If a leaf is not a floating tensor.

    Examples:
        >>> stats = {"loss": torch.tensor(0.5), "grad": torch.tensor([1.0, -1.0])}
        >>> all_reduce_mean(stats, count=4)       # one process: nothing to average with
        {'loss': tensor(0.5000), 'grad': tensor([ 1., -1.])}
    """
    if count < 0:
        raise ValueError(f"all_reduce_mean: count must be >= 0, got {count}")
    if group is None:
        return tree
    leaves, spec = tree_flatten(tree)
    for i, leaf in enumerate(leaves):
        if not isinstance(leaf, Tensor) or not leaf.is_floating_point():
            raise TypeError(f"all_reduce_mean: leaf {i} is {type(leaf).__name__}, not a floating tensor")
    weighted = [leaf.detach() * count if count else torch.zeros_like(leaf) for leaf in leaves]
    reference = leaves[0] if leaves else torch.zeros(())
    counter = torch.tensor([float(count)], dtype=reference.dtype, device=reference.device)
    *sums, total = flat_all_reduce_sum([*weighted, counter], group)
    total = total.reshape(())  # so that 0-dim leaves stay 0-dim
    if not torch.compiler.is_compiling() and total.item() == 0:
        raise ValueError("all_reduce_mean: every process passed count=0, so there is no mean")
    return tree_unflatten([s / total for s in sums], spec)


def broadcast_object(obj: Any, group: ProcessGroup | None, *, src: int = 0) -> Any:
    """Returns ``obj`` of rank ``src`` on every rank (pickled; private, for small objects)."""
    if group is None:
        return obj
    box = [obj if rank(group) == src else None]
    dist.broadcast_object_list(box, src=dist.get_global_rank(group, src), group=group)
    return box[0]


T = TypeVar("T")


def gather_to_main(obj: T, *, group: ProcessGroup | None = None) -> list[T] | None:
    """Every process's ``obj``, in rank order, on the main process; ``None`` on the others.

    For state that each process holds a share of and only the main process writes, such as
    the replay buffers of the tasks a process owns when a checkpoint is saved. The objects are
    pickled (``torch.distributed.gather_object``): tensors travel through the CPU. Every
    process of ``group`` must call it.

    Args:
        obj: This process's object (picklable).
        group: The process group, or ``None`` (one process: ``[obj]``).

    Returns:
        On the main process, ``[obj of rank 0, obj of rank 1, ...]``; on every other process, ``None``.

    Examples:
        >>> gather_to_main({"task": 0})     # one process: a list of one
        [{'task': 0}]
    """
    if group is None:
        return [obj]
    main = rank(group) == 0
    shares: list[Any] | None = [None] * world_size(group) if main else None
    dist.gather_object(obj, shares, dst=dist.get_global_rank(group, 0), group=group)
    return shares


def on_main_process(fn: Callable[[], T], *, group: ProcessGroup | None = None) -> T:
    """``fn()`` evaluated by the main process only; its result, or the error it raised, on every process.

    For what one process should do for all, such as reading a checkpoint that exists only on
    the main process's disk: every process receives the same (pickled) result, or raises the
    same exception, instead of some processes waiting forever for one that failed. Keep the
    result small (a checkpoint's state dicts are fine; it travels once).

    Every process of ``group`` must call it.

    Args:
        fn: A function of no arguments.
        group: The process group, or ``None`` (one process: ``fn()``).

    Returns:
        The main process's ``fn()``.

    Raises:
        Exception: Whatever ``fn`` raised on the main process, on every process.

    Examples:
        >>> on_main_process(lambda: {"iteration": 3})     # one process: just fn()
        {'iteration': 3}
    """
    if group is None:
        return fn()
    result, error = None, None
    if is_main_process():
        try:
            result = fn()
        except Exception as e:  # noqa: BLE001 - re-raised on every process below
            error = e
    result, error = broadcast_object((result, error), group)
    if error is not None:
        raise error
    return result  # type: ignore[return-value]


def any_process(flag: bool, *, group: ProcessGroup | None = None) -> bool:
    """Whether ``flag`` is true on any process of ``group`` (one small ``all_reduce``).

    The processes of a distributed run agree with it on a decision one of them made alone,
    for instance to stop after Ctrl-C reached only some of them, so that all stop at the same
    iteration. Every process of ``group`` must call it.

    Args:
        flag: This process's flag.
        group: The process group, or ``None`` (one process: ``flag``).

    Returns:
        ``True`` on every process if any process passed ``True``.

    Examples:
        >>> any_process(False), any_process(True)
        (False, True)
    """
    if group is None:
        return bool(flag)
    (count,) = flat_all_reduce_sum([torch.tensor([float(flag)])], group)
    return bool(count.item() > 0)


def broadcast_params(module_or_params: nn.Module | PyTree, *, group: ProcessGroup | None = None,
                     src: int = 0) -> None:
    """Overwrites, in place, every process's parameters with those of rank ``src``.

    Building the model from the same seed on every process gives identical parameters
    already; broadcasting once after construction makes sure of it (another seed, a
    checkpoint loaded only on one rank, a nondeterministic initialisation). For an
    ``nn.Module`` both its parameters and its buffers are sent, in one flat bucket per dtype
    and device, in ``state_dict`` order.

    Args:
        module_or_params: An ``nn.Module``, or a pytree of tensors (e.g. a ``Params`` dict).
        group: The process group, or ``None`` (one process: nothing to do).
        src: Rank (in ``group``) whose values everyone receives.

    Examples:
        >>> model = torch.nn.Linear(2, 1)
        >>> broadcast_params(model)               # one process: nothing changes
        >>> model.weight.shape
        torch.Size([1, 2])
    """
    if group is None:
        return
    if isinstance(module_or_params, nn.Module):
        tensors = list(module_or_params.state_dict(keep_vars=True).values())
    else:
        tensors, _ = tree_flatten(module_or_params)
    tensors = [t for t in tensors if isinstance(t, Tensor)]
    if world_size(group) == 1 or not tensors:
        return
    buckets: dict[tuple[torch.dtype, torch.device], list[Tensor]] = {}
    for t in tensors:
        buckets.setdefault((t.dtype, t.device), []).append(t)
    global_src = dist.get_global_rank(group, src)
    with torch.no_grad():
        for members in buckets.values():
            flat = torch.cat([t.detach().reshape(-1) for t in members])
            dist.broadcast(flat, src=global_src, group=group)
            for t, piece in zip(members, flat.split([t.numel() for t in members])):
                t.copy_(piece.view(t.shape))
