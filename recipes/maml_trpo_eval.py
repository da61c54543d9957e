# Docs: docs/recipes/maml_trpo.md (site page: recipes/maml_trpo/), section "Evaluation"
"""Adapts a saved MAML-TRPO meta-policy to held-out tasks for 0..N policy-gradient steps.

Writes ``eval.csv``, ``eval.md`` (mean return and 95% confidence interval over tasks per number
of adaptation steps, and the paired gain over the same tasks), ``eval_tasks.csv`` (every task's
return) and ``eval.png`` (return vs adaptation steps). The inner step is the one of
the training run (its estimator, learning rate, baseline and GAE), re-sampling after each step;
``--inner-lr`` and ``--episodes`` set a test-time protocol (e.g. the MAML paper's ``--inner-lr 0.5 0.25
--episodes 40`` on navigation).

Run ``python -m recipes.maml_trpo_eval --run-dir runs/maml_trpo``.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path

import torch
import tyro

from metaops import envs
from metaops.experiment import load_checkpoint, paired_gains, save_json, write_adaptation_evaluation
from recipes.maml_trpo import Args, evaluate, make_inner_loss, make_policy, validate


@dataclass
class EvalArgs:
    run_dir: str
    """directory of a maml_trpo run (its checkpoint.pt is loaded)"""
    out_dir: str | None = None
    """where to write eval.csv/eval.md/eval.png/eval.json; None: <run_dir>/eval"""
    tasks: int = 40
    """held-out tasks"""
    steps: int = 3
    """adapt for 0, 1, ..., steps inner steps"""
    seed: int = 1_000
    """seed of the held-out tasks and their episodes (use one not used in training)"""
    episodes: int | None = None
    """episodes per task and step; None: the run's eval_episodes, else its training episodes"""
    inner_lr: tuple[float, ...] | None = None
    """step sizes of the adaptation steps, the last one repeated (the MAML paper's navigation test: 0.5 0.25);
    None: the run's eval_inner_lr, else its training inner_lr"""
    physics_threads: int = 2
    """MuJoCo stepping threads (ignored for navigation)"""


def main(eval_args: EvalArgs) -> dict[str, float]:
    if eval_args.tasks < 2 or eval_args.steps < 0:
        raise ValueError(f"need tasks >= 2 and steps >= 0, got {eval_args.tasks}, {eval_args.steps}")
    ckpt = load_checkpoint(Path(eval_args.run_dir) / "checkpoint.pt")
    if ckpt.get("recipe") != "maml_trpo":
        raise ValueError(f"{eval_args.run_dir} holds a {ckpt.get('recipe')!r} checkpoint, not maml_trpo")
    known = {f.name for f in fields(Args)}
    args = Args(**{k: v for k, v in ckpt["config"].items() if k in known})
    args.hidden = tuple(args.hidden)
    args.physics_threads = eval_args.physics_threads
    torch.set_num_threads(args.threads)
    if eval_args.episodes is not None:
        args.eval_episodes = eval_args.episodes
    if eval_args.inner_lr is not None:
        args.eval_inner_lr = tuple(eval_args.inner_lr)
    validate(args)
    env_name = args.env

    probe = envs.make_batched(env_name, num_tasks=1, episodes_per_task=1)
    policy = make_policy(probe, args.hidden, kind=args.policy, init_std=args.init_std, min_std=args.min_std,
                         action_units=args.action_units)
    policy.load_state_dict(ckpt["policy"])
    loss_fn = make_inner_loss(policy, args.estimator, dice_decay=args.dice_decay)
    torch.manual_seed(eval_args.seed)
    curve = evaluate(policy, env_name, loss_fn, args, num_tasks=eval_args.tasks, steps=eval_args.steps,
                     seed=eval_args.seed, horizon=args.horizon or probe.horizon)

    out = Path(eval_args.out_dir) if eval_args.out_dir is not None else Path(eval_args.run_dir) / "eval"
    title = f"MAML-TRPO ({args.estimator}), {env_name}, iteration {ckpt['iteration']}"
    write_adaptation_evaluation(out, curve, title=title)
    metrics = {"iteration": float(ckpt["iteration"]), "env_steps": float(ckpt["env_steps"]),
               **paired_gains(curve)}
    save_json(out / "eval.json", metrics)
    print((out / "eval.md").read_text(), end="")
    return metrics


if __name__ == "__main__":
    main(tyro.cli(EvalArgs))
