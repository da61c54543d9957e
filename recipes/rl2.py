# Docs: docs/recipes/rl2.md (site page: recipes/rl2/)
"""RL²: Fast Reinforcement Learning via Slow Reinforcement Learning (Duan et al., 2016), with PPO.

A GRU policy sees the observation, the previous action, the previous reward and a done flag,
and keeps its hidden state across the consecutive episodes of a trial of one task (reset
between trials): adaptation to a task happens in the hidden state, not in the weights. The
weights are trained by PPO over whole trials: the discount runs over the trial as over one
episode, GAE uses one linear feature baseline of the policy inputs fitted on the batch, and each
of several epochs of PPO-clip re-runs the GRU over every trial from the initial carry.

Run ``python -m recipes.rl2 --help`` for the options.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import torch
import tyro
from torch import Tensor

import metaops as mo
from metaops import envs, estimators, rl
from metaops.experiment import (
    RunLogger,
    check_positive,
    load_run_checkpoint,
    paired_gains,
    plot_learning_curve,
    save_checkpoint,
    save_json,
    write_adaptation_evaluation,
)

ENVS = envs.env_names()
"""``--env`` choices: exactly the names registered in metaops.envs ([metaops.envs.env_names][])."""
EnvName = Literal[ENVS]  # so that --help lists them and the CLI rejects any other name


@dataclass
class Args:
    env: EnvName = "Navigation2D"
    """task family, a name registered in metaops.envs (Navigation2D, HalfCheetahVel, AntGoal, ...)"""
    out_dir: str = "runs/rl2"
    """run directory: config, metrics CSV, TensorBoard events, checkpoint, evaluation table and PNGs"""
    seed: int = 0
    """seed of the policy initialisation, the task stream and all sampling noise"""
    iterations: int = 500
    """iterations (each: sample trials, fit the baseline, PPO epochs)"""
    meta_batch: int = 40
    """tasks per iteration"""
    trials: int = 2
    """parallel trials per task (each a fresh carry)"""
    episodes_per_trial: int = 2
    """consecutive episodes per trial, one carry throughout (the reference runs use 2 to 4)"""
    horizon: int | None = None
    """episode length; None: the environment's registered horizon (100 for Navigation2D)"""
    hidden: int = 64
    """GRU width"""
    init_std: float = 0.1
    """initial std of the policy as a fraction of the action half-range"""
    min_std: float = 1e-7
    """floor of the std as a fraction of the action half-range"""
    lr: float = 1e-3
    """Adam learning rate"""
    epochs: int = 5
    """PPO epochs per batch (one minibatch: every trial of the batch)"""
    clip: float = 0.2
    """PPO clip range epsilon"""
    entropy_coeff: float = 0.0
    """weight of the entropy bonus per step (garage's RL2PPO uses 0.02 on its own scale)"""
    max_grad_norm: float = 0.0
    """clip the gradient norm of each Adam step to this (0: no clipping)"""
    gamma: float = 0.99
    """discount, over the whole trial"""
    gae_lambda: float = 0.95
    """GAE lambda"""
    threads: int = 1
    """torch threads of the PPO epochs (sampling uses 1); 1 is fast on a busy machine, try 2 if idle"""
    physics_threads: int = 2
    """MuJoCo stepping threads (ignored for navigation)"""
    eval_tasks: int = 40
    """held-out tasks of the final evaluation (0: skip it)"""
    eval_seed: int = 1_000
    """seed of the held-out tasks and their trials"""
    checkpoint_every: int = 10
    """iterations between checkpoints (one is always written at the end)"""
    resume: bool = True
    """continue from out_dir/checkpoint.pt if it exists (the configuration must match)"""
    progress: bool = True
    """show a progress bar"""
    tensorboard: bool = True
    """write TensorBoard event files"""


RUN_CONTROL = ("out_dir", "iterations", "checkpoint_every", "resume", "progress", "tensorboard", "threads",
               "physics_threads", "eval_tasks", "eval_seed")
"""Fields a resumed run may change; every other field must match the checkpoint's."""


def fields(episodes_per_trial: int) -> list[str]:
    """CSV/TensorBoard columns, one row per iteration (see the docs page)."""
    return [*[f"return/episode_{k + 1}" for k in range(episodes_per_trial)], "return/trial", "gain/last_vs_first",
            "objective/before", "objective/after", "kl/approx", "clip_fraction", "policy/std", "policy/entropy",
            "env_steps", "time/sample_s", "time/update_s"]


def resolve(args: Args) -> Args:
    """A copy of ``args`` with the horizon filled in from the environment when None."""
    if args.env not in ENVS:  # the CLI checks this too; Args(env=...) from Python does not
        raise ValueError(f"unknown env {args.env!r}; the registered environments are {', '.join(ENVS)}")
    horizon = args.horizon
    if horizon is None:
        horizon = envs.make_batched(args.env, num_tasks=1, episodes_per_task=1, num_threads=1).horizon
    return Args(**{**asdict(args), "horizon": int(horizon)})


def validate(args: Args) -> None:
    check_positive(args, "iterations", "meta_batch", "trials", "episodes_per_trial", "horizon", "hidden", "init_std",
                   "min_std", "lr", "epochs", "clip", "threads", "physics_threads", "checkpoint_every")
    if args.min_std > args.init_std:
        raise ValueError(f"min_std ({args.min_std}) must not exceed init_std ({args.init_std})")
    if args.entropy_coeff < 0 or args.max_grad_norm < 0:
        raise ValueError(f"need entropy_coeff >= 0 and max_grad_norm >= 0, got {args.entropy_coeff}, "
                         f"{args.max_grad_norm}")
    if not 0 <= args.gamma <= 1 or not 0 <= args.gae_lambda <= 1:
        raise ValueError(f"gamma and gae_lambda must be in [0, 1], got {args.gamma}, {args.gae_lambda}")
    if args.eval_tasks == 1 or args.eval_tasks < 0:
        raise ValueError(f"need eval_tasks = 0 or >= 2, got {args.eval_tasks}")
    if args.eval_tasks and args.episodes_per_trial < 2:
        raise ValueError("the evaluation compares the episodes of a trial: need episodes_per_trial >= 2 "
                         "(or eval_tasks=0)")


def make_policy(env: envs.BatchedEnv, hidden: int, *, init_std: float = 0.1,
                min_std: float = 1e-7) -> rl.GaussianGRUPolicy:
    """GRU policy on inputs [obs, previous action, previous reward, done], mean squashed into the bounds."""
    bound = 10.0  # the normalised action space [-10, 10] of the MLP recipes: std init_std * 10 there
    return rl.GaussianGRUPolicy(env.observation_dim + env.action_dim + 2, env.action_dim, hidden_size=hidden,
                                init_log_std=math.log(init_std * bound), min_log_std=math.log(min_std * bound),
                                action_bounds=(env.action_low, env.action_high), normalized_bound=bound)


def advantages_of(inputs: Tensor, rewards: Tensor, mask: Tensor, *, gamma: float, gae_lambda: float) -> Tensor:
    """GAE over whole trials on one linear feature baseline of the policy inputs, normalised over the batch.

    Each trial is one row `1...1 0...0` of the `(task, trial, time)` batch, so the discount and
    GAE run across the episode boundaries inside a trial (RL²'s objective is the trial's return).
    The baseline is fitted once on all trials of the batch, on the features of the inputs and of
    the step within the trial: like the policy, it does not know the task (a fit per task on its
    few trials would be nearly in-sample interpolation of their returns).
    """
    flat = lambda x: x.reshape(1, -1, *x.shape[2:])  # every trial of every task in one group
    advantages = rl.linear_baseline_advantages(flat(inputs), flat(rewards), mask=flat(mask), gamma=gamma,
                                               gae_lambda=gae_lambda)
    return advantages.reshape(rewards.shape)


def masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    return (x * mask).sum() / mask.sum()


def main(args: Args) -> dict[str, float]:
    args = resolve(args)
    validate(args)
    out = Path(args.out_dir)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    g = torch.Generator().manual_seed(args.seed)  # tasks, reset seeds and action noise (the same in every process)
    group = mo.distributed.init()  # under torchrun: the processes that share each batch of tasks; else None
    main_process = mo.distributed.is_main_process()
    mine = mo.distributed.task_slice(args.meta_batch, group)  # this process's share of every batch
    num_mine = len(range(args.meta_batch)[mine])
    tasks_dist = envs.task_distribution(args.env)
    env = envs.make_batched(args.env, num_tasks=num_mine, episodes_per_task=args.trials,
                            num_threads=args.physics_threads)
    policy = make_policy(env, args.hidden, init_std=args.init_std, min_std=args.min_std)
    mo.distributed.broadcast_params(policy, group=group)
    half_range = torch.as_tensor((env.action_high - env.action_low) / 2, dtype=torch.float32)
    optimizer = torch.optim.Adam(policy.parameters(), lr=args.lr)
    E = args.episodes_per_trial

    def ppo_terms(batch: envs.TrialBatch, advantages: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(clipped objective per real step, entropy per real step, new log-probs): the GRU re-run over each trial."""
        dist, _ = rl.unroll(policy, mo.nn.named_params(policy), batch.inputs)  # from the initial carry
        log_probs = policy.log_prob(dist, batch.actions)
        clipped = estimators.ppo_clip_objective(log_probs, batch.log_probs, advantages, clip=args.clip,
                                                mask=batch.mask).sum() / batch.mask.sum()
        return clipped, masked_mean(policy.entropy(dist), batch.mask), log_probs

    # --- logging, checkpointing and exact resumption -------------------------------------------
    start, log_rows, env_steps = 0, 0, 0
    ckpt_path = out / "checkpoint.pt"
    ckpt = mo.distributed.on_main_process(  # the main process reads it, every process gets the state
        lambda: load_run_checkpoint(ckpt_path, recipe="rl2", config=asdict(args), ignore=RUN_CONTROL,
                                    iterations=args.iterations) if args.resume and ckpt_path.exists() else None,
        group=group)
    if ckpt is not None:
        policy.load_state_dict(ckpt["policy"])
        optimizer.load_state_dict(ckpt["optimizer"])
        g.set_state(ckpt["generator"])
        start, log_rows, env_steps = ckpt["iteration"], ckpt["log_rows"], ckpt["env_steps"]
        if main_process:
            print(f"resumed from {ckpt_path} at iteration {start}")
    if main_process:
        save_json(out / "config.json", asdict(args))
    logger = RunLogger(out, fields=fields(E), total=args.iterations, initial=start, rows=log_rows,
                       tensorboard=args.tensorboard, progress=args.progress, desc=f"rl2 {args.env}",
                       defer_interrupt=True)  # Ctrl-C: checkpoint, then stop (silent in other processes)

    def checkpoint(iteration: int) -> None:
        if not main_process:
            return
        save_checkpoint(ckpt_path, {
            "recipe": "rl2", "config": asdict(args), "iteration": iteration, "policy": policy.state_dict(),
            "optimizer": optimizer.state_dict(), "generator": g.get_state(), "log_rows": logger.rows,
            "env_steps": env_steps,
        })

    # --- training --------------------------------------------------------------------------------
    train_start = time.perf_counter()
    for it in range(start, args.iterations):
        # 1. trials of E consecutive episodes per task, one carry per trial
        t0 = time.perf_counter()
        tasks = tasks_dist.sample_tasks(args.meta_batch, generator=g)
        batch = envs.sample_trials(env, policy, mo.tree.stop_gradient(mo.nn.named_params(policy)), tasks[mine],
                                   episodes_per_trial=E, generator=g, horizon=args.horizon,  # this process's rows
                                   task_rows=mine, batch_tasks=args.meta_batch)  # of the whole batch's draws
        # the baseline is fitted on every task's trials (gathered from all processes), then each keeps its own
        whole = mo.distributed.gather_tasks((batch.inputs, batch.rewards, batch.mask), args.meta_batch, group)
        advantages = advantages_of(*whole, gamma=args.gamma, gae_lambda=args.gae_lambda)[mine]
        my_steps = batch.mask.sum()  # the PPO terms are means over this process's real steps
        env_steps += int(whole[2].sum())
        sample_s = time.perf_counter() - t0

        # 2. PPO epochs over whole trials (one minibatch), the GRU re-run from the initial carry each time
        t0 = time.perf_counter()
        params = list(policy.parameters())
        for epoch in range(args.epochs):
            clipped, entropy, _ = ppo_terms(batch, advantages)
            grads = torch.autograd.grad(-(clipped + args.entropy_coeff * entropy), params)
            # the mean over all processes' real steps: one all_reduce (none in one process)
            clipped, grads = mo.distributed.all_reduce_mean((clipped.detach(), grads), count=int(my_steps),
                                                            group=group)
            for param, grad in zip(params, grads):
                param.grad = grad
            if args.max_grad_norm > 0:
                torch.nn.utils.clip_grad_norm_(policy.parameters(), args.max_grad_norm)
            optimizer.step()
            if epoch == 0:
                objective_before = clipped.item()
        with torch.no_grad():  # statistics at the updated parameters
            objective_after, entropy, log_probs = ppo_terms(batch, advantages)
            log_ratio = log_probs - batch.log_probs
            approx_kl = masked_mean(torch.where(batch.mask > 0, -log_ratio, 0.0), batch.mask)
            clip_fraction = masked_mean(((log_ratio.exp() - 1).abs() > args.clip).float(), batch.mask)
            objective_after, entropy, approx_kl, clip_fraction = mo.distributed.all_reduce_mean(
                (objective_after, entropy, approx_kl, clip_fraction), count=int(my_steps), group=group)
            std = (policy(batch.inputs[0, 0, :1], policy.initial_carry((1,)))[0][1].exp() / half_range).mean()
        update_s = time.perf_counter() - t0

        returns = mo.distributed.all_reduce_mean(batch.returns.mean((0, 1)), count=num_mine, group=group)  # (E,):
        # the mean return of episode k of a trial, over all tasks
        logger.log(it + 1, {
            **{f"return/episode_{k + 1}": returns[k].item() for k in range(E)},
            "return/trial": returns.sum().item(), "gain/last_vs_first": (returns[-1] - returns[0]).item(),
            "objective/before": objective_before, "objective/after": objective_after.item(),
            "kl/approx": approx_kl.item(), "clip_fraction": clip_fraction.item(), "policy/std": std.item(),
            "policy/entropy": entropy.item(), "env_steps": env_steps, "time/sample_s": sample_s,
            "time/update_s": update_s,
        })
        logger.advance(1, first=returns[0].item(), last=returns[-1].item())
        stop = mo.distributed.any_process(logger.interrupted, group=group)  # all processes stop together
        if (it + 1) % args.checkpoint_every == 0 or it + 1 == args.iterations or stop:
            checkpoint(it + 1)
            if stop:
                logger.request_stop()
            logger.stop_if_interrupted(it + 1)  # after Ctrl-C: "interrupted: checkpoint at iteration N"
    logger.close()  # also gives Ctrl-C back: it stops the evaluation below at once
    env.close()
    train_seconds = time.perf_counter() - train_start

    # --- metrics and learning curve (against environment steps) ----------------------------------
    history = logger.history()
    last = slice(-min(10, len(history["step"])), None)
    mean = lambda xs: sum(xs) / len(xs)
    seconds = [s + u for s, u in zip(history["time/sample_s"], history["time/update_s"])]
    metrics: dict[str, float] = {
        **{f"return_episode_{k + 1}_last10": mean(history[f"return/episode_{k + 1}"][last]) for k in range(E)},
        "env_steps": float(env_steps),
        "train_seconds": train_seconds,
        "seconds_per_iteration_last10": mean(seconds[last]),
    }
    if not main_process:  # another process of a distributed run: the same training, no files, no evaluation
        return metrics
    plot_learning_curve(out / "learning_curve.png", {
        f"episode {k + 1} of a trial": (history["env_steps"], history[f"return/episode_{k + 1}"]) for k in range(E)
    }, title=f"RL², {args.env}", xlabel="environment steps", ylabel="mean episode return", log_y=False)

    # --- final evaluation: the return of episode 1, 2, ... of a trial on held-out tasks -----------
    if args.eval_tasks:
        curve = evaluate(policy, args, num_tasks=args.eval_tasks, seed=args.eval_seed)
        write_adaptation_evaluation(out, curve, title=f"RL², {args.env} (row k: episode k + 1 of a trial)")
        metrics.update(paired_gains(curve, prefix="eval_"))  # paired: episode k + 1 against episode 1, same tasks
    save_json(out / "metrics.json", metrics)
    logger.write(", ".join(f"{k} {v:.3f}" for k, v in metrics.items()))
    return metrics


def evaluate(policy: rl.GaussianGRUPolicy, args: Args, *, num_tasks: int, seed: int) -> Tensor:
    """Mean return of episode k + 1 of a trial on each held-out task, `(episodes_per_trial, task)`.

    ``args`` must be resolved. The tasks, reset seeds and action noise depend only on ``seed`` (the
    tasks are those of the other meta-RL recipes' held-out evaluation with the same seed); each task
    runs ``args.trials`` trials and row k is the mean return of their (k + 1)-th episodes: the RL²
    analogue of the return after k adaptation steps.
    """
    g = torch.Generator().manual_seed(seed)
    tasks = envs.task_distribution(args.env).sample_tasks(num_tasks, generator=g)
    env = envs.make_batched(args.env, num_tasks=num_tasks, episodes_per_task=args.trials,
                            num_threads=args.physics_threads)
    try:
        batch = envs.sample_trials(env, policy, mo.tree.stop_gradient(mo.nn.named_params(policy)), tasks,
                                   episodes_per_trial=args.episodes_per_trial, generator=g, horizon=args.horizon)
    finally:
        env.close()
    return batch.returns.mean(1).T  # (task, trial, episode) -> (episode, task)


if __name__ == "__main__":
    main(tyro.cli(Args))
