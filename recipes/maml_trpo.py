# Docs: docs/recipes/maml_trpo.md (site page: recipes/maml_trpo/)
"""MAML-TRPO for meta-reinforcement learning (Finn, Abbeel, Levine, ICML 2017).

Inner step: policy-gradient steps on pre-update episodes with a selectable estimator (DiCE, LVC
or the score function), a linear feature baseline and GAE. Outer step: one TRPO step on the
meta-parameters, maximising the likelihood-ratio surrogate of the adapted policies on episodes
they sampled, under a KL trust region between the adapted policies before and after the update.

Run ``python -m recipes.maml_trpo --help`` for the options and
``python -m recipes.maml_trpo_eval --run-dir <out_dir>`` to evaluate a saved meta-policy.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import torch
import tyro
from torch import Tensor, nn
from torch.func import functional_call, vmap

import metaops as mo
from metaops import envs, estimators, rl
from metaops.experiment import (
    RunLogger,
    check_positive,
    load_run_checkpoint,
    mean_confidence_interval,
    plot_learning_curve,
    save_checkpoint,
    save_json,
)

ENVS = {"navigation": "Navigation2D", "halfcheetah-vel": "HalfCheetahVel", "halfcheetah-dir": "HalfCheetahDir"}
"""``--env`` choices -> names in [metaops.envs.env_names][]."""


@dataclass
class Args:
    env: Literal["navigation", "halfcheetah-vel", "halfcheetah-dir"] = "navigation"
    """task family: 2D navigation (Navigation2D), HalfCheetahVel or HalfCheetahDir"""
    out_dir: str = "runs/maml_trpo"
    """run directory: config, metrics CSV, TensorBoard events, checkpoint, evaluation table and PNGs"""
    seed: int = 0
    """seed of the policy initialisation, the task stream and all sampling noise"""
    iterations: int = 500
    """meta-iterations (TRPO meta-updates)"""
    meta_batch: int | None = None
    """tasks per meta-update; None: the MAML paper's 20 for navigation, 40 otherwise"""
    episodes: int = 20
    """episodes per task, both before (per inner step) and after adaptation"""
    horizon: int | None = None
    """episode length; None: the environment's (100 for navigation, 200 for HalfCheetah)"""
    hidden: tuple[int, ...] = (100, 100)
    """hidden layer widths of the Gaussian MLP policy (ReLU)"""
    estimator: Literal["dice", "lvc", "score-function"] = "dice"
    """inner-step surrogate: same gradient, different Hessian (see the docs page)"""
    dice_decay: float = 1.0
    """Loaded-DiCE decay for --estimator dice: 1 is exact DiCE, 0 has the curvature of LVC"""
    inner_steps: int = 1
    """inner policy-gradient steps, re-sampling episodes with the adapted policy after each"""
    inner_lr: float = 0.1
    """inner SGD step size (on per-task normalised advantages)"""
    first_order: bool = False
    """drop the second-order terms of the inner step (metaops.inner.first_order)"""
    gamma: float = 0.99
    """discount"""
    gae_lambda: float = 1.0
    """GAE lambda (1: Monte Carlo returns minus the linear feature baseline)"""
    max_kl: float = 0.01
    """TRPO trust-region radius"""
    cg_steps: int = 10
    """conjugate-gradient iterations of the TRPO step"""
    cg_damping: float = 1e-5
    """damping added to the Fisher matrix"""
    backtrack_ratio: float = 0.8
    """line-search shrink factor"""
    max_backtracks: int = 15
    """line-search candidates"""
    threads: int = 1
    """torch intra-op threads for the meta-update (one is the fast choice on a busy machine)"""
    physics_threads: int = 2
    """MuJoCo stepping threads (ignored for navigation)"""
    eval_tasks: int = 40
    """held-out tasks of the final evaluation (0: skip it)"""
    eval_steps: int = 3
    """the final evaluation adapts for 0, 1, ..., eval_steps gradient steps"""
    eval_seed: int = 1_000
    """seed of the held-out tasks and their episodes"""
    checkpoint_every: int = 10
    """iterations between checkpoints (one is always written at the end)"""
    resume: bool = True
    """continue from out_dir/checkpoint.pt if it exists (the configuration must match)"""
    compile: bool = False
    """compile the vmapped inner adaptation with metaops.compile_meta_step (the compile time is logged)"""
    progress: bool = True
    """show a progress bar"""
    tensorboard: bool = True
    """write TensorBoard event files"""


RUN_CONTROL = ("out_dir", "iterations", "checkpoint_every", "resume", "compile", "progress", "tensorboard",
               "threads", "physics_threads", "eval_tasks", "eval_steps", "eval_seed")
"""Fields a resumed run may change; every other field must match the checkpoint's."""

FIELDS = ["return/pre", "return/post", "trpo/surrogate", "trpo/improvement", "trpo/kl", "trpo/backtracks",
          "trpo/accepted", "policy/std", "env_steps", "time/sample_s", "time/update_s"]
"""CSV/TensorBoard columns, one row per meta-iteration (see the docs page)."""


def validate(args: Args) -> None:
    check_positive(args, "iterations", "episodes", "inner_steps", "inner_lr", "max_kl", "cg_steps",
                   "max_backtracks", "threads", "physics_threads", "checkpoint_every")
    if args.meta_batch is not None and args.meta_batch < 1:
        raise ValueError(f"meta_batch must be positive, got {args.meta_batch}")
    if args.horizon is not None and args.horizon < 1:
        raise ValueError(f"horizon must be positive, got {args.horizon}")
    if args.eval_tasks == 1 or args.eval_tasks < 0 or args.eval_steps < 0:
        raise ValueError(f"need eval_tasks = 0 or >= 2 and eval_steps >= 0, got {args.eval_tasks}, {args.eval_steps}")


def make_policy(env: envs.BatchedEnv, hidden: tuple[int, ...]) -> rl.GaussianMLPPolicy:
    return rl.GaussianMLPPolicy(env.observation_dim, env.action_dim, hidden_sizes=hidden, activation=nn.ReLU)


def process_episodes(batch: envs.EpisodeBatch, *, gamma: float, gae_lambda: float) -> tuple[Tensor, ...]:
    """(observations, actions, advantages, mask), each `(task, episode, time, ...)`.

    Advantages: GAE on the linear feature baseline fitted per task (in float64) to the
    discounted returns, then normalised per task over its episodes and steps.
    """
    mask = batch.mask
    returns = rl.discounted_returns(batch.rewards.double(), gamma=gamma, mask=mask)
    coeffs = rl.fit_linear_baseline(batch.observations.double(), returns, mask=mask)  # (task, features)
    values = rl.predict_linear_baseline(coeffs, batch.observations.double()).float()
    advantages = rl.gae(batch.rewards, values, gamma=gamma, gae_lambda=gae_lambda, mask=mask)
    advantages = rl.normalize_advantages(advantages, mask=mask, dim=(-2, -1))
    return batch.observations, batch.actions, advantages, mask


def make_inner_loss(policy: nn.Module, estimator: str, *, dice_decay: float = 1.0):
    """loss_fn(params, batch) of one task: minus the estimator's surrogate, per real step.

    All three surrogates have the same gradient (the policy gradient with these advantages);
    they differ in the second-order terms that the meta-gradient sees (see the docs page).
    """

    def loss_fn(params, batch):
        obs, actions, advantages, mask = batch  # (episode, time, ...)
        log_probs = policy.log_prob(functional_call(policy, params, (obs,)), actions)  # recomputed from params
        if estimator == "dice":  # Loaded-DiCE form; decay 1 == DiCE with a baseline (all Hessian terms)
            objective = estimators.loaded_dice_objective(log_probs, advantages, gamma=1.0, decay=dice_decay,
                                                         mask=mask)
        elif estimator == "lvc":
            objective = estimators.lvc_objective(log_probs, advantages, mask=mask)
        else:
            objective = estimators.score_function_objective(log_probs, advantages, mask=mask)
        return -objective.sum() / mask.sum()

    return loss_fn


def per_task_log_probs(policy: nn.Module, params, obs: Tensor, actions: Tensor) -> Tensor:
    """log pi(a|s) under per-task params (leading task dim), `(task, episode, time)`."""
    return vmap(lambda p, o, a: policy.log_prob(functional_call(policy, p, (o,)), a))(params, obs, actions)


def adaptation_curve(policy, params, env, tasks, loss_fn, *, steps: int, inner_lr: float, gamma: float,
                     gae_lambda: float, horizon: int, generator: torch.Generator) -> Tensor:
    """Mean episode return per task after 0..steps inner steps (re-sampling after each): `(steps + 1, task)`."""
    params = {k: v.detach().expand(len(tasks), *v.shape) for k, v in params.items()}  # one copy per task
    one_step = lambda p, d: mo.inner.adapt(loss_fn, p, d, mo.inner.sgd(inner_lr), steps=1)
    curve = []
    for k in range(steps + 1):
        batch = envs.sample_episodes(env, policy, params, tasks, generator=generator, horizon=horizon)
        curve.append(batch.returns.mean(-1))
        if k < steps:
            data = process_episodes(batch, gamma=gamma, gae_lambda=gae_lambda)
            params = mo.tree.stop_gradient(vmap(one_step)(params, data))
    return torch.stack(curve)


def main(args: Args) -> dict[str, float]:
    validate(args)
    out = Path(args.out_dir)
    env_name = ENVS[args.env]
    meta_batch = args.meta_batch or (20 if args.env == "navigation" else 40)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    g = torch.Generator().manual_seed(args.seed)  # tasks, reset seeds and action noise
    tasks_dist = envs.task_distribution(env_name)
    env = envs.make_batched(env_name, num_tasks=meta_batch, episodes_per_task=args.episodes,
                            num_threads=args.physics_threads)
    horizon = args.horizon or env.horizon
    policy = make_policy(env, args.hidden)
    loss_fn = make_inner_loss(policy, args.estimator, dice_decay=args.dice_decay)

    def sample(params, tasks) -> envs.EpisodeBatch:
        return envs.sample_episodes(env, policy, params, tasks, generator=g, horizon=horizon)

    # --- the inner loop: theta -> per-task adapted params, differentiable in theta --------------
    def adapt_task(params, batches):  # batches[k]: this task's data sampled with the k-step-adapted policy
        inner_opt = mo.inner.sgd(args.inner_lr)
        if args.first_order:
            inner_opt = mo.inner.first_order(inner_opt)
        for batch in batches:
            params = mo.inner.adapt(loss_fn, params, batch, inner_opt, steps=1)
        return params

    def adapt_all(params, batches):  # all tasks at once
        return vmap(adapt_task, in_dims=(None, 0))(params, batches)

    adapt_fn = mo.compile_meta_step(adapt_all) if args.compile else adapt_all

    # --- logging, checkpointing and exact resumption -------------------------------------------
    start, log_rows, env_steps = 0, 0, 0
    ckpt_path = out / "checkpoint.pt"
    if args.resume and ckpt_path.exists():
        ckpt = load_run_checkpoint(ckpt_path, recipe="maml_trpo", config=asdict(args), ignore=RUN_CONTROL,
                                   iterations=args.iterations)
        policy.load_state_dict(ckpt["policy"])
        g.set_state(ckpt["generator"])
        start, log_rows, env_steps = ckpt["iteration"], ckpt["log_rows"], ckpt["env_steps"]
    save_json(out / "config.json", asdict(args))
    logger = RunLogger(out, fields=FIELDS, total=args.iterations, initial=start, rows=log_rows,
                       tensorboard=args.tensorboard, progress=args.progress, desc=f"maml_trpo {args.env}")

    def checkpoint(iteration: int) -> None:
        save_checkpoint(ckpt_path, {
            "recipe": "maml_trpo", "config": asdict(args), "iteration": iteration, "policy": policy.state_dict(),
            "generator": g.get_state(), "log_rows": logger.rows, "env_steps": env_steps,
        })

    # --- meta-training ---------------------------------------------------------------------------
    train_start = time.perf_counter()
    for it in range(start, args.iterations):
        t0 = time.perf_counter()
        theta = mo.tree.stop_gradient(mo.nn.named_params(policy))
        tasks = tasks_dist.sample_tasks(meta_batch, generator=g)

        # 1. inner loop: sample with the current (adapted) policy, take a step, re-sample, ...
        params, batches, pre_returns = theta, [], None
        for _ in range(args.inner_steps):
            episodes = sample(params, tasks)
            pre_returns = episodes.returns.mean() if pre_returns is None else pre_returns
            batches.append(process_episodes(episodes, gamma=args.gamma, gae_lambda=args.gae_lambda))
            params = mo.tree.stop_gradient(adapt_fn(theta, batches))
        adapted = params  # per-task, leading task dim

        # 2. post-update episodes from the adapted policies, and their advantages
        post = sample(adapted, tasks)
        post_obs, post_actions, post_adv, post_mask = process_episodes(post, gamma=args.gamma,
                                                                       gae_lambda=args.gae_lambda)
        old_log_probs = per_task_log_probs(policy, adapted, post_obs, post_actions)
        env_steps += int(sum(b[3].sum() for b in batches) + post_mask.sum())
        t1 = time.perf_counter()

        # 3. outer TRPO step on theta, through the inner step(s)
        def surrogate_fn(theta):  # likelihood ratio of the adapted policies on post-update data, per real step
            log_probs = per_task_log_probs(policy, adapt_all(theta, batches), post_obs, post_actions)
            objective = estimators.likelihood_ratio_objective(log_probs, old_log_probs, post_adv, mask=post_mask)
            return (objective.sum(-1) / post_mask.sum((-2, -1))).mean()

        def kl_fn(theta):  # KL(adapted before the update || adapted at theta) on post-update states
            kl = vmap(lambda old, new, o, m: rl.mean_kl(policy, old, new, o, mask=m))(
                adapted, adapt_all(theta, batches), post_obs, post_mask)
            return kl.mean()

        new_theta, info = rl.trpo_step(surrogate_fn, kl_fn, theta, max_kl=args.max_kl, damping=args.cg_damping,
                                       cg_steps=args.cg_steps, backtrack_ratio=args.backtrack_ratio,
                                       max_backtracks=args.max_backtracks)
        with torch.no_grad():
            for name, p in policy.named_parameters():
                p.copy_(new_theta[name])
        t2 = time.perf_counter()

        post_return = post.returns.mean().item()
        logger.log(it + 1, {
            "return/pre": pre_returns.item(), "return/post": post_return, "trpo/surrogate": info.surrogate_before,
            "trpo/improvement": info.improvement, "trpo/kl": info.kl, "trpo/backtracks": info.backtracks,
            "trpo/accepted": float(info.accepted), "policy/std": policy.log_std.exp().mean().item(),
            "env_steps": env_steps, "time/sample_s": t1 - t0, "time/update_s": t2 - t1,
        })
        logger.advance(1, pre=pre_returns.item(), post=post_return)
        if args.compile and it == start + 1:
            logger.write(f"compile_meta_step: compiled={adapt_fn.compiled}, took {adapt_fn.compile_seconds} s"
                         + ("" if adapt_fn.compiled else f" (eager fallback: {adapt_fn.fallback_reason})"))
        if (it + 1) % args.checkpoint_every == 0 or it + 1 == args.iterations:
            checkpoint(it + 1)
    train_seconds = time.perf_counter() - train_start

    # --- metrics and learning curve --------------------------------------------------------------
    history = logger.history()
    last = slice(-min(10, len(history["step"])), None)
    metrics: dict[str, float] = {
        "return_pre_last10": sum(history["return/pre"][last]) / len(history["return/pre"][last]),
        "return_post_last10": sum(history["return/post"][last]) / len(history["return/post"][last]),
        "env_steps": float(env_steps),
        "train_seconds": train_seconds,
    }
    if args.compile and isinstance(adapt_fn, mo.CompiledMetaStep):
        metrics["compile_seconds"] = adapt_fn.compile_seconds if adapt_fn.compile_seconds is not None else float("nan")
    plot_learning_curve(out / "learning_curve.png", {
        "pre-update (0 steps)": (history["step"], history["return/pre"]),
        f"post-update ({args.inner_steps} step(s))": (history["step"], history["return/post"]),
    }, title=f"MAML-TRPO ({args.estimator}), {env_name}", ylabel="mean episode return", log_y=False)

    # --- final evaluation: adapt the meta-policy to held-out tasks for 0..eval_steps steps -------
    if args.eval_tasks:
        table = evaluate(policy, env_name, loss_fn, args, num_tasks=args.eval_tasks, steps=args.eval_steps,
                         seed=args.eval_seed, horizon=horizon)
        write_evaluation(out, table, title=f"MAML-TRPO ({args.estimator}), {env_name}")
        for k, (mean, ci) in enumerate(table):
            metrics[f"eval_return_{k}"], metrics[f"eval_return_{k}_ci95"] = mean, ci
    save_json(out / "metrics.json", metrics)
    logger.write(", ".join(f"{k} {v:.3f}" for k, v in metrics.items()))
    logger.close()
    return metrics


def evaluate(policy, env_name: str, loss_fn, args: Args, *, num_tasks: int, steps: int, seed: int,
             horizon: int) -> list[tuple[float, float]]:
    """(mean, 95% CI half-width) over held-out tasks of the return after 0..steps inner steps."""
    g = torch.Generator().manual_seed(seed)
    tasks = envs.task_distribution(env_name).sample_tasks(num_tasks, generator=g)
    env = envs.make_batched(env_name, num_tasks=num_tasks, episodes_per_task=args.episodes,
                            num_threads=args.physics_threads)
    curve = adaptation_curve(policy, mo.nn.named_params(policy), env, tasks, loss_fn, steps=steps,
                             inner_lr=args.inner_lr, gamma=args.gamma, gae_lambda=args.gae_lambda,
                             horizon=horizon, generator=g)
    return [mean_confidence_interval(row) for row in curve]


def write_evaluation(out: Path, table: list[tuple[float, float]], *, title: str) -> None:
    """eval.csv, eval.md and eval.png: return vs adaptation steps."""
    out.mkdir(parents=True, exist_ok=True)
    lines = ["steps,return_mean,return_ci95", *[f"{k},{m:.4f},{c:.4f}" for k, (m, c) in enumerate(table)]]
    (out / "eval.csv").write_text("\n".join(lines) + "\n")
    md = ["| adaptation steps | mean return | 95% CI |", "|---:|---:|---:|",
          *[f"| {k} | {m:.2f} | ± {c:.2f} |" for k, (m, c) in enumerate(table)]]
    (out / "eval.md").write_text("\n".join(md) + "\n")
    steps = list(range(len(table)))
    plot_learning_curve(out / "eval.png", {
        "mean over held-out tasks": (steps, [m for m, _ in table]),
        "95% CI, lower": (steps, [m - c for m, c in table]),
        "95% CI, upper": (steps, [m + c for m, c in table]),
    }, title=title, xlabel="adaptation steps", ylabel="mean episode return", log_y=False)


if __name__ == "__main__":
    main(tyro.cli(Args))
