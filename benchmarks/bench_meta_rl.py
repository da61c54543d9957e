"""Per-phase time of a meta-iteration of ProMP and MAML-TRPO, measured on the recipes themselves.

Runs ``recipes.promp.main`` or ``recipes.maml_trpo.main`` for a few iterations (no evaluation,
no TensorBoard) and splits every iteration into

* ``sampling``: inside `metaops.envs.sample_episodes` (MuJoCo/numpy stepping and the policy calls),
* ``processing``: inside the recipe's ``process_episodes`` (returns, linear baseline, GAE),
* ``adaptation``: the inner steps that produce the sampling policies (ProMP: ``time/adapt_s``;
  MAML-TRPO: the rest of its ``time/sample_s``),
* ``outer``: the meta-update (ProMP: the Adam steps plus the statistics pass, ``time/outer_s``;
  MAML-TRPO: the TRPO step, ``time/update_s``),

in wall-clock seconds, plus the process CPU seconds of the whole iteration and of the
sampling (summed over threads), which are less sensitive to other processes on a shared
machine. The first iteration includes one-off warm-up; the summary line averages the others.

Usage:
    python benchmarks/bench_meta_rl.py --recipe promp --env HalfCheetahDir --meta-batch 40 \\
        --episodes 20 --horizon 100 --iterations 3 --threads 2
"""

from __future__ import annotations

import argparse
import ast
import os
import platform
import tempfile
import time
from collections import defaultdict
from typing import Any

import torch

import metaops.envs
from metaops.experiment import RunLogger


class _Clock:
    """Accumulates wall and CPU seconds per phase between two logged iterations."""

    def __init__(self) -> None:
        self.wall: dict[str, float] = defaultdict(float)
        self.cpu: dict[str, float] = defaultdict(float)
        self.rows: list[dict[str, float]] = []
        self._last_cpu = time.process_time()

    def timed(self, name: str, fn):
        def wrapper(*args: Any, **kwargs: Any):
            w0, c0 = time.perf_counter(), time.process_time()
            try:
                return fn(*args, **kwargs)
            finally:
                self.wall[name] += time.perf_counter() - w0
                self.cpu[name] += time.process_time() - c0

        return wrapper

    def close_iteration(self, logged: dict[str, float], recipe: str) -> None:
        cpu_now = time.process_time()
        sampling, processing = self.wall["sampling"], self.wall["processing"]
        if recipe == "promp":
            adaptation, outer = logged["time/adapt_s"], logged["time/outer_s"]
            total = logged["time/sample_s"] + adaptation + outer
        else:
            adaptation, outer = logged["time/sample_s"] - sampling - processing, logged["time/update_s"]
            total = logged["time/sample_s"] + outer
        self.rows.append({
            "sampling": sampling, "processing": processing, "adaptation": adaptation, "outer": outer,
            "other": total - sampling - processing - adaptation - outer, "total": total,
            "cpu_sampling": self.cpu["sampling"], "cpu_total": cpu_now - self._last_cpu,
            "env_steps": logged["env_steps"],
        })
        self.wall.clear()
        self.cpu.clear()
        self._last_cpu = cpu_now


def run(recipe: str, *, env: str, meta_batch: int, episodes: int, horizon: int | None, iterations: int,
        threads: int, physics_threads: int, inner_steps: int | None,
        hidden: tuple[int, ...] | None, extra: dict[str, Any] | None = None) -> list[dict[str, float]]:
    if recipe == "promp":
        from recipes import promp as module
    else:
        from recipes import maml_trpo as module
    clock = _Clock()

    class TimedLogger(RunLogger):
        def log(self, step: int, metrics: dict[str, float]) -> None:
            super().log(step, metrics)
            clock.close_iteration(metrics, recipe)

    patched = [(metaops.envs, "sample_episodes"), (module, "process_episodes"), (module, "RunLogger")]
    saved = [getattr(obj, name) for obj, name in patched]
    metaops.envs.sample_episodes = clock.timed("sampling", metaops.envs.sample_episodes)
    module.process_episodes = clock.timed("processing", module.process_episodes)
    module.RunLogger = TimedLogger
    try:
        with tempfile.TemporaryDirectory() as out:
            options: dict[str, Any] = dict(env=env, out_dir=out, iterations=iterations, meta_batch=meta_batch,
                                           episodes=episodes, horizon=horizon, threads=threads,
                                           physics_threads=physics_threads, eval_tasks=0, progress=False,
                                           tensorboard=False, checkpoint_every=10**6, resume=False)
            if inner_steps is not None:
                options["inner_steps"] = inner_steps
            if hidden is not None:
                options["hidden"] = hidden
            options.update(extra or {})
            module.main(module.Args(**options))
    finally:
        for (obj, name), value in zip(patched, saved):
            setattr(obj, name, value)
    return clock.rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--recipe", choices=["promp", "maml_trpo"], default="promp")
    parser.add_argument("--env", default="HalfCheetahDir", choices=metaops.envs.env_names())
    parser.add_argument("--meta-batch", type=int, default=40)
    parser.add_argument("--episodes", type=int, default=20)
    parser.add_argument("--horizon", type=int, default=100)
    parser.add_argument("--iterations", type=int, default=3)
    parser.add_argument("--inner-steps", type=int, default=None, help="default: the recipe's for --env")
    parser.add_argument("--hidden", type=int, nargs="+", default=None, help="policy widths; default: the recipe's")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads of the meta-update")
    parser.add_argument("--physics-threads", type=int, default=2, help="MuJoCo stepping threads")
    parser.add_argument("--set", nargs="*", default=[], metavar="FIELD=VALUE",
                        help="other recipe options by Args field, e.g. fisher_subsample=0.25 (values parsed as "
                             "Python literals)")
    a = parser.parse_args()
    extra = {}
    for item in a.set:
        field, sep, value = item.partition("=")
        if not sep:
            parser.error(f"--set takes FIELD=VALUE, got {item!r}")
        try:
            extra[field] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            extra[field] = value  # a plain string

    print(f"{a.recipe} on {a.env}: {a.meta_batch} tasks x {a.episodes} episodes x H={a.horizon}, "
          f"hidden {a.hidden or 'default'}, torch threads {a.threads}, physics threads {a.physics_threads}"
          + "".join(f", {k}={v!r}" for k, v in extra.items()))
    print(f"torch {torch.__version__}, {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.1f} (1 min) at the start")
    rows = run(a.recipe, env=a.env, meta_batch=a.meta_batch, episodes=a.episodes, horizon=a.horizon,
               iterations=a.iterations, threads=a.threads, physics_threads=a.physics_threads,
               inner_steps=a.inner_steps, hidden=None if a.hidden is None else tuple(a.hidden), extra=extra)
    cols = ["sampling", "processing", "adaptation", "outer", "other", "total", "cpu_sampling", "cpu_total"]
    print("| iteration | env steps | " + " | ".join(f"{c} (s)" for c in cols) + " |")
    print("|---:" * (len(cols) + 2) + "|")
    steps = 0.0
    for i, row in enumerate(rows, 1):
        print(f"| {i} | {row['env_steps'] - steps:.0f} | " + " | ".join(f"{row[c]:.2f}" for c in cols) + " |")
        steps = row["env_steps"]
    later = rows[1:] or rows
    mean = {c: sum(r[c] for r in later) / len(later) for c in cols}
    print(f"| mean of {'iterations 2+' if len(rows) > 1 else 'iteration 1'} | | "
          + " | ".join(f"{mean[c]:.2f}" for c in cols) + " |")
    print(f"load average {os.getloadavg()[0]:.1f} (1 min) at the end; wall times include any waiting for "
          "cores that other processes hold")


if __name__ == "__main__":
    main()
