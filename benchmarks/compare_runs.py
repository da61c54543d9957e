"""Learning curves of meta-RL runs side by side: post-update return against environment steps.

Reads the ``metrics.csv`` of each run directory (any of MAML-TRPO, ProMP, GMPS: the columns
``env_steps`` and ``return/post`` or, failing that, ``return/pre``), prints a table of the
10-iteration moving mean at the given step budgets and saves one figure.

Usage:
    python benchmarks/compare_runs.py runs/promp_cheetah_dir_h100 runs/maml_trpo_cheetah_dir_h100 \\
        --labels ProMP MAML-TRPO --budgets 5e6 1e7 2e7 3e7 --out benchmarks/figures/cheetah_dir_h100.png
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np

from metaops.experiment import plot_learning_curve


def load(run: Path) -> tuple[np.ndarray, np.ndarray]:
    with open(run / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    column = "return/post" if "return/post" in rows[0] else "return/pre"
    return np.array([float(r["env_steps"]) for r in rows]), np.array([float(r[column]) for r in rows])


def moving_mean(values: np.ndarray, window: int = 10) -> np.ndarray:
    return np.array([values[max(0, i - window + 1): i + 1].mean() for i in range(len(values))])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("runs", type=Path, nargs="+")
    parser.add_argument("--labels", nargs="+")
    parser.add_argument("--budgets", type=float, nargs="+", default=[])
    parser.add_argument("--title", default="")
    parser.add_argument("--out", type=Path)
    a = parser.parse_args()
    labels = a.labels or [run.name for run in a.runs]
    curves = {}
    print("| run | iterations | env steps | last 10-iteration mean | "
          + " | ".join(f"at {b:.2g} steps" for b in a.budgets) + " |")
    print("|---|---:|---:|---:|" + "---:|" * len(a.budgets))
    for run, label in zip(a.runs, labels, strict=True):
        steps, returns = load(run)
        smooth = moving_mean(returns)
        curves[f"{label} (10-iteration mean)"] = (steps, smooth)
        at = []
        for budget in a.budgets:
            reached = np.flatnonzero(steps <= budget)
            at.append(f"{smooth[reached[-1]]:.1f}" if len(reached) and steps[-1] >= budget else "—")
        print(f"| {label} | {len(steps)} | {steps[-1]:,.0f} | {smooth[-1]:.1f} | " + " | ".join(at) + " |")
    if a.out:
        plot_learning_curve(a.out, curves, title=a.title, xlabel="environment steps",
                            ylabel="post-update return (training tasks)", log_y=False)
        print(f"figure: {a.out}")


if __name__ == "__main__":
    main()
