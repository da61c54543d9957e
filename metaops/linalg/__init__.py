"""Linear-algebra building blocks for implicit meta-gradients: CG and Hessian-vector products.

The iMAML inner-loop mode itself is [metaops.inner.implicit][].
"""

from metaops.linalg._cg import cg
from metaops.linalg._hvp import hvp

__all__ = ["cg", "hvp"]
