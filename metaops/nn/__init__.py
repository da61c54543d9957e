"""Thin ``nn.Module`` conveniences over the functional core."""

from metaops.nn._meta_sgd import MetaSGD
from metaops.nn._params import named_params, set_grads

__all__ = ["MetaSGD", "named_params", "set_grads"]
