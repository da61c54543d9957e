# Docs: docs/recipes/gmps.md (site page: recipes/gmps/)
"""GMPS: Guided Meta-Policy Search (Mendonca, Gupta, Kralev, Abbeel, Levine, Finn, NeurIPS 2019).

Meta-training on a fixed set of training tasks with expert demonstrations for each. Inner step:
one policy-gradient step on the task's own episodes, sampled by the meta-policy and
importance-weighted against it (so that the many outer steps on one batch stay valid). Outer
step: behaviour cloning, the adapted policy's mean regressed onto the expert's actions, with
Adam for many steps per meta-iteration, each re-computing the adaptation of every task from the
current meta-parameters (vmapped over tasks). Optional: learned per-parameter inner step sizes
(Meta-SGD) and the bias-transformation input. The expert is only needed at meta-training time;
at meta-test the policy adapts with its own episodes and rewards, exactly as ProMP's.

Run ``python -m recipes.gmps --help`` for the options. Under ``torchrun`` every process samples,
adapts and differentiates its share of each meta-batch and the outer gradients are averaged over
all tasks (``metaops.distributed``); the run equals one process's up to float rounding.
"""

from __future__ import annotations

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
EnvName = Literal[ENVS]  # so that --help lists them and the CLI rejects any other name


@dataclass
class Args:
    env: EnvName = "Navigation2D"
    """task family, a name registered in metaops.envs; other than Navigation2D, --demos is required"""
    out_dir: str = "runs/gmps"
    """run directory: config, metrics CSV, TensorBoard events, checkpoint, demonstrations, evaluation"""
    demos: str | None = None
    """directory of expert demonstrations (metaops.envs.save_demonstrations); None: collect them with the
    scripted expert into <out_dir>/demos (Navigation2D only)"""
    train_tasks: int = 40
    """training tasks when collecting demonstrations (a given --demos fixes its own)"""
    demo_episodes: int = 10
    """expert episodes per training task when collecting"""
    demo_noise: float = 0.5
    """when collecting: std of the noise added to the executed expert actions, in action half-ranges (the stored
    labels are the expert's noise-free actions, so the demonstrations show recoveries; DART); 0: none"""
    seed: int = 0
    """seed of the policy, the training tasks, the task stream and all sampling noise"""
    iterations: int = 100
    """meta-iterations (each: sample pre-update episodes, then --outer-steps Adam steps)"""
    meta_batch: int = 20
    """training tasks per meta-iteration, drawn without replacement from the fixed set"""
    episodes: int = 10
    """pre-update episodes per task (the only environment steps of meta-training)"""
    horizon: int | None = None
    """episode length; None: the environment's (100 for navigation)"""
    hidden: tuple[int, ...] = (64, 64)
    """hidden layer widths of the tanh Gaussian MLP policy (ProMP's parameterisation)"""
    init_std: float = 0.1
    """initial std as a fraction of the action half-range"""
    min_std: float = 0.1
    """floor of the std as a fraction of the action half-range; the default keeps it at least at its initial value:
    the imitation loss does not constrain the std, and the meta-gradient otherwise shrinks it to enlarge the inner
    step (see the docs page)"""
    bias_transform: int = 4
    """size of the learned bias-transformation input concatenated to the observation (the reference's 4); 0: none"""
    inner_lr: float = 0.1
    """inner SGD step size (the initial value of every rate with --learn-inner-lr)"""
    learn_inner_lr: bool = True
    """learn one inner step size per parameter entry (Meta-SGD, as the reference, which initialises them at 0.5);
    --no-learn-inner-lr: one fixed step size"""
    inner_max_kl: float | None = None
    """bound on the estimated mean KL of the inner step on the task's own states: larger steps are cut back to it
    along their direction (metaops.rl.kl_bounded_sgd; with the learned rates too); None: no bound"""
    outer_steps: int = 50
    """Adam steps on the behaviour-cloning loss per meta-iteration (the reference example: 500)"""
    outer_lr: float = 1e-3
    """Adam learning rate"""
    gamma: float = 0.99
    """discount"""
    gae_lambda: float = 1.0
    """GAE lambda (1: Monte Carlo returns minus the linear feature baseline)"""
    threads: int = 1
    """torch threads of the adaptation and outer steps (sampling uses 1)"""
    physics_threads: int = 2
    """MuJoCo stepping threads (ignored for navigation)"""
    eval_tasks: int = 40
    """held-out tasks of the final evaluation (0: skip it)"""
    eval_steps: int = 3
    """the final evaluation adapts for 0, 1, ..., eval_steps inner steps"""
    eval_seed: int = 1_000
    """seed of the held-out tasks and their episodes (the same as ProMP's, so the two compare)"""
    checkpoint_every: int = 10
    """iterations between checkpoints (one is always written at the end)"""
    resume: bool = True
    """continue from out_dir/checkpoint.pt if it exists (the configuration must match)"""
    progress: bool = True
    """show a progress bar"""
    tensorboard: bool = True
    """write TensorBoard event files"""


RUN_CONTROL = ("out_dir", "iterations", "checkpoint_every", "resume", "progress", "tensorboard", "threads",
               "physics_threads", "eval_tasks", "eval_steps", "eval_seed")
"""Fields a resumed run may change; every other field must match the checkpoint's."""

ADDED_FIELDS = {"inner_max_kl": None}
"""Fields added after checkpoints were written (the KL-bounded inner step), with the value
those runs used: an older checkpoint resumes exactly with these values and is refused, naming the field, with
others."""

FIELDS = ["return/pre", "return/demos", "bc/before", "bc/after", "inner/kl", "inner/lr_mean", "policy/std",
          "env_steps", "time/sample_s", "time/outer_s"]
"""CSV/TensorBoard columns, one row per meta-iteration (see the docs page)."""


def validate(args: Args) -> None:
    check_positive(args, "iterations", "meta_batch", "episodes", "train_tasks", "demo_episodes", "inner_lr",
                   "outer_steps", "outer_lr", "init_std", "min_std", "threads", "physics_threads", "checkpoint_every")
    if args.min_std > args.init_std:
        raise ValueError(f"min_std ({args.min_std}) must not exceed init_std ({args.init_std})")
    if args.demo_noise < 0:
        raise ValueError(f"demo_noise must be >= 0, got {args.demo_noise}")
    check_positive(args, "horizon", "inner_max_kl", allow_none=True)
    if args.bias_transform < 0:
        raise ValueError(f"bias_transform must be >= 0, got {args.bias_transform}")
    if args.eval_tasks == 1 or args.eval_tasks < 0 or args.eval_steps < 0:
        raise ValueError(f"need eval_tasks = 0 or >= 2 and eval_steps >= 0, got {args.eval_tasks}, {args.eval_steps}")
    if args.demos is None and args.env != "Navigation2D":
        raise ValueError(f"--env {args.env} needs expert demonstrations: collect them with "
                         "metaops.envs.collect_demonstrations(env, tasks, your_expert, ...), save them with "
                         "metaops.envs.save_demonstrations(dir, demos) and pass --demos dir (only Navigation2D "
                         "has a built-in scripted expert)")


class BiasTransformPolicy(nn.Module):
    """A policy whose input is the observation concatenated with a learned vector (the bias transformation).

    The vector is a parameter like any other, so the inner step adapts it too: an extra,
    input-independent direction in which one gradient step can move the first layer's output.
    """

    def __init__(self, base: rl.GaussianMLPPolicy, size: int) -> None:
        super().__init__()
        self.base = base
        self.bias_transform = nn.Parameter(torch.zeros(size))

    def forward(self, obs: Tensor) -> tuple[Tensor, Tensor]:
        z = self.bias_transform.expand(*obs.shape[:-1], self.bias_transform.shape[0])
        return self.base(torch.cat([obs, z.to(obs.dtype)], dim=-1))

    def log_prob(self, dist, actions: Tensor) -> Tensor:
        return self.base.log_prob(dist, actions)

    def sample(self, dist, *, generator: torch.Generator | None = None) -> Tensor:
        return self.base.sample(dist, generator=generator)

    def kl(self, dist_p, dist_q) -> Tensor:
        return self.base.kl(dist_p, dist_q)


def make_policy(env: envs.BatchedEnv, args: Args) -> nn.Module:
    """ProMP's tanh Gaussian policy (mean squashed into the action bounds), with the optional bias transformation."""
    bound = 10.0  # the reference code's normalised action space [-10, 10]
    base = rl.GaussianMLPPolicy(env.observation_dim + args.bias_transform, env.action_dim, hidden_sizes=args.hidden,
                                activation=nn.Tanh, init_log_std=math.log(args.init_std * bound),
                                min_log_std=math.log(args.min_std * bound),
                                action_bounds=(env.action_low, env.action_high), normalized_bound=bound)
    return BiasTransformPolicy(base, args.bias_transform) if args.bias_transform else base


def process_episodes(batch: envs.EpisodeBatch, *, gamma: float, gae_lambda: float) -> tuple[Tensor, ...]:
    """(observations, actions, advantages, mask, sampling log-probs), each `(task, episode, time, ...)`."""
    advantages = rl.linear_baseline_advantages(batch.observations, batch.rewards, mask=batch.mask, gamma=gamma,
                                               gae_lambda=gae_lambda)
    return batch.observations, batch.actions, advantages, batch.mask, batch.log_probs


def make_inner_loss(policy: nn.Module):
    """loss_fn(params, batch) of one task: minus the LVC objective importance-weighted against the sampling policy."""

    def loss_fn(params, batch):
        obs, actions, advantages, mask, sampling_log_probs = batch  # (episode, time, ...)
        log_probs = policy.log_prob(functional_call(policy, params, (obs,)), actions)
        objective = estimators.lvc_objective(log_probs, advantages, sampling_log_probs=sampling_log_probs, mask=mask)
        return -objective.sum() / mask.sum()

    return loss_fn


def make_inner_optimizer(policy: nn.Module, lrs: dict[str, Tensor] | None, args: Args,
                         batch: tuple[Tensor, ...]) -> mo.inner.InnerOptimizer:
    """Meta-SGD with the learned rates, or plain SGD; with --inner-max-kl, each step is cut back to that
    estimated mean KL on the task's own states (metaops.rl.kl_bounded_sgd)."""
    if args.inner_max_kl is not None:
        obs, _, _, mask, _ = batch
        return rl.kl_bounded_sgd(policy, obs, lr=args.inner_lr if lrs is None else lrs, max_kl=args.inner_max_kl,
                                 mask=mask)
    return mo.inner.sgd(args.inner_lr) if lrs is None else mo.inner.meta_sgd(lrs)


def behaviour_cloning_loss(policy: nn.Module, params, demo_obs: Tensor, demo_actions: Tensor, demo_mask: Tensor,
                           half_range: Tensor) -> Tensor:
    r"""$\frac{1}{N}\sum_{e,t} m_{et}\,\lVert (\mu_\phi(s^*_{et}) - a^*_{et}) / h \rVert^2$ of one task.

    The reference's imitation loss (squared error of the policy mean against the expert's
    action), with actions measured in half-ranges $h$ of the action box.
    """
    mean = functional_call(policy, params, (demo_obs,))[0]
    error = ((mean - demo_actions) / half_range).pow(2).sum(-1)
    return (error * demo_mask).sum() / demo_mask.sum()


def training_demonstrations(args: Args, out: Path) -> envs.Demonstrations:
    """The given --demos, or the scripted navigation expert's on --train-tasks tasks (collected once, then reused)."""
    if args.demos is not None:
        demos = envs.load_demonstrations(args.demos)
        if demos.env != args.env:
            raise ValueError(f"--demos {args.demos} holds demonstrations for {demos.env!r}, not --env {args.env!r}")
        return demos
    path = out / "demos"
    if (path / "manifest.json").is_file():
        return envs.load_demonstrations(path)
    g = torch.Generator().manual_seed(args.seed + 7919)  # training tasks and expert resets, apart from the run's
    tasks = envs.task_distribution(args.env).sample_tasks(args.train_tasks, generator=g)
    demos = envs.collect_demonstrations(args.env, tasks, envs.navigation_expert(tasks), episodes=args.demo_episodes,
                                        generator=g, horizon=args.horizon, description="scripted navigation expert",
                                        action_noise=args.demo_noise)
    envs.save_demonstrations(path, demos)
    return demos


def main(args: Args) -> dict[str, float]:
    validate(args)
    out = Path(args.out_dir)
    torch.set_num_threads(args.threads)
    group = mo.distributed.init()  # under torchrun: the processes that share each meta-batch; else None
    main_process = mo.distributed.is_main_process()
    demos = mo.distributed.on_main_process(lambda: training_demonstrations(args, out), group=group)  # one collector
    horizon = args.horizon or demos.mask.shape[2]
    if args.meta_batch > len(demos.tasks):
        raise ValueError(f"meta_batch ({args.meta_batch}) exceeds the {len(demos.tasks)} training tasks of the "
                         "demonstrations")
    torch.manual_seed(args.seed)
    g = torch.Generator().manual_seed(args.seed)  # task draws, reset seeds and action noise (same in every process)
    mine = mo.distributed.task_slice(args.meta_batch, group)  # this process's share of every meta-batch
    num_mine = len(range(args.meta_batch)[mine])
    env = envs.make_batched(args.env, num_tasks=num_mine, episodes_per_task=args.episodes,
                            num_threads=args.physics_threads)
    policy = make_policy(env, args)
    mo.distributed.broadcast_params(policy, group=group)
    half_range = torch.as_tensor((env.action_high - env.action_low) / 2, dtype=torch.float32)
    lrs = None
    if args.learn_inner_lr:  # one rate per parameter entry, meta-learned with the initialisation
        lrs = {k: torch.full_like(v, args.inner_lr, requires_grad=True) for k, v in policy.named_parameters()}
    meta_opt = torch.optim.Adam([*policy.parameters(), *(lrs or {}).values()], lr=args.outer_lr)
    loss_fn = make_inner_loss(policy)

    def task_bc_loss(theta, lrs, batch, demo_obs, demo_actions, demo_mask):  # one task, differentiable in theta
        adapted = mo.inner.adapt(loss_fn, theta, batch, make_inner_optimizer(policy, lrs, args, batch), steps=1)
        return behaviour_cloning_loss(policy, adapted, demo_obs, demo_actions, demo_mask, half_range)

    all_tasks_bc_loss = vmap(task_bc_loss, in_dims=(None, None, 0, 0, 0, 0))  # theta and rates shared

    def mean_over_all_tasks(tree):  # this process's mean over its tasks -> the mean over all tasks of the batch
        return mo.distributed.all_reduce_mean(tree, count=num_mine, group=group)

    # --- logging, checkpointing and exact resumption -------------------------------------------
    start, log_rows, env_steps = 0, 0, 0
    ckpt_path = out / "checkpoint.pt"
    ckpt = mo.distributed.on_main_process(  # the main process reads it, every process gets the state
        lambda: load_run_checkpoint(ckpt_path, recipe="gmps", config=asdict(args), ignore=RUN_CONTROL,
                                    iterations=args.iterations, added=ADDED_FIELDS)
        if args.resume and ckpt_path.exists() else None,
        group=group)
    if ckpt is not None:
        policy.load_state_dict(ckpt["policy"])
        if lrs is not None:
            with torch.no_grad():
                for k, v in ckpt["inner_lrs"].items():
                    lrs[k].copy_(v)
        meta_opt.load_state_dict(ckpt["optimizer"])
        g.set_state(ckpt["generator"])
        start, log_rows, env_steps = ckpt["iteration"], ckpt["log_rows"], ckpt["env_steps"]
        if main_process:
            print(f"resumed from {ckpt_path} at iteration {start}")
    if main_process:
        save_json(out / "config.json", asdict(args))
    logger = RunLogger(out, fields=FIELDS, total=args.iterations, initial=start, rows=log_rows,
                       tensorboard=args.tensorboard, progress=args.progress, desc=f"gmps {args.env}",
                       defer_interrupt=True)  # Ctrl-C: checkpoint, then stop (silent in other processes)

    def checkpoint(iteration: int) -> None:
        if not main_process:
            return
        save_checkpoint(ckpt_path, {
            "recipe": "gmps", "config": asdict(args), "iteration": iteration, "policy": policy.state_dict(),
            "inner_lrs": None if lrs is None else {k: v.detach().clone() for k, v in lrs.items()},
            "optimizer": meta_opt.state_dict(), "generator": g.get_state(), "log_rows": logger.rows,
            "env_steps": env_steps,
        })

    # --- meta-training ---------------------------------------------------------------------------
    train_start = time.perf_counter()
    for it in range(start, args.iterations):
        t0 = time.perf_counter()
        rows = torch.randperm(len(demos.tasks), generator=g)[: args.meta_batch]  # this iteration's training tasks
        rows = rows[mine]  # this process's share
        tasks = tuple(demos.tasks[i] for i in rows.tolist())
        theta = mo.tree.stop_gradient(mo.nn.named_params(policy))
        episodes = envs.sample_episodes(env, policy, theta, tasks, generator=g, horizon=horizon,  # my rows of
                                        task_rows=mine, batch_tasks=args.meta_batch)  # the whole batch's draws
        batch = process_episodes(episodes, gamma=args.gamma, gae_lambda=args.gae_lambda)
        demo = (demos.observations[rows], demos.actions[rows], demos.mask[rows])
        t1 = time.perf_counter()

        # outer steps: Adam on theta (and the rates), each re-computing every task's adaptation
        meta_params = [*policy.parameters(), *(lrs or {}).values()]
        for step in range(args.outer_steps):
            loss = all_tasks_bc_loss(mo.nn.named_params(policy), lrs, batch, *demo).mean()
            grads = torch.autograd.grad(loss, meta_params, allow_unused=True)  # None: unused (log-std at its floor)
            grads = {i: grad for i, grad in enumerate(grads) if grad is not None}
            loss, grads = mean_over_all_tasks((loss.detach(), grads))  # one all_reduce (none in one process)
            for i, grad in grads.items():
                meta_params[i].grad = grad
            meta_opt.step()
            if step == 0:
                bc_before = loss.item()
        with torch.no_grad():  # statistics at the updated meta-parameters
            theta = mo.tree.stop_gradient(mo.nn.named_params(policy))
            frozen_lrs = None if lrs is None else mo.tree.stop_gradient(lrs)
            adapted = vmap(lambda b: mo.inner.adapt(  # once, for both statistics
                loss_fn, theta, b, make_inner_optimizer(policy, frozen_lrs, args, b), steps=1))(batch)
            bc_after = vmap(lambda p, o, a, m: behaviour_cloning_loss(policy, p, o, a, m, half_range))(
                adapted, *demo).mean()
            inner_kl = vmap(lambda p, o, m: rl.mean_kl(policy, theta, p, o, mask=m))(adapted, batch[0], batch[3])
            std = (policy(batch[0][0, 0, :1])[1].exp() / half_range).mean().item()
        t2 = time.perf_counter()

        bc_after, inner_kl, pre_return, demo_return, steps_per_task = (x.item() for x in mean_over_all_tasks((
            bc_after, inner_kl.mean(), episodes.returns.mean(), demos.returns[rows].mean(),
            episodes.mask.sum().double() / num_mine)))
        env_steps += round(steps_per_task * args.meta_batch)
        lr_mean = args.inner_lr if lrs is None else torch.cat([v.flatten() for v in lrs.values()]).mean().item()
        logger.log(it + 1, {
            "return/pre": pre_return, "return/demos": demo_return, "bc/before": bc_before,
            "bc/after": bc_after, "inner/kl": inner_kl,
            "inner/lr_mean": lr_mean,
            "policy/std": std, "env_steps": env_steps, "time/sample_s": t1 - t0, "time/outer_s": t2 - t1,
        })
        logger.advance(1, pre=pre_return, bc=bc_after)
        stop = mo.distributed.any_process(logger.interrupted, group=group)  # all processes stop together
        if (it + 1) % args.checkpoint_every == 0 or it + 1 == args.iterations or stop:
            checkpoint(it + 1)
            if stop:
                logger.request_stop()
            logger.stop_if_interrupted(it + 1)  # after Ctrl-C: "interrupted: checkpoint at iteration N"
    logger.close()  # also gives Ctrl-C back: it stops the evaluation below at once
    train_seconds = time.perf_counter() - train_start

    # --- metrics and learning curves -------------------------------------------------------------
    history = logger.history()
    last = slice(-min(10, len(history["step"])), None)
    mean = lambda xs: sum(xs) / len(xs)
    metrics: dict[str, float] = {
        "return_pre_last10": mean(history["return/pre"][last]),
        "bc_after_last10": mean(history["bc/after"][last]),
        "env_steps": float(env_steps),
        "train_seconds": train_seconds,
        "demo_return": demos.returns.mean().item(),  # executed actions, --demo-noise included
        "expert_env_steps": float(demos.env_steps),
        "expert_seconds": demos.seconds,
    }
    if not main_process:  # another process of a distributed run: the same training, no files, no evaluation
        return metrics
    plot_learning_curve(out / "learning_curve.png", {"behaviour cloning loss after adaptation":
                        (history["env_steps"], history["bc/after"])}, title=f"GMPS, {args.env}",
                        xlabel="environment steps (meta-training)", ylabel="imitation loss", log_y=True)

    # --- final evaluation: the same protocol as ProMP's ------------------------------------------
    if args.eval_tasks:
        curve = evaluate(policy, lrs, args, num_tasks=args.eval_tasks, steps=args.eval_steps, seed=args.eval_seed,
                         horizon=horizon)
        write_adaptation_evaluation(out, curve, title=f"GMPS, {args.env}")
        metrics.update(paired_gains(curve, prefix="eval_"))
    save_json(out / "metrics.json", metrics)
    logger.write(", ".join(f"{k} {v:.3f}" for k, v in metrics.items()))
    return metrics


def evaluate(policy: nn.Module, lrs: dict[str, Tensor] | None, args: Args, *, num_tasks: int, steps: int, seed: int,
             horizon: int) -> Tensor:
    """Mean episode return per held-out task after 0..steps inner steps (re-sampling after each): `(steps + 1, task)`.

    The meta-RL protocol of ``metaops.experiment.held_out_adaptation``: with the same seed and
    episodes, ProMP's and MAML-TRPO's evaluations draw the same tasks and episodes' seeds.
    """
    loss_fn = make_inner_loss(policy)
    frozen_lrs = None if lrs is None else mo.tree.stop_gradient(lrs)
    return held_out_adaptation(
        policy, dict(policy.named_parameters()), env_name=args.env,
        adapt_step=lambda p, d: mo.inner.adapt(loss_fn, p, d, make_inner_optimizer(policy, frozen_lrs, args, d),
                                               steps=1),
        process=lambda b: process_episodes(b, gamma=args.gamma, gae_lambda=args.gae_lambda),
        num_tasks=num_tasks, episodes=args.episodes, steps=steps, seed=seed, horizon=horizon,
        physics_threads=args.physics_threads)

if __name__ == "__main__":
    main(tyro.cli(Args))
