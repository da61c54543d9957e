"""The held-out evaluation files of the meta-RL recipes: return after 0..K adaptation steps."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from torch import Tensor

from metaops.experiment._plots import plot_adaptation_curve
from metaops.experiment._stats import mean_confidence_interval

__all__ = ["write_adaptation_evaluation"]


def write_adaptation_evaluation(out: str | os.PathLike, curve: Tensor, *, title: str) -> None:
    r"""Writes ``eval.csv``, ``eval.md``, ``eval_tasks.csv`` and ``eval.png`` for returns after 0..K steps.

    ``curve[k, i]`` is the mean return of held-out task $i$ after $k$ adaptation steps. For
    every $k$ the files give the mean over tasks with its 95% interval and, for $k \ge 1$, the
    paired gain $\frac{1}{n}\sum_i (R_{ik} - R_{i0})$ with its 95% interval (the same tasks
    before and after, so the spread between tasks cancels):

    * ``eval.csv``: ``steps,return_mean,return_ci95,gain_mean,gain_ci95`` (gain 0 at $k = 0$);
    * ``eval.md``: the same as a Markdown table;
    * ``eval_tasks.csv``: ``task,return_0,...,return_K``, one row per task;
    * ``eval.png``: mean return against adaptation steps, the 95% interval as a shaded band,
      ticks at whole steps.

    Args:
        out: Directory (created if missing).
        curve: Returns of shape `(K + 1, tasks)`, at least 2 tasks.
        title: Title of the plot.

    Raises:
        ValueError: If ``curve`` is not 2-D with at least 2 tasks.

    Examples:
        >>> import tempfile, pathlib, torch
        >>> out = pathlib.Path(tempfile.mkdtemp())
        >>> write_adaptation_evaluation(out, torch.tensor([[-3.0, -1.0, -2.0], [-1.0, 0.0, -1.0]]),
        ...                             title="example")
        >>> print((out / "eval.csv").read_text().splitlines()[2])
        1,-0.6667,0.6533,1.3333,0.6533
        >>> sorted(p.name for p in out.iterdir())
        ['eval.csv', 'eval.md', 'eval.png', 'eval_tasks.csv']
    """
    if curve.dim() != 2 or curve.shape[1] < 2:
        raise ValueError(f"curve must have shape (steps + 1, tasks) with tasks >= 2, got {tuple(curve.shape)}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    table = [(*mean_confidence_interval(row), *(mean_confidence_interval(row - curve[0]) if k else (0.0, 0.0)))
             for k, row in enumerate(curve)]
    lines = ["steps,return_mean,return_ci95,gain_mean,gain_ci95",
             *[f"{k},{m:.4f},{c:.4f},{gm:.4f},{gc:.4f}" for k, (m, c, gm, gc) in enumerate(table)]]
    (out / "eval.csv").write_text("\n".join(lines) + "\n")
    md = ["| adaptation steps | mean return | 95% CI | gain over 0 steps (paired) |", "|---:|---:|---:|---:|",
          *[f"| {k} | {m:.2f} | ± {c:.2f} | {gm:+.2f} ± {gc:.2f} |" for k, (m, c, gm, gc) in enumerate(table)]]
    (out / "eval.md").write_text("\n".join(md) + "\n")
    per_task = [",".join(["task", *[f"return_{k}" for k in range(len(curve))]]),
                *[",".join([str(i), *[f"{v:.4f}" for v in curve[:, i].tolist()]]) for i in range(curve.shape[1])]]
    (out / "eval_tasks.csv").write_text("\n".join(per_task) + "\n")
    means = np.array([m for m, *_ in table])
    half_widths = np.array([c for _, c, *_ in table])
    plot_adaptation_curve(out / "eval.png", means, half_widths, title=title,
                          label=f"mean over {curve.shape[1]} held-out tasks")
