"""Splitting a task batch that every process drew identically into contiguous per-process slices."""

from __future__ import annotations

from metaops.distributed._setup import ProcessGroup, rank, world_size
from metaops.tree import tree_index, tree_leaves
from metaops.typing import PyTree

__all__ = ["task_slice", "shard_tasks"]


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
