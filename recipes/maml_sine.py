# Docs: docs/recipes/maml_sine.md (site page: recipes/maml_sine/)
"""MAML and first-order MAML on sinusoid regression (Finn, Abbeel, Levine, ICML 2017).

Run ``python -m recipes.maml_sine --help`` for the options. The run control (logs, checkpoints,
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
    out_dir: str = "runs/maml_sine"
    iterations: int = 10_000
    """meta-iterations (the MAML paper used 70,000)"""
    meta_batch: int = 25
    """tasks per meta-update"""
    shots: int = 10
    """support points per task during meta-training (K)"""
    query_shots: int = 10
    """query points per task during meta-training"""
    inner_steps: int = 1
    """inner SGD steps during meta-training"""
    inner_lr: float = 0.01
    """inner SGD step size (also used at evaluation)"""
    meta_lr: float = 1e-3
    """Adam step size of the meta-update"""
    first_order: bool = False
    """FOMAML: adapt with mode=metaops.inner.first_order() (no second-order terms)"""
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
    meta_opt = torch.optim.Adam(model.parameters(), lr=args.meta_lr)

    def predict(params, x):
        return torch.func.functional_call(model, params, (x,))

    def loss_fn(params, batch):
        x, y = batch
        return F.mse_loss(predict(params, x), y)

    # --- MAML: adapt on the support set, score the adapted parameters on the query set ----
    def task_loss(params, support, query):
        mode = mo.inner.first_order() if args.first_order else mo.inner.unrolled()
        adapted = mo.inner.adapt(loss_fn, params, support, mo.inner.sgd(args.inner_lr),
                                 steps=args.inner_steps, mode=mode)
        return loss_fn(adapted, query)

    def meta_step(params, support, query):  # mean query loss over all processes' tasks, and its gradient
        return mo.meta_value_and_grad(task_loss, params, support, query, strategy="vmap", process_group=group)

    step_fn = mo.compile_meta_step(meta_step) if args.compile else meta_step

    def meta_iteration():  # sample a task batch, take one Adam step on the meta-gradient
        tasks = dist.sample_tasks(args.meta_batch, generator=g)
        support, query = dist.sample_batch(tasks, args.shots, generator=g, query_shots=args.query_shots)
        support, query = mo.distributed.shard_tasks((support, query), group)  # this process's share of the tasks
        meta_loss, grads = step_fn(mo.nn.named_params(model), support, query)
        meta_opt.zero_grad()
        mo.nn.set_grads(model, grads)
        meta_opt.step()
        return meta_loss

    # --- evaluation: plain SGD at the inner lr from the meta-learned init, on held-out tasks --
    def eval_step(params, support):
        return mo.inner.adapt(loss_fn, params, support, mo.inner.sgd(args.inner_lr), steps=1)

    # --- meta-training (logs, checkpoints, exact resumption), held-out evaluation, plots -----
    return run_sinusoid(
        args, meta_iteration, recipe="maml_sine", state={"model": model, "meta_opt": meta_opt, "generator": g},
        tasks=dist, meta_params=lambda: mo.nn.named_params(model), adapt_step=eval_step, predict=predict,
        compiled=step_fn if args.compile else None, title=f"{'FO' if args.first_order else ''}MAML, {args.task}",
        fits_title=f"{args.eval_shots}-shot adaptation, inner lr {args.inner_lr}",
    )


if __name__ == "__main__":
    main(tyro.cli(Args))
