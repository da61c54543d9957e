"""GMPS against ProMP on one protocol: held-out return after one adaptation step vs meta-training steps.

Each recipe runs once per seed and is evaluated at growing budgets: a run is resumed (exactly)
to the next iteration count, and every resume ends with the recipe's own held-out evaluation
(the same tasks and episodes for both recipes: ``--eval-seed``, ``--eval-tasks``, ``--episodes``).
Meta-training environment steps are the recipes' ``env_steps`` (ProMP: pre- and post-update
episodes; GMPS: pre-update episodes only); the expert's collection steps are reported apart.
Rows go to a JSONL file (one per seed, recipe and budget); ``summary`` prints the table.

Usage:
    python benchmarks/bench_gmps_vs_promp.py run --out runs/gmps_vs_promp --seeds 0 1 2
    python benchmarks/bench_gmps_vs_promp.py summary runs/gmps_vs_promp/results.jsonl
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections import defaultdict
from pathlib import Path

import torch

SHARED = dict(env="Navigation2D", meta_batch=20, episodes=10, hidden=(64, 64), eval_tasks=40, eval_steps=1,
              eval_seed=1000, threads=1, progress=False, tensorboard=False)
BUDGETS = {"gmps": [5, 10, 20, 40], "promp": [10, 20, 40, 80, 160]}


def run(out: Path, seeds: list[int], recipes: list[str]) -> None:
    from recipes import gmps, promp

    modules = {"gmps": gmps, "promp": promp}
    out.mkdir(parents=True, exist_ok=True)
    results = out / "results.jsonl"
    done = set()
    if results.exists():
        done = {(r["recipe"], r["seed"], r["iterations"]) for r in map(json.loads, results.read_text().splitlines())}
    for seed in seeds:
        for name in recipes:
            module = modules[name]
            for iterations in BUDGETS[name]:
                if (name, seed, iterations) in done:
                    continue
                start = time.perf_counter()
                metrics = module.main(module.Args(**SHARED, seed=seed, iterations=iterations,
                                                  out_dir=str(out / f"{name}_seed{seed}")))
                row = {"recipe": name, "seed": seed, "iterations": iterations, "env_steps": metrics["env_steps"],
                       "return_0": metrics["eval_return_0"], "return_1": metrics["eval_return_1"],
                       "gain_1": metrics["eval_gain_1"], "wall_s": time.perf_counter() - start,
                       "train_seconds": metrics["train_seconds"],
                       "expert_env_steps": metrics.get("expert_env_steps", 0.0)}
                with open(results, "a") as f:
                    f.write(json.dumps(row) + "\n")
                print(json.dumps(row), flush=True)


def summary(path: Path) -> None:
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    groups = defaultdict(list)
    for r in rows:
        groups[(r["recipe"], r["iterations"])].append(r)
    print("| recipe | iterations | seeds | meta-training env steps (mean) | held-out return, 0 steps | "
          "held-out return, 1 step (mean ± 95% CI over seeds) | per seed |")
    print("|---|---:|---:|---:|---:|---:|---|")
    for (name, iterations), rs in sorted(groups.items()):
        post = torch.tensor([r["return_1"] for r in rs])
        ci = 1.96 * post.std().item() / math.sqrt(len(rs)) if len(rs) > 1 else float("nan")
        pre = sum(r["return_0"] for r in rs) / len(rs)
        steps = sum(r["env_steps"] for r in rs) / len(rs)
        print(f"| {name} | {iterations} | {len(rs)} | {steps:,.0f} | {pre:.1f} | {post.mean():.1f} ± {ci:.1f} | "
              + ", ".join(f"{r['return_1']:.1f}" for r in rs) + " |")
    experts = {r["expert_env_steps"] for r in rows if r["recipe"] == "gmps"}
    if experts:
        print(f"\nexpert demonstrations (GMPS, per seed): {', '.join(f'{s:,.0f}' for s in sorted(experts))} env steps")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run")
    r.add_argument("--out", type=Path, default=Path("runs/gmps_vs_promp"))
    r.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    r.add_argument("--recipes", nargs="+", default=["gmps", "promp"], choices=["gmps", "promp"])
    s = sub.add_parser("summary")
    s.add_argument("path", type=Path)
    a = parser.parse_args()
    if a.command == "run":
        run(a.out, a.seeds, a.recipes)
    else:
        summary(a.path)


if __name__ == "__main__":
    main()
