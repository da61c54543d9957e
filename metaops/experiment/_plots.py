"""PNG plots of learning curves and of fits before and after adaptation (matplotlib, Agg)."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

__all__ = ["FitPanel", "plot_adaptation_curve", "plot_learning_curve", "plot_fits"]

ArrayLike = Sequence[float] | np.ndarray


def _array(values) -> np.ndarray:
    if hasattr(values, "detach"):  # a torch tensor
        values = values.detach().cpu().numpy()
    return np.asarray(values, dtype=float).reshape(-1)


def _save(fig: Figure, path: str | os.PathLike) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)  # draw with Agg; no pyplot, no global backend state
    fig.savefig(path, dpi=100)


def plot_learning_curve(
    path: str | os.PathLike,
    curves: Mapping[str, tuple[ArrayLike, ArrayLike]],
    *,
    title: str = "",
    xlabel: str = "meta-iteration",
    ylabel: str = "MSE",
    log_y: bool = True,
) -> None:
    """Plots one or more ``(steps, values)`` curves on shared axes and saves a PNG.

    Args:
        path: Output PNG file (parent directories are created).
        curves: Label -> ``(steps, values)``; NaN values (e.g. empty CSV cells) are skipped, and a
            curve with a single finite point is drawn as a marker.
        title: Figure title.
        xlabel: Horizontal axis label.
        ylabel: Vertical axis label.
        log_y: Logarithmic vertical axis (when all plotted values are positive).

    The vertical axis stops one inter-percentile range (2nd to 98th percentile of all plotted
    values) beyond those percentiles, so a rare spike either way (one diverged evaluation, say)
    does not flatten the curves; the spike runs off the axis. Negative values (returns) work the
    same way.

    Raises:
        ValueError: If a curve's steps and values differ in length, or no curve has a point.

    Examples:
        >>> import tempfile, pathlib
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "curve.png"
        >>> plot_learning_curve(path, {"train": ([0, 1, 2], [3.0, 2.0, 1.5])})
        >>> path.read_bytes()[:4]
        b'\\x89PNG'
    """
    fig = Figure(figsize=(6, 4))
    ax = fig.add_subplot()
    shown = []
    for label, (steps, values) in curves.items():
        x, y = _array(steps), _array(values)
        if x.shape != y.shape:
            raise ValueError(f"plot_learning_curve: {label!r} has {x.size} steps but {y.size} values")
        keep = np.isfinite(y)
        if keep.any():  # a lone point (e.g. a run shorter than one log window) gets a marker, or it is invisible
            ax.plot(x[keep], y[keep], label=label, marker="o" if keep.sum() == 1 else None)
            shown.append(y[keep])
    if not shown:
        raise ValueError("plot_learning_curve: no curve has a finite point")
    values = np.concatenate(shown)
    if log_y and (values > 0).all():
        ax.set_yscale("log")
    low, high = np.quantile(values, [0.02, 0.98])
    span = high - low
    if span > 0:  # a rare spike either way (e.g. one diverged evaluation) must not flatten the rest
        bottom, top = low - span, high + span
        if values.max() > top:
            ax.set_ylim(top=top)
        if values.min() < bottom:
            ax.set_ylim(bottom=bottom)
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    ax.grid(alpha=0.3)
    ax.legend()
    _save(fig, path)


def plot_adaptation_curve(
    path: str | os.PathLike,
    means: ArrayLike,
    half_widths: ArrayLike,
    *,
    title: str = "",
    label: str = "mean over held-out tasks",
    ylabel: str = "mean episode return",
) -> None:
    """Plots a mean against adaptation steps 0..K with its interval as a shaded band, and saves a PNG.

    Args:
        path: Output PNG file (parent directories are created).
        means: Mean after 0, 1, ..., K steps.
        half_widths: Half-width of the interval drawn around each mean (e.g. a 95% CI).
        title: Figure title.
        label: Legend entry of the mean.
        ylabel: Vertical axis label.

    Raises:
        ValueError: If ``means`` and ``half_widths`` differ in length or are empty.

    Examples:
        >>> import tempfile, pathlib
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "eval.png"
        >>> plot_adaptation_curve(path, [-40.0, -20.0, -19.0], [5.0, 3.0, 3.0])
        >>> path.read_bytes()[:4]
        b'\\x89PNG'
    """
    y, h = _array(means), _array(half_widths)
    if y.shape != h.shape or y.size == 0:
        raise ValueError(f"plot_adaptation_curve: {y.size} means but {h.size} half-widths")
    steps = np.arange(y.size)
    fig = Figure(figsize=(6, 4))
    ax = fig.add_subplot()
    ax.fill_between(steps, y - h, y + h, alpha=0.25, label="95% CI")
    ax.plot(steps, y, marker="o", label=label)
    ax.set_xticks(steps)  # whole adaptation steps only
    ax.set(title=title, xlabel="adaptation steps", ylabel=ylabel)
    ax.grid(alpha=0.3)
    ax.legend()
    _save(fig, path)


@dataclass
class FitPanel:
    """One regression task to draw: the target function, the support set and model fits.

    Attributes:
        x: Inputs at which ``target`` and every curve are evaluated, shape `(points,)`.
        target: The task's true function at ``x``.
        support_x: Inputs of the points the model adapted on.
        support_y: Their targets.
        curves: Label (e.g. ``"pre-update"``, ``"10 steps"``) -> model output at ``x``.
        title: Panel title, e.g. the task's amplitude and phase.

    Examples:
        >>> panel = FitPanel(x=[0.0, 1.0], target=[0.0, 1.0], support_x=[0.5], support_y=[0.5],
        ...                  curves={"pre-update": [0.1, 0.2]})
        >>> sorted(panel.curves)
        ['pre-update']
    """

    x: ArrayLike
    target: ArrayLike
    support_x: ArrayLike
    support_y: ArrayLike
    curves: dict[str, ArrayLike] = field(default_factory=dict)
    title: str = ""


def plot_fits(path: str | os.PathLike, panels: Sequence[FitPanel], *, title: str = "") -> None:
    """Plots model fits before and after adaptation, one panel per task, and saves a PNG.

    Each panel shows the true function, the support points and every curve in the panel's
    ``curves`` (typically the pre-update prediction and predictions after some inner steps).
    The vertical range is the target's, padded by half its span, so a diverged fit does not
    hide the others.

    Args:
        path: Output PNG file (parent directories are created).
        panels: The tasks to draw (see [metaops.experiment.FitPanel][]).
        title: Figure title.

    Raises:
        ValueError: If ``panels`` is empty or a curve's length differs from ``x``.

    Examples:
        >>> import tempfile, pathlib
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "fits.png"
        >>> panel = FitPanel(x=[0.0, 1.0], target=[0.0, 1.0], support_x=[0.5], support_y=[0.5],
        ...                  curves={"pre-update": [0.1, 0.2], "1 step": [0.0, 0.9]})
        >>> plot_fits(path, [panel])
        >>> path.stat().st_size > 0
        True
    """
    if not panels:
        raise ValueError("plot_fits: no panels to plot")
    cols = min(len(panels), 3)
    rows = math.ceil(len(panels) / cols)
    fig = Figure(figsize=(4.5 * cols, 3.3 * rows))
    for i, panel in enumerate(panels):
        ax = fig.add_subplot(rows, cols, i + 1)
        x = _array(panel.x)
        ax.plot(x, _array(panel.target), color="black", lw=2, label="target")
        for label, y in panel.curves.items():
            y = _array(y)
            if y.shape != x.shape:
                raise ValueError(f"plot_fits: curve {label!r} has {y.size} points, x has {x.size}")
            ax.plot(x, y, ls="--", label=label)
        ax.scatter(_array(panel.support_x), _array(panel.support_y), color="red", zorder=3, label="support")
        low, high = float(np.min(_array(panel.target))), float(np.max(_array(panel.target)))
        pad = 0.5 * (high - low) + 1e-3
        ax.set_ylim(low - pad, high + pad)  # a diverged fit must not squash the target out of view
        ax.set_title(panel.title)
        ax.grid(alpha=0.3)
        if i == 0:
            ax.legend(fontsize="small")
    # fixed margins (an automatic layout engine doubles the drawing time): room for the titles
    fig.subplots_adjust(top=1.0 - 0.75 / fig.get_figheight(), hspace=0.45, wspace=0.25)
    if title:
        fig.suptitle(title)
    _save(fig, path)
