"""Type aliases shared across metaops."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeAlias

from torch import Tensor

__all__ = ["Params", "PyTree", "LossFn", "OptState"]

PyTree: TypeAlias = Any
"""A nested structure of dicts, lists and tuples whose leaves are tensors."""

Params: TypeAlias = dict[str, Tensor]
"""Name-keyed parameters, as returned by ``dict(module.named_parameters())``."""

LossFn: TypeAlias = Callable[[Params, Any], Tensor]
"""``loss_fn(params, batch) -> scalar`` loss to **minimise**."""

OptState: TypeAlias = Any
"""State of an inner optimizer (a pytree; ``()`` for stateless optimizers)."""
