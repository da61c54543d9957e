# Docs: docs/recipes/pearl.md (site page: recipes/pearl/)
"""PEARL: Efficient Off-Policy Meta-RL via Probabilistic Context Variables (Rakelly et al., ICML 2019).

A context encoder maps each transition (s, a, r) of a task to a Gaussian factor over a latent z;
the posterior q(z | c) is their product, pulled towards the unit prior by a KL term (the
information bottleneck). SAC learns a policy and twin critics on [s, z]; the encoder is trained
by the critic's loss through the reparameterised z (not by the actor's). Each iteration collects
episodes on a few training tasks, with z from the prior (data for the encoder and for SAC) and
with z from the posterior of that prior data (data for SAC only), into per-task replay buffers;
then thousands of gradient steps, each on a meta-batch of tasks, vmapped over the tasks. At
meta-test, z comes from the prior for the exploration episodes and from the posterior of
everything seen on the task since.

Run ``python -m recipes.pearl --help`` for the options. Under ``torchrun`` every process holds the
replay buffers of its share of the training tasks, samples its share of each collection batch, and
computes the losses of the meta-batch tasks whose buffers it holds; the gradients and statistics of
every step are averaged over all tasks (``metaops.distributed``), and the run equals one process's up
to float rounding.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import torch
import torch.distributed
import tyro
from torch import Tensor, nn
from torch.func import functional_call, vmap

import metaops as mo
from metaops import envs, rl
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

_PEARL = dict(train_tasks=100, horizon=200, reward_scale=5.0, kl_weight=0.1, initial_episodes=10, prior_episodes=2,
              posterior_episodes=2, grad_steps=2000)  # configs/default.py: 2000, 400, 400 steps at H=200
REFERENCE: dict[str, dict[str, float]] = {
    "HalfCheetahVel": dict(_PEARL, posterior_episodes=3),  # cheetah-vel.json: 600 posterior steps
    "HalfCheetahDir": dict(_PEARL, train_tasks=2),  # cheetah-dir.json: the two directions
    "AntGoal": dict(_PEARL, kl_weight=1.0, grad_steps=4000),  # ant-goal.json
    "Navigation2D": dict(_PEARL, train_tasks=80, horizon=20, reward_scale=100.0, initial_episodes=10, prior_episodes=10,
                         posterior_episodes=10, grad_steps=1000),  # point-robot.json: 200-step phases at H=20
}
"""Per-family values of the reference code (``configs/*.json`` over ``configs/default.py``) for the
options left at None; other families get the defaults of ``configs/default.py``."""


@dataclass
class Args:
    env: EnvName = "HalfCheetahVel"
    """task family, a name registered in metaops.envs (HalfCheetahVel, HalfCheetahDir, Navigation2D, ...)"""
    out_dir: str = "runs/pearl"
    """run directory: config, metrics CSV, TensorBoard events, checkpoint, evaluation table and PNGs"""
    seed: int = 0
    """seed of the initialisation, the training tasks, the task stream and all sampling noise"""
    iterations: int = 500
    """iterations (each: collect on a few training tasks, then grad_steps gradient steps)"""
    train_tasks: int | None = None
    """fixed training tasks, each with its own replay buffers; None: the reference's (100; 80 navigation)"""
    horizon: int | None = None
    """episode length; None: the reference's (200; 20 for navigation, the point robot of PEARL)"""
    latent_dim: int = 5
    """size of the latent task variable z"""
    hidden: int = 300
    """width of the hidden layers of the policy and the critics"""
    encoder_hidden: int = 200
    """width of the hidden layers of the context encoder"""
    layers: int = 3
    """hidden layers of every network"""
    lr: float = 3e-4
    """Adam learning rate of the encoder, the policy, the critics (and the temperature if tuned)"""
    reward_scale: float | None = None
    """rewards are multiplied by this in the Bellman target (with alpha = 1 it sets the entropy weight); None: the
    reference's (5; 100 for navigation)"""
    kl_weight: float | None = None
    """weight of the KL of each task's posterior to the unit prior (summed over the meta-batch); None: the
    reference's (0.1; 1 for AntGoal)"""
    alpha: float = 1.0
    """SAC temperature (its initial value if tune_alpha)"""
    tune_alpha: bool = False
    """tune the temperature towards the target entropy -dim(A) in the unit box (the reference keeps it fixed)"""
    batch_size: int = 256
    """SAC transitions per task and gradient step"""
    context_batch: int = 100
    """context transitions per task and gradient step (the reference's embedding batch)"""
    meta_batch: int = 16
    """training tasks per gradient step (drawn with replacement), vmapped"""
    grad_steps: int | None = None
    """gradient steps per iteration; None: the reference's (2000; 1000 navigation, 4000 AntGoal)"""
    tau: float = 0.005
    """Polyak rate of the target critics"""
    gamma: float = 0.99
    """discount"""
    initial_episodes: int | None = None
    """episodes per training task before training, z from the prior; None: the reference's (2000 steps: 10 at H=200)"""
    tasks_per_iteration: int = 5
    """training tasks (drawn with replacement) on which each iteration collects data"""
    prior_episodes: int | None = None
    """episodes per collected task with z from the prior, into both buffers; None: the reference's (400 steps: 2)"""
    posterior_episodes: int | None = None
    """episodes per collected task with z from the posterior of the prior data, SAC buffer only; None: the
    reference's (2; 3 for HalfCheetahVel, 600 steps)"""
    use_next_obs: bool = False
    """context transitions [s, a, r, s'] instead of [s, a, r]"""
    buffer_capacity: int = 30_000
    """SAC replay capacity per training task (preallocated; the reference run adds about 22k per task)"""
    batching: Literal["vmap", "loop"] = "vmap"
    """gradient steps: one vmapped call over the meta-batch, or a Python loop over its tasks (same result)"""
    threads: int = 1
    """torch threads of the gradient steps (sampling uses 1)"""
    physics_threads: int = 2
    """MuJoCo stepping threads (ignored for navigation)"""
    eval_tasks: int = 30
    """held-out tasks of the final evaluation (0: skip it)"""
    eval_episodes: int = 3
    """consecutive episodes per held-out task (the reference's 600 steps at H=200)"""
    exploration_episodes: int = 2
    """held-out episodes with z from the prior before the posterior is used"""
    eval_seed: int = 1_000
    """seed of the held-out tasks and their episodes"""
    checkpoint_every: int = 10
    """iterations between checkpoints (one is always written at the end)"""
    resume: bool = True
    """continue from out_dir/checkpoint.pt if it exists (the configuration must match)"""
    progress: bool = True
    """show a progress bar"""
    tensorboard: bool = True
    """write TensorBoard event files"""


RUN_CONTROL = ("out_dir", "iterations", "checkpoint_every", "resume", "progress", "tensorboard", "threads",
               "physics_threads", "eval_tasks", "eval_episodes", "exploration_episodes", "eval_seed", "batching")
"""Fields a resumed run may change; every other field must match the checkpoint's."""

STATS = ("loss/critic", "loss/actor", "z/variance", "q_target", "entropy", "kl")
"""Per-task statistics of a gradient step, averaged over the meta-batch (the order of the reduction)."""

FIELDS = ["return/prior", "return/posterior", "loss/critic", "loss/actor", "kl", "z/variance", "q_target", "entropy",
          "alpha", "env_steps", "grad_steps", "time/sample_s", "time/update_s", "time/ms_per_grad_step"]
"""CSV/TensorBoard columns, one row per iteration (see the docs page)."""


def resolve(args: Args) -> Args:
    """A copy of ``args`` with every None option replaced by the reference value for ``args.env``."""
    if args.env not in ENVS:  # the CLI checks this too; Args(env=...) from Python does not
        raise ValueError(f"unknown env {args.env!r}; the registered environments are {', '.join(ENVS)}")
    ref = REFERENCE.get(args.env, _PEARL)
    pick = lambda name, cast: cast(ref[name]) if getattr(args, name) is None else getattr(args, name)
    return Args(**{**asdict(args), **{name: pick(name, int) for name in (
        "train_tasks", "horizon", "initial_episodes", "prior_episodes", "posterior_episodes", "grad_steps")},
        "reward_scale": pick("reward_scale", float), "kl_weight": pick("kl_weight", float)})


def validate(args: Args) -> None:
    check_positive(args, "iterations", "train_tasks", "horizon", "latent_dim", "hidden", "encoder_hidden", "layers",
                   "lr", "reward_scale", "alpha", "batch_size", "context_batch", "meta_batch", "grad_steps", "tau",
                   "initial_episodes", "tasks_per_iteration", "prior_episodes", "buffer_capacity", "threads",
                   "physics_threads", "checkpoint_every")
    if args.kl_weight < 0 or args.posterior_episodes < 0 or not 0 <= args.gamma <= 1 or args.tau > 1:
        raise ValueError(f"need kl_weight >= 0, posterior_episodes >= 0, gamma in [0, 1] and tau <= 1, got "
                         f"{args.kl_weight}, {args.posterior_episodes}, {args.gamma}, {args.tau}")
    if args.eval_tasks == 1 or args.eval_tasks < 0:
        raise ValueError(f"need eval_tasks = 0 or >= 2, got {args.eval_tasks}")
    if args.eval_tasks and not 1 <= args.exploration_episodes < args.eval_episodes:
        raise ValueError(f"need 1 <= exploration_episodes < eval_episodes, got {args.exploration_episodes} and "
                         f"{args.eval_episodes} (or eval_tasks=0)")


class Actor(nn.Module):
    """The SAC policy as the sampler's [metaops.envs.Policy][]: noise from the sampler's generator."""

    def __init__(self, policy: rl.SquashedGaussianMLPPolicy, *, deterministic: bool = False) -> None:
        super().__init__()
        self.policy, self.deterministic = policy, deterministic

    def forward(self, obs: Tensor) -> tuple[Tensor, Tensor]:
        return self.policy(obs)

    def sample(self, dist: tuple[Tensor, Tensor], *, generator: torch.Generator | None = None) -> Tensor:
        if self.deterministic:  # the mean action, for evaluation
            return self.policy.mode(dist)
        return self.policy.sample(dist, torch.randn(dist[0].shape, generator=generator))[0]

    def log_prob(self, dist: tuple[Tensor, Tensor], actions: Tensor) -> Tensor:
        center, scale = self.policy.action_center, self.policy.action_scale
        pre_tanh = torch.atanh(((actions - center) / scale).clamp(-1 + 1e-6, 1 - 1e-6))
        return rl.squashed_gaussian_log_prob(*dist, pre_tanh, scale=scale)


def make_networks(env: envs.BatchedEnv, args: Args) -> tuple[rl.ContextEncoder, rl.SquashedGaussianMLPPolicy,
                                                            rl.TwinQCritic]:
    """The context encoder, and the policy and twin critics on [obs, z], of the reference's sizes."""
    obs_dim, act_dim, z_dim = env.observation_dim, env.action_dim, args.latent_dim
    context_dim = obs_dim * (2 if args.use_next_obs else 1) + act_dim + 1
    hidden = (args.hidden,) * args.layers
    encoder = rl.ContextEncoder(context_dim, z_dim, hidden_sizes=(args.encoder_hidden,) * args.layers)
    policy = rl.SquashedGaussianMLPPolicy(obs_dim + z_dim, act_dim, hidden_sizes=hidden,
                                          action_bounds=(env.action_low.tolist(), env.action_high.tolist()))
    critic = rl.TwinQCritic(obs_dim + z_dim, act_dim, hidden_sizes=hidden)
    return encoder, policy, critic


def context_of(t: rl.Transitions | dict[str, Tensor], use_next_obs: bool) -> Tensor:
    """Context transitions [s, a, r(, s')] `(..., N, context_dim)` from transitions `(..., N, ...)`."""
    get = (lambda name: t[name]) if isinstance(t, dict) else (lambda name: getattr(t, name))
    parts = [get("obs"), get("actions"), get("rewards").unsqueeze(-1)]
    return torch.cat(parts + [get("next_obs")] if use_next_obs else parts, dim=-1)


def buffer_state(buffer: rl.ReplayBuffer) -> dict:
    """``state_dict`` with only the filled part of the storage: checkpoints stay small while buffers fill."""
    state = buffer.state_dict()
    return {**state, "storage": {k: v[:, :buffer.size].clone() for k, v in state["storage"].items()}}


def load_buffer(buffer: rl.ReplayBuffer, state: dict) -> None:
    storage = {k: torch.zeros_like(v) for k, v in buffer.storage.items()}
    for k, v in state["storage"].items():
        storage[k][:, :v.shape[1]] = v
    buffer.load_state_dict({**state, "storage": storage})


def main(args: Args) -> dict[str, float]:
    args = resolve(args)
    validate(args)
    out = Path(args.out_dir)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    g = torch.Generator().manual_seed(args.seed)  # training tasks, task stream, reset seeds, all noise (every process)
    group = mo.distributed.init()  # under torchrun: the processes that share the training tasks; else None
    main_process, world = mo.distributed.is_main_process(), mo.distributed.world_size(group)
    if world > min(args.train_tasks, args.tasks_per_iteration) or 0 < args.eval_tasks < world:
        raise ValueError(f"each of the {world} processes samples a share of the training tasks, of each "
                         f"iteration's tasks and of the held-out tasks: need train_tasks, tasks_per_iteration and "
                         f"eval_tasks (or eval_tasks=0) >= {world}, got {args.train_tasks}, "
                         f"{args.tasks_per_iteration} and {args.eval_tasks}: raise them or use fewer processes")
    owned = range(args.train_tasks)[mo.distributed.task_slice(args.train_tasks, group)]  # whose buffers it holds
    tasks_dist = envs.task_distribution(args.env)
    train_tasks = tasks_dist.sample_tasks(args.train_tasks, generator=g)
    envs_by_shape: dict[tuple[int, int], envs.BatchedEnv] = {}

    def env_for(num_tasks: int, episodes: int) -> envs.BatchedEnv:
        if (num_tasks, episodes) not in envs_by_shape:
            envs_by_shape[num_tasks, episodes] = envs.make_batched(
                args.env, num_tasks=num_tasks, episodes_per_task=episodes, num_threads=args.physics_threads)
        return envs_by_shape[num_tasks, episodes]

    share = mo.distributed.task_slice(args.tasks_per_iteration, group)  # this process's rows of a collection
    probe = env_for(share.stop - share.start, args.prior_episodes)
    obs_dim, act_dim, H, Z = probe.observation_dim, probe.action_dim, args.horizon, args.latent_dim
    context_dim = obs_dim * (2 if args.use_next_obs else 1) + act_dim + 1  # [s, a, r(, s')]
    encoder, policy, critic = make_networks(probe, args)
    for module in (encoder, policy, critic):
        mo.distributed.broadcast_params(module, group=group)  # the same networks in every process
    actor = Actor(policy)
    log_alpha = torch.tensor(math.log(args.alpha), requires_grad=args.tune_alpha)
    # -dim(A) in the unit box; log-densities are in action units, so a box of half-range h shifts it by sum(log h)
    target_entropy = float(-act_dim + torch.log(torch.as_tensor((probe.action_high - probe.action_low) / 2)).sum())
    params = {"encoder": dict(encoder.named_parameters()), "policy": dict(policy.named_parameters()),
              "critic": dict(critic.named_parameters()), "log_alpha": log_alpha}
    target = mo.tree.stop_gradient({k: v.clone() for k, v in params["critic"].items()})
    leaves = [*encoder.parameters(), *policy.parameters(), *critic.parameters()] + ([log_alpha] * args.tune_alpha)
    optimizer = torch.optim.Adam(leaves, lr=args.lr, fused=True)  # elementwise: one Adam per network, as the reference
    # per training task this process holds: the SAC replay buffer, and the encoder's buffer of recent prior-z data
    sac_buffers = {k: rl.ReplayBuffer(1, args.buffer_capacity, obs_shape=obs_dim, act_shape=act_dim,
                                      seed=args.seed * 1_000_003 + 2 * k) for k in owned}
    enc_capacity = max(args.initial_episodes, args.prior_episodes) * H
    enc_buffers = {k: rl.ReplayBuffer(1, enc_capacity, obs_shape=obs_dim, act_shape=act_dim,
                                      seed=args.seed * 1_000_003 + 2 * k + 1) for k in owned}

    def collect(task_ids: list[int], episodes: int, latent: Tensor, *, into_encoder: bool) -> tuple[Tensor, int]:
        """Episodes on training tasks with z = latent `(task, episode, Z)`, stored in their buffers.

        Each process samples its rows of the batch (its rows of the whole batch's random draws); the
        rows are gathered, and the process holding a task's buffers stores its transitions. Returns
        the episode returns of the whole batch `(task, episode)` and its number of real steps.
        """
        rows = mo.distributed.task_slice(len(task_ids), group)
        batch = envs.sample_episodes(env_for(len(task_ids[rows]), episodes), actor,
                                     mo.tree.stop_gradient(dict(actor.named_parameters())),
                                     [train_tasks[k] for k in task_ids[rows]], generator=g, horizon=H,
                                     latent=latent[rows], task_rows=rows, batch_tasks=len(task_ids))
        steps = mo.distributed.gather_tasks({  # every row of the batch, in every process (exact)
            "obs": batch.observations, "actions": batch.actions, "rewards": batch.rewards,
            "next_obs": batch.next_observations, "terminated": batch.terminated.float(), "mask": batch.mask,
        }, len(task_ids), group)
        for i, k in enumerate(task_ids):
            if k in owned:  # its real steps, in episode then time order (EpisodeBatch.transitions)
                real = steps["mask"][i] > 0
                fields = [steps[name][i][real].unsqueeze(0) for name in ("obs", "actions", "rewards", "next_obs")]
                fields.append(steps["terminated"][i][real].bool().unsqueeze(0))
                sac_buffers[k].add(*fields)
                if into_encoder:
                    enc_buffers[k].add(*fields)
        return (steps["rewards"] * steps["mask"]).sum(-1), int(steps["mask"].sum())

    def from_owners(rows: Tensor) -> Tensor:
        """A batch `(task, ...)` whose rows each process filled for its own tasks (zeros elsewhere), whole.

        Each row comes from the one process that holds the task: the processes' batches are gathered
        and summed, which adds only zeros to each row (exact).
        """
        if group is None:
            return rows
        return mo.distributed.gather_tasks(rows.unsqueeze(0), world, group).sum(0)  # one batch per process

    def sample_meta_batch(task_ids: list[int]) -> tuple[Tensor, rl.Transitions]:
        """Context `(M, context_batch, context_dim)` from the encoder buffers, SAC batch `(M, batch_size, ...)`."""
        context = torch.cat([context_of(enc_buffers[k].sample(args.context_batch), args.use_next_obs)
                             for k in task_ids])
        parts = [sac_buffers[k].sample(args.batch_size) for k in task_ids]
        return context, rl.Transitions(*(torch.cat(field) for field in zip(*parts)))

    # --- one task's losses; the meta-batch is one vmap over the tasks (shared parameters) ---------
    def task_terms(params, target, context, batch, z_noise, noise, next_noise):
        """(SAC loss, KL to the prior, diagnostics) of one task: z ~ q(z | context), reparameterised."""
        mean, variance = functional_call(encoder, params["encoder"], (context,))
        z = (mean + variance.sqrt() * z_noise).expand(batch.obs.shape[0], Z)
        obs_z = torch.cat([batch.obs, z], -1)  # the critic's gradient reaches the encoder through z
        sac_batch = rl.Transitions(obs_z, batch.actions, args.reward_scale * batch.rewards,
                                   torch.cat([batch.next_obs, z.detach()], -1), batch.terminated)
        y = rl.sac_soft_target(policy, params["policy"], critic, target, params["log_alpha"], sac_batch, next_noise,
                               gamma=args.gamma)
        critic_loss = 2 * rl.sac_critic_loss(critic, params["critic"], sac_batch, y)  # the reference's sum of MSEs
        actor_loss, log_probs = rl.sac_actor_loss(policy, params["policy"], critic, params["critic"],
                                                  params["log_alpha"], obs_z.detach(), noise)  # z detached
        temperature_loss = rl.sac_temperature_loss(params["log_alpha"], log_probs, target_entropy=target_entropy)
        kl = rl.kl_to_standard_normal(mean, variance)
        stats = {"loss/critic": critic_loss.detach(), "loss/actor": actor_loss.detach(),
                 "z/variance": variance.detach().mean(), "q_target": y.mean(), "entropy": -log_probs.mean()}
        return critic_loss + actor_loss + temperature_loss, kl, stats

    batched_terms = vmap(task_terms, in_dims=(None, None, 0, 0, 0, 0, 0))

    def meta_loss(params, target, context, batch, z_noise, noise, next_noise):
        r"""This process's share of the meta-loss, and its tasks' mean statistics (``STATS``).

        The meta-loss is $\frac1M\sum_k (L_k + \beta M\,\mathrm{KL}_k)$ over the $M$ tasks of the
        meta-batch; a process holding $n$ of them returns the mean of those $n$ terms, so that the
        average of the processes' gradients weighted by their $n$ is the meta-loss's gradient.
        """
        if args.batching == "vmap":
            losses, kls, stats = batched_terms(params, target, context, batch, z_noise, noise, next_noise)
        else:  # the same numbers, one task at a time
            per_task = [task_terms(params, target, context[i], mo.tree.tree_index(batch, i), z_noise[i], noise[i],
                                   next_noise[i]) for i in range(context.shape[0])]
            losses, kls = torch.stack([t[0] for t in per_task]), torch.stack([t[1] for t in per_task])
            stats = {k: torch.stack([t[2][k] for t in per_task]) for k in per_task[0][2]}
        share = context.shape[0] / args.meta_batch  # n / M: 1 in one process
        loss = losses.mean() + args.kl_weight * kls.sum() / share
        stats = {**{name: value.mean() for name, value in stats.items()}, "kl": kls.mean()}
        return loss, {name: stats[name] for name in STATS}  # one order in every process

    # --- logging, checkpointing and exact resumption -------------------------------------------
    start, log_rows, env_steps, grad_steps = 0, 0, 0, 0
    ckpt_path = out / "checkpoint.pt"
    ckpt = mo.distributed.on_main_process(  # the main process reads it, every process gets the state
        lambda: load_run_checkpoint(ckpt_path, recipe="pearl", config=asdict(args), ignore=RUN_CONTROL,
                                    iterations=args.iterations) if args.resume and ckpt_path.exists() else None,
        group=group)
    if ckpt is not None:
        for module, name in ((encoder, "encoder"), (policy, "policy"), (critic, "critic")):
            module.load_state_dict(ckpt[name])
        with torch.no_grad():
            log_alpha.copy_(ckpt["log_alpha"])
        target = ckpt["target"]
        optimizer.load_state_dict(ckpt["optimizer"])
        for k in owned:  # the checkpoint holds every task's buffers, whatever the number of processes
            load_buffer(sac_buffers[k], ckpt["sac_buffers"][k])
            load_buffer(enc_buffers[k], ckpt["enc_buffers"][k])
        g.set_state(ckpt["generator"])
        start, log_rows, env_steps, grad_steps = ckpt["iteration"], ckpt["log_rows"], ckpt["env_steps"], \
            ckpt["grad_steps"]
        if main_process:
            print(f"resumed from {ckpt_path} at iteration {start}")
    del ckpt  # (the other tasks' buffers)
    if main_process:
        save_json(out / "config.json", asdict(args))
    logger = RunLogger(out, fields=FIELDS, total=args.iterations, initial=start, rows=log_rows,
                       tensorboard=args.tensorboard, progress=args.progress, desc=f"pearl {args.env}",
                       defer_interrupt=True)  # Ctrl-C: checkpoint at the end of the iteration, then stop

    def checkpoint(iteration: int) -> None:
        """Writes the run's state (main process); every process must call it, since it gathers the buffers."""
        states = [(buffer_state(sac_buffers[k]), buffer_state(enc_buffers[k])) for k in owned]
        shares = mo.distributed.gather_to_main(states, group=group)  # every task's, in task order, on the main
        states = [state for share in shares for state in share] if main_process else []
        if not main_process:
            return
        save_checkpoint(ckpt_path, {
            "recipe": "pearl", "config": asdict(args), "iteration": iteration, "encoder": encoder.state_dict(),
            "policy": policy.state_dict(), "critic": critic.state_dict(), "log_alpha": log_alpha.detach(),
            "target": target, "optimizer": optimizer.state_dict(), "generator": g.get_state(),
            "sac_buffers": [sac for sac, _ in states], "enc_buffers": [enc for _, enc in states],
            "log_rows": logger.rows, "env_steps": env_steps, "grad_steps": grad_steps,
        })

    # --- meta-training ---------------------------------------------------------------------------
    train_start = time.perf_counter()
    if start == 0:  # initial data on every training task, z from the prior (one z per episode)
        everyone = list(range(args.train_tasks))  # each process samples the tasks it holds
        _, steps = collect(everyone, args.initial_episodes,
                           torch.randn(args.train_tasks, args.initial_episodes, Z, generator=g), into_encoder=True)
        env_steps += steps
        envs_by_shape.pop((len(owned), args.initial_episodes)).close()
    for it in range(start, args.iterations):
        # 1. data: a few training tasks, z from the prior (both buffers), then from the posterior (SAC only)
        t0 = time.perf_counter()
        task_ids = torch.randint(args.train_tasks, (args.tasks_per_iteration,), generator=g).tolist()
        for k in task_ids:  # the encoder sees only recent prior-z data of the task, as in the reference
            if k in owned:
                enc_buffers[k].position = enc_buffers[k].size = 0
        T = len(task_ids)
        prior_returns, steps = collect(task_ids, args.prior_episodes,
                                       torch.randn(T, args.prior_episodes, Z, generator=g), into_encoder=True)
        env_steps += steps
        posterior_return = float("nan")
        if args.posterior_episodes:
            context = torch.zeros(T, args.context_batch, context_dim)
            for i, k in enumerate(task_ids):
                if k in owned:  # the process holding the task's encoder buffer draws its context batch
                    context[i] = context_of(enc_buffers[k].sample(args.context_batch), args.use_next_obs)[0]
            context = from_owners(context)
            with torch.no_grad():
                mean, variance = encoder(context)
            z = mean.unsqueeze(1) + variance.sqrt().unsqueeze(1) * torch.randn(T, args.posterior_episodes, Z,
                                                                                generator=g)
            posterior_returns, steps = collect(task_ids, args.posterior_episodes, z, into_encoder=False)
            env_steps += steps
            posterior_return = posterior_returns.mean().item()
        sample_s = time.perf_counter() - t0

        # 2. gradient steps, each on a meta-batch of training tasks, vmapped over the tasks
        t0 = time.perf_counter()
        totals: dict[str, Tensor] = {}
        for _ in range(args.grad_steps):
            meta_ids = torch.randint(args.train_tasks, (args.meta_batch,), generator=g).tolist()
            noise = torch.randn(2, args.meta_batch, args.batch_size, act_dim, generator=g)
            z_noise = torch.randn(args.meta_batch, Z, generator=g)
            mine = [i for i, k in enumerate(meta_ids) if k in owned]  # the tasks whose buffers this process holds
            if mine:
                context, batch = sample_meta_batch([meta_ids[i] for i in mine])
                loss, stats = meta_loss(params, target, context, batch, z_noise[mine], noise[0, mine], noise[1, mine])
                grads = list(torch.autograd.grad(loss, leaves))
            else:  # none of this step's tasks: the process only takes part in the reduction
                grads, stats = [torch.zeros_like(leaf) for leaf in leaves], dict.fromkeys(STATS, torch.zeros(()))
            # the means over the whole meta-batch: one all_reduce, weighted by each process's tasks (none alone)
            grads, stats = mo.distributed.all_reduce_mean((grads, stats), count=len(mine), group=group)
            for leaf, grad in zip(leaves, grads):
                leaf.grad = grad
            optimizer.step()
            target = rl.polyak_update(target, params["critic"], tau=args.tau)  # the same in every process
            for name, value in stats.items():
                totals[name] = totals.get(name, 0.0) + value
        grad_steps += args.grad_steps
        update_s = time.perf_counter() - t0

        prior_return = prior_returns.mean().item()
        logger.log(it + 1, {
            **{name: (value / args.grad_steps).item() for name, value in totals.items()},
            "return/prior": prior_return, "return/posterior": posterior_return, "alpha": log_alpha.exp().item(),
            "env_steps": env_steps, "grad_steps": grad_steps, "time/sample_s": sample_s, "time/update_s": update_s,
            "time/ms_per_grad_step": 1000 * update_s / args.grad_steps,
        })
        logger.advance(1, prior=prior_return, posterior=posterior_return)
        stop = mo.distributed.any_process(logger.interrupted, group=group)  # all processes stop together
        if (it + 1) % args.checkpoint_every == 0 or it + 1 == args.iterations or stop:
            checkpoint(it + 1)
            if stop:
                logger.request_stop()
            logger.stop_if_interrupted(it + 1)  # after Ctrl-C: "interrupted: checkpoint at iteration N"
    logger.close()  # also gives Ctrl-C back: it stops the evaluation below at once
    for env in envs_by_shape.values():
        env.close()
    train_seconds = time.perf_counter() - train_start

    # --- metrics and learning curve (against environment steps) ----------------------------------
    history = logger.history()
    last = slice(-min(10, len(history["step"])), None)
    mean_of = lambda xs: sum(xs) / len(xs)
    metrics: dict[str, float] = {
        "return_prior_last10": mean_of(history["return/prior"][last]),
        "return_posterior_last10": mean_of(history["return/posterior"][last]),
        "env_steps": float(env_steps),
        "grad_steps": float(grad_steps),
        "train_seconds": train_seconds,
        "ms_per_grad_step_last10": mean_of(history["time/ms_per_grad_step"][last]),
    }
    if main_process:  # (other processes of a distributed run write no files)
        plot_learning_curve(out / "learning_curve.png", {
            "z from the prior": (history["env_steps"], history["return/prior"]),
            "z from the posterior": (history["env_steps"], history["return/posterior"]),
        }, title=f"PEARL, {args.env} (training tasks)", xlabel="environment steps", ylabel="mean episode return",
            log_y=False)

    # --- final evaluation: held-out tasks, exploration episodes, then posterior sampling ---------
    if args.eval_tasks:  # each process samples its share of the held-out tasks; every process gets every return
        curve = evaluate(encoder, policy, args, num_tasks=args.eval_tasks, seed=args.eval_seed, group=group)
        if main_process:
            write_adaptation_evaluation(out, curve, title=f"PEARL, {args.env} (row k: episode k + 1 on the task; "
                                                          f"posterior from episode {args.exploration_episodes + 1})")
        metrics.update(paired_gains(curve, prefix="eval_"))  # paired: episode k + 1 against episode 1, same tasks
        metrics["eval_return_final"] = curve[-1].mean().item()
    if main_process:
        save_json(out / "metrics.json", metrics)
    logger.write(", ".join(f"{k} {v:.3f}" for k, v in metrics.items()))
    return metrics


def evaluate(encoder: rl.ContextEncoder, policy: rl.SquashedGaussianMLPPolicy, args: Args, *, num_tasks: int,
             seed: int, group: torch.distributed.ProcessGroup | None = None) -> Tensor:
    """Return of episode k + 1 on each held-out task, `(eval_episodes, task)`.

    ``args`` must be resolved. The tasks (those of the other meta-RL recipes' held-out evaluation
    with the same seed), reset seeds, actions and z samples depend only on ``seed``. The first
    ``exploration_episodes`` episodes use one z from the prior per task and sampled actions (the
    data the encoder is trained on); every later one a z sampled from the posterior of all the
    task's transitions so far and the mean action. With a process ``group`` each process samples
    its share of the tasks (its rows of the whole batch's random draws) and every process gets
    every task's returns; every process of the group must call it.
    """
    g = torch.Generator().manual_seed(seed)
    tasks = envs.task_distribution(args.env).sample_tasks(num_tasks, generator=g)
    mine = mo.distributed.task_slice(num_tasks, group)  # this process's share (all tasks in one process)
    env = envs.make_batched(args.env, num_tasks=len(tasks[mine]), episodes_per_task=1,
                            num_threads=args.physics_threads)
    explore, exploit = Actor(policy), Actor(policy, deterministic=True)
    params = mo.tree.stop_gradient(dict(explore.named_parameters()))
    z = torch.randn(num_tasks, args.latent_dim, generator=g)[mine]  # the prior's sample for the exploration episodes
    contexts, masks, returns = [], [], []
    try:
        for episode in range(args.eval_episodes):
            if episode >= args.exploration_episodes:  # the posterior of everything seen on the task so far
                with torch.no_grad():
                    mean, variance = encoder(torch.cat(contexts, 1), mask=torch.cat(masks, 1))
                z = mean + variance.sqrt() * torch.randn(num_tasks, args.latent_dim, generator=g)[mine]
            actor = explore if episode < args.exploration_episodes else exploit
            batch = envs.sample_episodes(env, actor, params, tasks[mine], generator=g, horizon=args.horizon, latent=z,
                                         task_rows=mine, batch_tasks=num_tasks)
            steps = {"obs": batch.observations, "actions": batch.actions, "rewards": batch.rewards,
                     "next_obs": batch.next_observations}
            contexts.append(context_of({k: v.flatten(1, 2) for k, v in steps.items()}, args.use_next_obs))
            masks.append(batch.mask.flatten(1, 2))
            returns.append(batch.returns[:, 0])
    finally:
        env.close()
    returns = mo.distributed.gather_tasks(torch.stack(returns, 1), num_tasks, group)  # (task, episode), every task
    return returns.T.contiguous()


if __name__ == "__main__":
    main(tyro.cli(Args))
