"""Summary statistics for evaluation over many tasks."""

from __future__ import annotations

import math
from collections.abc import Sequence
from statistics import NormalDist

import torch
from torch import Tensor

__all__ = [
    "mean_confidence_interval",
    "summarize_tasks",
    "summarize_steps",
    "paired_gains",
    "format_summary",
    "last_finite",
]


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


def summarize_steps(curves: Tensor, steps: Sequence[int], *, prefix: str) -> dict[str, float]:
    r"""[metaops.experiment.summarize_tasks][] of per-task error curves at step 0 and ``steps``.

    Args:
        curves: Errors of shape `(tasks, max_step + 1)`: column $k$ after $k$ adaptation steps.
        steps: The steps to report besides 0 (the pre-update error).
        prefix: Key prefix: the keys are ``{prefix}_pre`` and ``{prefix}_{k}`` (each with the
            suffixes of ``summarize_tasks``).

    Returns:
        One flat dict for all the steps.

    Examples:
        >>> curves = torch.tensor([[4.0, 2.0, 1.0], [6.0, 2.0, 3.0]])
        >>> summarize_steps(curves, (2,), prefix="mse")["mse_2"]
        2.0
    """
    metrics: dict[str, float] = {}
    for k in (0, *steps):  # a task whose adaptation diverges is counted, not dropped
        metrics |= summarize_tasks(curves[:, k], name=f"{prefix}_pre" if k == 0 else f"{prefix}_{k}")
    return metrics


def paired_gains(curve: Tensor, *, prefix: str = "") -> dict[str, float]:
    r"""Summarises returns after $0..K$ adaptation steps on the same tasks, with paired gains.

    For each $k$: ``return_k`` (mean over tasks) and ``return_k_ci95``; for $k \ge 1$ the
    paired gain over the same tasks, $g_k = \frac{1}{n}\sum_i (R_{ik} - R_{i0})$ as ``gain_k``,
    its 95% half-width ``gain_k_ci95`` and median ``gain_k_median``. Pairing removes the
    spread between tasks, which a comparison of the two means would keep.

    Args:
        curve: Returns of shape `(K + 1, tasks)`: row $k$ after $k$ adaptation steps.
        prefix: Prepended to every key (e.g. ``"eval_"``).

    Returns:
        The metrics, keyed as above.

    Examples:
        >>> curve = torch.tensor([[-3.0, -1.0, -2.0], [-1.0, 0.0, -1.0]])
        >>> m = paired_gains(curve, prefix="eval_")
        >>> round(m["eval_return_1"], 4), round(m["eval_gain_1"], 4), m["eval_gain_1_median"]
        (-0.6667, 1.3333, 1.0)
    """
    metrics: dict[str, float] = {}
    for k, row in enumerate(curve):
        metrics[f"{prefix}return_{k}"], metrics[f"{prefix}return_{k}_ci95"] = mean_confidence_interval(row)
        if k:
            gain = row - curve[0]
            metrics[f"{prefix}gain_{k}"], metrics[f"{prefix}gain_{k}_ci95"] = mean_confidence_interval(gain)
            metrics[f"{prefix}gain_{k}_median"] = gain.median().item()
    return metrics


def format_summary(metrics: dict[str, float]) -> str:
    """One line with every ``name ± name_ci95`` pair and every ``*_diverged`` count of ``metrics``.

    Examples:
        >>> format_summary({"mse": 2.0, "mse_ci95": 0.5, "steps": 3.0})
        'mse 2.000 ± 0.500'
    """
    pairs = ", ".join(f"{name} {metrics[name]:.3f} ± {metrics[name + '_ci95']:.3f}"
                      for name in metrics if f"{name}_ci95" in metrics)
    diverged = "".join(f", {name} on {value:.0f} task(s)" for name, value in metrics.items()
                       if name.endswith("_diverged"))
    return pairs + diverged


def last_finite(values: Sequence[float]) -> float:
    """The last value that is not NaN (NaN if there is none), e.g. the final logged loss.

    Examples:
        >>> last_finite([1.0, 0.5, float("nan")])
        0.5
    """
    return next((v for v in reversed(values) if v == v), math.nan)
