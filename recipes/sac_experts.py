# Docs: docs/recipes/sac_experts.md (site page: recipes/sac_experts/)
"""SAC experts for GMPS: train one soft actor-critic expert per training task, then record its demonstrations.

Two kinds of expert, both trained off-policy with the SAC losses of ``metaops.rl``
(Haarnoja et al. 2018, stable-baselines3's defaults):

* ``--mode per-task``: one expert per task. Every network parameter carries a leading task
  dimension, each task has its own replay buffer and its own copy of the environment, and one
  vmapped call of ``metaops.rl.sac_loss`` (plus one Adam step over the stacked leaves, which is
  one independent Adam per task) updates all experts at once per gradient step.
* ``--mode conditioned``: one expert for all tasks, whose networks see the observation
  concatenated with the task's parameters (privileged information, available at training time only).

The training tasks are exactly those ``recipes/gmps.py`` draws for the same ``--env``,
``--train-tasks`` and ``--seed`` (the shared rule of ``training_tasks``). After training, the
experts' deterministic actions label ``--demo-episodes`` episodes per task
(``metaops.envs.collect_demonstrations``), written to ``<out_dir>/demos`` in the format of
``metaops.envs.save_demonstrations``; ``python -m recipes.gmps --demos <out_dir>/demos`` trains on them.

Run ``python -m recipes.sac_experts --help`` for the options. Under ``torchrun`` every process steps,
stores and samples its share of the tasks (``metaops.distributed``): per task, its experts; conditioned, the
one expert's gradients are averaged over all tasks' samples at every step. The run equals one process's up to
float rounding, and its checkpoint resumes with any number of processes.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import tyro
from torch import Tensor, nn
from torch.func import functional_call, vmap

import metaops as mo
from metaops import envs, rl
from metaops.experiment import (
    RunLogger,
    check_positive,
    load_run_checkpoint,
    plot_learning_curve,
    save_checkpoint,
    save_json,
)

ENVS = envs.env_names()
EnvName = Literal[ENVS]  # so that --help lists them and the CLI rejects any other name

TRAINING_TASKS_SEED_OFFSET = 7919
"""The shared rule (recipes/gmps.py draws its training tasks so): the tasks are
``task_distribution(env).sample_tasks(train_tasks, generator=Generator().manual_seed(seed + 7919))``."""


@dataclass
class Args:
    env: EnvName = "Navigation2D"
    """task family, a name registered in metaops.envs"""
    mode: Literal["per-task", "conditioned"] = "per-task"
    """per-task: one expert per task, all updated in one vmapped call; conditioned: one expert that sees the
    observation and the task's parameters"""
    out_dir: str = "runs/sac_experts"
    """run directory: config, metrics CSV, TensorBoard events, checkpoint, demonstrations (demos/), metrics.json"""
    train_tasks: int = 40
    """training tasks (the same set as recipes/gmps.py's for the same --env, --train-tasks and --seed)"""
    seed: int = 0
    """seed of the training tasks (shared with gmps), the networks and all sampling noise"""
    iterations: int = 100
    """training iterations, each one episode of every task (up to --horizon environment steps per task;
    --gradient-steps gradient steps per step of the batched environment)"""
    horizon: int | None = None
    """episode length; None: the environment's (100 for navigation, 200 for the MuJoCo families)"""
    hidden: tuple[int, ...] = (256, 256)
    """hidden layer widths of the actor and of each of the two critics (stable-baselines3's SAC: 256, 256)"""
    batch_size: int = 256
    """transitions per gradient step: per expert (per-task), or in total, split evenly over the tasks (conditioned)"""
    gradient_steps: int = 1
    """gradient steps per step of the batched environment (each one updates every expert)"""
    lr: float = 3e-4
    """Adam learning rate of actor, critics and temperature"""
    gamma: float = 0.99
    """discount"""
    tau: float = 0.005
    """Polyak step of the target critics"""
    buffer_size: int = 20_000
    """replay capacity per task (the oldest transitions are overwritten); it is preallocated and saved in every
    checkpoint: 4 * (2 * obs_dim + act_dim + 2) bytes per transition and task"""
    learning_starts: int = 1_000
    """steps of the batched environment with uniform random actions before the first gradient step (each is one
    environment step of every task whose episode is still running)"""
    demo_episodes: int = 10
    """expert episodes per task in the demonstrations"""
    demo_noise: float = 0.5
    """std of the noise added to the executed expert actions, in action half-ranges (stored labels are the expert's
    noise-free actions at the visited states; DART, as recipes/gmps.py's default); 0: none"""
    eval_episodes: int = 5
    """deterministic episodes per task that measure the experts' returns (and the initial policies', paired)"""
    threads: int = 1
    """torch threads of the gradient steps"""
    physics_threads: int = 2
    """MuJoCo stepping threads (ignored for navigation)"""
    checkpoint_every: int = 10
    """iterations between checkpoints (one is always written at the end)"""
    resume: bool = True
    """continue from out_dir/checkpoint.pt if it exists (the configuration must match)"""
    progress: bool = True
    """show a progress bar"""
    tensorboard: bool = True
    """write TensorBoard event files"""


RUN_CONTROL = ("out_dir", "iterations", "checkpoint_every", "resume", "progress", "tensorboard", "threads",
               "physics_threads", "demo_episodes", "demo_noise", "eval_episodes")
"""Fields a resumed run may change; every other field must match the checkpoint's."""

FIELDS = ["return/mean", "return/min", "critic_loss", "actor_loss", "alpha", "entropy", "q", "env_steps",
          "gradient_steps", "time/env_s", "time/update_s"]
"""CSV/TensorBoard columns, one row per iteration (see the docs page)."""


def validate(args: Args) -> None:
    check_positive(args, "train_tasks", "iterations", "batch_size", "gradient_steps", "lr", "tau", "buffer_size",
                   "demo_episodes", "eval_episodes", "threads", "physics_threads", "checkpoint_every")
    if not 0 <= args.gamma <= 1 or args.tau > 1:
        raise ValueError(f"need gamma in [0, 1] and tau in (0, 1], got gamma={args.gamma}, tau={args.tau}")
    check_positive(args, "horizon", allow_none=True)
    if args.learning_starts < 0 or args.demo_noise < 0:
        raise ValueError(f"need learning_starts >= 0 and demo_noise >= 0, got {args.learning_starts}, "
                         f"{args.demo_noise}")
    if args.mode == "conditioned" and args.batch_size < args.train_tasks:
        raise ValueError(f"--mode conditioned splits --batch-size ({args.batch_size}) over the {args.train_tasks} "
                         "tasks: it must be at least --train-tasks")


def training_tasks(env: str, train_tasks: int, seed: int) -> list[Any]:
    """The training tasks of GMPS for this env, number and seed (see ``TRAINING_TASKS_SEED_OFFSET``)."""
    g = torch.Generator().manual_seed(seed + TRAINING_TASKS_SEED_OFFSET)
    return envs.task_distribution(env).sample_tasks(train_tasks, generator=g)


def task_features(tasks: list[Any]) -> Tensor:
    """The conditioned expert's privileged input: every numeric field of each task, flattened, `(task, k)`."""

    def flat(x: Any) -> list[float]:
        return [v for item in x for v in flat(item)] if isinstance(x, tuple | list) else [float(x)]

    return torch.tensor([flat(tuple(dataclasses.asdict(t).values())) for t in tasks], dtype=torch.float32)


def make_networks(obs_dim: int, env: envs.BatchedEnv, args: Args) -> tuple[nn.Module, nn.Module]:
    """SAC's tanh-Gaussian actor in the action box and twin Q-critics (input: observation [+ task parameters])."""
    policy = rl.SquashedGaussianMLPPolicy(obs_dim, env.action_dim, hidden_sizes=args.hidden,
                                          action_bounds=(env.action_low.tolist(), env.action_high.tolist()))
    return policy, rl.TwinQCritic(obs_dim, env.action_dim, hidden_sizes=args.hidden)


def init_params(policy: nn.Module, critic: nn.Module, experts: int | None) -> dict[str, Any]:
    """``{"policy", "critic", "log_alpha"}`` (alpha = 1); with ``experts = n`` every leaf is stacked `(n, ...)`,
    each expert freshly initialised."""

    def one() -> dict[str, Any]:
        for module in (policy, critic):
            for layer in module.modules():
                if isinstance(layer, nn.Linear):
                    layer.reset_parameters()
        copy = lambda module: {k: v.detach().clone() for k, v in module.named_parameters()}
        return {"policy": copy(policy), "critic": copy(critic), "log_alpha": torch.zeros(())}

    trees = [one() for _ in range(experts or 1)]
    params = trees[0] if experts is None else mo.tree.tree_map(lambda *xs: torch.stack(xs), *trees)
    return mo.tree.tree_map(lambda v: v.clone().requires_grad_(), params)


def leaves(params: dict[str, Any]) -> list[Tensor]:
    return [*params["policy"].values(), *params["critic"].values(), params["log_alpha"]]


def network_batch(batch: rl.Transitions, features: Tensor | None) -> rl.Transitions:
    """Per-task: the `(task, B, ...)` batch as is. Conditioned: flattened to `(task * B, ...)`, the task's
    parameters appended to ``obs`` and ``next_obs``."""
    if features is None:
        return batch
    n, b = batch.rewards.shape
    extra = features[:, None, :].expand(n, b, features.shape[-1])
    flat = lambda x: x.reshape(n * b, *x.shape[2:])
    return rl.Transitions(flat(torch.cat([batch.obs, extra], -1)), flat(batch.actions), flat(batch.rewards),
                          flat(torch.cat([batch.next_obs, extra], -1)), flat(batch.terminated))


def gradient_step(policy: nn.Module, critic: nn.Module, params: dict[str, Any], target: dict[str, Tensor],
                  optimizer: torch.optim.Optimizer, batch: rl.Transitions, noise: Tensor, next_noise: Tensor, *,
                  gamma: float, tau: float, per_task: bool,
                  grad_reduce: Callable[[list[Tensor]], list[Tensor]] | None = None,
                  ) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """One SAC update of every expert: losses, one backward, Adam, Polyak; returns ``(new_target, aux)``.

    With ``per_task`` every leaf, the batch and the noises carry a leading task dimension and the losses are
    vmapped: task k's loss depends only on task k's parameters, so the gradient of their sum is every task's own
    gradient, and Adam (elementwise) over the stacked leaves is one independent Adam per task. ``grad_reduce``
    maps the gradients of ``leaves(params)`` to the ones Adam applies (a distributed conditioned expert: their
    mean over all processes).
    """
    loss_fn = lambda p, t, b, n, nn_: rl.sac_loss(policy, critic, p, t, b, n, nn_, gamma=gamma)
    if per_task:
        losses, aux = vmap(loss_fn)(params, target, batch, noise, next_noise)
        loss = losses.sum()
    else:
        loss, aux = loss_fn(params, target, batch, noise, next_noise)
    optimizer.zero_grad()
    loss.backward()
    if grad_reduce is not None:
        mine = leaves(params)
        for p, grad in zip(mine, grad_reduce([p.grad for p in mine]), strict=True):
            p.grad = grad
    optimizer.step()
    return rl.polyak_update(target, params["critic"], tau=tau), aux


def make_expert(policy: nn.Module, params: dict[str, Any], features: Tensor | None) -> Callable[[Tensor], Tensor]:
    """The trained experts as ``expert(obs (task, n, obs_dim)) -> actions``: the mode $c + h\\tanh\\mu(s)$."""
    actor = mo.tree.stop_gradient(params["policy"])

    @torch.no_grad()
    def expert(obs: Tensor) -> Tensor:
        if features is None:  # one expert per row
            return vmap(lambda p, o: policy.mode(functional_call(policy, p, (o,))))(actor, obs.float())
        extra = features[:, None, :].expand(*obs.shape[:2], features.shape[-1])
        return policy.mode(functional_call(policy, actor, (torch.cat([obs.float(), extra], -1),)))

    return expert


def evaluate(env_name: str, tasks: list[Any], expert: Callable[[Tensor], Tensor], args: Args, horizon: int) -> Tensor:
    """Mean return per task of ``--eval-episodes`` deterministic episodes, `(task,)`; fixed reset seeds, so the
    initial and the trained experts are compared on the same episodes."""
    demos = envs.collect_demonstrations(env_name, tasks, expert, episodes=args.eval_episodes, horizon=horizon,
                                        generator=torch.Generator().manual_seed(args.seed + 1),
                                        physics_threads=args.physics_threads)
    return demos.returns.mean(-1)


def rows_of(tree: Any, rows: slice) -> Any:
    """The rows ``rows`` of every tensor with a leading task dimension (0-dim tensors, e.g. Adam's step, and
    non-tensors as they are): one process's share of a per-task checkpoint state."""
    return mo.tree.tree_map(lambda v: v[rows] if isinstance(v, Tensor) and v.dim() else v, tree)


def buffer_rows(state: dict[str, Any], rows: slice) -> dict[str, Any]:
    """One process's share of a replay buffer's ``state_dict`` (the generator state is every process's)."""
    share = {"storage": {k: v[rows] for k, v in state["storage"].items()}}
    share.update({k: state[k][rows] for k in ("positions", "sizes") if k in state})  # else one int for all tasks
    return {**state, **share}


def main(args: Args) -> dict[str, float]:
    validate(args)
    out = Path(args.out_dir)
    torch.set_num_threads(args.threads)
    group = mo.distributed.init()  # under torchrun: the processes that share the tasks; else None
    main_process = mo.distributed.is_main_process()
    per_task = args.mode == "per-task"
    tasks = training_tasks(args.env, args.train_tasks, args.seed)
    n = len(tasks)
    if n < mo.distributed.world_size(group):
        raise ValueError(f"--train-tasks ({n}) is smaller than the {mo.distributed.world_size(group)} processes: "
                         f"every process needs at least one task; run with at most {n} processes")
    mine = mo.distributed.task_slice(n, group)  # this process's tasks: its experts, buffer rows and env copies
    m = mine.stop - mine.start
    env = envs.make_batched(args.env, num_tasks=m, episodes_per_task=1, num_threads=args.physics_threads)
    horizon = args.horizon or env.horizon
    features = None if per_task else task_features(tasks)
    my_features = None if per_task else features[mine]
    obs_dim = env.observation_dim + (0 if per_task else features.shape[-1])
    act_dim, low, high = env.action_dim, torch.as_tensor(env.action_low), torch.as_tensor(env.action_high)
    torch.manual_seed(args.seed)
    policy, critic = make_networks(obs_dim, env, args)
    initial = init_params(policy, critic, n if per_task else None)  # every process builds every expert ...
    params = rows_of(mo.tree.stop_gradient(initial), mine) if per_task else initial  # ... and keeps its own
    params = mo.tree.tree_map(lambda v: v.detach().clone().requires_grad_(), params)
    target = mo.tree.tree_map(lambda v: v.detach().clone(), params["critic"])
    optimizer = torch.optim.Adam(leaves(params), lr=args.lr, fused=True)  # one kernel for every leaf
    buffer = rl.ReplayBuffer(m, args.buffer_size, obs_shape=env.observation_dim, act_shape=act_dim, seed=args.seed)
    per_task_batch = args.batch_size if per_task else -(-args.batch_size // n)  # conditioned: split over tasks
    g = torch.Generator().manual_seed(args.seed)  # reset seeds, exploration and the losses' noise
    # every random draw is the whole batch's (the same in every process), of which a process keeps its rows
    grad_reduce = None if per_task or group is None else (  # conditioned: the mean over all tasks' samples
        lambda grads: mo.distributed.all_reduce_mean(grads, count=m, group=group))

    def act(obs: Tensor, random: bool) -> Tensor:  # (my tasks, obs_dim) -> (my tasks, act_dim), exploring
        if random:
            return low + (high - low) * torch.rand(n, act_dim, generator=g)[mine]
        with torch.no_grad():
            if per_task:
                dist = vmap(lambda p, o: functional_call(policy, p, (o,)))(params["policy"], obs)
            else:
                dist = functional_call(policy, params["policy"], (torch.cat([obs, my_features], -1),))
            return policy.sample(dist, torch.randn(n, act_dim, generator=g)[mine])[0]

    # --- logging, checkpointing and exact resumption (with any number of processes) -----------------
    start, log_rows, env_steps, batch_steps, gradient_steps, update_seconds = 0, 0, 0, 0, 0, 0.0
    ckpt_path = out / "checkpoint.pt"
    ckpt = mo.distributed.on_main_process(  # the main process reads it, every process gets the state
        lambda: load_run_checkpoint(ckpt_path, recipe="sac_experts", config=asdict(args), ignore=RUN_CONTROL,
                                    iterations=args.iterations) if args.resume and ckpt_path.exists() else None,
        group=group)
    if ckpt is not None:
        own = (lambda tree: rows_of(tree, mine)) if per_task else (lambda tree: tree)
        with torch.no_grad():
            for mine_leaf, saved in zip(leaves(params), leaves(own(ckpt["params"])), strict=True):
                mine_leaf.copy_(saved)
        target = mo.tree.tree_map(lambda v: v.clone(), own(ckpt["target"]))
        optimizer.load_state_dict(own(ckpt["optimizer"]))
        buffer.load_state_dict(buffer_rows(ckpt["buffer"], mine))
        g.set_state(ckpt["generator"])
        start, log_rows, env_steps = ckpt["iteration"], ckpt["log_rows"], ckpt["env_steps"]
        batch_steps = ckpt.get("batch_steps", env_steps // n)  # older checkpoints counted n steps per batch step
        gradient_steps, update_seconds, initial_returns = ckpt["gradient_steps"], ckpt["update_seconds"], \
            ckpt["initial_returns"]
        if main_process:
            print(f"resumed from {ckpt_path} at iteration {start}")
    else:  # the untrained experts' returns, for the paired gains in metrics.json
        initial_returns = mo.distributed.on_main_process(
            lambda: evaluate(args.env, tasks, make_expert(policy, initial, features), args, horizon), group=group)
    if main_process:
        save_json(out / "config.json", asdict(args))
    logger = RunLogger(out, fields=FIELDS, total=args.iterations, initial=start, rows=log_rows,
                       tensorboard=args.tensorboard, progress=args.progress,
                       desc=f"sac_experts {args.mode} {args.env}", defer_interrupt=True)  # Ctrl-C: checkpoint, stop

    def gather_rows(tree: Any) -> Any:
        """Every task's rows of per-task tensors, `(my tasks, ...)` -> `(tasks, ...)`, in one gather (bool and
        integer tensors travel as float64, exactly)."""
        if group is None:
            return tree
        dtypes = mo.tree.tree_map(lambda v: v.dtype, tree)
        shares = mo.tree.tree_map(lambda v: v if v.is_floating_point() else v.double(), tree)
        return mo.tree.tree_map(lambda v, dtype: v.to(dtype), mo.distributed.gather_tasks(shares, n, group), dtypes)

    def checkpoint(iteration: int) -> None:  # every process takes part: the per-task rows are gathered
        buffer_state, adam = buffer.state_dict(), optimizer.state_dict()
        rows = {"buffer": {k: buffer_state[k] for k in ("storage", "positions", "sizes")}}
        if per_task:  # the experts' rows too (Adam's 0-dim step counts are every process's)
            rows.update(params=mo.tree.stop_gradient(params), target=target,
                        adam={i: {k: v for k, v in s.items() if v.dim()} for i, s in adam["state"].items()})
        rows = gather_rows(rows)
        if not main_process:
            return
        if per_task:
            adam = {**adam, "state": {i: {**s, **rows["adam"][i]} for i, s in adam["state"].items()}}
        save_checkpoint(ckpt_path, {
            "recipe": "sac_experts", "config": asdict(args), "iteration": iteration,
            "tasks": [asdict(t) for t in tasks], "params": rows.get("params", mo.tree.stop_gradient(params)),
            "target": rows.get("target", target), "optimizer": adam, "buffer": {**buffer_state, **rows["buffer"]},
            "generator": g.get_state(), "log_rows": logger.rows, "env_steps": env_steps, "batch_steps": batch_steps,
            "gradient_steps": gradient_steps, "update_seconds": update_seconds, "initial_returns": initial_returns,
        })

    # --- training: every iteration is one episode of every task, all tasks stepped together --------------
    train_start = time.perf_counter()
    for it in range(start, args.iterations):
        t_env = t_update = 0.0
        t0 = time.perf_counter()
        seeds = torch.randint(0, 2**31 - 1, (n,), generator=g)[mine].numpy()
        obs = torch.as_tensor(env.reset(tasks[mine], seeds=seeds), dtype=torch.float32)
        alive, returns, aux = torch.ones(n, dtype=torch.bool), torch.zeros(m), None  # alive: every task's
        for _ in range(horizon):
            action = act(obs, random=batch_steps < args.learning_starts)
            # only copies whose episode runs take a step and store it (the terminal one included, with
            # terminated=True, so no target bootstraps from it); the others wait, not stepped, until all have
            # terminated or the horizon is reached: states after a termination are not part of the task
            running = alive[mine]
            result = env.step(np.clip(action.double().numpy(), env.action_low, env.action_high),
                              active=running.numpy())
            next_obs = torch.as_tensor(result.observations, dtype=torch.float32)
            terminated = torch.as_tensor(result.terminated) & running
            rewards = torch.as_tensor(result.rewards, dtype=torch.float32) * running
            buffer.add(obs, action, rewards, next_obs, terminated, where=running)
            returns += rewards
            env_steps += int(alive.sum())  # the real environment steps, of all tasks
            batch_steps += 1
            alive &= ~(mo.distributed.gather_tasks(terminated.double(), n, group) > 0)  # all tasks' terminations
            obs = torch.where(running[:, None], next_obs, obs)  # a finished copy keeps its last observation
            t1 = time.perf_counter()
            t_env += t1 - t0
            for _ in range(args.gradient_steps if batch_steps > args.learning_starts else 0):
                batch = network_batch(buffer.sample(per_task_batch, task_rows=mine, batch_tasks=n), my_features)
                noise = torch.randn(2, n, per_task_batch, act_dim, generator=g)[:, mine]
                noise = noise.reshape(2, *batch.rewards.shape, act_dim)  # conditioned: (2, my tasks * B, act_dim)
                target, aux = gradient_step(policy, critic, params, target, optimizer, batch, noise[0], noise[1],
                                            gamma=args.gamma, tau=args.tau, per_task=per_task, grad_reduce=grad_reduce)
                gradient_steps += 1
            t0 = time.perf_counter()
            t_update += t0 - t1
            if not alive.any():
                break
        update_seconds += t_update
        returns = mo.distributed.gather_tasks(returns, n, group)  # every task's
        row = {"return/mean": returns.mean().item(), "return/min": returns.min().item(), "env_steps": env_steps,
               "gradient_steps": gradient_steps, "time/env_s": t_env, "time/update_s": t_update}
        if aux is not None:  # means over this process's experts (or samples), then over all tasks
            means = {k: aux[k].mean() for k in ("critic_loss", "actor_loss", "alpha", "entropy", "q")}
            row.update({k: v.item() for k, v in mo.distributed.all_reduce_mean(means, count=m, group=group).items()})
        logger.log(it + 1, row)
        logger.advance(1, ret=row["return/mean"])
        stop = mo.distributed.any_process(logger.interrupted, group=group)  # all processes stop together
        if (it + 1) % args.checkpoint_every == 0 or it + 1 == args.iterations or stop:
            checkpoint(it + 1)
            if stop:
                logger.request_stop()
            logger.stop_if_interrupted(it + 1)  # after Ctrl-C: "interrupted: checkpoint at iteration N"
    logger.close()  # also gives Ctrl-C back: it stops the evaluation below at once
    env.close()
    train_seconds = time.perf_counter() - train_start

    # --- the experts' returns and their demonstrations (the main process, for all tasks) ----------------
    actor = mo.tree.stop_gradient(params["policy"])
    if per_task:
        actor = mo.distributed.gather_tasks(actor, n, group)  # every expert, in every process
    expert = make_expert(policy, {"policy": actor}, features)

    def evaluate_and_record() -> dict[str, Any]:
        expert_returns = evaluate(args.env, tasks, expert, args, horizon)
        demos = envs.collect_demonstrations(  # those of the final experts (deterministic, cheap next to training)
            args.env, tasks, expert, episodes=args.demo_episodes, horizon=horizon, action_noise=args.demo_noise,
            generator=torch.Generator().manual_seed(args.seed + TRAINING_TASKS_SEED_OFFSET),
            description=f"SAC experts ({args.mode}), {env_steps / n:.0f} env steps per task (mean), "
                        f"recipes/sac_experts.py seed {args.seed}", physics_threads=args.physics_threads)
        partial = out / "demos.partial"
        shutil.rmtree(partial, ignore_errors=True)
        envs.save_demonstrations(partial, demos)
        shutil.rmtree(out / "demos", ignore_errors=True)  # replaced by the complete new directory at once
        os.replace(partial, out / "demos")
        return {"expert_returns": expert_returns, "demo_return": demos.returns.mean().item(),
                "demo_env_steps": float(demos.env_steps), "demo_seconds": demos.seconds}

    final = mo.distributed.on_main_process(evaluate_and_record, group=group)
    expert_returns = final["expert_returns"]
    gains = expert_returns - initial_returns
    metrics: dict[str, float] = {
        "expert_return": expert_returns.mean().item(),
        "initial_return": initial_returns.mean().item(),
        "gain": gains.mean().item(),
        "gain_min": gains.min().item(),
        "demo_return": final["demo_return"],
        "env_steps": float(env_steps),
        "gradient_steps": float(gradient_steps),
        "expert_updates": float(gradient_steps * (n if per_task else 1)),
        "train_seconds": train_seconds,
        "ms_per_gradient_step": 1000 * update_seconds / max(gradient_steps, 1),
        "demo_env_steps": final["demo_env_steps"],
        "demo_seconds": final["demo_seconds"],
        **{f"expert_return_task_{i}": r for i, r in enumerate(expert_returns.tolist())},
        **{f"initial_return_task_{i}": r for i, r in enumerate(initial_returns.tolist())},
    }
    if not main_process:  # another process of a distributed run: the same metrics, no files
        return metrics
    history = logger.history()
    plot_learning_curve(out / "learning_curve.png", {"training episode return (mean over tasks)":
                        (history["env_steps"], history["return/mean"])}, title=f"SAC experts ({args.mode}), "
                        f"{args.env}", xlabel="environment steps (all tasks)", ylabel="return")
    save_json(out / "metrics.json", metrics)
    logger.write(f"experts ({args.mode}) on {n} {args.env} tasks: return {metrics['initial_return']:.2f} -> "
                 f"{metrics['expert_return']:.2f}, {env_steps} env steps, {gradient_steps} gradient steps, "
                 f"{train_seconds:.0f} s; demonstrations in {out / 'demos'}")
    return metrics


if __name__ == "__main__":
    main(tyro.cli(Args))
