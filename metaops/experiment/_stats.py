"""Summary statistics for evaluation over many tasks."""

from __future__ import annotations

import math
from collections.abc import Sequence
from statistics import NormalDist

import torch
from torch import Tensor

__all__ = ["mean_confidence_interval", "summarize_tasks"]


def mean_confidence_interval(
    values: Sequence[float] | Tensor, confidence: float = 0.95
) -> tuple[float, float]:
    r"""Returns the mean and the half-width of its normal-approximation confidence interval.

    For $n$ values with mean $\bar x$ and sample standard deviation $s$ (Bessel-corrected),

    $$\bar x \pm z_{(1+c)/2}\,\frac{s}{\sqrt{n}},$$

    where $z_q$ is the standard normal quantile ($z = 1.96$ for $c = 0.95$), the interval
    reported by MAML-style few-shot evaluations over many held-out tasks.

    Args:
        values: At least two finite numbers (a sequence or a tensor of any shape).
        confidence: Coverage $c \in (0, 1)$.

    Returns:
        ``(mean, half_width)`` as floats.

    Raises:
        ValueError: If fewer than two values are given, any is NaN/inf, or ``confidence`` is
            not in ``(0, 1)``.

    Examples:
        >>> mean, half = mean_confidence_interval([1.0, 2.0, 3.0, 4.0])
        >>> round(mean, 4), round(half, 4)        # 1.96 * 1.291 / 2
        (2.5, 1.2652)
    """
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}")
    x = torch.as_tensor(values, dtype=torch.float64).flatten()
    n = x.numel()
    if n < 2:
        raise ValueError(f"mean_confidence_interval needs at least 2 values, got {n}")
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"mean_confidence_interval: {int((~torch.isfinite(x)).sum())} of {n} values are NaN/inf")
    z = NormalDist().inv_cdf(0.5 + confidence / 2.0)
    return float(x.mean()), float(z * x.std(correction=1) / math.sqrt(n))


def summarize_tasks(values: Sequence[float] | Tensor, *, name: str) -> dict[str, float]:
    r"""Summarises per-task errors as ``{name: mean, name_ci95: half-width}``, robust to divergence.

    Few-shot evaluations adapt a model to each held-out task; on a rare task the adaptation
    can diverge (NaN or infinite error). Instead of failing, or silently dropping such tasks,
    this reports the mean over all tasks as ``inf`` (interval ``nan``) and adds the mean and
    interval over the tasks that stayed finite plus the number that did not:
    ``name_finite``, ``name_finite_ci95`` and ``name_diverged``.

    Args:
        values: One error per task (at least two finite ones).
        name: Key prefix, e.g. ``"mse_5"``.

    Returns:
        A flat dict of floats (see above); the interval is 95%
        ([metaops.experiment.mean_confidence_interval][]).

    Raises:
        ValueError: If fewer than two values are finite.

    Examples:
        >>> summarize_tasks([1.0, 3.0], name="mse")
        {'mse': 2.0, 'mse_ci95': 1.9599...}
        >>> sorted(summarize_tasks([1.0, 3.0, float("inf")], name="mse"))
        ['mse', 'mse_ci95', 'mse_diverged', 'mse_finite', 'mse_finite_ci95']
    """
    x = torch.as_tensor(values, dtype=torch.float64).flatten()
    finite = torch.isfinite(x)
    if bool(finite.all()):
        mean, half = mean_confidence_interval(x)
        return {name: mean, f"{name}_ci95": half}
    mean, half = mean_confidence_interval(x[finite])
    return {name: math.inf, f"{name}_ci95": math.nan, f"{name}_finite": mean, f"{name}_finite_ci95": half,
            f"{name}_diverged": float((~finite).sum())}
