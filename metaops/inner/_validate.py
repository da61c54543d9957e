"""Input validation shared by the inner-loop modules (private)."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from metaops.tree import tree_flatten, tree_leaves, tree_unflatten
from metaops.typing import Params


def check_lr(lr: object, where: str) -> None:
    if isinstance(lr, Tensor):
        if lr.dim() != 0:
            raise ValueError(f"{where}: a tensor learning rate must be a scalar, got shape {tuple(lr.shape)}")
        if not lr.is_floating_point():
            raise TypeError(f"{where}: learning rate tensor must be floating point, got {lr.dtype}")
        return
    if isinstance(lr, bool) or not isinstance(lr, (int, float)):
        raise TypeError(f"{where}: learning rate must be a float or a scalar tensor, got {type(lr).__name__}")
    if not math.isfinite(lr) or lr <= 0:
        raise ValueError(f"{where}: learning rate must be positive and finite, got {lr}")


def check_steps(steps: object) -> None:
    if isinstance(steps, bool) or not isinstance(steps, int):
        raise TypeError(f"steps must be an int, got {type(steps).__name__}")
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")


def check_params(params: object, where: str = "params") -> None:
    if not isinstance(params, dict):
        raise TypeError(
            f"{where} must be a dict[str, Tensor] such as dict(model.named_parameters()), "
            f"got {type(params).__name__}"
        )
    if not params:
        raise ValueError(f"{where} is empty")
    for name, value in params.items():
        if not isinstance(name, str):
            raise TypeError(f"{where} keys must be parameter names (str), got {name!r}")
        if not isinstance(value, Tensor):
            raise TypeError(f"{where}[{name!r}] must be a Tensor, got {type(value).__name__}")
        if not value.is_floating_point():
            raise TypeError(f"{where}[{name!r}] must be floating point, got {value.dtype}")


def check_same_keys_and_shapes(reference: Params, other: Params, what: str, *, scalar_ok: bool) -> None:
    missing = sorted(set(reference) - set(other))
    extra = sorted(set(other) - set(reference))
    if missing or extra:
        raise ValueError(
            f"{what} must have the same names as params: missing {missing}, unexpected {extra}"
        )
    for name, value in other.items():
        ref = reference[name]
        if scalar_ok and value.dim() == 0:
            continue
        if value.shape != ref.shape:
            raise ValueError(
                f"{what}[{name!r}] has shape {tuple(value.shape)} but params[{name!r}] has "
                f"shape {tuple(ref.shape)}" + (" (or use a scalar)" if scalar_ok else "")
            )


def under_transform() -> bool:
    """Whether we are inside a torch.func transform (grad, vmap, jvp, ...) or being compiled.

    Value checks (``bool(tensor)``) are impossible in both cases.
    """
    if torch.compiler.is_compiling():
        return True
    return torch._C._functorch.peek_interpreter_stack() is not None


def all_finite(tree: object) -> bool:
    return all(bool(torch.isfinite(x).all()) for x in tree_leaves(tree))


def split_tensors(tree: object) -> tuple[list[Tensor], Callable[[Sequence[Tensor]], object]]:
    """Separates a pytree's tensor leaves (``autograd.Function`` inputs) from its other leaves.

    Returns the tensors and ``rebuild(new_tensors)``, which puts tensors back where the
    original ones stood and keeps every non-tensor leaf as it was.
    """
    leaves, spec = tree_flatten(tree)
    is_tensor = [isinstance(x, Tensor) for x in leaves]
    constants = [None if t else x for t, x in zip(is_tensor, leaves)]

    def rebuild(tensors: Sequence[Tensor]) -> object:
        it = iter(tensors)
        return tree_unflatten([next(it) if t else c for t, c in zip(is_tensor, constants)], spec)

    return [x for x, t in zip(leaves, is_tensor) if t], rebuild


def unreached_params(loss: Tensor, params: Params) -> list[str]:
    """Names of the ``params`` that ``loss``'s autograd graph does not reach, in dict order.

    Walks the graph from ``loss.grad_fn`` to its leaves (no backward pass; microseconds for a
    small network): call it where ``params`` are the leaves being differentiated, e.g. inside
    ``torch.func.grad``. A parameter the graph does not reach gets a zero gradient, typically
    because ``torch.func.functional_call`` ignored a name the module does not have.
    """
    wanted = {id(p) for p in params.values()}
    reached: set[int] = set()
    stack, seen = [loss.grad_fn], set()
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        edges = node.next_functions
        if not edges:  # an AccumulateGrad node holds its leaf as ``variable``
            variable = getattr(node, "variable", None)
            if variable is not None and id(variable) in wanted:
                reached.add(id(variable))
        stack.extend(next_node for next_node, _ in edges)
    return [name for name, p in params.items() if id(p) not in reached]
