"""Standard ``nn.BatchNorm*`` inside torch.func transforms (private).

Inside ``torch.func`` transforms (``grad``, ``vmap``, ..., so inside [metaops.inner.adapt][])
a batch-norm layer in training mode normalises with the batch statistics and leaves its
running buffers untouched: torch cannot update a captured buffer in place there (it raises
"During a grad ... in-place operation ... captured Tensor"), so this turns an error into the
behaviour MAML code expects. The same holds while a metaops batch of tasks runs
(``batch_norm_context``: [metaops.meta_value_and_grad][], [metaops.map_tasks][]), so that
their per-task loop, which runs outside transforms, leaves the buffers as the vmapped
strategies do. Elsewhere outside transforms, and while compiling, nothing changes.

Second-order gradients through batch statistics are wrong under ``vmap`` in torch (see the
known-traps guide); while a second-order inner loop runs under ``vmap`` batch norm with batch
statistics raises [metaops.inner.BatchNormUnderVmapError][] instead.

The first part is a patch of ``_BatchNorm.forward`` installed when metaops is imported; it
acts only inside transforms, where torch itself raises. The second part patches
``torch.nn.functional.batch_norm`` only while a metaops inner loop runs in this thread. Models
without batch norm pay nothing for either.
"""

from __future__ import annotations

import threading

import torch
import torch.nn.functional as F
from torch.nn.modules.batchnorm import _BatchNorm

__all__ = ["BatchNormUnderVmapError", "batch_norm_context"]


class BatchNormUnderVmapError(RuntimeError):
    """Raised when a second-order inner loop runs batch norm under ``torch.func.vmap``.

    torch (checked on 2.13) returns a silently wrong second-order meta-gradient through batch
    statistics under ``vmap`` (errors of 1e-3 to 3e-2; GroupNorm, no norm, and the same code
    without ``vmap`` are exact). metaops refuses rather than return that gradient.
    [metaops.map_tasks][] and [metaops.meta_value_and_grad][] with ``strategy="auto"`` catch
    this error and fall back to the exact per-task loop.
    """


_ORIGINAL_FORWARD = _BatchNorm.forward
_ORIGINAL_BATCH_NORM = F.batch_norm
_local = threading.local()
_lock = threading.Lock()
_installed = 0


def _in_transform() -> bool:
    return torch._C._functorch.peek_interpreter_stack() is not None


def _under_vmap() -> bool:
    stack = torch._C._functorch.get_interpreter_stack()
    vmap = torch._C._functorch.TransformType.Vmap
    return bool(stack) and any(level.key() == vmap for level in stack)


def _forward(self, input):
    if (self.training and self.track_running_stats and not torch.compiler.is_compiling()
            and (_in_transform() or getattr(_local, "depth", 0) > 0)):
        # batch statistics, running buffers and num_batches_tracked left as they are
        self._check_input_dim(input)
        return F.batch_norm(input, None, None, self.weight, self.bias, True, 0.0, self.eps)
    return _ORIGINAL_FORWARD(self, input)


def _batch_norm(input, running_mean, running_var, weight=None, bias=None, training=False,
                momentum=0.1, eps=1e-5):
    refuse = getattr(_local, "refuse", ())
    if refuse and refuse[-1] and (training or running_mean is None) and _under_vmap():
        raise BatchNormUnderVmapError(
            "batch norm with batch statistics inside a second-order inner loop under "
            "torch.func.vmap: torch computes a silently wrong second-order meta-gradient "
            "here (see metaops docs, 'Known traps'). Use metaops.map_tasks / "
            "metaops.meta_value_and_grad with strategy='loop' (or 'auto'), replace BatchNorm "
            "by GroupNorm, or adapt with mode=metaops.inner.first_order() (first-order "
            "gradients are exact)."
        )
    return _ORIGINAL_BATCH_NORM(input, running_mean, running_var, weight, bias, training,
                                momentum, eps)


class batch_norm_context:  # noqa: N801 (used like a function)
    """While active in this thread, batch norm behaves as the module docstring says."""

    __slots__ = ("refuse", "entered")

    def __init__(self, *, refuse_batch_statistics: bool = False):
        self.refuse = refuse_batch_statistics
        self.entered = False

    def __enter__(self):
        global _installed
        if torch.compiler.is_compiling():
            return self
        self.entered = True
        _local.depth = getattr(_local, "depth", 0) + 1
        _local.refuse = getattr(_local, "refuse", ()) + (self.refuse,)
        if _local.depth == 1:
            with _lock:
                _installed += 1
                if _installed == 1:
                    F.batch_norm = _batch_norm
        return self

    def __exit__(self, *exc):
        global _installed
        if not self.entered:
            return False
        _local.depth -= 1
        _local.refuse = _local.refuse[:-1]
        if _local.depth == 0:
            with _lock:
                _installed -= 1
                if _installed == 0:
                    F.batch_norm = _ORIGINAL_BATCH_NORM
        return False


_BatchNorm.forward = _forward
