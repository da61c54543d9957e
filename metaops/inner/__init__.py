"""Differentiable inner-loop optimizers, the ``adapt`` loop and its differentiation modes.

An optimizer ([metaops.inner.sgd][], [metaops.inner.meta_sgd][],
[metaops.inner.from_torchopt][]) says how to step; a mode ([metaops.inner.unrolled][],
[metaops.inner.first_order][], [metaops.inner.checkpointed][], [metaops.inner.implicit][])
says how the steps are differentiated. Both are chosen in [metaops.inner.adapt][].
"""

from metaops._batchnorm import BatchNormUnderVmapError
from metaops.inner._adapt import NonFiniteError, adapt
from metaops.inner._base import InnerOptimizer
from metaops.inner._implicit import implicit_value_and_grad, proximal_loss
from metaops.inner._meta_sgd import meta_sgd, meta_sgd_step
from metaops.inner._modes import checkpointed, first_order, implicit, unrolled
from metaops.inner._reptile import reptile_grad
from metaops.inner._sgd import sgd, sgd_step
from metaops.inner._torchopt import from_torchopt

__all__ = [
    "InnerOptimizer",
    "adapt",
    "sgd",
    "sgd_step",
    "meta_sgd",
    "meta_sgd_step",
    "from_torchopt",
    "unrolled",
    "first_order",
    "checkpointed",
    "implicit",
    "implicit_value_and_grad",
    "proximal_loss",
    "reptile_grad",
    "NonFiniteError",
    "BatchNormUnderVmapError",
]
