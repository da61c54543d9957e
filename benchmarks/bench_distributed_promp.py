"""ProMP meta-iteration time on 1 process and under ``torchrun`` with 2 processes (gloo, CPU).

Runs ``recipes/promp.py`` at a given configuration (default: the HalfCheetahDir reference, 40
tasks x 20 episodes x H=100, 160k environment steps per iteration) for ``--iterations``
iterations, once as one process (``--threads 2 --physics-threads 2``: both cores for MuJoCo and
for the outer steps) and once as ``torchrun --nproc-per-node 2`` (each process 1 torch thread, 1
MuJoCo thread and half of the tasks), and reads the per-phase times the recipe logs
(``time/sample_s``, ``time/adapt_s``, ``time/outer_s``; the outer time includes the
``all_reduce`` of every Adam step). Reported: the mean over iterations 2.. of each phase, their
sum, and the process's wall time for the whole command (start-up included).

Usage:
    python benchmarks/bench_distributed_promp.py [--iterations 4] [--env HalfCheetahDir]
"""

from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run(ranks: int, args: argparse.Namespace, out: Path) -> dict[str, float]:
    common = ["--env", args.env, "--iterations", str(args.iterations), "--eval-tasks", "0", "--no-progress",
              "--no-tensorboard", "--out-dir", str(out), *args.extra]
    if ranks == 1:
        cmd = [sys.executable, "-m", "recipes.promp", "--threads", "2", "--physics-threads", "2", *common]
    else:
        torchrun = str(Path(sys.executable).with_name("torchrun"))
        cmd = [torchrun, "--standalone", f"--nproc-per-node={ranks}", "-m", "recipes.promp", "--threads", "1",
               "--physics-threads", "1", *common]
    start = time.perf_counter()
    subprocess.run(cmd, cwd=ROOT, check=True, env={**os.environ, "OMP_NUM_THREADS": "1" if ranks > 1 else "2"},
                   stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    with open(out / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))[1:]  # iteration 1 includes warm-up
    mean = lambda key: sum(float(r[key]) for r in rows) / len(rows)
    phases = {name: mean(f"time/{name}_s") for name in ("sample", "adapt", "outer")}
    return {**phases, "total": sum(phases.values()), "wall": wall}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--env", default="HalfCheetahDir")
    parser.add_argument("--iterations", type=int, default=4)
    parser.add_argument("extra", nargs="*", help="further recipe options, after --")
    args = parser.parse_args()
    print(f"ProMP {args.env}, {args.iterations} iterations, mean of iterations 2..{args.iterations}")
    print("| processes | sampling s | adaptation s | outer s | total s/iteration | wall s (command) |")
    print("|---:|---:|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as tmp:
        for ranks in (1, 2):
            r = run(ranks, args, Path(tmp) / f"ranks{ranks}")
            print(f"| {ranks} | {r['sample']:.2f} | {r['adapt']:.2f} | {r['outer']:.2f} | {r['total']:.2f} | "
                  f"{r['wall']:.1f} |", flush=True)


if __name__ == "__main__":
    main()
