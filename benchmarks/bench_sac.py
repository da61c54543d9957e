"""Single-task SAC on gymnasium's HalfCheetah-v5: metaops.rl against stable-baselines3's SAC.

Both use SB3's SAC defaults: Adam with lr 3e-4 for actor, critics and temperature, replay buffer
of 1e6, batch 256, tau 0.005, gamma 0.99, two 256-256 ReLU networks per critic and for the actor,
log-std clamped to [-20, 2], learning_starts 100 (uniform random actions before), one gradient
step per environment step, automatic entropy tuning with target -act_dim and initial alpha 1.

The metaops loop is written out below (`MetaopsSAC`): a `ReplayBuffer` with one task, noise drawn
from an explicit generator, `sac_loss` (critic, actor and temperature losses in one backward
pass), one fused Adam over all parameters (Adam is elementwise, so this equals SB3's three Adams) and
`polyak_update` of the target critic. One difference remains: SB3 evaluates the actor loss with
the critic it has just updated, metaops with the critic before the step.

Two commands:

* `timing`: wall time per 1,000 gradient updates (`train`: sample, losses, backward, Adam,
  Polyak) and per 1,000 environment steps of the full loop (`learn`: act, step MuJoCo, store,
  update), for torch threads 1 and 2, the implementations and thread counts interleaved and
  repeated because the machine may be shared; the median and the minimum are reported.
* `train`: one training run of `--steps` environment steps for one implementation and seed,
  then `--eval-episodes` deterministic episodes (the mean action); appends a JSON line to `--out`.
  With `--checkpoint PATH` the run saves its whole state there (atomically) every
  `--checkpoint-every` steps, always at an episode boundary, and the same command resumes from it:
  a metaops run resumes exactly (the same numbers as a run never stopped), and so does an SB3 run,
  whose model, optimizers, replay buffer, random generators and environment are restored piece by
  piece (tests/benchmarks/test_bench_sac.py checks both). Ctrl-C stops at once; the run resumes
  from its last checkpoint.

Usage:
    python benchmarks/bench_sac.py timing [--repeats 5] [--threads 1 2] [--updates 1000]
    python benchmarks/bench_sac.py train --impl metaops --seed 0 --steps 100000 --eval-at 25000 50000 75000 \
        --out runs/sac.jsonl [--checkpoint runs/sac_metaops_s0.pt --checkpoint-every 10000]
    python benchmarks/bench_sac.py summary runs/sac.jsonl [more.jsonl ...] [--plot benchmarks/figures/sac_cheetah.png]
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import statistics
import time
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch

from metaops.experiment import load_run_checkpoint, save_checkpoint
from metaops.rl import ReplayBuffer, SquashedGaussianMLPPolicy, Transitions, TwinQCritic, polyak_update, sac_loss

ENV = "HalfCheetah-v5"
HP = dict(lr=3e-4, buffer_size=1_000_000, batch_size=256, tau=0.005, gamma=0.99, learning_starts=100,
          hidden=(256, 256))


def make_env(max_episode_steps: int | None = None) -> gym.Env:
    """HalfCheetah-v5 with its 1,000-step time limit, or a shorter one (the tests use 200)."""
    return gym.make(ENV, max_episode_steps=max_episode_steps)


def env_state(env: gym.Env) -> dict:
    """What a MuJoCo locomotion environment needs to continue exactly, taken right after a reset.

    Joint positions and velocities (the observation is a function of them), and the generators
    of the reset noise and of the action space. Taken only at an episode boundary: mid-episode
    state (the time-limit counter, the solver's warm start) is not saved.
    """
    unwrapped = env.unwrapped
    return {"qpos": torch.from_numpy(unwrapped.data.qpos.copy()), "qvel": torch.from_numpy(unwrapped.data.qvel.copy()),
            "np_random": unwrapped.np_random.bit_generator.state,
            "action_space": env.action_space.np_random.bit_generator.state}


def restore_env_state(env: gym.Env, state: dict, reset) -> None:
    """Puts `env_state`'s state back into an environment that `reset()` has just reset."""
    reset()  # a fresh episode (time limit at 0, solver warm start cleared), as at the boundary saved
    unwrapped = env.unwrapped
    unwrapped.set_state(state["qpos"].numpy(), state["qvel"].numpy())
    unwrapped.np_random.bit_generator.state = state["np_random"]
    env.action_space.np_random.bit_generator.state = state["action_space"]


def numpy_rng_state() -> tuple:
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached


def set_numpy_rng_state(state: tuple) -> None:
    name, keys, pos, has_gauss, cached = state
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))


class MetaopsSAC:
    """SB3-equivalent SAC written with metaops.rl (one task, one environment)."""

    def __init__(self, env: gym.Env, seed: int) -> None:
        obs_dim, act_dim = env.observation_space.shape[0], env.action_space.shape[0]
        low, high = env.action_space.low, env.action_space.high
        torch.manual_seed(seed)
        self.env, self.seed = env, seed
        self.policy = SquashedGaussianMLPPolicy(obs_dim, act_dim, hidden_sizes=HP["hidden"],
                                                action_bounds=(low.tolist(), high.tolist()))
        self.critic = TwinQCritic(obs_dim, act_dim, hidden_sizes=HP["hidden"])
        self.params = {"policy": dict(self.policy.named_parameters()), "critic": dict(self.critic.named_parameters()),
                       "log_alpha": torch.zeros((), requires_grad=True)}  # alpha = 1 at the start, as in SB3
        self.target = {k: v.detach().clone() for k, v in self.params["critic"].items()}
        leaves = [*self.params["policy"].values(), *self.params["critic"].values(), self.params["log_alpha"]]
        self.optimizer = torch.optim.Adam(leaves, lr=HP["lr"], fused=True)  # one kernel for every leaf
        self.buffer = ReplayBuffer(1, HP["buffer_size"], obs_shape=obs_dim, act_shape=act_dim, seed=seed)
        self.noise = torch.Generator().manual_seed(seed + 1)
        self.act_dim = act_dim
        env.action_space.seed(seed)
        self.obs, _ = env.reset(seed=seed)
        self.steps, self.episode_return, self.episode_steps, self.returns = 0, 0.0, 0, []
        self.last_aux: dict[str, float] = {}

    def act(self, obs: np.ndarray, deterministic: bool = False) -> np.ndarray:
        with torch.no_grad():
            dist = self.policy(torch.as_tensor(obs, dtype=torch.float32))
            if deterministic:
                return self.policy.mode(dist).numpy()
            return self.policy.sample(dist, torch.randn(self.act_dim, generator=self.noise))[0].numpy()

    def train(self, gradient_steps: int) -> None:
        """SB3's `train(gradient_steps, batch_size)`: sample, losses, one backward, Adam, Polyak."""
        b = HP["batch_size"]
        for _ in range(gradient_steps):
            batch = Transitions(*(x[0] for x in self.buffer.sample(b)))  # (1, b, ...) -> (b, ...): the only task
            noise = torch.randn(2, b, self.act_dim, generator=self.noise)
            loss, aux = sac_loss(self.policy, self.critic, self.params, self.target, batch, noise[0], noise[1],
                                 gamma=HP["gamma"])
            self.optimizer.zero_grad()
            loss.backward()
            self.optimizer.step()
            self.target = polyak_update(self.target, self.params["critic"], tau=HP["tau"])
        self.last_aux = {k: float(v) for k, v in aux.items()}

    def learn(self, steps: int) -> None:
        """SB3's `learn`: act (random before learning_starts), step, store, one update per step."""
        for _ in range(steps):
            if self.steps < HP["learning_starts"]:
                action = self.env.action_space.sample()
            else:
                action = self.act(self.obs)
            next_obs, reward, terminated, truncated, _ = self.env.step(action)
            self.buffer.add(self.obs[None], action[None], np.array([reward]), next_obs[None], np.array([terminated]))
            self.episode_return += float(reward)
            self.episode_steps += 1
            self.obs = next_obs
            if terminated or truncated:
                self.returns.append(self.episode_return)
                self.obs, _ = self.env.reset()
                self.episode_return, self.episode_steps = 0.0, 0
            self.steps += 1
            if self.steps > HP["learning_starts"]:
                self.train(1)

    def state_dict(self) -> dict:
        """The whole training state, at an episode boundary (see `env_state`)."""
        if self.episode_steps:
            raise RuntimeError(f"MetaopsSAC.state_dict: {self.episode_steps} steps into an episode; save at a boundary")
        return {"params": {k: ({n: p.detach() for n, p in v.items()} if isinstance(v, dict) else v.detach())
                           for k, v in self.params.items()},
                "target": self.target, "optimizer": self.optimizer.state_dict(), "buffer": self.buffer.state_dict(),
                "noise": self.noise.get_state(), "env": env_state(self.env), "obs": torch.from_numpy(self.obs),
                "steps": self.steps, "returns": list(self.returns), "last_aux": dict(self.last_aux)}

    def load_state_dict(self, state: dict) -> None:
        with torch.no_grad():
            for group in ("policy", "critic"):
                for name, p in self.params[group].items():
                    p.copy_(state["params"][group][name])
            self.params["log_alpha"].copy_(state["params"]["log_alpha"])
        self.target = {k: v.clone() for k, v in state["target"].items()}
        self.optimizer.load_state_dict(state["optimizer"])
        self.buffer.load_state_dict(state["buffer"])
        self.noise.set_state(state["noise"])
        restore_env_state(self.env, state["env"], self.env.reset)
        self.obs = state["obs"].numpy()
        self.steps, self.returns, self.last_aux = state["steps"], list(state["returns"]), dict(state["last_aux"])
        self.episode_return, self.episode_steps = 0.0, 0

    def evaluate(self, env: gym.Env, episodes: int, seed: int) -> list[float]:
        returns = []
        for i in range(episodes):
            obs, _ = env.reset(seed=seed + i)
            total, done = 0.0, False
            while not done:
                obs, reward, terminated, truncated, _ = env.step(self.act(obs, deterministic=True))
                total += float(reward)
                done = terminated or truncated
            returns.append(total)
        return returns


def make_sb3(env: gym.Env, seed: int):
    from stable_baselines3 import SAC
    from stable_baselines3.common.monitor import Monitor

    return SAC("MlpPolicy", Monitor(env), learning_rate=HP["lr"], buffer_size=HP["buffer_size"],
               learning_starts=HP["learning_starts"], batch_size=HP["batch_size"], tau=HP["tau"],
               gamma=HP["gamma"], train_freq=1, gradient_steps=1, ent_coef="auto",
               policy_kwargs=dict(net_arch=list(HP["hidden"])), seed=seed, device="cpu", verbose=0)


SB3_BUFFER_FIELDS = ("observations", "next_observations", "actions", "rewards", "dones", "timeouts")


def sb3_state(model) -> dict:
    """An SB3 SAC's whole training state at an episode boundary, as tensors (no pickles).

    Parameters and optimizer states (`get_parameters`), the entropy coefficient, the counters,
    the filled part of the replay buffer, the torch / numpy / random generators (SB3 samples
    actions with torch's and replay batches with numpy's global generator), the environment and
    the Monitor's episode records.
    """
    monitor = model.get_env().envs[0]
    if monitor.rewards:
        raise RuntimeError(f"sb3_state: {len(monitor.rewards)} steps into an episode; save at a boundary")
    buffer, size = model.replay_buffer, model.replay_buffer.size()
    return {"parameters": model.get_parameters(), "log_ent_coef": model.log_ent_coef.detach().clone(),
            "num_timesteps": model.num_timesteps, "n_updates": model._n_updates, "episode_num": model._episode_num,
            "buffer": {f: torch.from_numpy(getattr(buffer, f)[:size].copy()) for f in SB3_BUFFER_FIELDS},
            "buffer_pos": buffer.pos, "buffer_full": buffer.full,
            "torch_rng": torch.get_rng_state(), "numpy_rng": numpy_rng_state(), "random_rng": random.getstate(),
            "env": env_state(monitor), "obs": torch.from_numpy(model._last_obs.copy()),
            "episode_returns": list(monitor.episode_returns), "episode_lengths": list(monitor.episode_lengths)}


def load_sb3_state(model, state: dict) -> None:
    model.set_parameters(state["parameters"], exact_match=True)
    with torch.no_grad():
        model.log_ent_coef.copy_(state["log_ent_coef"])
    model.num_timesteps, model._n_updates, model._episode_num = (state["num_timesteps"], state["n_updates"],
                                                                   state["episode_num"])
    buffer = model.replay_buffer
    for f in SB3_BUFFER_FIELDS:
        saved = state["buffer"][f].numpy()
        getattr(buffer, f)[: len(saved)] = saved
    buffer.pos, buffer.full = state["buffer_pos"], state["buffer_full"]
    vec_env = model.get_env()
    monitor = vec_env.envs[0]
    restore_env_state(monitor, state["env"], vec_env.reset)  # vec_env.reset also uses up SB3's pending reset seed
    monitor.episode_returns = list(state["episode_returns"])
    monitor.episode_lengths = list(state["episode_lengths"])
    monitor.episode_times = [0.0] * len(monitor.episode_returns)
    model._last_obs = state["obs"].numpy()
    torch.set_rng_state(state["torch_rng"])
    set_numpy_rng_state(state["numpy_rng"])
    random.setstate(state["random_rng"])


def sb3_evaluate(model, env: gym.Env, episodes: int, seed: int) -> list[float]:
    returns = []
    for i in range(episodes):
        obs, _ = env.reset(seed=seed + i)
        total, done = 0.0, False
        while not done:
            action, _ = model.predict(obs, deterministic=True)
            obs, reward, terminated, truncated, _ = env.step(action)
            total += float(reward)
            done = terminated or truncated
        returns.append(total)
    return returns


def timing(args: argparse.Namespace) -> None:
    """Interleaved wall (and process CPU) times per 1,000 updates and per 1,000 full-loop steps."""
    rows: dict[tuple[str, int, str], list[tuple[float, float]]] = {}
    torch.set_num_threads(1)
    ours, theirs = MetaopsSAC(gym.make(ENV), seed=0), make_sb3(gym.make(ENV), seed=0)
    ours.learn(args.warmup)  # fill the buffers a little and warm up both
    theirs.learn(args.warmup)
    n, per_1k = args.updates, 1000 / args.updates  # time n updates (steps), report seconds per 1,000
    impls = {
        "metaops": (lambda: ours.train(n), lambda: ours.learn(n)),
        "sb3": (lambda: theirs.train(n, HP["batch_size"]), lambda: theirs.learn(n, reset_num_timesteps=False)),
    }
    for repeat in range(args.repeats):
        for threads in args.threads:
            torch.set_num_threads(threads)
            order = list(impls) if repeat % 2 == 0 else list(impls)[::-1]
            for name in order:
                for what, fn in zip(("updates", "env steps + updates"), impls[name], strict=True):
                    start, cpu = time.perf_counter(), time.process_time()
                    fn()
                    took = ((time.perf_counter() - start) * per_1k, (time.process_time() - cpu) * per_1k)
                    rows.setdefault((name, threads, what), []).append(took)
                    print(f"repeat {repeat} threads {threads} {name:8s} {what:24s} per 1k: wall {took[0]:.2f} s "
                          f"cpu {took[1]:.2f} s", flush=True)
    print(f"\n{platform.processor() or platform.machine()}, torch {torch.__version__}, {args.repeats} repeats of "
          f"{n} updates (steps), interleaved; seconds per 1,000\n")
    print("| what | torch threads | implementation | wall s, median | wall s, min | process CPU s, median |")
    print("|---|---:|---|---:|---:|---:|")
    for (name, threads, what), times in sorted(rows.items(), key=lambda kv: (kv[0][2], kv[0][1], kv[0][0])):
        wall, cpu = [t[0] for t in times], [t[1] for t in times]
        print(f"| {what} | {threads} | {name} | {statistics.median(wall):.2f} | {min(wall):.2f} | "
              f"{statistics.median(cpu):.2f} |")


def train(args: argparse.Namespace) -> None:
    """Train one implementation and seed; evaluate at every milestone of `--eval-at` and at `--steps`.

    Each evaluation appends one JSON line to `--out` as soon as it is done, so a stopped run keeps
    the milestones it reached. With `--checkpoint`, the state is saved every `--checkpoint-every`
    steps and at every milestone, and a run started with an existing checkpoint continues from it
    (its recorded milestones are not repeated).
    """
    torch.set_num_threads(args.threads)
    episode = args.max_episode_steps or 1000
    if args.checkpoint and args.checkpoint_every % episode:
        raise SystemExit(f"--checkpoint-every {args.checkpoint_every} must be a multiple of the episode length "
                         f"{episode}: a checkpoint is taken at an episode boundary")
    milestones = sorted({m for m in args.eval_at if 0 < m < args.steps} | {args.steps})
    saves = set(range(args.checkpoint_every, args.steps, args.checkpoint_every)) if args.checkpoint else set()
    if args.checkpoint and any(m % episode for m in milestones):
        raise SystemExit(f"with --checkpoint, --steps and --eval-at must be multiples of the episode length {episode}")
    config = {"impl": args.impl, "seed": args.seed, "threads": args.threads,
              "max_episode_steps": args.max_episode_steps,
              **{k: list(v) if isinstance(v, tuple) else v for k, v in HP.items()}}
    env = make_env(args.max_episode_steps)
    if args.impl == "metaops":
        agent = MetaopsSAC(env, seed=args.seed)
        learn = agent.learn
        train_returns = lambda: list(agent.returns)
        evaluate = lambda env: agent.evaluate(env, args.eval_episodes, seed=10_000 + args.seed)
        get_state, set_state = agent.state_dict, agent.load_state_dict
    else:
        model = make_sb3(env, seed=args.seed)
        learn = lambda steps: model.learn(steps, reset_num_timesteps=False)
        train_returns = lambda: [float(r) for r in model.env.envs[0].get_episode_rewards()]
        evaluate = lambda env: sb3_evaluate(model, env, args.eval_episodes, seed=10_000 + args.seed)
        get_state, set_state = (lambda: sb3_state(model)), (lambda state: load_sb3_state(model, state))
    train_s, done = 0.0, 0
    if args.checkpoint and Path(args.checkpoint).exists():
        # the recipes' resume check: same settings, not beyond --steps ("iteration" counts environment steps here)
        saved = load_run_checkpoint(args.checkpoint, recipe="bench_sac", config=config, iterations=args.steps)
        set_state(saved["state"])
        train_s, done = saved["train_s"], saved["iteration"]
        print(f"resumed from {args.checkpoint} at {done} steps", flush=True)
        if done == args.steps:
            print(f"nothing to do: the run already has its {args.steps} steps (raise --steps to continue it)")
    for stop in sorted({s for s in saves | set(milestones) if s > done}):
        start = time.perf_counter()
        try:
            learn(stop - done)
        except KeyboardInterrupt:
            where = f"resume from {args.checkpoint} ({done} steps)" if args.checkpoint else "no --checkpoint to resume"
            raise SystemExit(f"stopped by Ctrl-C at about {done} + part of {stop - done} steps; {where}") from None
        train_s, done = train_s + time.perf_counter() - start, stop
        if args.checkpoint:
            state = {"recipe": "bench_sac", "config": config, "iteration": done, "train_s": train_s,
                     "state": get_state()}
            save_checkpoint(args.checkpoint, state)
        if stop not in milestones:
            continue
        eval_returns = evaluate(make_env(args.max_episode_steps))
        record = {"impl": args.impl, "seed": args.seed, "steps": stop, "threads": args.threads,
                  "train_s": round(train_s, 1), "eval_mean": float(np.mean(eval_returns)),
                  "eval_returns": eval_returns, "train_returns": train_returns()}
        print(json.dumps({k: v for k, v in record.items() if k != "train_returns"}), flush=True)
        if args.out:
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            with open(args.out, "a") as f:
                f.write(json.dumps(record) + "\n")


def summary(args: argparse.Namespace) -> None:
    """One row per implementation and milestone: mean, spread and per-seed evaluation returns; optional figure."""
    records = [json.loads(line) for path in args.paths for line in Path(path).read_text().splitlines() if line.strip()]
    seen = {(r["impl"], r["seed"], r["steps"]) for r in records}
    if len(seen) < len(records):
        raise SystemExit("summary: the files hold the same (implementation, seed, steps) more than once; "
                         "pass each run's results once")
    print(
        "| implementation | steps | seeds | eval return, mean | std over seeds | per seed | last 5 training episodes "
        "(mean of seeds) | train wall s (mean) |"
    )
    print("|---|---:|---:|---:|---:|---|---:|---:|")
    curves = {}
    for impl in sorted({r["impl"] for r in records}):
        for steps in sorted({r["steps"] for r in records if r["impl"] == impl}):
            rs = sorted((r for r in records if r["impl"] == impl and r["steps"] == steps), key=lambda r: r["seed"])
            evals = np.array([r["eval_mean"] for r in rs])
            per_seed = ", ".join(f"{r['eval_mean']:.0f} (s{r['seed']})" for r in rs)
            last5 = np.mean([np.mean(r["train_returns"][-5:]) for r in rs])
            spread = f"{evals.std(ddof=1):.0f}" if len(rs) > 1 else ""
            print(
                f"| {impl} | {steps} | {len(rs)} | {evals.mean():.0f} | {spread} | {per_seed} | {last5:.0f} | "
                f"{np.mean([r['train_s'] for r in rs]):.0f} |"
            )
            curves.setdefault(impl, []).append((steps, evals))
    if {"metaops", "sb3"} <= set(curves):
        print("\n| steps | metaops - sb3, mean of seeds | standard error (Welch) | seeds |")
        print("|---:|---:|---:|---|")
        theirs = dict(curves["sb3"])
        for steps, ours in curves["metaops"]:
            if steps in theirs and len(ours) > 1 and len(theirs[steps]) > 1:
                other = theirs[steps]
                error = (ours.var(ddof=1) / len(ours) + other.var(ddof=1) / len(other)) ** 0.5
                print(f"| {steps} | {ours.mean() - other.mean():+.0f} | {error:.0f} | {len(ours)} + {len(other)} |")
    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 4))
        for i, (impl, points) in enumerate(curves.items()):
            color = f"C{i}"
            ax.plot([s for s, _ in points], [e.mean() for _, e in points], color=color, marker="o",
                    label=f"{impl} (mean of seeds)")
            for s, e in points:
                ax.scatter([s] * len(e), e, color=color, alpha=0.35, s=12)
        ax.set_xlabel("environment steps")
        ax.set_ylabel("deterministic evaluation return")
        ax.set_title(f"SAC on {ENV}: metaops.rl and stable-baselines3")
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        Path(args.plot).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(args.plot, dpi=120)
        print(f"figure: {args.plot}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("timing")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--updates", type=int, default=1000, help="updates (steps) timed per measurement")
    p.add_argument("--warmup", type=int, default=300, help="environment steps before timing (incl. updates)")
    p.set_defaults(fn=timing)
    p = sub.add_parser("train")
    p.add_argument("--impl", choices=["metaops", "sb3"], required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=30_000)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--eval-episodes", type=int, default=5)
    p.add_argument("--eval-at", type=int, nargs="*", default=[],
                   help="also evaluate (and append a line) after these many environment steps")
    p.add_argument("--out", type=str, default="")
    p.add_argument("--checkpoint", type=str, default="",
                   help="save the run's state here and resume from it when it exists (exact; see the module doc)")
    p.add_argument("--checkpoint-every", type=int, default=10_000,
                   help="environment steps between checkpoints; a multiple of the episode length")
    p.add_argument("--max-episode-steps", type=int, default=None,
                   help="shorter episodes than HalfCheetah's 1,000 steps (for tests)")
    p.set_defaults(fn=train)
    p = sub.add_parser("summary")
    p.add_argument("paths", nargs="+", help="JSON-lines files written by `train --out` (e.g. one per machine)")
    p.add_argument("--plot", type=str, default="", help="also save a figure of the evaluation returns here (PNG)")
    p.set_defaults(fn=summary)
    args = parser.parse_args()
    args.fn(args)


if __name__ == "__main__":
    main()
