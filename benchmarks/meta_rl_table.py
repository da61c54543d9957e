"""One table for meta-RL runs of different families: held-out return before and after adaptation.

Reads each run directory that a meta-RL recipe wrote (``metrics.json``, ``metrics.csv``,
``eval_tasks.csv``) and prints one markdown row per run, on one evaluation protocol: the
held-out tasks of ``--eval-seed`` (every recipe draws the same tasks for the same seed and
number), and per task

* **before**: the first episode on the task without adaptation (MAML-TRPO, ProMP, GMPS: the
  meta-policy, 0 inner steps; RL²: episode 1 of the trial; PEARL: episode 1, z from the prior),
* **after**: the return once the learner has used its own experience of the task (MAML-TRPO,
  ProMP, GMPS: after one inner step on their sampled episodes; RL²: the last episode of the
  trial; PEARL: the first episode with z from the posterior, after its exploration episodes),

with the paired per-task gain (after minus before) and its 95% interval. The family is read
from the run's files: PEARL's ``metrics.json`` counts ``grad_steps``, RL²'s reports
``return_episode_1_last10``, the others are gradient-based. Steps are the meta-training
environment steps; time is the sum of the per-iteration phase times of ``metrics.csv``
(sampling and updates, not evaluation or checkpoints). It also draws the training curves (the
10-iteration moving mean of the curve each recipe logs, against environment steps, log scale).

Usage:
    python benchmarks/meta_rl_table.py runs/promp_vel runs/maml_trpo_vel runs/rl2_vel runs/pearl_vel \\
        --labels ProMP MAML-TRPO RL² PEARL --out benchmarks/figures/cheetah_vel_recipes.png
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import numpy as np
from compare_runs import moving_mean  # (this script's folder is on the path when it runs)

from metaops.experiment import mean_confidence_interval

CURVE_COLUMN = {"gradient": "return/post", "rl2": "return/episode_2", "pearl": "return/posterior"}
"""The training curve each family logs: post-update return, episode 2 of a trial, z from the posterior (GMPS,
which samples no post-update episodes while it trains, logs only the pre-update return: that one is drawn)."""


def family(metrics: dict[str, float]) -> str:
    if "grad_steps" in metrics:
        return "pearl"
    if "return_episode_1_last10" in metrics:
        return "rl2"
    return "gradient"


def per_task_returns(run: Path) -> np.ndarray:
    """``(rows, tasks)``: row k is k inner steps (gradient-based) or episode k + 1 (RL², PEARL)."""
    with open(run / "eval_tasks.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise ValueError(f"{run / 'eval_tasks.csv'} has no tasks: was the run evaluated (--eval-tasks > 0)?")
    columns = [c for c in rows[0] if c.startswith("return_")]
    return np.array([[float(r[c]) for r in rows] for c in columns])


def logged_rows(run: Path) -> tuple[list[dict[str, str]], np.ndarray, np.ndarray]:
    """The rows of ``metrics.csv``, and per iteration its environment steps and the seconds of all phases."""
    with open(run / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    timed = [c for c in rows[0] if c.startswith("time/") and c.endswith("_s")]
    steps = np.array([float(r["env_steps"]) for r in rows])
    seconds = np.array([sum(float(r[c]) for c in timed) for r in rows])
    return rows, steps, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("runs", type=Path, nargs="+")
    parser.add_argument("--labels", nargs="+")
    parser.add_argument("--budgets", type=float, nargs="*", default=[],
                        help="also print the training curve's 10-iteration mean at these environment steps")
    parser.add_argument("--title", default="")
    parser.add_argument("--out", type=Path, help="PNG of the training curves")
    a = parser.parse_args()
    labels = a.labels or [run.name for run in a.runs]
    if len(labels) != len(a.runs):
        parser.error(f"{len(a.runs)} runs but {len(labels)} labels")
    at = "".join(f" training, {b / 1e6:.3g}M steps |" for b in a.budgets)
    print(f"| recipe | env steps | time | held-out tasks | before | after | paired gain |{at}")
    print("|---|---:|---:|---:|---:|---:|---:|" + "---:|" * len(a.budgets))
    curves = {}
    for run, label in zip(a.runs, labels):
        metrics = json.loads((run / "metrics.json").read_text())
        kind = family(metrics)
        returns = per_task_returns(run)
        before, after = returns[0], returns[1] if kind == "gradient" else returns[-1]
        rows, steps, seconds = logged_rows(run)
        extra = f" ({metrics['grad_steps']:,.0f} gradient steps)" if kind == "pearl" else ""
        b, b_ci = mean_confidence_interval(before)
        f, f_ci = mean_confidence_interval(after)
        d, d_ci = mean_confidence_interval(after - before)
        column = CURVE_COLUMN[kind] if CURVE_COLUMN[kind] in rows[0] else "return/pre"  # GMPS: pre-update only
        curve = moving_mean(np.array([float(r[column]) for r in rows]))
        curves[label] = (steps, curve)
        budget_cells = "".join(f" {curve[steps <= budget][-1]:.1f} |" if steps[-1] >= budget and (steps <= budget).any()
                               else " — |" for budget in a.budgets)
        print(f"| {label} | {steps[-1] / 1e6:.2f}M{extra} | {seconds.sum() / 60:.0f} min | {len(before)} | "
              f"{b:.1f} ± {b_ci:.1f} | **{f:.1f} ± {f_ci:.1f}** | {d:+.1f} ± {d_ci:.1f} |{budget_cells}")
    if a.out:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(7, 4.2))
        for label, (steps, values) in curves.items():
            ax.plot(steps, values, label=label)
        ax.set_xscale("log")
        ax.set_xlabel("environment steps (meta-training)")
        ax.set_ylabel("training return after adaptation\n(10-iteration mean)")
        ax.set_title(a.title)
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        a.out.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(a.out, dpi=120)
        print(f"figure: {a.out}")


if __name__ == "__main__":
    main()
