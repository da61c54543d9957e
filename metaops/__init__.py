"""metaops: functional, composable meta-learning for PyTorch.

The public API lives in these namespaces (one public path per object):

- ``metaops.inner``: differentiable inner optimizers and ``adapt``.
- ``metaops.linalg``: conjugate gradient and Hessian-vector products.
- ``metaops.tree``: pytree utilities.
- ``metaops.nn``: thin ``nn.Module`` conveniences.
- ``metaops.tasks``: supervised task distributions.
- ``metaops.estimators``: Monte-Carlo meta-gradient estimators for RL (DiCE, LVC, ...).
- ``metaops.rl``: RL building blocks (returns, GAE, baselines, policies, critics, TRPO, PPO).
- ``metaops.envs``: gymnasium + MuJoCo meta-RL tasks and the task-batched sampler
  (imported on first use).
- ``metaops.distributed``: data-parallel meta-training on ``torch.distributed`` (``torchrun``).
- ``metaops.experiment``: checkpoints, run logs, confidence intervals, plots for recipes
  (imported on first use).
- top level: ``map_tasks``, ``meta_value_and_grad``, ``check_meta_grad``,
  ``compile_meta_step``.
"""

import importlib
from typing import Any

from metaops import distributed, estimators, inner, linalg, nn, rl, tasks, tree
from metaops._batching import map_tasks, meta_value_and_grad
from metaops._check import MetaGradReport, check_meta_grad
from metaops._compile import CompiledMetaStep, compile_meta_step

__version__ = "0.1.0"

__all__ = [
    "inner",
    "linalg",
    "tree",
    "nn",
    "tasks",
    "estimators",
    "rl",
    "envs",
    "experiment",
    "distributed",
    "map_tasks",
    "meta_value_and_grad",
    "check_meta_grad",
    "MetaGradReport",
    "compile_meta_step",
    "CompiledMetaStep",
]


def __getattr__(name: str) -> Any:
    # envs (gymnasium, MuJoCo) and experiment (matplotlib, TensorBoard) are heavy imports:
    # load them on first use only.
    if name in ("envs", "experiment"):
        return importlib.import_module(f"metaops.{name}")
    raise AttributeError(f"module 'metaops' has no attribute {name!r}")
