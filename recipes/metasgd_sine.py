# Docs: docs/recipes/metasgd_sine.md (site page: recipes/metasgd_sine/)
"""Meta-SGD on sinusoid regression (Li, Zhou, Chen, Li, 2017): MAML that also learns a
step size for every parameter element.

Run ``python -m recipes.metasgd_sine --help`` for the options.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
import tyro
from torch import nn

import metaops as mo
from metaops.experiment import (
    FitPanel,
    RunLogger,
    check_positive,
    format_summary,
    last_finite,
    load_run_checkpoint,
    plot_fits,
    plot_learning_curve,
    save_checkpoint,
    save_json,
    summarize_steps,
)


@dataclass
class Args:
    out_dir: str = "runs/metasgd_sine"
    """run directory: config, metrics CSV, TensorBoard events, checkpoint, PNGs, final metrics"""
    seed: int = 0
    """seed of the meta-training task stream and the model initialisation"""
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
    init_lr: float = 0.01
    """initial value of every learned inner step size"""
    meta_lr: float = 1e-3
    """Adam step size of the meta-update"""
    hidden: int = 40
    """width of the two hidden layers of the 1-h-h-1 ReLU MLP"""
    eval_tasks: int = 600
    """held-out tasks for the final evaluation"""
    eval_shots: int = 5
    """support points per held-out task (the paper's 5-shot evaluation)"""
    eval_query_shots: int = 100
    """query points per held-out task on which the MSE is measured"""
    eval_steps: tuple[int, ...] = (1,)
    """inner steps (with the learned step sizes) after which the held-out MSE is reported; the rates are learned
    for inner_steps steps, and reusing them diverges on many tasks (counted in mse_k_diverged)"""
    eval_seed: int = 1_000
    """seed of the held-out tasks (the validation tasks use eval_seed + 1)"""
    val_tasks: int = 100
    """held-out tasks for the validation curve during training"""
    log_every: int = 100
    """iterations per CSV/TensorBoard row (the meta-loss is averaged over them)"""
    eval_every: int = 1_000
    """iterations between validation evaluations (a multiple of log_every)"""
    checkpoint_every: int = 1_000
    """iterations between checkpoints (one is always written at the end)"""
    resume: bool = True
    """continue from out_dir/checkpoint.pt if it exists (the configuration must match)"""
    compile: bool = False
    """compile the meta-step with metaops.compile_meta_step (the compile time is logged)"""
    progress: bool = True
    """show a progress bar"""
    tensorboard: bool = True
    """write TensorBoard event files"""
    threads: int = 1
    """torch intra-op threads (one is fastest for this tiny MLP, and robust on busy machines)"""


RUN_CONTROL = ("out_dir", "iterations", "checkpoint_every", "resume", "compile", "progress", "tensorboard", "threads")
"""Fields a resumed run may change; every other field must match the checkpoint's."""


def validate(args: Args) -> None:
    check_positive(args, "iterations", "meta_batch", "shots", "query_shots", "inner_steps", "init_lr",
                   "meta_lr", "hidden", "eval_shots", "eval_query_shots", "val_tasks", "log_every",
                   "eval_every", "checkpoint_every", "threads")
    if args.eval_tasks < 2:
        raise ValueError(f"eval_tasks must be >= 2 for a confidence interval, got {args.eval_tasks}")
    if not args.eval_steps or min(args.eval_steps) < 1:
        raise ValueError(f"eval_steps must be a non-empty tuple of steps >= 1, got {args.eval_steps}")
    if args.eval_every % args.log_every:
        raise ValueError(f"eval_every ({args.eval_every}) must be a multiple of log_every ({args.log_every})")


def make_model(hidden: int) -> nn.Module:
    return nn.Sequential(nn.Linear(1, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, 1))


def main(args: Args) -> dict[str, float]:
    validate(args)
    out = Path(args.out_dir)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    g = torch.Generator().manual_seed(args.seed)  # the meta-training task stream
    dist = mo.tasks.Sinusoid()
    net = mo.nn.MetaSGD(make_model(args.hidden), init_lr=args.init_lr)  # the model + one rate per weight
    meta_opt = torch.optim.Adam(net.parameters(), lr=args.meta_lr)  # learns the init and the rates

    def loss_fn(params, batch):
        x, y = batch
        return F.mse_loss(torch.func.functional_call(net.model, params, (x,)), y)

    # --- Meta-SGD: phi = theta - alpha * grad, with alpha learned like theta -----------------
    def task_loss(meta, support, query):  # meta = {"params": theta, "lrs": alpha}
        inner_opt = mo.inner.meta_sgd(meta["lrs"])  # built inside: alpha gets a meta-gradient
        adapted = mo.inner.adapt(loss_fn, meta["params"], support, inner_opt, steps=args.inner_steps)
        return loss_fn(adapted, query)

    def meta_step(meta, support, query):  # mean query loss over the task batch, and its gradient
        return mo.meta_value_and_grad(task_loss, meta, support, query, strategy="vmap")

    step_fn = mo.compile_meta_step(meta_step) if args.compile else meta_step

    # --- evaluation: the learned init and step sizes, on held-out tasks --------------------
    def after_each_step(meta, support, measure):  # measure(params) after 0, 1, ..., max(eval_steps) steps
        params, values = meta["params"], [measure(meta["params"])]
        for _ in range(max(args.eval_steps)):
            params = mo.inner.adapt(loss_fn, params, support, mo.inner.meta_sgd(meta["lrs"]), steps=1)
            values.append(measure(params))
        return torch.stack(values)

    def mse_curve(meta, support, query):  # query MSE, shape (max(eval_steps) + 1,)
        return after_each_step(meta, support, lambda p: loss_fn(p, query))

    def fit_curve(meta, support, x):  # predictions at x, shape (max(eval_steps) + 1, points, 1)
        return after_each_step(meta, support, lambda p: torch.func.functional_call(net.model, p, (x,)))

    def held_out(num_tasks: int, seed: int):
        eval_g = torch.Generator().manual_seed(seed)
        tasks = dist.sample_tasks(num_tasks, generator=eval_g)
        support, query = dist.sample_batch(tasks, args.eval_shots, generator=eval_g, query_shots=args.eval_query_shots)
        return tasks, support, query

    def evaluate(num_tasks: int, seed: int) -> torch.Tensor:  # (tasks, max(eval_steps) + 1)
        _, support, query = held_out(num_tasks, seed)
        meta = mo.tree.stop_gradient(net.meta_params())
        return mo.map_tasks(mse_curve, in_dims=(None, 0, 0))(meta, support, query)

    # --- logging, checkpointing and exact resumption -----------------------------------------
    fields = ["train/meta_loss", "train/mean_lr", "val/mse_pre", *[f"val/mse_{k}" for k in args.eval_steps]]
    start, log_rows, window = 0, 0, []
    ckpt_path = out / "checkpoint.pt"
    if args.resume and ckpt_path.exists():
        ckpt = load_run_checkpoint(ckpt_path, recipe="metasgd_sine", config=asdict(args), ignore=RUN_CONTROL,
                                   iterations=args.iterations)
        net.load_state_dict(ckpt["model"])
        meta_opt.load_state_dict(ckpt["meta_opt"])
        g.set_state(ckpt["generator"])
        start, log_rows, window = ckpt["iteration"], ckpt["log_rows"], list(ckpt["window"])
        print(f"resumed from {ckpt_path} at iteration {start}")
    save_json(out / "config.json", asdict(args))
    with RunLogger(out, fields=fields, total=args.iterations, initial=start, rows=log_rows,
                           tensorboard=args.tensorboard, progress=args.progress, desc="metasgd_sine",
                           defer_interrupt=True) as logger:  # Ctrl-C: checkpoint, then stop

        def checkpoint(iteration: int) -> None:
            save_checkpoint(ckpt_path, {
                "recipe": "metasgd_sine", "config": asdict(args), "iteration": iteration,
                "model": net.state_dict(), "meta_opt": meta_opt.state_dict(), "generator": g.get_state(),
                "log_rows": logger.rows, "window": window,
            })

        # --- meta-training ---------------------------------------------------------------------
        train_start = time.perf_counter()
        for it in range(start, args.iterations):
            tasks = dist.sample_tasks(args.meta_batch, generator=g)
            support, query = dist.sample_batch(tasks, args.shots, generator=g, query_shots=args.query_shots)
            meta = net.meta_params()
            meta_loss, grads = step_fn(meta, support, query)
            meta_opt.zero_grad()
            for p, grad in zip(mo.tree.tree_leaves(meta), mo.tree.tree_leaves(grads)):
                p.grad = grad  # meta_params() holds net's own Parameters, so this feeds meta_opt
            meta_opt.step()

            window.append(meta_loss.item())
            if not math.isfinite(window[-1]):  # compiled steps skip metaops' own finiteness checks
                raise mo.inner.NonFiniteError(f"the meta-loss is {window[-1]} at meta-iteration {it + 1}; "
                                              "lower the learning rates")
            if (it + 1) % args.log_every == 0:
                lrs = mo.tree.tree_leaves(net.learning_rates())
                row = {"train/meta_loss": sum(window) / len(window),
                       "train/mean_lr": (sum(a.sum() for a in lrs) / sum(a.numel() for a in lrs)).item()}
                if (it + 1) % args.eval_every == 0:
                    curve = evaluate(args.val_tasks, args.eval_seed + 1).mean(0)
                    row["val/mse_pre"] = curve[0].item()
                    row |= {f"val/mse_{k}": curve[k].item() for k in args.eval_steps}
                logger.log(it + 1, row)
                window = []
            logger.advance(1, meta_loss=meta_loss.item())
            if args.compile and it == start + 1:
                logger.write(f"compile_meta_step: compiled={step_fn.compiled}, took {step_fn.compile_seconds} s")
            if (it + 1) % args.checkpoint_every == 0 or it + 1 == args.iterations or logger.interrupted:
                checkpoint(it + 1)
                logger.stop_if_interrupted(it + 1)  # after Ctrl-C: "interrupted: checkpoint at iteration N"
        if window:  # iterations after the last full --log-every window (all of a shorter run): logged after the
            # final checkpoint, so that a longer resumed run replaces this row with the full window's
            lrs = mo.tree.tree_leaves(net.learning_rates())
            mean_lr = (sum(a.sum() for a in lrs) / sum(a.numel() for a in lrs)).item()
            logger.log(args.iterations, {"train/meta_loss": sum(window) / len(window), "train/mean_lr": mean_lr})
    train_seconds = time.perf_counter() - train_start

    # --- final evaluation on held-out tasks: MSE after 1/5/10 steps, 95% confidence interval --
    curves = evaluate(args.eval_tasks, args.eval_seed)
    metrics = summarize_steps(curves, args.eval_steps, prefix="mse")  # diverged tasks are counted, not dropped
    history = logger.history()
    metrics["final_meta_loss"] = last_finite(history["train/meta_loss"])
    metrics["train_seconds"] = train_seconds
    if args.compile:
        metrics["compile_seconds"] = step_fn.compile_seconds if step_fn.compile_seconds is not None else float("nan")
    save_json(out / "metrics.json", metrics)
    print("held-out MSE: " + format_summary(metrics))

    # --- plots: learning curve, and fits before/after adaptation on three held-out tasks ------
    plot_learning_curve(out / "learning_curve.png", {
        "meta-train query loss": (history["step"], history["train/meta_loss"]),
        "validation, pre-update": (history["step"], history["val/mse_pre"]),
        **{f"validation, {k} step(s)": (history["step"], history[f"val/mse_{k}"]) for k in args.eval_steps},
    }, title="Meta-SGD, sinusoid", ylabel="MSE")
    tasks, support, _ = held_out(3, args.eval_seed)
    x = torch.linspace(-5, 5, 200).view(-1, 1)
    panels = []
    meta = mo.tree.stop_gradient(net.meta_params())
    preds = mo.map_tasks(fit_curve, in_dims=(None, 0, None))(meta, support, x)
    for i, task in enumerate(tasks):
        curves_i = {"pre-update": preds[i, 0], **{f"{k} step(s)": preds[i, k] for k in args.eval_steps}}
        target = task.amplitude * torch.sin(x - task.phase)
        panels.append(FitPanel(x=x, target=target, support_x=support[0][i], support_y=support[1][i], curves=curves_i,
                               title=f"A={task.amplitude:.2f}, phase={task.phase:.2f}"))
    plot_fits(out / "fits.png", panels, title=f"{args.eval_shots}-shot adaptation with the learned step sizes")
    return metrics


if __name__ == "__main__":
    main(tyro.cli(Args))
