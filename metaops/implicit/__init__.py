"""Implicit meta-gradients: conjugate gradient, Hessian-vector products and iMAML."""

from metaops.implicit._cg import cg
from metaops.implicit._hvp import hvp

__all__ = ["cg", "hvp"]
