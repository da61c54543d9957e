"""Joining the process group that torchrun describes, and asking who this process is."""

from __future__ import annotations

import atexit
import os
from datetime import timedelta

import torch
import torch.distributed as dist

__all__ = ["ProcessGroup", "init", "is_initialized", "is_main_process", "rank", "world_size"]

ProcessGroup = dist.ProcessGroup

_TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def is_initialized() -> bool:
    """Tells whether ``torch.distributed`` has a default process group in this process.

    Returns:
        ``True`` after [metaops.distributed.init][] (or ``torch.distributed.init_process_group``)
        set up the group, ``False`` in a plain single-process run.

    Examples:
        >>> is_initialized()                      # a plain Python process
        False
    """
    return dist.is_available() and dist.is_initialized()


def init(*, backend: str | None = None, timeout: timedelta | None = None) -> ProcessGroup | None:
    """Joins the process group of a ``torchrun`` launch and returns it; ``None`` in a plain run.

    ``torchrun`` (and SLURM scripts that call it) describes the job in environment variables:
    ``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT`` and ``LOCAL_RANK``. If they are
    set, this initialises ``torch.distributed`` from them and returns the default group (all
    processes), which is what ``process_group=`` / ``group=`` arguments take. Without them it
    does nothing and returns ``None``, the "one process" value that every function of
    [metaops.distributed][] and [metaops.meta_value_and_grad][] accept, so that one script
    runs both ways. If the group is already initialised, it is returned as it is. A group that
    ``init`` created is destroyed when the interpreter exits (``atexit``), unless the program
    destroyed it before.

    The backend is chosen by device: ``"gloo"`` without CUDA; with CUDA,
    ``"cpu:gloo,cuda:nccl"``, which reduces CPU tensors with gloo and CUDA tensors with NCCL,
    and the current CUDA device is set to ``cuda:LOCAL_RANK`` (one GPU per process).

    Args:
        backend: Overrides the automatic choice (e.g. ``"gloo"``, ``"nccl"``).
        timeout: How long a collective waits for the other processes before failing (torch's
            default: 10 minutes for NCCL, 30 for gloo).

    Returns:
        The default process group, or ``None`` when not launched by ``torchrun``.

    Examples:
        >>> group = init()       # not under torchrun: nothing to join
        >>> print(group)
        None
    """
    if is_initialized():
        return dist.group.WORLD
    if not all(name in os.environ for name in _TORCHRUN_VARIABLES):
        return None
    if not dist.is_available():
        raise RuntimeError("metaops.distributed.init: this torch build has no torch.distributed")
    cuda = torch.cuda.is_available()
    if backend is None:
        backend = "cpu:gloo,cuda:nccl" if cuda and dist.is_nccl_available() else "gloo"
    if cuda and "nccl" in backend:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")) % torch.cuda.device_count())
    kwargs = {} if timeout is None else {"timeout": timeout}
    dist.init_process_group(backend=backend, **kwargs)
    atexit.register(_destroy_at_exit)
    return dist.group.WORLD


def _destroy_at_exit() -> None:
    """Destroys the group while the interpreter is still whole (a no-op if the program already did).

    Without it, gloo's worker threads can outlive the interpreter's teardown, and a process that
    finishes while another still works (the main process evaluating, say) may abort with
    "terminate called without an active exception" (pytorch/pytorch#190489), which fails the job.
    """
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def rank(group: ProcessGroup | None = None) -> int:
    """Returns this process's rank in ``group``: ``0`` for ``None`` (one process).

    Args:
        group: A process group, or ``None``.

    Examples:
        >>> rank(None)
        0
    """
    return 0 if group is None else dist.get_rank(group)


def world_size(group: ProcessGroup | None = None) -> int:
    """Returns the number of processes in ``group``: ``1`` for ``None`` (one process).

    Args:
        group: A process group, or ``None``.

    Examples:
        >>> world_size(None)
        1
    """
    return 1 if group is None else dist.get_world_size(group)


def is_main_process() -> bool:
    """Tells whether this process should write files and print: global rank 0, or no group.

    Use it to guard logs, checkpoints, plots and ``print`` in your own loop; the
    [metaops.experiment][] helpers already do.

    Examples:
        >>> is_main_process()                     # a plain Python process is the main one
        True
    """
    return not is_initialized() or dist.get_rank() == 0
