# Docs: docs/recipes/metasgd_sine.md (site page: recipes/metasgd_sine/)
"""Meta-SGD on sinusoid regression (Li, Zhou, Chen, Li, 2017): MAML that also learns a
step size for every parameter element.

Run ``python -m recipes.metasgd_sine --help`` for the options. The run control (logs,
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
    out_dir: str = "runs/metasgd_sine"
    iterations: int = 10_000
    """meta-iterations (the MAML paper used 70,000)"""
    eval_steps: tuple[int, ...] = (1,)
    """inner steps (with the learned step sizes) after which the held-out MSE is reported; the rates are learned
    for inner_steps steps, and reusing them diverges on many tasks (counted in mse_k_diverged)"""
    meta_batch: int = 25
    """tasks per meta-update"""
    shots: int = 10
    """support points per task during meta-training (K)"""
    query_shots: int = 10
    """query points per task during meta-training"""
    inner_steps: int = 1
    """inner SGD steps during meta-training"""
    init_lr: float = 0.01
    """initial value of every learned inner step size"""
    meta_lr: float = 1e-3
    """Adam step size of the meta-update"""
    hidden: int = 40
    """width of the two hidden layers of the 1-h-h-1 ReLU MLP"""


def make_model(hidden: int) -> nn.Module:
    return nn.Sequential(nn.Linear(1, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, 1))


def main(args: Args) -> dict[str, float]:
    args.validate("meta_batch", "shots", "query_shots", "inner_steps", "init_lr", "meta_lr", "hidden")
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    g = torch.Generator().manual_seed(args.seed)  # the meta-training task stream (the same in every process)
    group = mo.distributed.init()  # under torchrun: the processes that share each task batch; else None
    dist = args.task_distribution()  # --task sinusoid (default) or --task polynomial --degree 3
    net = mo.nn.MetaSGD(make_model(args.hidden), init_lr=args.init_lr)  # the model + one rate per weight
    meta_opt = torch.optim.Adam(net.parameters(), lr=args.meta_lr)  # learns the init and the rates

    def predict(params, x):
        return torch.func.functional_call(net.model, params, (x,))

    def loss_fn(params, batch):
        x, y = batch
        return F.mse_loss(predict(params, x), y)

    # --- Meta-SGD: phi = theta - alpha * grad, with alpha learned like theta -----------------
    def task_loss(meta, support, query):  # meta = {"params": theta, "lrs": alpha}
        inner_opt = mo.inner.meta_sgd(meta["lrs"])  # built inside: alpha gets a meta-gradient
        adapted = mo.inner.adapt(loss_fn, meta["params"], support, inner_opt, steps=args.inner_steps)
        return loss_fn(adapted, query)

    def meta_step(meta, support, query):  # mean query loss over all processes' tasks, and its gradient
        return mo.meta_value_and_grad(task_loss, meta, support, query, strategy="vmap", process_group=group)

    step_fn = mo.compile_meta_step(meta_step) if args.compile else meta_step

    def meta_iteration():  # sample a task batch, take one Adam step on theta and alpha
        tasks = dist.sample_tasks(args.meta_batch, generator=g)
        support, query = dist.sample_batch(tasks, args.shots, generator=g, query_shots=args.query_shots)
        support, query = mo.distributed.shard_tasks((support, query), group)  # this process's share of the tasks
        meta = net.meta_params()
        meta_loss, grads = step_fn(meta, support, query)
        meta_opt.zero_grad()
        for p, grad in zip(mo.tree.tree_leaves(meta), mo.tree.tree_leaves(grads)):
            p.grad = grad  # meta_params() holds net's own Parameters, so this feeds meta_opt
        meta_opt.step()
        return meta_loss

    def mean_lr(iteration: int) -> dict[str, float]:  # logged with every row: the mean learned step size
        lrs = mo.tree.tree_leaves(net.learning_rates())
        return {"train/mean_lr": (sum(a.sum() for a in lrs) / sum(a.numel() for a in lrs)).item()}

    # --- evaluation: the learned init and step sizes, on held-out tasks --------------------
    def eval_step(meta, support):  # one step with the learned rates; the rates ride along unchanged
        params = mo.inner.adapt(loss_fn, meta["params"], support, mo.inner.meta_sgd(meta["lrs"]), steps=1)
        return {"params": params, "lrs": meta["lrs"]}

    # --- meta-training (logs, checkpoints, exact resumption), held-out evaluation, plots -----
    return run_sinusoid(
        args, meta_iteration, recipe="metasgd_sine", state={"model": net, "meta_opt": meta_opt, "generator": g},
        tasks=dist, meta_params=net.meta_params, adapt_step=eval_step,
        predict=lambda meta, x: predict(meta["params"], x), fields=["train/mean_lr"], on_log=mean_lr,
        compiled=step_fn if args.compile else None, title=f"Meta-SGD, {args.task}",
        fits_title=f"{args.eval_shots}-shot adaptation with the learned step sizes",
    )


if __name__ == "__main__":
    main(tyro.cli(Args))
