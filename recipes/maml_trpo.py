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

import math
import time
import warnings
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
    held_out_adaptation,
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
    """task family, a name registered in metaops.envs: 2D navigation (Navigation2D), HalfCheetahVel, ..."""
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
    """hidden layer widths of the Gaussian MLP policy"""
    policy: Literal["unbounded", "bounded"] = "unbounded"
    """unbounded: the MAML paper's ReLU MLP, raw mean, std 1 in action units; bounded: the ProMP/MAML
    reference code's tanh MLP, mean squashed into the action bounds, std in half-ranges (see the docs page)"""
    init_std: float = 0.1
    """--policy bounded: initial std as a fraction of the action half-range"""
    min_std: float = 0.01
    """--policy bounded: floor of the std as a fraction of the action half-range"""
    action_units: float = 10.0
    """--policy bounded: half-range of the normalised action space of the mean and std (10: the reference
    code's [-10, 10]; 1: rllab's [-1, 1], in which the MAML paper's inner step size 0.5 was tuned)"""
    estimator: Literal["dice", "lvc", "score-function"] = "dice"
    """inner-step surrogate: same gradient, different Hessian (see the docs page)"""
    dice_decay: float = 1.0
    """Loaded-DiCE decay for --estimator dice: 1 is exact DiCE, 0 has the curvature of LVC"""
    inner_steps: int = 1
    """inner policy-gradient steps, re-sampling episodes with the adapted policy after each"""
    inner_lr: float = 0.1
    """inner SGD step size (on per-task normalised advantages)"""
    first_order: bool = False
    """drop the second-order terms of the inner step (mode=metaops.inner.first_order())"""
    inner_max_kl: float | None = None
    """bound on the estimated mean KL of each inner step on its support states (metaops.rl.kl_bounded_sgd;
    a differentiable rescaling of the SGD step); None: plain SGD steps"""
    warn_inner_kl: float = 1.0
    """warn (metaops.rl.InnerStepWarning, once per run) when an inner step's mean KL on a task's support
    states exceeds this many nats"""
    warn_log_std_change: float = 1.0
    """warn when an inner step moves some log-std by more than this"""
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
    fisher_subsample: float = 1.0
    """fraction of the meta-batch's tasks whose KL defines the Fisher-vector products (rllab's subsample_factor;
    the line search always checks the KL on all tasks); 1: all tasks, as in the MAML paper"""
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
    eval_episodes: int | None = None
    """episodes per task and step of the final evaluation; None: `episodes` (the MAML paper's navigation test: 40)"""
    eval_inner_lr: tuple[float, ...] | None = None
    """step sizes of the evaluation's adaptation steps, the last one repeated (the MAML paper's navigation test:
    0.5 0.25); None: `inner_lr`"""
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
               "threads", "physics_threads", "eval_tasks", "eval_steps", "eval_seed", "eval_episodes", "eval_inner_lr")
"""Fields a resumed run may change; every other field must match the checkpoint's."""

ADDED_FIELDS = {"action_units": 10.0}
"""Fields added after checkpoints were written (the bounded policy's action units), with the value
those runs used: an older checkpoint resumes exactly with these values and is refused, naming the field, with
others."""

FIELDS = ["return/pre", "return/post", "trpo/surrogate", "trpo/improvement", "trpo/kl", "trpo/backtracks",
          "trpo/accepted", "policy/std", "inner/kl", "inner/kl_max", "inner/step_norm", "inner/log_std_change",
          "env_steps", "time/sample_s", "time/update_s"]
"""CSV/TensorBoard columns, one row per meta-iteration (see the docs page)."""


def validate(args: Args) -> None:
    if args.env not in ENVS:  # the CLI checks this too; Args(env=...) from Python does not
        raise ValueError(f"unknown env {args.env!r}; the registered environments are {', '.join(ENVS)}")
    if not 0 < args.fisher_subsample <= 1:
        raise ValueError(f"fisher_subsample must be in (0, 1], got {args.fisher_subsample}")
    check_positive(args, "iterations", "episodes", "inner_steps", "inner_lr", "max_kl", "cg_steps",
                   "max_backtracks", "threads", "physics_threads", "checkpoint_every", "init_std", "min_std",
                   "action_units", "warn_inner_kl", "warn_log_std_change")
    if args.min_std > args.init_std:
        raise ValueError(f"min_std ({args.min_std}) must not exceed init_std ({args.init_std})")
    if args.eval_tasks == 1 or args.eval_tasks < 0 or args.eval_steps < 0:
        raise ValueError(f"need eval_tasks = 0 or >= 2 and eval_steps >= 0, got {args.eval_tasks}, {args.eval_steps}")
    check_positive(args, "inner_max_kl", "meta_batch", "horizon", "eval_episodes", "eval_inner_lr", allow_none=True)


def make_policy(env: envs.BatchedEnv, hidden: tuple[int, ...], *, kind: str = "unbounded", init_std: float = 0.1,
                min_std: float = 0.01, action_units: float = 10.0) -> rl.GaussianMLPPolicy:
    """The MAML paper's policy (``unbounded``) or the reference code's (``bounded``: ProMP's, std in half-ranges)."""
    if kind == "unbounded":
        return rl.GaussianMLPPolicy(env.observation_dim, env.action_dim, hidden_sizes=hidden, activation=nn.ReLU)
    bound = action_units  # the reference code's normalised action space is [-10, 10]: std init_std * 10 there
    return rl.GaussianMLPPolicy(env.observation_dim, env.action_dim, hidden_sizes=hidden, activation=nn.Tanh,
                                init_log_std=math.log(init_std * bound), min_log_std=math.log(min_std * bound),
                                action_bounds=(env.action_low, env.action_high), normalized_bound=bound,
                                weight_init="xavier")


def inner_optimizer(policy: nn.Module, batch: tuple[Tensor, ...], *, lr: float,
                    max_kl: float | None) -> mo.inner.InnerOptimizer:
    """SGD, or SGD scaled so that its estimated mean KL on this task's support states is at most max_kl."""
    if max_kl is None:
        return mo.inner.sgd(lr)
    obs, _, _, mask = batch
    return rl.kl_bounded_sgd(policy, obs, lr=lr, max_kl=max_kl, mask=mask)


def policy_std(policy: rl.GaussianMLPPolicy, obs_dim: int) -> float:
    """Mean standard deviation of the policy's actions, in the units of the actions."""
    with torch.no_grad():
        return policy(torch.zeros(1, obs_dim))[1].exp().mean().item()


def make_step_check(policy: nn.Module, args: Args):
    """check(before, after, batch) -> per-task KL, KL max, step norm and log-std change of one inner step
    (metaops.rl.check_inner_step); the first implausible step warns, later ones are only logged."""
    warned = False

    def check(before, after, batch: tuple[Tensor, ...]) -> dict[str, Tensor]:
        nonlocal warned
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("ignore" if warned else "always", rl.InnerStepWarning)
            stats = rl.check_inner_step(policy, before, after, batch[0], mask=batch[3], max_kl=args.warn_inner_kl,
                                        max_log_std_change=args.warn_log_std_change)
        for w in caught:  # re-emit outside the recording context (so that filters such as "error" apply)
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
            warned = warned or issubclass(w.category, rl.InnerStepWarning)
        return stats

    return check


def process_episodes(batch: envs.EpisodeBatch, *, gamma: float, gae_lambda: float) -> tuple[Tensor, ...]:
    """(observations, actions, advantages, mask), each `(task, episode, time, ...)`.

    Advantages: GAE on the linear feature baseline fitted per task (in float64) to the
    discounted returns, then normalised per task over its episodes and steps.
    """
    mask = batch.mask
    advantages = rl.linear_baseline_advantages(batch.observations, batch.rewards, mask=mask, gamma=gamma,
                                               gae_lambda=gae_lambda)
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


def main(args: Args) -> dict[str, float]:
    validate(args)
    out = Path(args.out_dir)
    env_name = args.env
    meta_batch = args.meta_batch or (20 if args.env == "Navigation2D" else 40)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    g = torch.Generator().manual_seed(args.seed)  # tasks, reset seeds and action noise (the same in every process)
    group = mo.distributed.init()  # under torchrun: the processes that share each meta-batch; else None
    main_process = mo.distributed.is_main_process()
    mine = mo.distributed.task_slice(meta_batch, group)  # this process's share of every meta-batch
    num_mine = len(range(meta_batch)[mine])
    tasks_dist = envs.task_distribution(env_name)
    env = envs.make_batched(env_name, num_tasks=num_mine, episodes_per_task=args.episodes,
                            num_threads=args.physics_threads)
    horizon = args.horizon or env.horizon
    policy = make_policy(env, args.hidden, kind=args.policy, init_std=args.init_std, min_std=args.min_std,
                         action_units=args.action_units)
    mo.distributed.broadcast_params(policy, group=group)
    loss_fn = make_inner_loss(policy, args.estimator, dice_decay=args.dice_decay)
    check_step = make_step_check(policy, args)

    def sample(params, tasks) -> envs.EpisodeBatch:  # this process's rows of the whole batch's random draws:
        return envs.sample_episodes(env, policy, params, tasks, generator=g, horizon=horizon,  # any split of
                                    task_rows=mine, batch_tasks=meta_batch)  # the tasks samples the same episodes

    def mean_over_all_tasks(tree):  # this process's mean over its tasks -> the mean over all tasks of the batch
        return mo.distributed.all_reduce_mean(tree, count=num_mine, group=group)

    def all_tasks(values: Tensor) -> Tensor:  # this process's per-task values -> every task's, `(meta_batch, ...)`
        return mo.distributed.gather_tasks(values, meta_batch, group)

    # TRPO's Fisher subsample: the first m tasks of the batch (tasks are i.i.d.), of which this process has c
    num_fisher = max(1, round(args.fisher_subsample * meta_batch))
    my_fisher = slice(0, max(0, min(mine.stop, num_fisher) - mine.start))
    num_my_fisher = my_fisher.stop

    # --- the inner loop: theta -> per-task adapted params, differentiable in theta --------------
    def adapt_task(params, batches):  # batches[k]: this task's data sampled with the k-step-adapted policy
        mode = mo.inner.first_order() if args.first_order else mo.inner.unrolled()
        for batch in batches:
            opt = inner_optimizer(policy, batch, lr=args.inner_lr, max_kl=args.inner_max_kl)
            params = mo.inner.adapt(loss_fn, params, batch, opt, steps=1, mode=mode)
        return params

    def adapt_all(params, batches):  # all tasks at once
        return vmap(adapt_task, in_dims=(None, 0))(params, batches)

    adapt_fn = mo.compile_meta_step(adapt_all) if args.compile else adapt_all

    # --- logging, checkpointing and exact resumption -------------------------------------------
    start, log_rows, env_steps = 0, 0, 0
    ckpt_path = out / "checkpoint.pt"
    ckpt = mo.distributed.on_main_process(  # the main process reads it, every process gets the state
        lambda: load_run_checkpoint(ckpt_path, recipe="maml_trpo", config=asdict(args), ignore=RUN_CONTROL,
                                    iterations=args.iterations, added=ADDED_FIELDS)
        if args.resume and ckpt_path.exists() else None,
        group=group)
    if ckpt is not None:
        policy.load_state_dict(ckpt["policy"])
        g.set_state(ckpt["generator"])
        start, log_rows, env_steps = ckpt["iteration"], ckpt["log_rows"], ckpt["env_steps"]
        if main_process:
            print(f"resumed from {ckpt_path} at iteration {start}")
    if main_process:
        save_json(out / "config.json", asdict(args))
    logger = RunLogger(out, fields=FIELDS, total=args.iterations, initial=start, rows=log_rows,
                       tensorboard=args.tensorboard, progress=args.progress, desc=f"maml_trpo {args.env}",
                       defer_interrupt=True)  # Ctrl-C: checkpoint, then stop (silent in other processes)

    def checkpoint(iteration: int) -> None:
        if not main_process:
            return
        save_checkpoint(ckpt_path, {
            "recipe": "maml_trpo", "config": asdict(args), "iteration": iteration, "policy": policy.state_dict(),
            "generator": g.get_state(), "log_rows": logger.rows, "env_steps": env_steps,
        })

    # --- meta-training ---------------------------------------------------------------------------
    train_start = time.perf_counter()
    for it in range(start, args.iterations):
        t0 = time.perf_counter()
        theta = mo.tree.stop_gradient(mo.nn.named_params(policy))
        batch_tasks = tasks_dist.sample_tasks(meta_batch, generator=g)
        tasks = batch_tasks[mine]  # this process's share

        # 1. inner loop: sample with the current (adapted) policy, take a step, re-sample, ...
        params, batches, pre_returns, inner = theta, [], None, []
        for _ in range(args.inner_steps):
            episodes = sample(params, tasks)
            pre_returns = all_tasks(episodes.returns.mean(1)).mean() if pre_returns is None else pre_returns
            batches.append(process_episodes(episodes, gamma=args.gamma, gae_lambda=args.gae_lambda))
            params, before = mo.tree.stop_gradient(adapt_fn(theta, batches)), params
            inner.append(check_step(before, params, batches[-1]))  # warns on a runaway step
        adapted = params  # per-task, leading task dim

        # 2. post-update episodes from the adapted policies, and their advantages
        post = sample(adapted, tasks)
        post_obs, post_actions, post_adv, post_mask = process_episodes(post, gamma=args.gamma,
                                                                       gae_lambda=args.gae_lambda)
        old_log_probs = per_task_log_probs(policy, adapted, post_obs, post_actions)
        steps_per_task = sum(b[3].sum((-2, -1)) for b in batches) + post_mask.sum((-2, -1))
        env_steps += int(all_tasks(steps_per_task.double()).sum().round())
        t1 = time.perf_counter()

        # 3. outer TRPO step on theta, through the inner step(s)
        def surrogate_of(adapted_at_theta):  # likelihood ratio of the adapted policies on post-update data
            log_probs = per_task_log_probs(policy, adapted_at_theta, post_obs, post_actions)
            objective = estimators.lvc_objective(log_probs, post_adv, sampling_log_probs=old_log_probs, mask=post_mask)
            return (objective.sum(-1) / post_mask.sum((-2, -1))).mean()  # per real step, mean over tasks

        def rows(tree, tasks):  # these tasks' rows of a per-task tree
            return mo.tree.tree_map(lambda x: x[tasks], tree)

        def kl_of(adapted_at_theta, tasks=slice(None)):  # KL(adapted before the update || at theta), post states
            kl = vmap(lambda old, new, o, m: rl.mean_kl(policy, old, new, o, mask=m))(
                rows(adapted, tasks), adapted_at_theta, post_obs[tasks], post_mask[tasks])
            return kl.mean()

        surrogate_fn = lambda theta: surrogate_of(adapt_all(theta, batches))  # noqa: E731
        kl_fn = lambda theta: kl_of(adapt_all(theta, batches))  # noqa: E731

        def line_search_fn(theta):  # a line-search candidate adapts every task once for both values
            adapted_at_theta = adapt_all(theta, batches)
            return surrogate_of(adapted_at_theta), kl_of(adapted_at_theta)

        def fisher_kl_fn(theta):  # the KL on this process's part of the Fisher subsample (0 * theta without one)
            if not num_my_fisher:
                return sum(0 * p.sum() for p in theta.values())
            return kl_of(adapt_all(theta, rows(batches, my_fisher)), my_fisher)

        new_theta, info = rl.trpo_step(  # every gradient, Fisher product and line-search value averaged over all tasks
            surrogate_fn, kl_fn, theta, max_kl=args.max_kl, damping=args.cg_damping, cg_steps=args.cg_steps,
            backtrack_ratio=args.backtrack_ratio, max_backtracks=args.max_backtracks,
            fisher_kl_fn=None if args.fisher_subsample == 1 else fisher_kl_fn, line_search_fn=line_search_fn,
            reduce=mean_over_all_tasks,
            fisher_reduce=lambda tree: mo.distributed.all_reduce_mean(tree, count=num_my_fisher, group=group))
        with torch.no_grad():
            for name, p in policy.named_parameters():
                p.copy_(new_theta[name])
        t2 = time.perf_counter()

        post_return = all_tasks(post.returns.mean(1)).mean().item()
        inner = [{k: all_tasks(v) for k, v in d.items()} for d in inner]  # every task's step statistics
        logger.log(it + 1, {
            "return/pre": pre_returns.item(), "return/post": post_return, "trpo/surrogate": info.surrogate_before,
            "trpo/improvement": info.improvement, "trpo/kl": info.kl, "trpo/backtracks": info.backtracks,
            "trpo/accepted": float(info.accepted), "policy/std": policy_std(policy, env.observation_dim),
            "inner/kl": torch.stack([d["kl"].mean() for d in inner]).mean().item(),
            "inner/kl_max": torch.stack([d["kl"].max() for d in inner]).max().item(),
            "inner/step_norm": torch.stack([d["step_norm"].mean() for d in inner]).mean().item(),
            "inner/log_std_change": torch.stack([d["log_std_change"].max() for d in inner]).max().item(),
            "env_steps": env_steps, "time/sample_s": t1 - t0, "time/update_s": t2 - t1,
        })
        logger.advance(1, pre=pre_returns.item(), post=post_return)
        if args.compile and it == start + 1:
            logger.write(f"compile_meta_step: compiled={adapt_fn.compiled}, took {adapt_fn.compile_seconds} s"
                         + ("" if adapt_fn.compiled else f" (eager fallback: {adapt_fn.fallback_reason})"))
        stop = mo.distributed.any_process(logger.interrupted, group=group)  # all processes stop together
        if (it + 1) % args.checkpoint_every == 0 or it + 1 == args.iterations or stop:
            checkpoint(it + 1)
            if stop:
                logger.request_stop()
            logger.stop_if_interrupted(it + 1)  # after Ctrl-C: "interrupted: checkpoint at iteration N"
    logger.close()  # also gives Ctrl-C back: it stops the evaluation below at once
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
    if not main_process:  # another process of a distributed run: the same training, no files, no evaluation
        return metrics
    plot_learning_curve(out / "learning_curve.png", {
        "pre-update (0 steps)": (history["step"], history["return/pre"]),
        f"post-update ({args.inner_steps} step(s))": (history["step"], history["return/post"]),
    }, title=f"MAML-TRPO ({args.estimator}), {env_name}", ylabel="mean episode return", log_y=False)

    # --- final evaluation: adapt the meta-policy to held-out tasks for 0..eval_steps steps -------
    if args.eval_tasks:
        curve = evaluate(policy, env_name, loss_fn, args, num_tasks=args.eval_tasks, steps=args.eval_steps,
                         seed=args.eval_seed, horizon=horizon)
        write_adaptation_evaluation(out, curve, title=f"MAML-TRPO ({args.estimator}), {env_name}")
        metrics.update(paired_gains(curve, prefix="eval_"))
    save_json(out / "metrics.json", metrics)
    logger.write(", ".join(f"{k} {v:.3f}" for k, v in metrics.items()))
    return metrics


def evaluate(policy, env_name: str, loss_fn, args: Args, *, num_tasks: int, steps: int, seed: int,
             horizon: int) -> Tensor:
    """Mean return of each held-out task after 0..steps inner steps, `(steps + 1, task)` (the meta-RL protocol).

    Step sizes and episodes per step: ``args.eval_inner_lr`` and ``args.eval_episodes`` where set, else the
    training's."""
    def step_with(lr: float):
        def one_step(params, data):
            return mo.inner.adapt(loss_fn, params, data, inner_optimizer(policy, data, lr=lr,
                                                                         max_kl=args.inner_max_kl), steps=1)
        return one_step

    return held_out_adaptation(policy, mo.nn.named_params(policy), env_name=env_name,
                               adapt_step=[step_with(lr) for lr in args.eval_inner_lr or (args.inner_lr,)],
                               process=lambda b: process_episodes(b, gamma=args.gamma, gae_lambda=args.gae_lambda),
                               num_tasks=num_tasks, episodes=args.eval_episodes or args.episodes, steps=steps,
                               seed=seed, horizon=horizon, physics_threads=args.physics_threads,
                               on_step=make_step_check(policy, args))

if __name__ == "__main__":
    main(tyro.cli(Args))
