"""metaops: functional, composable meta-learning for PyTorch.

The public API lives in these namespaces (one public path per object):

- ``metaops.inner``: differentiable inner optimizers and ``adapt``.
- ``metaops.implicit``: conjugate gradient and Hessian-vector products.
- ``metaops.tree``: pytree utilities.
- ``metaops.nn``: thin ``nn.Module`` conveniences.
- ``metaops.tasks``: supervised task distributions.
- top level: ``map_tasks``, ``meta_value_and_grad``, ``check_meta_grad``,
  ``compile_meta_step``.
"""

from metaops import implicit, inner, nn, tasks, tree
from metaops._batching import map_tasks, meta_value_and_grad
from metaops._check import MetaGradReport, check_meta_grad
from metaops._compile import CompiledMetaStep, compile_meta_step

__version__ = "0.1.0"

__all__ = [
    "inner",
    "implicit",
    "tree",
    "nn",
    "tasks",
    "map_tasks",
    "meta_value_and_grad",
    "check_meta_grad",
    "MetaGradReport",
    "compile_meta_step",
    "CompiledMetaStep",
]
