# Docs: docs/recipes/maml_sine.md (site page: recipes/maml_sine/)
"""MAML and first-order MAML on sinusoid regression (Finn, Abbeel, Levine, ICML 2017).

Run ``python -m recipes.maml_sine --help`` for the options.
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
    out_dir: str = "runs/maml_sine"
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
    inner_lr: float = 0.01
    """inner SGD step size (also used at evaluation)"""
    meta_lr: float = 1e-3
    """Adam step size of the meta-update"""
    first_order: bool = False
    """FOMAML: adapt with mode=metaops.inner.first_order() (no second-order terms)"""
    hidden: int = 40
    """width of the two hidden layers of the 1-h-h-1 ReLU MLP"""
    eval_tasks: int = 600
    """held-out tasks for the final evaluation"""
    eval_shots: int = 5
    """support points per held-out task (the paper's 5-shot evaluation)"""
    eval_query_shots: int = 100
    """query points per held-out task on which the MSE is measured"""
    eval_steps: tuple[int, ...] = (1, 5, 10)
    """inner SGD steps after which the held-out MSE is reported"""
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
    check_positive(args, "iterations", "meta_batch", "shots", "query_shots", "inner_steps", "inner_lr",
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
    model = make_model(args.hidden)
    meta_opt = torch.optim.Adam(model.parameters(), lr=args.meta_lr)

    def loss_fn(params, batch):
        x, y = batch
        return F.mse_loss(torch.func.functional_call(model, params, (x,)), y)

    # --- MAML: adapt on the support set, score the adapted parameters on the query set ----
    def task_loss(params, support, query):
        mode = mo.inner.first_order() if args.first_order else mo.inner.unrolled()
        adapted = mo.inner.adapt(loss_fn, params, support, mo.inner.sgd(args.inner_lr),
                                 steps=args.inner_steps, mode=mode)
        return loss_fn(adapted, query)

    def meta_step(params, support, query):  # mean query loss over the task batch, and its gradient
        return mo.meta_value_and_grad(task_loss, params, support, query, strategy="vmap")

    step_fn = mo.compile_meta_step(meta_step) if args.compile else meta_step

    # --- evaluation: plain SGD at the inner lr from the meta-learned init, on held-out tasks --
    def after_each_step(params, support, measure):  # measure(params) after 0, 1, ..., max(eval_steps) steps
        values = [measure(params)]
        for _ in range(max(args.eval_steps)):
            params = mo.inner.adapt(loss_fn, params, support, mo.inner.sgd(args.inner_lr), steps=1)
            values.append(measure(params))
        return torch.stack(values)

    def mse_curve(params, support, query):  # query MSE, shape (max(eval_steps) + 1,)
        return after_each_step(params, support, lambda p: loss_fn(p, query))

    def fit_curve(params, support, x):  # predictions at x, shape (max(eval_steps) + 1, points, 1)
        return after_each_step(params, support, lambda p: torch.func.functional_call(model, p, (x,)))

    def held_out(num_tasks: int, seed: int):
        eval_g = torch.Generator().manual_seed(seed)
        tasks = dist.sample_tasks(num_tasks, generator=eval_g)
        support, query = dist.sample_batch(tasks, args.eval_shots, generator=eval_g, query_shots=args.eval_query_shots)
        return tasks, support, query

    def evaluate(num_tasks: int, seed: int) -> torch.Tensor:  # (tasks, max(eval_steps) + 1)
        _, support, query = held_out(num_tasks, seed)
        params = mo.tree.stop_gradient(mo.nn.named_params(model))
        return mo.map_tasks(mse_curve, in_dims=(None, 0, 0))(params, support, query)

    # --- logging, checkpointing and exact resumption -----------------------------------------
    fields = ["train/meta_loss", "val/mse_pre", *[f"val/mse_{k}" for k in args.eval_steps]]
    start, log_rows, window = 0, 0, []
    ckpt_path = out / "checkpoint.pt"
    if args.resume and ckpt_path.exists():
        ckpt = load_run_checkpoint(ckpt_path, recipe="maml_sine", config=asdict(args), ignore=RUN_CONTROL,
                                   iterations=args.iterations)
        model.load_state_dict(ckpt["model"])
        meta_opt.load_state_dict(ckpt["meta_opt"])
        g.set_state(ckpt["generator"])
        start, log_rows, window = ckpt["iteration"], ckpt["log_rows"], list(ckpt["window"])
        print(f"resumed from {ckpt_path} at iteration {start}")
    save_json(out / "config.json", asdict(args))
    with RunLogger(out, fields=fields, total=args.iterations, initial=start, rows=log_rows,
                           tensorboard=args.tensorboard, progress=args.progress, desc="maml_sine",
                           defer_interrupt=True) as logger:  # Ctrl-C: checkpoint, then stop

        def checkpoint(iteration: int) -> None:
            save_checkpoint(ckpt_path, {
                "recipe": "maml_sine", "config": asdict(args), "iteration": iteration,
                "model": model.state_dict(), "meta_opt": meta_opt.state_dict(), "generator": g.get_state(),
                "log_rows": logger.rows, "window": window,
            })

        # --- meta-training ---------------------------------------------------------------------
        train_start = time.perf_counter()
        for it in range(start, args.iterations):
            tasks = dist.sample_tasks(args.meta_batch, generator=g)
            support, query = dist.sample_batch(tasks, args.shots, generator=g, query_shots=args.query_shots)
            meta_loss, grads = step_fn(mo.nn.named_params(model), support, query)
            meta_opt.zero_grad()
            mo.nn.set_grads(model, grads)
            meta_opt.step()

            window.append(meta_loss.item())
            if not math.isfinite(window[-1]):  # compiled steps skip metaops' own finiteness checks
                raise mo.inner.NonFiniteError(f"the meta-loss is {window[-1]} at meta-iteration {it + 1}; "
                                              "lower the learning rates")
            if (it + 1) % args.log_every == 0:
                row = {"train/meta_loss": sum(window) / len(window)}
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
            logger.log(args.iterations, {"train/meta_loss": sum(window) / len(window)})
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
    }, title=f"{'FO' if args.first_order else ''}MAML, sinusoid", ylabel="MSE")
    tasks, support, _ = held_out(3, args.eval_seed)
    x = torch.linspace(-5, 5, 200).view(-1, 1)
    panels = []
    params = mo.tree.stop_gradient(mo.nn.named_params(model))
    preds = mo.map_tasks(fit_curve, in_dims=(None, 0, None))(params, support, x)
    for i, task in enumerate(tasks):
        curves_i = {"pre-update": preds[i, 0], **{f"{k} step(s)": preds[i, k] for k in args.eval_steps}}
        target = task.amplitude * torch.sin(x - task.phase)
        panels.append(FitPanel(x=x, target=target, support_x=support[0][i], support_y=support[1][i], curves=curves_i,
                               title=f"A={task.amplitude:.2f}, phase={task.phase:.2f}"))
    plot_fits(out / "fits.png", panels, title=f"{args.eval_shots}-shot adaptation, inner lr {args.inner_lr}")
    return metrics


if __name__ == "__main__":
    main(tyro.cli(Args))
