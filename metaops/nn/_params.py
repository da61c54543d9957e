"""Moving parameters between ``nn.Module`` and parameter dicts."""

from __future__ import annotations

from torch import Tensor, nn

from metaops.typing import Params

__all__ = ["named_params", "set_grads"]


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
