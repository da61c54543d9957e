# Docs: docs/recipes/promp.md (site page: recipes/promp/)
"""ProMP: Proximal Meta-Policy Search (Rothfuss, Lee, Clavera, Asfour, Abbeel, ICLR 2019).

Inner step: one policy-gradient step per inner step on the low-variance-curvature (LVC)
objective, importance-weighted against the policy that sampled the data, so that it stays
valid while the meta-parameters move. Outer step: several Adam steps on the PPO-clipped
likelihood ratio of the adapted policies on post-update episodes, minus a penalty on the KL
between the policies that sampled the pre-update episodes and the current ones (fixed or
adaptive coefficient), each step recomputing the adaptation of every task from the current
meta-parameters (vmapped over tasks). Not in the reference: a step that moves the adapted policies
more than ``--outer-max-kl`` nats per state from the sampling ones is undone (a runaway step once
wrecked an 80M-step run).

Run ``python -m recipes.promp --help`` for the options. Under ``torchrun`` every process samples,
adapts and differentiates its share of each meta-batch and the outer gradients are averaged over
all tasks (``metaops.distributed``); the run equals one process's up to float rounding.
"""

from __future__ import annotations

import copy
import math
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

_PROMP = dict(inner_steps=1, inner_lr=0.1, outer_steps=5, kl_coeff=5e-4, kl_target=0.0)
REFERENCE: dict[str, dict[str, float]] = {
    "Navigation2D": dict(_PROMP, horizon=100),  # no ProMP run: the MAML paper's horizon
    "HalfCheetahVel": dict(_PROMP, horizon=200),  # no ProMP PPO run: the registered horizon
    "HalfCheetahDir": dict(_PROMP, horizon=100),  # ppo_run_all.py: HalfCheetahRandDirec
    "AntDir": dict(_PROMP, horizon=200),  # no ProMP PPO run
    "AntDir2D": dict(_PROMP, horizon=200),  # no ProMP PPO run
    "AntGoal": dict(_PROMP, horizon=200, inner_steps=2),  # AntRandGoal
    "HopperRandParams": dict(_PROMP, horizon=200, inner_lr=0.05, outer_steps=3, kl_coeff=1e-3, kl_target=0.01),
    "Walker2dRandParams": dict(_PROMP, horizon=200, inner_lr=0.05, outer_steps=3, kl_coeff=1e-3, kl_target=0.01),
}
"""Per-family values of the reference code (``experiments/all_envs_eval/ppo_run_all.py``) for the
options left at None; families without a ProMP run get the shared settings (see the docs page)."""


@dataclass
class Args:
    env: EnvName = "HalfCheetahDir"
    """task family, a name registered in metaops.envs (HalfCheetahDir, Navigation2D, AntGoal, ...)"""
    out_dir: str = "runs/promp"
    """run directory: config, metrics CSV, TensorBoard events, checkpoint, evaluation table and PNGs"""
    seed: int = 0
    """seed of the policy initialisation, the task stream and all sampling noise"""
    iterations: int = 1000
    """meta-iterations (each: sample, adapt, outer Adam steps)"""
    meta_batch: int = 40
    """tasks per meta-iteration"""
    episodes: int = 20
    """episodes per task, before (per inner step) and after adaptation"""
    horizon: int | None = None
    """episode length; None: the reference's for --env (100 for HalfCheetahDir, see REFERENCE)"""
    hidden: tuple[int, ...] = (64, 64)
    """hidden layer widths of the tanh Gaussian MLP policy"""
    init_std: float = 0.1
    """initial std of the policy as a fraction of the action half-range (the reference's 1 in [-10, 10])"""
    action_units: float = 10.0
    """half-range of the policy's normalised action space, in which its mean and std live: 10 is the reference
    code's [-10, 10]; 1 is rllab's [-1, 1], the MAML paper's (there an inner step moves the mean 100x more)"""
    min_std: float = 1e-7
    """floor of the std as a fraction of the action half-range (the reference's 1e-6 in [-10, 10])"""
    inner_steps: int | None = None
    """inner policy-gradient steps, re-sampling after each; None: the reference's (2 for AntGoal, else 1)"""
    inner_lr: float | None = None
    """inner SGD step size on per-task normalised advantages; None: the reference's (0.1; 0.05 RandParams)"""
    outer_steps: int | None = None
    """Adam steps per meta-iteration on the same episodes; None: the reference's (5; 3 RandParams)"""
    outer_lr: float = 1e-3
    """Adam learning rate of the meta-parameters"""
    clip: float = 0.3
    """PPO clip range epsilon of the outer objective"""
    outer_max_kl: float | None = 1.0
    """guard against a runaway outer step: an Adam step after which the post-update policies are more than this
    mean KL (nats per state) from the ones that sampled the batch is undone, and the iteration's outer steps stop
    (logged as outer/steps); typical steps move 0.01-0.2. None: no guard, as in the reference code"""
    kl_coeff: float | None = None
    """initial inner-KL penalty coefficient; None: the reference's (5e-4; 1e-3 RandParams)"""
    kl_target: float | None = None
    """target inner KL of the adaptive coefficient (halve below target/1.5, double above 1.5 x target), 0: fixed
    coefficient; None: the reference's (0.01 for RandParams, else fixed)"""
    gamma: float = 0.99
    """discount"""
    gae_lambda: float = 1.0
    """GAE lambda (1: Monte Carlo returns minus the linear feature baseline)"""
    threads: int = 1
    """torch threads of the adaptation and outer steps (sampling uses 1); 1 is fast on a busy machine, try 2 if idle"""
    physics_threads: int = 2
    """MuJoCo stepping threads (ignored for navigation)"""
    eval_tasks: int = 40
    """held-out tasks of the final evaluation (0: skip it)"""
    eval_steps: int = 3
    """the final evaluation adapts for 0, 1, ..., eval_steps inner steps"""
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
    progress: bool = True
    """show a progress bar"""
    tensorboard: bool = True
    """write TensorBoard event files"""


RUN_CONTROL = ("out_dir", "iterations", "checkpoint_every", "resume", "progress", "tensorboard", "threads",
               "physics_threads", "eval_tasks", "eval_steps", "eval_seed", "eval_episodes", "eval_inner_lr")
"""Fields a resumed run may change; every other field must match the checkpoint's."""

ADDED_FIELDS = {"outer_max_kl": None, "action_units": 10.0}
"""Fields added after checkpoints were written (the outer-step guard and the action units), with the value
those runs used: an older checkpoint resumes exactly with these values and is refused, naming the field, with
others."""

FIELDS = ["return/pre", "return/post", "objective/before", "objective/after", "kl/inner", "kl/inner_coeff",
          "kl/outer", "outer/steps", "policy/std", "env_steps", "time/sample_s", "time/adapt_s", "time/outer_s"]
"""CSV/TensorBoard columns, one row per meta-iteration (see the docs page)."""


def resolve(args: Args) -> Args:
    """A copy of ``args`` with every None option replaced by the reference value for ``args.env``."""
    if args.env not in ENVS:  # the CLI checks this too; Args(env=...) from Python does not
        raise ValueError(f"unknown env {args.env!r}; the registered environments are {', '.join(ENVS)}")
    ref = REFERENCE[args.env]
    pick = lambda name, cast: cast(ref[name]) if getattr(args, name) is None else getattr(args, name)
    return Args(**{**asdict(args), "hidden": tuple(args.hidden), "horizon": pick("horizon", int),
                   "inner_steps": pick("inner_steps", int), "inner_lr": pick("inner_lr", float),
                   "outer_steps": pick("outer_steps", int), "kl_coeff": pick("kl_coeff", float),
                   "kl_target": pick("kl_target", float)})


def validate(args: Args) -> None:
    check_positive(args, "iterations", "meta_batch", "episodes", "horizon", "inner_steps", "inner_lr", "action_units",
                   "outer_steps", "outer_lr", "clip", "init_std", "min_std", "threads", "physics_threads",
                   "checkpoint_every")
    if args.min_std > args.init_std:
        raise ValueError(f"min_std ({args.min_std}) must not exceed init_std ({args.init_std})")
    if args.kl_coeff < 0 or args.kl_target < 0:
        raise ValueError(f"need kl_coeff >= 0 and kl_target >= 0, got {args.kl_coeff}, {args.kl_target}")
    if args.eval_tasks == 1 or args.eval_tasks < 0 or args.eval_steps < 0:
        raise ValueError(f"need eval_tasks = 0 or >= 2 and eval_steps >= 0, got {args.eval_tasks}, {args.eval_steps}")
    check_positive(args, "outer_max_kl", "eval_episodes", "eval_inner_lr", allow_none=True)


def make_policy(env: envs.BatchedEnv, hidden: tuple[int, ...], *, init_std: float = 0.1,
                min_std: float = 1e-7, action_units: float = 10.0) -> rl.GaussianMLPPolicy:
    """The reference code's policy: tanh MLP (Glorot-uniform weights, zero biases), mean squashed into the action
    bounds, std in half-ranges; it acts in [-action_units, action_units] (the reference's 10: std init_std * 10
    there), rescaled to the bounds."""
    bound = action_units
    return rl.GaussianMLPPolicy(env.observation_dim, env.action_dim, hidden_sizes=hidden, activation=nn.Tanh,
                                init_log_std=math.log(init_std * bound), min_log_std=math.log(min_std * bound),
                                action_bounds=(env.action_low, env.action_high), normalized_bound=bound,
                                weight_init="xavier")


def process_episodes(batch: envs.EpisodeBatch, *, gamma: float, gae_lambda: float) -> tuple[Tensor, ...]:
    """(observations, actions, advantages, mask, sampling log-probs), each `(task, episode, time, ...)`.

    Advantages: GAE on the linear feature baseline fitted per task (in float64) to the
    discounted returns, then normalised per task over its episodes and steps.
    """
    mask = batch.mask
    advantages = rl.linear_baseline_advantages(batch.observations, batch.rewards, mask=mask, gamma=gamma,
                                               gae_lambda=gae_lambda)
    return batch.observations, batch.actions, advantages, mask, batch.log_probs


def make_inner_loss(policy: nn.Module):
    r"""``(loss_fn, loss_and_kl)`` of one task: the inner loss, alone and with the inner KL of the same forward pass.

    ``loss_fn(params, batch)``: minus the importance-weighted LVC objective per real step,
    $-\frac{1}{N}\sum_{e,t} \frac{\pi_\phi(a_t\mid s_t)}{\pi_{\text{sampling}}(a_t\mid s_t)} A_t$; at
    $\phi = \phi_{\text{sampling}}$ it equals the LVC objective in value and in every derivative.
    ``loss_and_kl(params, (batch, old_dist))``: that loss and the mean KL from ``old_dist`` to
    $\pi_\phi$ on the batch's states, both from one forward pass of the policy (the outer
    objective needs both at every inner step: ``adapt(..., has_aux=True)``).
    """

    def lvc_loss(dist, batch):
        obs, actions, advantages, mask, sampling_log_probs = batch  # (episode, time, ...)
        log_probs = policy.log_prob(dist, actions)  # recomputed from params
        objective = estimators.lvc_objective(log_probs, advantages, sampling_log_probs=sampling_log_probs, mask=mask)
        return -objective.sum() / mask.sum()

    def loss_fn(params, batch):
        return lvc_loss(functional_call(policy, params, (batch[0],)), batch)

    def loss_and_kl(params, batch_and_old_dist):
        batch, old_dist = batch_and_old_dist
        dist = functional_call(policy, params, (batch[0],))
        return lvc_loss(dist, batch), masked_mean(policy.kl(old_dist, dist), batch[3])

    return loss_fn, loss_and_kl


def masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    return (x * mask).sum() / mask.sum()


def adapt_kl_coeffs(coeffs: Tensor, kls: Tensor, *, target: float) -> Tensor:
    """ProMP's adaptive rule, per inner step: halve where KL < target/1.5, double where KL > 1.5 x target."""
    return torch.where(kls < target / 1.5, coeffs / 2, torch.where(kls > 1.5 * target, coeffs * 2, coeffs))


def main(args: Args) -> dict[str, float]:
    args = resolve(args)
    validate(args)
    out = Path(args.out_dir)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    g = torch.Generator().manual_seed(args.seed)  # tasks, reset seeds and action noise (the same in every process)
    group = mo.distributed.init()  # under torchrun: the processes that share each meta-batch; else None
    main_process = mo.distributed.is_main_process()
    mine = mo.distributed.task_slice(args.meta_batch, group)  # this process's share of every meta-batch
    num_mine = len(range(args.meta_batch)[mine])
    tasks_dist = envs.task_distribution(args.env)
    env = envs.make_batched(args.env, num_tasks=num_mine, episodes_per_task=args.episodes,
                            num_threads=args.physics_threads)
    policy = make_policy(env, args.hidden, init_std=args.init_std, min_std=args.min_std,
                         action_units=args.action_units)
    mo.distributed.broadcast_params(policy, group=group)
    half_range = torch.as_tensor((env.action_high - env.action_low) / 2, dtype=torch.float32)
    meta_opt = torch.optim.Adam(policy.parameters(), lr=args.outer_lr)
    kl_coeffs = torch.full((args.inner_steps,), args.kl_coeff, dtype=torch.float64)  # one per inner step
    loss_fn, loss_and_kl = make_inner_loss(policy)

    def sample(params, tasks) -> envs.EpisodeBatch:  # this process's rows of the whole batch's random draws:
        return envs.sample_episodes(env, policy, params, tasks, generator=g, horizon=args.horizon,  # any split of
                                    task_rows=mine, batch_tasks=args.meta_batch)  # the tasks samples the same episodes

    def mean_over_all_tasks(tree):  # this process's mean over its tasks -> the mean over all tasks of the batch
        return mo.distributed.all_reduce_mean(tree, count=num_mine, group=group)

    def inner_step(params, batch):  # one differentiable SGD step on the importance-weighted LVC loss
        return mo.inner.adapt(loss_fn, params, batch, mo.inner.sgd(args.inner_lr), steps=1)

    # --- the objective of one task, differentiable in theta ---------------------------------------
    def task_terms(theta, pre, pre_old_dists, post, post_old_dist):
        """(clipped objective per real step, inner KL per inner step `(K,)`, outer KL) of one task.

        pre[k]: the task's episodes sampled with its k-step-adapted policy; pre_old_dists[k]: that
        sampling policy's action distributions on them (constants), post*: the same after K steps.
        """
        params, inner_kls = theta, []
        for batch, old_dist in zip(pre, pre_old_dists):  # phi_{k+1}(theta), re-computed from the current theta,
            params, kl = mo.inner.adapt(loss_and_kl, params, (batch, old_dist), mo.inner.sgd(args.inner_lr), steps=1,
                                        has_aux=True)  # and the inner KL at phi_k, from the step's forward pass
            inner_kls.append(kl[0])
        obs, actions, advantages, mask, old_log_probs = post
        dist = functional_call(policy, params, (obs,))
        log_probs = policy.log_prob(dist, actions)
        clipped = estimators.ppo_clip_objective(log_probs, old_log_probs, advantages, clip=args.clip,
                                                mask=mask).sum() / mask.sum()
        return clipped, torch.stack(inner_kls), masked_mean(policy.kl(post_old_dist, dist), mask)

    all_tasks_terms = vmap(task_terms, in_dims=(None, 0, 0, 0, 0))  # theta shared, everything else per task

    def outer_objective(theta, data, kl_coeffs):  # ProMP's meta-objective over this process's tasks, to maximise
        clipped, inner_kls, outer_kls = all_tasks_terms(theta, *data)
        inner_kl = inner_kls.mean(0)  # (K,): mean over tasks, per inner step
        objective = clipped.mean() - (kl_coeffs.to(inner_kl.dtype) * inner_kl).mean()
        return objective, inner_kl.detach(), outer_kls.mean().detach()

    # --- logging, checkpointing and exact resumption -------------------------------------------
    start, log_rows, env_steps = 0, 0, 0
    ckpt_path = out / "checkpoint.pt"
    ckpt = mo.distributed.on_main_process(  # the main process reads it, every process gets the state
        lambda: load_run_checkpoint(ckpt_path, recipe="promp", config=asdict(args), ignore=RUN_CONTROL,
                                    iterations=args.iterations, added=ADDED_FIELDS)
        if args.resume and ckpt_path.exists() else None,
        group=group)
    if ckpt is not None:
        policy.load_state_dict(ckpt["policy"])
        meta_opt.load_state_dict(ckpt["optimizer"])
        kl_coeffs = ckpt["kl_coeffs"]
        g.set_state(ckpt["generator"])
        start, log_rows, env_steps = ckpt["iteration"], ckpt["log_rows"], ckpt["env_steps"]
        if main_process:
            print(f"resumed from {ckpt_path} at iteration {start}")
    if main_process:
        save_json(out / "config.json", asdict(args))
    logger = RunLogger(out, fields=FIELDS, total=args.iterations, initial=start, rows=log_rows,
                       tensorboard=args.tensorboard, progress=args.progress, desc=f"promp {args.env}",
                       defer_interrupt=True)  # Ctrl-C: checkpoint, then stop (silent in other processes)

    def checkpoint(iteration: int) -> None:
        if not main_process:
            return
        save_checkpoint(ckpt_path, {
            "recipe": "promp", "config": asdict(args), "iteration": iteration, "policy": policy.state_dict(),
            "optimizer": meta_opt.state_dict(), "kl_coeffs": kl_coeffs, "generator": g.get_state(),
            "log_rows": logger.rows, "env_steps": env_steps,
        })

    def too_far(outer_kl: Tensor) -> bool:  # the post-update policies moved too far from the sampling ones
        return args.outer_max_kl is not None and not outer_kl.item() <= args.outer_max_kl  # NaN is too far too

    def snapshot():  # the meta-parameters and Adam's state, to undo one outer step
        return ({k: v.detach().clone() for k, v in policy.state_dict().items()},
                copy.deepcopy(meta_opt.state_dict()))

    def restore(state) -> None:
        policy.load_state_dict(state[0])
        meta_opt.load_state_dict(state[1])

    # --- meta-training ---------------------------------------------------------------------------
    train_start = time.perf_counter()
    for it in range(start, args.iterations):
        sample_s = adapt_s = 0.0
        theta = mo.tree.stop_gradient(mo.nn.named_params(policy))
        all_tasks = tasks_dist.sample_tasks(args.meta_batch, generator=g)
        tasks = all_tasks[mine]  # this process's share

        # 1. inner loop: sample with the current (adapted) policy, take a step, re-sample, ...
        params, pre, pre_old_dists, pre_returns = theta, [], [], None
        for k in range(args.inner_steps):
            t0 = time.perf_counter()
            episodes = sample(params, tasks)
            pre_returns = episodes.returns.mean() if pre_returns is None else pre_returns
            pre.append(process_episodes(episodes, gamma=args.gamma, gae_lambda=args.gae_lambda))
            t1 = time.perf_counter()
            in_dims = None if k == 0 else 0  # theta is shared; adapted params carry a task dimension
            with torch.no_grad():  # the sampling policy's distributions: constants of the inner KL
                pre_old_dists.append(vmap(lambda p, o: functional_call(policy, p, (o,)), in_dims=(in_dims, 0))(
                    params, pre[-1][0]))
            params = mo.tree.stop_gradient(vmap(inner_step, in_dims=(in_dims, 0))(params, pre[-1]))
            sample_s, adapt_s = sample_s + t1 - t0, adapt_s + time.perf_counter() - t1

        # 2. post-update episodes from the adapted policies, and their advantages
        t0 = time.perf_counter()
        post_episodes = sample(params, tasks)
        post = process_episodes(post_episodes, gamma=args.gamma, gae_lambda=args.gae_lambda)
        with torch.no_grad():
            post_old_dist = vmap(lambda p, o: functional_call(policy, p, (o,)))(params, post[0])
        my_steps = sum(b[3].sum() for b in pre) + post[3].sum()
        sample_s += time.perf_counter() - t0

        # 3. outer steps: Adam on theta, each re-computing the adaptation from the current theta
        t0 = time.perf_counter()
        data = (pre, pre_old_dists, post, post_old_dist)
        steps_kept, before_last_step = args.outer_steps, None
        for step in range(args.outer_steps):
            theta = mo.nn.named_params(policy)
            objective, _, outer_kl = outer_objective(theta, data, kl_coeffs)
            grads = dict(zip(theta, torch.autograd.grad(-objective, list(theta.values()), allow_unused=True)))
            grads = {name: grad for name, grad in grads.items() if grad is not None}  # None: log-std at its floor
            objective, outer_kl, grads = mean_over_all_tasks((objective.detach(), outer_kl, grads))  # one all_reduce
            if step == 0:
                objective_before = objective.item()
            elif too_far(outer_kl):  # the previous step ran away: undo it and stop
                restore(before_last_step)
                steps_kept = step - 1
                break
            before_last_step = snapshot() if args.outer_max_kl is not None else None
            meta_opt.zero_grad()
            for name, grad in grads.items():
                theta[name].grad = grad
            meta_opt.step()
        with torch.no_grad():  # statistics at the updated theta (inner adaptation still differentiates)
            objective_after, inner_kl, outer_kl = mean_over_all_tasks(
                outer_objective(mo.nn.named_params(policy), data, kl_coeffs))
            if steps_kept == args.outer_steps and too_far(outer_kl):  # the last step ran away
                restore(before_last_step)
                steps_kept -= 1
                objective_after, inner_kl, outer_kl = mean_over_all_tasks(
                    outer_objective(mo.nn.named_params(policy), data, kl_coeffs))
        if args.kl_target > 0:
            kl_coeffs = adapt_kl_coeffs(kl_coeffs, inner_kl.double(), target=args.kl_target)
        outer_s = time.perf_counter() - t0

        pre_returns, post_return, steps_per_task = mean_over_all_tasks(
            (pre_returns, post_episodes.returns.mean(), my_steps.double() / num_mine))
        pre_returns, post_return = pre_returns.float(), post_return.item()
        env_steps += round(steps_per_task.item() * args.meta_batch)
        with torch.no_grad():  # the std in action units (state-independent), as a fraction of the half-range
            std = (policy(post[0][0, 0, 0])[1].exp() / half_range).mean().item()
        logger.log(it + 1, {
            "return/pre": pre_returns.item(), "return/post": post_return, "objective/before": objective_before,
            "objective/after": objective_after.item(), "kl/inner": inner_kl.mean().item(),
            "kl/inner_coeff": kl_coeffs.mean().item(), "kl/outer": outer_kl.item(), "outer/steps": steps_kept,
            "policy/std": std, "env_steps": env_steps,
            "time/sample_s": sample_s, "time/adapt_s": adapt_s, "time/outer_s": outer_s,
        })
        logger.advance(1, pre=pre_returns.item(), post=post_return)
        stop = mo.distributed.any_process(logger.interrupted, group=group)  # all processes stop together
        if (it + 1) % args.checkpoint_every == 0 or it + 1 == args.iterations or stop:
            checkpoint(it + 1)
            if stop:
                logger.request_stop()
            logger.stop_if_interrupted(it + 1)  # after Ctrl-C: "interrupted: checkpoint at iteration N"
    logger.close()  # also gives Ctrl-C back: it stops the evaluation below at once
    train_seconds = time.perf_counter() - train_start

    # --- metrics and learning curve (against environment steps) ----------------------------------
    history = logger.history()
    last = slice(-min(10, len(history["step"])), None)
    mean = lambda xs: sum(xs) / len(xs)
    seconds = [s + a + o for s, a, o in zip(history["time/sample_s"], history["time/adapt_s"],
                                             history["time/outer_s"])]
    metrics: dict[str, float] = {
        "return_pre_last10": mean(history["return/pre"][last]),
        "return_post_last10": mean(history["return/post"][last]),
        "env_steps": float(env_steps),
        "train_seconds": train_seconds,
        "seconds_per_iteration_last10": mean(seconds[last]),
    }
    if not main_process:  # another process of a distributed run: the same training, no files, no evaluation
        return metrics
    plot_learning_curve(out / "learning_curve.png", {
        "pre-update (0 steps)": (history["env_steps"], history["return/pre"]),
        f"post-update ({args.inner_steps} step(s))": (history["env_steps"], history["return/post"]),
    }, title=f"ProMP, {args.env}", xlabel="environment steps", ylabel="mean episode return", log_y=False)

    # --- final evaluation: adapt the meta-policy to held-out tasks for 0..eval_steps steps -------
    if args.eval_tasks:
        curve = evaluate(policy, args, num_tasks=args.eval_tasks, steps=args.eval_steps, seed=args.eval_seed)
        write_adaptation_evaluation(out, curve, title=f"ProMP, {args.env}")
        metrics.update(paired_gains(curve, prefix="eval_"))  # paired: the same tasks before and after k steps
    save_json(out / "metrics.json", metrics)
    logger.write(", ".join(f"{k} {v:.3f}" for k, v in metrics.items()))
    return metrics


def evaluate(policy: nn.Module, args: Args, *, num_tasks: int, steps: int, seed: int) -> Tensor:
    """Mean episode return per held-out task after 0..steps inner steps (re-sampling after each): `(steps + 1, task)`.

    ``args`` must be resolved (see ``resolve``). The tasks and episodes depend only on ``seed``: the
    meta-RL protocol of ``metaops.experiment.held_out_adaptation``, shared with MAML-TRPO and GMPS. Step
    sizes and episodes per step: ``eval_inner_lr`` and ``eval_episodes`` where set, else the training's.
    """
    loss_fn, _ = make_inner_loss(policy)
    step_with = lambda lr: lambda p, d: mo.inner.adapt(loss_fn, p, d, mo.inner.sgd(lr), steps=1)
    return held_out_adaptation(
        policy, dict(policy.named_parameters()), env_name=args.env,
        adapt_step=[step_with(lr) for lr in args.eval_inner_lr or (args.inner_lr,)],
        process=lambda b: process_episodes(b, gamma=args.gamma, gae_lambda=args.gae_lambda),
        num_tasks=num_tasks, episodes=args.eval_episodes or args.episodes, steps=steps, seed=seed,
        horizon=args.horizon, physics_threads=args.physics_threads)

if __name__ == "__main__":
    main(tyro.cli(Args))
