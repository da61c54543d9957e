"""Sampler throughput against raw MuJoCo stepping of the same models, in the same run.

For each environment, 40 tasks x 20 episodes (800 environments) are rolled out by
`metaops.envs.sample_episodes` with a Gaussian MLP policy (100, 100) and per-task
parameters (one vmapped policy call per step). Reference rows step the same MuJoCo
model with random controls and no policy:

* `mj_step, 1 core`: one MjData in a Python loop (`mj_step(m, d, nstep=frame_skip)`);
* `mj_step x2 (ideal)`: twice that, the ceiling for 2 cores;
* `mujoco.batch, 2 threads`: 800 copies stepped in C on 2 threads (what the sampler uses);
* `mujoco.rollout, 2 threads`: 800 copies advanced one policy step per call.

Throughput is env-steps per second (one env-step = `frame_skip` physics substeps).
Rows are measured alternately, `--repeats` times each, and the best run is reported,
because the machine may be shared.

Usage:
    python benchmarks/bench_sampler.py [--envs HalfCheetahDir AntDir] [--markdown PATH]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from collections.abc import Callable

import mujoco
import mujoco.batch
import mujoco.rollout
import numpy as np
import torch

from metaops.envs import make_batched, sample_episodes, task_distribution
from metaops.envs._mujoco import load_model

try:
    from metaops.rl import GaussianMLPPolicy
except ImportError:  # pragma: no cover - metaops.rl not available
    GaussianMLPPolicy = None

FRAME_SKIP = {"HalfCheetahDir": 5, "HalfCheetahVel": 5, "AntDir": 5, "AntGoal": 5}
XML = {"HalfCheetahDir": "half_cheetah.xml", "HalfCheetahVel": "half_cheetah.xml"}
XML.update({"AntDir": "ant.xml", "AntGoal": "ant.xml"})


def _timed(fn: Callable[[], int], min_seconds: float) -> float:
    """Runs `fn` (which returns env-steps done) until `min_seconds` pass; returns steps/s."""
    steps, start = 0, time.perf_counter()
    while True:
        steps += fn()
        elapsed = time.perf_counter() - start
        if elapsed >= min_seconds:
            return steps / elapsed


def raw_single(model: mujoco.MjModel, frame_skip: int, seconds: float) -> float:
    data = mujoco.MjData(model)
    rng = np.random.default_rng(0)
    controls = rng.uniform(-1, 1, (1000, model.nu))

    def run() -> int:
        for u in controls[:200]:
            data.ctrl[:] = u
            mujoco.mj_step(model, data, nstep=frame_skip)
        return 200

    return _timed(run, seconds)


def raw_batch(model: mujoco.MjModel, frame_skip: int, n: int, seconds: float) -> float:
    batch = mujoco.batch.Batch(model, n, nthread=2, persistent=True)
    ctrl = batch.bind("ctrl")
    rng = np.random.default_rng(0)
    batch.reset()

    def run() -> int:
        ctrl[:] = rng.uniform(-1, 1, ctrl.shape)
        batch.step(nstep=frame_skip)
        return n

    return _timed(run, seconds)


def raw_rollout(model: mujoco.MjModel, frame_skip: int, n: int, seconds: float) -> float:
    datas = [mujoco.MjData(model) for _ in range(2)]
    spec = mujoco.mjtState.mjSTATE_FULLPHYSICS
    state = np.zeros((n, mujoco.mj_stateSize(model, spec)))
    mujoco.mj_getState(model, datas[0], state[0], spec)
    state[:] = state[0]
    rng = np.random.default_rng(0)
    with mujoco.rollout.Rollout(nthread=2) as rollout:

        def run() -> int:
            nonlocal state
            control = rng.uniform(-1, 1, (n, frame_skip, model.nu))
            out, _ = rollout.rollout(model, datas, state, control)
            state = out[:, -1].copy()
            return n

        return _timed(run, seconds)


def sampler(name: str, num_tasks: int, episodes: int, horizon: int) -> Callable[[], float]:
    env = make_batched(name, num_tasks=num_tasks, episodes_per_task=episodes)
    if GaussianMLPPolicy is None:
        raise SystemExit("metaops.rl.GaussianMLPPolicy is needed for the policy")
    torch.manual_seed(0)
    policy = GaussianMLPPolicy(env.observation_dim, env.action_dim, hidden_sizes=(100, 100))
    # per-task parameters, as after adaptation
    params = {k: (v.detach() + 0.01 * torch.randn(num_tasks, *v.shape)) for k, v in policy.named_parameters()}
    generator = torch.Generator().manual_seed(0)
    tasks = task_distribution(name).sample_tasks(num_tasks, generator=generator)

    def run() -> float:
        start = time.perf_counter()
        batch = sample_episodes(env, policy, params, tasks, generator=generator, horizon=horizon)
        elapsed = time.perf_counter() - start
        return float(batch.mask.sum()) / elapsed

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--envs", nargs="+", default=["HalfCheetahDir", "AntDir"])
    parser.add_argument("--num-tasks", type=int, default=40)
    parser.add_argument("--episodes", type=int, default=20)
    parser.add_argument(
        "--horizon",
        type=int,
        nargs="+",
        default=[200, 50],
        help="episode length per env (one value, or one per --envs entry)",
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=3.0, help="per raw measurement")
    parser.add_argument("--markdown", type=str, default=None, help="also write a markdown table")
    args = parser.parse_args()
    horizons = args.horizon * len(args.envs) if len(args.horizon) == 1 else args.horizon
    n = args.num_tasks * args.episodes
    rows = []
    for name, horizon in zip(args.envs, horizons, strict=True):
        model = load_model(XML[name])
        fs = FRAME_SKIP[name]
        run_sampler = sampler(name, args.num_tasks, args.episodes, horizon)
        best: dict[str, float] = {}
        for _ in range(args.repeats):
            results = {
                "mj_step, 1 core": raw_single(model, fs, args.seconds),
                "mujoco.batch, 2 threads": raw_batch(model, fs, n, args.seconds),
                "mujoco.rollout, 2 threads": raw_rollout(model, fs, n, args.seconds),
                "metaops sampler (policy incl.)": run_sampler(),
            }
            for key, value in results.items():
                best[key] = max(best.get(key, 0.0), value)
        best["mj_step x2 (ideal)"] = 2 * best["mj_step, 1 core"]
        sampled = best["metaops sampler (policy incl.)"]
        for key in (
            "mj_step, 1 core",
            "mj_step x2 (ideal)",
            "mujoco.batch, 2 threads",
            "mujoco.rollout, 2 threads",
            "metaops sampler (policy incl.)",
        ):
            rows.append((name, key, best[key], sampled / best[key]))
    header = f"| env ({args.num_tasks} tasks x {args.episodes} episodes) | stepping | env-steps/s | sampler / this |"
    lines = [header, "|---|---|---:|---:|"]
    for name, key, value, ratio in rows:
        lines.append(f"| {name} | {key} | {value:,.0f} | {ratio:.2f} |")
    table = "\n".join(lines)
    print(table)
    if args.markdown:
        command = "python " + " ".join(sys.argv)
        info = (
            f"{platform.python_version()}, torch {torch.__version__}, mujoco {mujoco.__version__}, "
            f"{os.cpu_count()} CPUs, load average before the run {os.getloadavg()[0]:.2f}"
        )
        with open(args.markdown, "w") as f:
            f.write(f"Command: `{command}`\n\nSetup: {info}\n\n{table}\n")


if __name__ == "__main__":
    main()
