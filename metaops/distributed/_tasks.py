"""Splitting a task batch that every process drew identically into contiguous per-process slices."""

from __future__ import annotations

from metaops.distributed._reduce import flat_all_reduce_sum
from metaops.distributed._setup import ProcessGroup, rank, world_size
from metaops.tree import tree_flatten, tree_index, tree_leaves, tree_unflatten
from metaops.typing import PyTree

__all__ = ["task_slice", "shard_tasks", "gather_tasks"]


def task_slice(num_tasks: int, group: ProcessGroup | None = None) -> slice:
    r"""Returns this process's contiguous share of ``num_tasks`` tasks.

    With $W$ processes, rank $r$ gets tasks $\lfloor rN/W \rfloor, \dots,
    \lfloor (r+1)N/W \rfloor - 1$: the shares differ by at most one task when $W$ does not
    divide $N$, cover every task exactly once, in order, and are empty when $N < W$ (for
    rank $r$ such that no task falls to it). Every process must draw the same task batch
    (the same generator and seed), so that the slices together are that batch.

    Args:
        num_tasks: The number of tasks $N$ in the batch every process drew.
        group: The process group, or ``None`` (one process: every task).

    Returns:
        A ``slice`` for the leading (task) dimension.

    Raises:
        ValueError: If ``num_tasks`` is negative.

    Examples:
        >>> task_slice(25)                        # one process: all tasks
        slice(0, 25, None)
    """
    if num_tasks < 0:
        raise ValueError(f"task_slice: num_tasks must be >= 0, got {num_tasks}")
    r, w = rank(group), world_size(group)
    return slice(r * num_tasks // w, (r + 1) * num_tasks // w)


def shard_tasks(tasks: PyTree, group: ProcessGroup | None = None) -> PyTree:
    """Keeps this process's share ([metaops.distributed.task_slice][]) of a task batch.

    Args:
        tasks: A pytree of tensors that all have the task dimension first, e.g.
            ``(support, query)``.
        group: The process group, or ``None`` (one process: ``tasks`` unchanged).

    Returns:
        The same pytree, each leaf cut to this process's tasks (views, no copy).

    Raises:
        ValueError: If the leaves disagree on the number of tasks.

    Examples:
        >>> support = (torch.zeros(5, 10, 1), torch.zeros(5, 10, 1))
        >>> shard_tasks(support)[0].shape         # one process keeps all 5 tasks
        torch.Size([5, 10, 1])
    """
    if group is None:
        return tasks
    sizes = {leaf.shape[0] for leaf in tree_leaves(tasks)}
    if len(sizes) != 1:
        raise ValueError(f"shard_tasks: the leaves disagree on the number of tasks: {sorted(sizes)}")
    return tree_index(tasks, task_slice(sizes.pop(), group))


def gather_tasks(shares: PyTree, num_tasks: int, group: ProcessGroup | None = None) -> PyTree:
    """The whole task batch on every process, from each process's share (the inverse of ``shard_tasks``).

    For what needs every task's values: statistics over the batch (a maximum, a median), or a
    fit over all tasks (a shared baseline). Each leaf, with this process's tasks first, is
    placed at its rows ([metaops.distributed.task_slice][]) of a zero tensor of ``num_tasks``
    rows, and the tensors are summed over the processes in one flat ``all_reduce`` per dtype:
    adding zeros is exact, so every process receives bit-identical copies of every share.
    Floating leaves only; gradients do not flow through it.

    Every process of ``group`` must call it with the same structure and trailing shapes.

    Args:
        shares: A pytree of floating tensors, each `(this process's tasks, ...)`.
        num_tasks: The number of tasks $N$ in the whole batch.
        group: The process group, or ``None`` (one process: ``shares`` unchanged).

    Returns:
        The same pytree with leaves `(num_tasks, ...)`, in task order.

    Raises:
        ValueError: If a leaf does not hold this process's share of ``num_tasks`` tasks.

    Examples:
        >>> gather_tasks({"returns": torch.arange(4.0)}, 4)   # one process holds every task
        {'returns': tensor([0., 1., 2., 3.])}
    """
    mine = task_slice(num_tasks, group)
    leaves, spec = tree_flatten(shares)
    for i, leaf in enumerate(leaves):
        if leaf.dim() == 0 or leaf.shape[0] != mine.stop - mine.start:
            raise ValueError(f"gather_tasks: leaf {i} has shape {tuple(leaf.shape)}, but this process holds "
                             f"{mine.stop - mine.start} of the {num_tasks} tasks (rows {mine.start}..{mine.stop - 1})")
    if group is None:
        return shares
    full = []
    for leaf in leaves:
        padded = leaf.detach().new_zeros((num_tasks, *leaf.shape[1:]))
        padded[mine] = leaf.detach()
        full.append(padded)
    return tree_unflatten(flat_all_reduce_sum(full, group), spec)
