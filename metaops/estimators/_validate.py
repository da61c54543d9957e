"""Input validation shared by the estimators and the RL building blocks.

Shape and dtype checks are static, so they are safe under every ``torch.func`` transform.
Value checks (non-finite rewards, all-masked batches) need a Python ``bool`` of a tensor, which
is impossible inside ``vmap``; they therefore run only on ordinary eager tensors and are skipped
for tensors wrapped by a ``torch.func`` transform (where no value can be inspected). This is the
one place in metaops that asks torch whether a tensor is transform-wrapped.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__: list[str] = []


def _is_plain(x: Tensor) -> bool:
    """Whether ``x`` is an ordinary tensor whose values may be inspected (not under a transform).

    Under ``torch.compile`` no value can be inspected (and the functorch query is not
    traceable), so value checks are skipped there, as inside ``vmap``.
    """
    if torch.compiler.is_compiling():
        return False
    return not torch._C._functorch.is_functorch_wrapped_tensor(x)


def check_float(name: str, x: object) -> Tensor:
    """Raises ``TypeError`` unless ``x`` is a floating-point tensor."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(
            f"{name} must be a floating-point tensor, got dtype {x.dtype} (convert with {name}.float() or .double())"
        )
    return x


def check_time_dim(name: str, x: Tensor) -> None:
    """Raises ``ValueError`` when ``x`` has no trailing time dimension."""
    if x.dim() < 1:
        raise ValueError(f"{name} must have shape (..., T) with time last, got a 0-d tensor")


def check_same_shape(ref_name: str, ref: Tensor, **others: Tensor | None) -> None:
    """Raises ``ValueError`` unless every tensor in ``others`` has exactly the shape of ``ref``."""
    for name, x in others.items():
        if x is None:
            continue
        if x.shape != ref.shape:
            raise ValueError(
                f"{name} has shape {tuple(x.shape)} but {ref_name} has shape "
                f"{tuple(ref.shape)}; rollout tensors must all be (..., T) with the same shape"
            )


def check_finite(name: str, x: Tensor) -> None:
    """Raises ``ValueError`` if an eager tensor holds NaN or infinity (skipped under transforms)."""
    if _is_plain(x) and not bool(torch.isfinite(x.detach()).all()):
        bad = int((~torch.isfinite(x.detach())).sum())
        raise ValueError(f"{name} contains {bad} non-finite value(s) (NaN or inf)")


def as_mask(mask: Tensor | None, ref_name: str, ref: Tensor, *, right_padded: bool = False) -> Tensor | None:
    """Validates a padding mask and returns it as a boolean tensor (or ``None``).

    With ``right_padded``, a row with a 0 followed by a 1 (a gap, i.e. a second episode in the
    row) raises ``ValueError``. Both value checks share one host sync and, like the other value
    checks, are skipped for a mask wrapped by a ``torch.func`` transform or under compilation.
    """
    if mask is None:
        return None
    if not isinstance(mask, Tensor):
        raise TypeError(f"mask must be a torch.Tensor, got {type(mask).__name__}")
    if mask.is_complex():
        raise TypeError(f"mask must be bool or real, got dtype {mask.dtype}")
    check_same_shape(ref_name, ref, mask=mask)
    mask = mask if mask.dtype == torch.bool else mask != 0
    if _is_plain(mask):
        flags = [~mask.any()]
        if right_padded:
            restarts = mask[..., 1:] & ~mask[..., :-1]  # a real step right after a padded one
            flags.append(restarts.any())
        empty, *gap = torch.stack(flags).tolist()
        if empty:
            raise ValueError("mask is all zeros: every step of the batch is padding")
        if gap and gap[0]:
            *row, step = (int(i) for i in restarts.nonzero()[0])
            where = f"mask[{', '.join(map(str, row))}]" if row else "mask"
            raise ValueError(
                "mask must be right-padded (each row is one trajectory, 1...1 0...0: it may end "
                f"early but never restart), but {where} has a 0 followed by a 1 (step {step + 1} is "
                "real after padding). Put one trajectory per row: split the episodes into separate "
                "rows, each padded at its end only"
            )
    return mask


def apply_mask(x: Tensor, mask: Tensor | None) -> Tensor:
    """Zeros the padded steps of ``x`` with ``torch.where`` (so padding garbage cannot leak)."""
    if mask is None:
        return x
    return torch.where(mask, x, torch.zeros((), dtype=x.dtype, device=x.device))


def check_rollout(
    ref_name: str,
    ref: Tensor,
    *,
    mask: Tensor | None = None,
    finite: tuple[str, ...] = (),
    optional: tuple[str, ...] = ("baseline",),
    right_padded: bool = False,
    **others: Tensor | None,
) -> Tensor | None:
    """Checks a set of ``(..., T)`` rollout tensors; returns the boolean mask (or ``None``).

    ``ref`` and ``others`` must be floating tensors of one shape with time last. The tensors named
    in ``finite`` must hold finite values at the real (unmasked) steps. With ``right_padded``, the
    mask must hold one trajectory per row (see ``as_mask``).
    """
    check_float(ref_name, ref)
    check_time_dim(ref_name, ref)
    for name, x in others.items():
        if x is None and name not in optional:
            raise TypeError(f"{name} must be a torch.Tensor, got None")
        if x is not None:
            check_float(name, x)
            if x.dtype != ref.dtype:
                raise TypeError(
                    f"{name} has dtype {x.dtype} but {ref_name} has dtype {ref.dtype}; "
                    "use one floating dtype for all rollout tensors"
                )
    check_same_shape(ref_name, ref, **others)
    bool_mask = as_mask(mask, ref_name, ref, right_padded=right_padded)
    tensors = {ref_name: ref, **others}
    for name in finite:
        x = tensors[name]
        if x is not None:
            check_finite(name, apply_mask(x, bool_mask) if bool_mask is not None else x)
    return bool_mask
