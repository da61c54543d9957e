"""Small pure utilities on parameter pytrees (``dict[str, Tensor]`` and nested containers).

This is the only module of metaops that imports ``torch.utils._pytree``. Every function returns
new containers and never mutates its inputs, so all of them compose with ``torch.func``
transforms (``grad``, ``vmap``, ``jvp``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.utils._pytree as _pytree
from torch import Tensor

from metaops.typing import PyTree

__all__ = [
    "tree_map",
    "tree_leaves",
    "tree_flatten",
    "tree_unflatten",
    "tree_structure_equal",
    "tree_add",
    "tree_sub",
    "tree_scale",
    "tree_axpy",
    "tree_vdot",
    "tree_sq_norm",
    "tree_sq_dist",
    "tree_zeros_like",
    "tree_ones_like",
    "stop_gradient",
    "tree_index",
    "tree_stack",
    "tree_ravel",
    "tree_all_finite",
]


def tree_map(fn: Callable[..., Any], tree: PyTree, *rest: PyTree) -> PyTree:
    """Applies ``fn`` leaf-wise to one or more pytrees of the same structure.

    Args:
        fn: Function of as many tensors as there are trees.
        tree: The first pytree; its structure is the structure of the result.
        *rest: Further pytrees with the same structure (same keys, same nesting).

    Returns:
        A new pytree with ``fn(leaf, *other_leaves)`` at every leaf.

    Raises:
        ValueError: If the trees do not share one structure; the message names the keys.

    Examples:
        >>> tree_map(lambda a, b: a + b, {"w": torch.ones(2)}, {"w": torch.ones(2)})
        {'w': tensor([2., 2.])}
    """
    if _is_flat_params(tree) and all(isinstance(r, dict) and r.keys() == tree.keys() for r in rest):
        # Fast path for the canonical Params dict (flat, tensor-valued): pair by name directly.
        if all(_is_flat_params(r) for r in rest):
            return {k: fn(v, *(r[k] for r in rest)) for k, v in tree.items()}
    if rest:
        spec = _pytree.tree_structure(tree)
        aligned = []
        for other in rest:
            if _pytree.tree_structure(other) != spec:
                other = _align(tree, other)  # same keys in another order is fine
                if _pytree.tree_structure(other) != spec:
                    raise ValueError(
                        "pytrees do not have the same structure: "
                        f"{_describe(tree)} vs {_describe(other)}"
                    )
            aligned.append(other)
        rest = tuple(aligned)
    return _pytree.tree_map(fn, tree, *rest)


def _is_flat_params(tree: PyTree) -> bool:
    return type(tree) is dict and all(isinstance(v, Tensor) for v in tree.values())


def _align(reference: PyTree, other: PyTree) -> PyTree:
    """Reorders dict keys of ``other`` to match ``reference`` (names pair by name, not order)."""
    if isinstance(reference, dict) and isinstance(other, dict) and set(reference) == set(other):
        return {k: _align(reference[k], other[k]) for k in reference}
    if isinstance(reference, (list, tuple)) and type(reference) is type(other):
        if len(reference) == len(other):
            items = [_align(r, o) for r, o in zip(reference, other)]
            return type(other)(items) if isinstance(other, list) else _rebuild(other, items)
    return other


def _rebuild(template: tuple, items: list) -> tuple:
    if hasattr(template, "_fields"):  # namedtuple
        return type(template)(*items)
    return tuple(items)


def _describe(tree: PyTree) -> str:
    if isinstance(tree, dict):
        return f"keys {sorted(map(str, tree.keys()))}"
    return str(_pytree.tree_structure(tree))


def tree_leaves(tree: PyTree) -> list[Any]:
    """Returns the leaves of a pytree in its canonical (flattening) order.

    Examples:
        >>> tree_leaves({"b": torch.zeros(1), "a": torch.ones(1)})
        [tensor([0.]), tensor([1.])]
    """
    return _pytree.tree_leaves(tree)


def tree_flatten(tree: PyTree) -> tuple[list[Any], Any]:
    """Flattens a pytree into its leaves and a structure object for [metaops.tree.tree_unflatten][].

    Examples:
        >>> leaves, spec = tree_flatten({"a": torch.zeros(1), "b": (torch.ones(1), 2)})
        >>> len(leaves)
        3
        >>> tree_unflatten(leaves, spec)["b"][1]
        2
    """
    return _pytree.tree_flatten(tree)


def tree_unflatten(leaves: Sequence[Any], spec: Any) -> PyTree:
    """Rebuilds a pytree from leaves and the structure returned by [metaops.tree.tree_flatten][].

    Examples:
        >>> leaves, spec = tree_flatten({"w": torch.zeros(1)})
        >>> tree_unflatten([torch.ones(1)], spec)
        {'w': tensor([1.])}
    """
    return _pytree.tree_unflatten(list(leaves), spec)


def tree_structure_equal(a: PyTree, b: PyTree) -> bool:
    """Tells whether two pytrees have the same structure (keys and nesting).

    Examples:
        >>> tree_structure_equal({"w": torch.ones(1)}, {"w": torch.zeros(3)})
        True
    """
    return _pytree.tree_structure(a) == _pytree.tree_structure(b)


def tree_add(a: PyTree, b: PyTree) -> PyTree:
    """Adds two pytrees leaf-wise: $a + b$.

    Examples:
        >>> tree_add({"w": torch.ones(2)}, {"w": torch.ones(2)})
        {'w': tensor([2., 2.])}
    """
    return tree_map(torch.add, a, b)


def tree_sub(a: PyTree, b: PyTree) -> PyTree:
    """Subtracts two pytrees leaf-wise: $a - b$.

    Examples:
        >>> tree_sub({"w": torch.ones(2)}, {"w": torch.ones(2)})
        {'w': tensor([0., 0.])}
    """
    return tree_map(torch.sub, a, b)


def tree_scale(tree: PyTree, scale: float | Tensor) -> PyTree:
    """Multiplies every leaf by the same scalar: $s\\,a$.

    Examples:
        >>> tree_scale({"w": torch.ones(2)}, 0.5)
        {'w': tensor([0.5000, 0.5000])}
    """
    return tree_map(lambda x: x * scale, tree)


def tree_axpy(alpha: float | Tensor, x: PyTree, y: PyTree) -> PyTree:
    """Returns $\\alpha x + y$ leaf-wise.

    Examples:
        >>> tree_axpy(2.0, {"w": torch.ones(1)}, {"w": torch.ones(1)})
        {'w': tensor([3.])}
    """
    return tree_map(lambda xi, yi: alpha * xi + yi, x, y)


def tree_vdot(a: PyTree, b: PyTree) -> Tensor:
    """Returns the inner product $\\sum_i \\langle a_i, b_i \\rangle$ over all leaves.

    Examples:
        >>> tree_vdot({"w": torch.tensor([1.0, 2.0])}, {"w": torch.tensor([3.0, 4.0])})
        tensor(11.)
    """
    products = tree_leaves(tree_map(lambda x, y: (x * y).sum(), a, b))
    if not products:
        raise ValueError("tree_vdot of empty pytrees")
    return torch.stack(products).sum()


def tree_sq_norm(tree: PyTree) -> Tensor:
    """Returns the squared Euclidean norm $\\sum_i \\lVert a_i \\rVert^2$ over all leaves.

    Examples:
        >>> tree_sq_norm({"w": torch.tensor([3.0, 4.0])})
        tensor(25.)
    """
    return tree_vdot(tree, tree)


def tree_sq_dist(a: PyTree, b: PyTree) -> Tensor:
    """Returns the squared Euclidean distance $\\lVert a - b \\rVert^2$ over all leaves.

    Examples:
        >>> tree_sq_dist({"w": torch.tensor([1.0, 1.0])}, {"w": torch.tensor([0.0, 3.0])})
        tensor(5.)
    """
    return tree_sq_norm(tree_sub(a, b))


def tree_zeros_like(tree: PyTree) -> PyTree:
    """Returns a pytree of zeros with the shapes, dtypes and devices of ``tree``.

    Examples:
        >>> tree_zeros_like({"w": torch.ones(2)})
        {'w': tensor([0., 0.])}
    """
    return tree_map(torch.zeros_like, tree)


def tree_ones_like(tree: PyTree) -> PyTree:
    """Returns a pytree of ones with the shapes, dtypes and devices of ``tree``.

    Examples:
        >>> tree_ones_like({"w": torch.zeros(2)})
        {'w': tensor([1., 1.])}
    """
    return tree_map(torch.ones_like, tree)


def stop_gradient(tree: PyTree) -> PyTree:
    """Treats every leaf as a constant: ``Tensor.detach`` mapped over the tree.

    Under ``torch.func`` transforms ``detach`` acts at every level, like ``jax.lax.stop_gradient``.

    Examples:
        >>> w = torch.ones(2, requires_grad=True)
        >>> stop_gradient({"w": w * 2})["w"].requires_grad
        False
    """
    return tree_map(lambda x: x.detach() if isinstance(x, Tensor) else x, tree)


def tree_index(tree: PyTree, index: int | slice | Tensor) -> PyTree:
    """Indexes the leading (task) dimension of every leaf: one task out of a task batch.

    Examples:
        >>> support = (torch.arange(6.0).reshape(3, 2), torch.zeros(3, 2))
        >>> tree_index(support, 1)
        (tensor([2., 3.]), tensor([0., 0.]))
    """
    return tree_map(lambda x: x[index], tree)


def tree_stack(trees: Sequence[PyTree], dim: int = 0) -> PyTree:
    """Stacks a list of pytrees of one structure into one pytree with a new leading dimension.

    Examples:
        >>> tree_stack([{"w": torch.zeros(2)}, {"w": torch.ones(2)}])["w"].shape
        torch.Size([2, 2])
    """
    if len(trees) == 0:
        raise ValueError("tree_stack needs at least one pytree")
    return tree_map(lambda *xs: torch.stack(xs, dim=dim), trees[0], *trees[1:])


def tree_ravel(tree: PyTree) -> tuple[Tensor, Callable[[Tensor], PyTree]]:
    """Flattens a pytree of tensors into one vector and returns the inverse function.

    Returns:
        ``(flat, unravel)`` where ``flat`` has shape ``(n,)`` and ``unravel(flat)`` rebuilds
        a pytree of the original structure, shapes and dtypes.

    Examples:
        >>> flat, unravel = tree_ravel({"a": torch.ones(2, 2), "b": torch.zeros(1)})
        >>> flat
        tensor([1., 1., 1., 1., 0.])
        >>> unravel(flat)["a"].shape
        torch.Size([2, 2])
    """
    leaves, spec = _pytree.tree_flatten(tree)
    shapes = [leaf.shape for leaf in leaves]
    numels = [leaf.numel() for leaf in leaves]
    flat = torch.cat([leaf.reshape(-1) for leaf in leaves]) if leaves else torch.zeros(0)

    def unravel(vector: Tensor) -> PyTree:
        if vector.shape != (sum(numels),):
            raise ValueError(f"unravel expects a vector of shape ({sum(numels)},), got {tuple(vector.shape)}")
        pieces = torch.split(vector, numels)
        return _pytree.tree_unflatten([p.reshape(s) for p, s in zip(pieces, shapes)], spec)

    return flat, unravel


def tree_all_finite(tree: PyTree) -> Tensor:
    """Returns a boolean scalar tensor: whether every element of every leaf is finite.

    Examples:
        >>> tree_all_finite({"w": torch.tensor([1.0, float("nan")])})
        tensor(False)
    """
    leaves = tree_leaves(tree)
    if not leaves:
        return torch.tensor(True)
    return torch.stack([torch.isfinite(x).all() for x in leaves]).all()
