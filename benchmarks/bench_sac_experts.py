"""Per-task SAC experts: one vmapped gradient step for N tasks against a Python loop of N single-expert steps.

Both update N independent experts with `recipes.sac_experts.gradient_step` (SAC losses, one backward, Adam,
Polyak) on random HalfCheetahVel-shaped batches: `vmapped` stacks every parameter along a task dimension and
makes one call per gradient step; `loop` keeps N separate experts, each with its own Adam, and makes N calls.
The two are interleaved and repeated; the table gives milliseconds per gradient step of all N experts (median
and minimum over repeats) and process CPU time.

Usage:
    python benchmarks/bench_sac_experts.py --tasks 10 40 --steps 5 --repeats 3
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import metaops as mo
from metaops import envs, rl
from recipes import sac_experts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--env", default="HalfCheetahVel")
    parser.add_argument("--tasks", type=int, nargs="+", default=[10, 40])
    parser.add_argument("--steps", type=int, default=5, help="gradient steps timed per measurement")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--hidden", type=int, nargs="+", default=[256, 256])
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    env = envs.make_batched(args.env, num_tasks=1, episodes_per_task=1)
    obs_dim, act_dim = env.observation_dim, env.action_dim
    recipe_args = sac_experts.Args(hidden=tuple(args.hidden))
    torch.manual_seed(0)
    policy, critic = sac_experts.make_networks(obs_dim, env, recipe_args)
    g = torch.Generator().manual_seed(0)
    rows: dict[tuple[int, str], list[tuple[float, float]]] = {}
    for n in args.tasks:
        b = args.batch_size
        batch = rl.Transitions(torch.randn(n, b, obs_dim, generator=g), torch.rand(n, b, act_dim, generator=g) * 2 - 1,
                               torch.randn(n, b, generator=g), torch.randn(n, b, obs_dim, generator=g),
                               torch.rand(n, b, generator=g) < 0.01)
        noise = torch.randn(2, n, b, act_dim, generator=g)
        stacked = sac_experts.init_params(policy, critic, n)
        stacked_opt = torch.optim.Adam(sac_experts.leaves(stacked), lr=3e-4)
        stacked_target = mo.tree.tree_map(lambda v: v.detach().clone(), stacked["critic"])
        own = [mo.tree.tree_map(lambda v, k=k: v[k].detach().clone().requires_grad_(), stacked) for k in range(n)]
        own_opt = [torch.optim.Adam(sac_experts.leaves(p), lr=3e-4) for p in own]
        own_target = [mo.tree.tree_map(lambda v: v.detach().clone(), p["critic"]) for p in own]
        at = lambda k: rl.Transitions(*(x[k] for x in batch))

        def vmapped() -> None:
            nonlocal stacked_target
            stacked_target, _ = sac_experts.gradient_step(policy, critic, stacked, stacked_target, stacked_opt, batch,
                                                          noise[0], noise[1], gamma=0.99, tau=0.005, per_task=True)

        def loop() -> None:
            for k in range(n):
                own_target[k], _ = sac_experts.gradient_step(policy, critic, own[k], own_target[k], own_opt[k], at(k),
                                                             noise[0, k], noise[1, k], gamma=0.99, tau=0.005,
                                                             per_task=False)

        impls = {"vmapped": vmapped, "loop": loop}
        for fn in impls.values():  # warm-up
            fn()
        for repeat in range(args.repeats):
            for name in (list(impls) if repeat % 2 == 0 else list(impls)[::-1]):
                start, cpu = time.perf_counter(), time.process_time()
                for _ in range(args.steps):
                    impls[name]()
                took = (1000 * (time.perf_counter() - start) / args.steps,
                        1000 * (time.process_time() - cpu) / args.steps)
                rows.setdefault((n, name), []).append(took)
                print(f"tasks {n} {name:8s} repeat {repeat}: {took[0]:.1f} ms wall, {took[1]:.1f} ms CPU per step",
                      flush=True)
    print(f"\n{args.env}, hidden {tuple(args.hidden)}, batch {args.batch_size} per expert, torch {torch.__version__}, "
          f"{args.threads} thread(s), {args.repeats} repeats of {args.steps} steps\n")
    print("| tasks | implementation | ms per gradient step (all experts), median | min | process CPU ms, median | "
          "ms per expert |")
    print("|---:|---|---:|---:|---:|---:|")
    for (n, name), times in rows.items():
        wall, cpu = [t[0] for t in times], [t[1] for t in times]
        print(f"| {n} | {name} | {statistics.median(wall):.0f} | {min(wall):.0f} | {statistics.median(cpu):.0f} | "
              f"{statistics.median(cpu) / n:.1f} |")


if __name__ == "__main__":
    main()
