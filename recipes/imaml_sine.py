# Docs: docs/recipes/imaml_sine.md (site page: recipes/imaml_sine/)
"""Implicit MAML on sinusoid regression (Rajeswaran, Finn, Kakade, Levine, NeurIPS 2019).

Run ``python -m recipes.imaml_sine --help`` for the options. The run control (logs, checkpoints,
exact resumption, Ctrl-C) and the held-out evaluation are the sinusoid recipes' shared
protocol: ``metaops.experiment.SinusoidArgs`` and ``metaops.experiment.run_sinusoid``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
import tyro
from torch import nn

import metaops as mo
from metaops.experiment import SinusoidArgs, run_sinusoid


@dataclass
class Args(SinusoidArgs):  # + run control, task family and evaluation options: --iterations, --task, --eval-steps, ...
    out_dir: str = "runs/imaml_sine"
    iterations: int = 5_000
    """meta-iterations; longer runs diverge (the support Hessians sharpen past what 20 SGD steps tolerate)"""
    meta_batch: int = 25
    """tasks per meta-update"""
    shots: int = 10
    """support points per task during meta-training (K)"""
    query_shots: int = 10
    """query points per task during meta-training"""
    inner_steps: int = 20
    """inner SGD steps on the proximal objective during meta-training (its solution is what is differentiated)"""
    inner_lr: float = 0.002
    """inner SGD step size (also used at evaluation); 0.005 diverged after 1,300-2,450 iterations, 0.002 after ~6,700"""
    reg: float = 10.0
    """proximal regularisation lambda: the inner loop minimises L(phi) + lambda/2 |phi - theta|^2; it must exceed
    minus the smallest Hessian eigenvalue of the support loss (about 6 here) or CG solves an indefinite system"""
    cg_steps: int = 5
    """conjugate-gradient iterations for (I + H / lambda)^-1 g"""
    meta_lr: float = 1e-3
    """Adam step size of the meta-update"""
    hidden: int = 40
    """width of the two hidden layers of the 1-h-h-1 ReLU MLP"""


def make_model(hidden: int) -> nn.Module:
    return nn.Sequential(nn.Linear(1, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, 1))


def main(args: Args) -> dict[str, float]:
    args.validate("meta_batch", "shots", "query_shots", "inner_steps", "inner_lr", "reg", "cg_steps", "meta_lr",
                  "hidden")
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    g = torch.Generator().manual_seed(args.seed)  # the meta-training task stream (the same in every process)
    group = mo.distributed.init()  # under torchrun: the processes that share each task batch; else None
    dist = args.task_distribution()  # --task sinusoid (default) or --task polynomial --degree 3
    model = make_model(args.hidden)
    meta_opt = torch.optim.Adam(model.parameters(), lr=args.meta_lr)

    def predict(params, x):
        return torch.func.functional_call(model, params, (x,))

    def loss_fn(params, batch):
        x, y = batch
        return F.mse_loss(predict(params, x), y)

    # --- iMAML: solve the proximal problem without a graph; the meta-gradient of one task is ----
    # (I + H/lambda)^-1 grad L_query(phi*), H the support Hessian at phi*, solved by CG
    def task_value_and_grad(params, support, query):
        return mo.inner.implicit_value_and_grad(
            lambda adapted: loss_fn(adapted, query), loss_fn, params, support, mo.inner.sgd(args.inner_lr),
            reg=args.reg, steps=args.inner_steps, cg_steps=args.cg_steps,
        )

    def meta_step(params, support, query):  # mean query loss over all processes' tasks, and its gradient
        losses, grads = mo.map_tasks(task_value_and_grad, in_dims=(None, 0, 0), strategy="vmap")(params, support, query)
        means = (losses.mean(), mo.tree.tree_map(lambda g: g.mean(0), grads))  # over this process's tasks
        return mo.distributed.all_reduce_mean(means, count=len(losses), group=group)  # over all processes

    step_fn = mo.compile_meta_step(meta_step) if args.compile else meta_step

    def meta_iteration():  # sample a task batch, take one Adam step on the implicit meta-gradient
        tasks = dist.sample_tasks(args.meta_batch, generator=g)
        support, query = dist.sample_batch(tasks, args.shots, generator=g, query_shots=args.query_shots)
        support, query = mo.distributed.shard_tasks((support, query), group)  # this process's share of the tasks
        meta_loss, grads = step_fn(mo.nn.named_params(model), support, query)
        meta_opt.zero_grad()
        mo.nn.set_grads(model, grads)
        meta_opt.step()
        return meta_loss

    # --- evaluation: plain SGD at the inner lr from the meta-learned init, on held-out tasks, --
    # and iMAML's own adaptation, the proximal problem it trains for (mse_proximal)
    def eval_step(params, support):
        return mo.inner.adapt(loss_fn, params, support, mo.inner.sgd(args.inner_lr), steps=1)

    def proximal_mse(params, support, query):
        proximal = mo.inner.proximal_loss(loss_fn, params, reg=args.reg)
        adapted = mo.inner.adapt(proximal, params, support, mo.inner.sgd(args.inner_lr), steps=args.inner_steps)
        return loss_fn(adapted, query)

    # --- meta-training (logs, checkpoints, exact resumption), held-out evaluation, plots -----
    return run_sinusoid(
        args, meta_iteration, recipe="imaml_sine", state={"model": model, "meta_opt": meta_opt, "generator": g},
        tasks=dist, meta_params=lambda: mo.nn.named_params(model), adapt_step=eval_step, predict=predict,
        task_metrics={"mse_proximal": proximal_mse}, compiled=step_fn if args.compile else None,
        title=f"iMAML, {args.task}", fits_title=f"{args.eval_shots}-shot adaptation, inner lr {args.inner_lr}",
    )


if __name__ == "__main__":
    main(tyro.cli(Args))
