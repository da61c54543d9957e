# Docs: docs/recipes/reptile_sine.md (site page: recipes/reptile_sine/)
"""Reptile on sinusoid regression (Nichol, Achiam, Schulman, 2018), batched over tasks.

Run ``python -m recipes.reptile_sine --help`` for the options. The run control (logs,
checkpoints, exact resumption, Ctrl-C) and the held-out evaluation are the sinusoid recipes'
shared protocol: ``metaops.experiment.SinusoidArgs`` and ``metaops.experiment.run_sinusoid``.
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
    out_dir: str = "runs/reptile_sine"
    iterations: int = 10_000
    """meta-iterations (the MAML paper used 70,000)"""
    meta_batch: int = 25
    """tasks per meta-update (their adapted parameters are averaged)"""
    shots: int = 10
    """support points per task during meta-training (K)"""
    query_shots: int = 10
    """query points per task during meta-training (only to monitor the post-adaptation loss)"""
    inner_steps: int = 5
    """inner SGD steps during meta-training"""
    inner_lr: float = 0.01
    """inner SGD step size (also used at evaluation; 0.02 diverged after ~4,000 iterations)"""
    meta_lr: float = 0.1
    """outer step size epsilon: theta <- theta + epsilon * (mean adapted params - theta), by plain SGD"""
    hidden: int = 40
    """width of the two hidden layers of the 1-h-h-1 ReLU MLP"""


def make_model(hidden: int) -> nn.Module:
    return nn.Sequential(nn.Linear(1, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, 1))


def main(args: Args) -> dict[str, float]:
    args.validate("meta_batch", "shots", "query_shots", "inner_steps", "inner_lr", "meta_lr", "hidden")
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    g = torch.Generator().manual_seed(args.seed)  # the meta-training task stream (the same in every process)
    group = mo.distributed.init()  # under torchrun: the processes that share each task batch; else None
    dist = args.task_distribution()  # --task sinusoid (default) or --task polynomial --degree 3
    model = make_model(args.hidden)
    meta_opt = torch.optim.SGD(model.parameters(), lr=args.meta_lr)  # SGD on theta - phi is Reptile

    def predict(params, x):
        return torch.func.functional_call(model, params, (x,))

    def loss_fn(params, batch):
        x, y = batch
        return F.mse_loss(predict(params, x), y)

    # --- Reptile: adapt each task without a graph, move theta towards the mean adapted params --
    def adapt_task(params, support):
        return mo.inner.adapt(loss_fn, params, support, mo.inner.sgd(args.inner_lr), steps=args.inner_steps)

    def meta_step(params, support, query):  # (mean post-adaptation query loss, theta - mean phi)
        params = mo.tree.stop_gradient(params)  # Reptile needs no meta-graph
        adapted = mo.map_tasks(adapt_task, in_dims=(None, 0))(params, support)  # leaves (tasks, ...)
        query_losses = mo.map_tasks(loss_fn, in_dims=(0, 0))(adapted, query)
        means = (query_losses.mean(), mo.inner.reptile_grad(params, adapted))  # over this process's tasks
        return mo.distributed.all_reduce_mean(means, count=len(query_losses), group=group)  # over all processes

    step_fn = mo.compile_meta_step(meta_step) if args.compile else meta_step

    def meta_iteration():  # sample a task batch, one SGD step along theta - mean phi
        tasks = dist.sample_tasks(args.meta_batch, generator=g)
        support, query = dist.sample_batch(tasks, args.shots, generator=g, query_shots=args.query_shots)
        support, query = mo.distributed.shard_tasks((support, query), group)  # this process's share of the tasks
        query_loss, grads = step_fn(mo.nn.named_params(model), support, query)
        meta_opt.zero_grad()
        mo.nn.set_grads(model, grads)
        meta_opt.step()
        return query_loss

    # --- evaluation: plain SGD at the inner lr from the meta-learned init, on held-out tasks --
    def eval_step(params, support):
        return mo.inner.adapt(loss_fn, params, support, mo.inner.sgd(args.inner_lr), steps=1)

    # --- meta-training (logs, checkpoints, exact resumption), held-out evaluation, plots -----
    return run_sinusoid(
        args, meta_iteration, recipe="reptile_sine", state={"model": model, "meta_opt": meta_opt, "generator": g},
        tasks=dist, meta_params=lambda: mo.nn.named_params(model), adapt_step=eval_step, predict=predict,
        loss_name="query_loss", loss_label="meta-train post-adaptation query loss",
        compiled=step_fn if args.compile else None, title=f"Reptile, {args.task}",
        fits_title=f"{args.eval_shots}-shot adaptation, inner lr {args.inner_lr}",
    )


if __name__ == "__main__":
    main(tyro.cli(Args))
