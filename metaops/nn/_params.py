"""Moving parameters between ``nn.Module`` and parameter dicts."""

from __future__ import annotations

import difflib
from typing import Any

import torch
from torch import Tensor, nn

from metaops.typing import Params

__all__ = ["functional_call", "named_params", "set_grads"]


def named_params(module: nn.Module, *, trainable_only: bool = True) -> Params:
    """Returns the module's parameters as a name-keyed dict (the tensors themselves, not copies).

    Gradients of anything computed from this dict flow to the module's parameters, so
    ``loss.backward()`` then ``torch.optim`` work as usual.

    Args:
        module: Any ``nn.Module``.
        trainable_only: Skip parameters with ``requires_grad=False``.

    Returns:
        ``dict(module.named_parameters())``, filtered.

    Examples:
        >>> import torch
        >>> sorted(named_params(torch.nn.Linear(2, 1)))
        ['bias', 'weight']
    """
    if not isinstance(module, nn.Module):
        raise TypeError(f"named_params expects an nn.Module, got {type(module).__name__}")
    return {
        name: p for name, p in module.named_parameters() if p.requires_grad or not trainable_only
    }


def set_grads(module: nn.Module, grads: Params, *, accumulate: bool = False) -> None:
    """Writes (meta-)gradients into the module's ``.grad`` fields, matched by name.

    Use it for gradients that a function returns rather than ``backward()`` writes, e.g. from
    [metaops.meta_value_and_grad][] or [metaops.inner.reptile_grad][], then call
    ``optimizer.step()``.

    Args:
        module: The module whose parameters receive the gradients.
        grads: Gradients keyed by parameter name, shaped like the parameters.
        accumulate: Add to existing ``.grad`` instead of overwriting.

    Raises:
        ValueError: On unknown or missing names or mismatched shapes.

    Examples:
        >>> import torch
        >>> layer = torch.nn.Linear(1, 1)
        >>> set_grads(layer, {"weight": torch.ones(1, 1), "bias": torch.zeros(1)})
        >>> layer.weight.grad
        tensor([[1.]])
    """
    params = dict(module.named_parameters())
    unknown = sorted(set(grads) - set(params))
    missing = sorted(n for n, p in params.items() if p.requires_grad and n not in grads)
    if unknown or missing:
        raise ValueError(f"set_grads: unknown names {unknown}, missing names {missing}")
    for name, g in grads.items():
        p = params[name]
        if not isinstance(g, Tensor) or g.shape != p.shape:
            shape = tuple(g.shape) if isinstance(g, Tensor) else type(g).__name__
            raise ValueError(f"set_grads: gradient for {name!r} has shape {shape}, parameter has {tuple(p.shape)}")
        g = g.detach().to(dtype=p.dtype, device=p.device)
        if accumulate and p.grad is not None:
            p.grad = p.grad + g
        else:
            p.grad = g.clone()


def functional_call(module: nn.Module, params: Params, args: Any = (), kwargs: dict[str, Any] | None = None) -> Any:
    """Calls ``module`` with ``params`` in place of its parameters, checking names and shapes.

    ``torch.func.functional_call`` with the same arguments, made strict where a mistake is
    otherwise silent: a misspelt name is ignored (and its meta-gradient is 0), a missing one
    uses the module's own tensor, and a wrongly shaped one may broadcast. Names may also be
    buffers; missing buffers and frozen parameters (``requires_grad=False``) keep the
    module's own tensors. The checks look at names and shapes only, so they work under
    ``torch.func.vmap`` and ``grad``.

    Args:
        module: The ``nn.Module`` to call.
        params: Tensors keyed by parameter (or buffer) name, e.g. ``named_params(module)`` or
            adapted parameters from [metaops.inner.adapt][].
        args: Positional arguments of ``module``; a non-tuple is one argument.
        kwargs: Keyword arguments of ``module``.

    Returns:
        What ``module(*args, **kwargs)`` returns with ``params`` substituted.

    Raises:
        ValueError: If ``params`` has names the module does not have (with the closest
            names it has), lacks a trainable parameter, or has a tensor of another shape.

    Examples:
        >>> import torch
        >>> layer = torch.nn.Linear(2, 1)
        >>> params = {"weight": torch.ones(1, 2), "bias": torch.zeros(1)}
        >>> functional_call(layer, params, (torch.ones(3, 2),))
        tensor([[2.],
                [2.],
                [2.]])
        >>> functional_call(layer, {"wieght": torch.ones(1, 2), "bias": torch.zeros(1)}, torch.ones(3, 2))
        Traceback (most recent call last):
            ...
        ValueError: functional_call: Linear has no ['wieght'] (closest names: {'wieght': 'weight'}); ...
    """
    if not isinstance(module, nn.Module):
        raise TypeError(f"functional_call expects an nn.Module, got {type(module).__name__}")
    if not isinstance(params, dict):
        raise TypeError(f"functional_call expects params as a dict of tensors, got {type(params).__name__}")
    own = dict(module.named_parameters(remove_duplicate=False))
    own.update(module.named_buffers(remove_duplicate=False))
    problems = []
    unknown = [name for name in params if name not in own]
    if unknown:
        closest = {n: m[0] for n in unknown if (m := difflib.get_close_matches(str(n), list(own), n=1))}
        problems.append(
            f"{type(module).__name__} has no {unknown} (closest names: {closest}); "
            "torch.func.functional_call would ignore them"
        )
    given = {id(own[name]) for name in params if name in own}  # tied weights: one name suffices
    missing = [
        name for name, p in module.named_parameters() if p.requires_grad and id(p) not in given
    ]
    if missing:
        problems.append(f"params lacks the trainable parameters {missing} (the module's own would be used)")
    for name, value in params.items():
        if name in own and isinstance(value, Tensor) and value.shape != own[name].shape:
            problems.append(
                f"params[{name!r}] has shape {tuple(value.shape)}, the module's has {tuple(own[name].shape)}"
            )
    if problems:
        raise ValueError("functional_call: " + "; ".join(problems))
    return torch.func.functional_call(module, params, args, kwargs)
