"""Sampling cost of RL² trials (GRU policy, one carry per trial) against the MLP episode sampler.

HalfCheetahVel, 40 tasks. The trial sampler runs `--trials` trials per task of
`--episodes-per-trial` consecutive episodes of H steps with a GRU policy
(`metaops.rl.GaussianGRUPolicy`, `--hidden` units) through `metaops.envs.sample_trials`; the
reference row samples the same number of environment steps with `metaops.envs.sample_episodes`
and a (64, 64) tanh Gaussian MLP (`trials x episodes_per_trial` parallel episodes per task).
The trial sampler makes `episodes_per_trial` times as many sequential policy calls, each on
`1 / episodes_per_trial` as many environments. Rows alternate, `--repeats` times each; the best
run is reported (the machine may be shared). Throughput is env-steps per second.

Usage:
    python benchmarks/bench_rl2.py [--tasks 40 --trials 2 --episodes-per-trial 2 --horizon 200 --repeats 3]
"""

from __future__ import annotations

import argparse
import os
import time

import torch

from metaops import envs, rl


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", default="HalfCheetahVel")
    parser.add_argument("--tasks", type=int, default=40)
    parser.add_argument("--trials", type=int, default=2)
    parser.add_argument("--episodes-per-trial", type=int, default=2)
    parser.add_argument("--horizon", type=int, default=200)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.manual_seed(0)
    E = args.episodes_per_trial
    tasks = envs.task_distribution(args.env).sample_tasks(args.tasks, generator=torch.Generator().manual_seed(0))
    trial_env = envs.make_batched(args.env, num_tasks=args.tasks, episodes_per_task=args.trials)
    mlp_env = envs.make_batched(args.env, num_tasks=args.tasks, episodes_per_task=args.trials * E)
    obs_dim, act_dim = trial_env.observation_dim, trial_env.action_dim
    gru = rl.GaussianGRUPolicy(obs_dim + act_dim + 2, act_dim, hidden_size=args.hidden)
    mlp = rl.GaussianMLPPolicy(obs_dim, act_dim, hidden_sizes=(64, 64))
    gru_params = {k: v.detach() for k, v in gru.named_parameters()}
    mlp_params = {k: v.detach() for k, v in mlp.named_parameters()}

    def trials() -> int:
        batch = envs.sample_trials(trial_env, gru, gru_params, tasks, episodes_per_trial=E,
                                   generator=torch.Generator().manual_seed(1), horizon=args.horizon)
        return int(batch.mask.sum())

    def episodes() -> int:
        batch = envs.sample_episodes(mlp_env, mlp, mlp_params, tasks, generator=torch.Generator().manual_seed(1),
                                     horizon=args.horizon)
        return int(batch.mask.sum())

    rows = {f"sample_trials, GRU {args.hidden}, {args.tasks}x{args.trials} trials x {E} episodes": trials,
            f"sample_episodes, MLP 64-64, {args.tasks}x{args.trials * E} episodes": episodes}
    best: dict[str, tuple[float, int, float]] = {}
    for _ in range(args.repeats):
        for name, fn in rows.items():
            wall, cpu = time.perf_counter(), time.process_time()
            steps = fn()
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            if name not in best or wall < best[name][0]:
                best[name] = (wall, steps, cpu)
    print(f"{args.env}, H={args.horizon}, load average {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    print("| sampler | env-steps | best wall s | env-steps/s | CPU s |")
    print("|---|---:|---:|---:|---:|")
    for name, (wall, steps, cpu) in best.items():
        print(f"| {name} | {steps} | {wall:.2f} | {steps / wall:,.0f} | {cpu:.2f} |")
    trial_env.close()
    mlp_env.close()


if __name__ == "__main__":
    main()
