"""``MetaSGD``: an ``nn.Module`` that owns a model and its learned learning rates."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from metaops.inner._base import InnerOptimizer
from metaops.inner._meta_sgd import meta_sgd
from metaops.nn._params import named_params, set_grads
from metaops.typing import Params, PyTree

__all__ = ["MetaSGD"]


class MetaSGD(nn.Module):
    r"""Owns a model and Meta-SGD learning rates keyed by the model's parameter names.

    Because both live in one module, ``torch.optim``, ``state_dict`` and ``.to(device)`` work
    as for any module. The rates are stored as a ``ParameterDict`` whose keys are the model's
    parameter names (with ``.`` replaced by ``:``), so they are paired **by name**.
    Functionally, see [metaops.inner.meta_sgd][].

    Args:
        model: The model to meta-learn.
        init_lr: Initial learning rate for every parameter.
        elementwise: One rate per parameter element (Meta-SGD) or one per tensor.

    Examples:
        >>> import torch
        >>> from metaops.inner import adapt
        >>> net = MetaSGD(torch.nn.Linear(1, 1), init_lr=0.1)
        >>> meta = net.meta_params()
        >>> loss_fn = lambda p, b: torch.func.functional_call(net.model, p, (b,)).pow(2).mean()
        >>> phi = adapt(loss_fn, meta["params"], torch.ones(4, 1), net.optimizer(meta), steps=1)
        >>> sorted(phi)
        ['bias', 'weight']
    """

    def __init__(self, model: nn.Module, init_lr: float, *, elementwise: bool = True) -> None:
        super().__init__()
        self.model = model
        self.lrs = nn.ParameterDict(
            {
                name.replace(".", ":"): nn.Parameter(
                    torch.full_like(p, init_lr) if elementwise else p.new_tensor(init_lr)
                )
                for name, p in named_params(model).items()
            }
        )

    def learning_rates(self) -> Params:
        """Returns the learning rates keyed by the model's parameter names."""
        return {key.replace(":", "."): value for key, value in self.lrs.items()}

    def meta_params(self) -> dict[str, Params]:
        """Returns ``{"params": ..., "lrs": ...}``, the pytree to differentiate."""
        return {"params": named_params(self.model), "lrs": self.learning_rates()}

    def optimizer(self, meta_params: PyTree | None = None) -> InnerOptimizer:
        """Builds the inner optimizer from (possibly functional) meta-parameters."""
        lrs = self.learning_rates() if meta_params is None else meta_params["lrs"]
        return meta_sgd(lrs)

    def set_grads(self, grads: dict[str, Params], *, accumulate: bool = False) -> None:
        """Writes ``{"params": ..., "lrs": ...}`` meta-gradients into ``.grad``, matched by name.

        Use it with gradients returned by [metaops.meta_value_and_grad][], then step a
        ``torch.optim`` optimizer over ``self.parameters()``.
        """
        if set(grads) != {"params", "lrs"}:
            raise ValueError(f"MetaSGD.set_grads expects keys ['lrs', 'params'], got {sorted(grads)}")
        set_grads(self.model, grads["params"], accumulate=accumulate)
        set_grads(self.lrs, {k.replace(".", ":"): g for k, g in grads["lrs"].items()}, accumulate=accumulate)

    def forward(self, *args: Tensor, **kwargs: Tensor) -> Tensor:
        return self.model(*args, **kwargs)
