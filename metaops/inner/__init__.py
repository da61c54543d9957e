"""Differentiable inner-loop optimizers and the ``adapt`` loop."""

from metaops.inner._adapt import BatchNormUnderVmapError, NonFiniteError, adapt
from metaops.inner._base import InnerOptimizer
from metaops.inner._checkpointed import checkpointed
from metaops.inner._implicit import implicit, implicit_value_and_grad, proximal_loss
from metaops.inner._meta_sgd import meta_sgd, meta_sgd_step
from metaops.inner._reptile import reptile_grad
from metaops.inner._sgd import sgd, sgd_step
from metaops.inner._torchopt import from_torchopt
from metaops.inner._wrappers import first_order

__all__ = [
    "InnerOptimizer",
    "adapt",
    "sgd",
    "sgd_step",
    "meta_sgd",
    "meta_sgd_step",
    "from_torchopt",
    "first_order",
    "checkpointed",
    "implicit",
    "implicit_value_and_grad",
    "proximal_loss",
    "reptile_grad",
    "NonFiniteError",
    "BatchNormUnderVmapError",
]
