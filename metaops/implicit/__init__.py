"""Linear-algebra building blocks for implicit meta-gradients: CG and Hessian-vector products.

The iMAML inner-loop mode itself is [metaops.inner.implicit][].
"""

from metaops.implicit._cg import cg
from metaops.implicit._hvp import hvp

__all__ = ["cg", "hvp"]
