"""PEARL's cost: milliseconds per gradient step, the meta-batch vmapped over tasks or looped over them.

Each measurement is one short run of `recipes/pearl.py` (one iteration, a little data, then
`--grad-steps` gradient steps) and reads the recipe's own `time/ms_per_grad_step`, so it times
exactly what a training run does per step: draw the context and the SAC batch of every task of
the meta-batch from the per-task buffers, the encoder's posterior, the SAC losses on [s, z],
the KL, one backward pass, Adam and the Polyak update. The two modes alternate and repeat
because the machine may be shared; the median and the minimum are reported.

Usage:
    python benchmarks/bench_pearl.py [--env HalfCheetahVel] [--grad-steps 20] [--repeats 3] [--threads 1]
    python benchmarks/bench_pearl.py --small   # the 64-unit networks of the learning test
"""

from __future__ import annotations

import argparse
import platform
import statistics
import tempfile

import torch

from recipes import pearl


def ms_per_grad_step(batching: str, args: argparse.Namespace) -> float:
    sizes = dict(hidden=64, encoder_hidden=64, layers=2, batch_size=64, context_batch=32, meta_batch=8) if args.small \
        else {}  # else the reference's: 300-unit networks, meta-batch 16 x 256 transitions, context 100
    with tempfile.TemporaryDirectory() as out:
        run = pearl.Args(env=args.env, out_dir=out, iterations=1, train_tasks=args.train_tasks, initial_episodes=1,
                         tasks_per_iteration=1, prior_episodes=1, posterior_episodes=0, grad_steps=args.grad_steps,
                         eval_tasks=0, threads=args.threads, physics_threads=1, batching=batching, progress=False,
                         tensorboard=False, resume=False, **sizes)
        return pearl.main(run)["ms_per_grad_step_last10"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", default="HalfCheetahVel")
    parser.add_argument("--grad-steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--train-tasks", type=int, default=16)
    parser.add_argument("--small", action="store_true", help="64-unit networks, meta-batch 8 x 64")
    args = parser.parse_args()
    times: dict[str, list[float]] = {"vmap": [], "loop": []}
    for _ in range(args.repeats):
        for batching in times:  # interleaved: a change in the machine's load hits both
            times[batching].append(ms_per_grad_step(batching, args))
    print(f"{platform.processor() or platform.machine()}, torch {torch.__version__}, threads {args.threads}, "
          f"env {args.env}, {'small' if args.small else 'reference'} sizes, {args.grad_steps} steps x "
          f"{args.repeats} repeats")
    for batching, values in times.items():
        print(f"{batching:>5}: median {statistics.median(values):7.1f} ms/step, min {min(values):7.1f}")
    print(f"loop / vmap (medians): {statistics.median(times['loop']) / statistics.median(times['vmap']):.2f}x")


if __name__ == "__main__":
    main()
