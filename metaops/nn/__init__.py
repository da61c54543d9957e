"""Thin ``nn.Module`` conveniences over the functional core."""

from metaops.nn._meta_sgd import MetaSGD
from metaops.nn._params import functional_call, named_params, set_grads

__all__ = ["MetaSGD", "functional_call", "named_params", "set_grads"]
