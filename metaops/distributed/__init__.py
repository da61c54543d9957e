"""Data-parallel meta-training on ``torch.distributed``: every process a slice of the tasks.

The pattern (no ``DistributedDataParallel``, which does not synchronise gradients of
gradients and whose modules ``torch.func`` transforms cannot use): launch with ``torchrun``;
every process builds the same model from the same seed and draws the same task batch from the
same generator, keeps its contiguous slice of the tasks ([metaops.distributed.shard_tasks][]),
computes its slice's meta-gradient, and the meta-gradients are averaged over all tasks with one
flat ``all_reduce`` per step (``metaops.meta_value_and_grad(..., process_group=group)`` or
[metaops.distributed.all_reduce_mean][]). Every process then takes the same optimizer step.
"""

from metaops.distributed._reduce import (
    all_reduce_mean,
    any_process,
    broadcast_params,
    gather_to_main,
    on_main_process,
)
from metaops.distributed._setup import init, is_initialized, is_main_process, rank, world_size
from metaops.distributed._tasks import gather_tasks, shard_tasks, task_slice

__all__ = [
    "init",
    "is_initialized",
    "is_main_process",
    "rank",
    "world_size",
    "task_slice",
    "shard_tasks",
    "gather_tasks",
    "all_reduce_mean",
    "broadcast_params",
    "on_main_process",
    "gather_to_main",
    "any_process",
]
