"""The sinusoid benchmark's protocol: held-out evaluation after 0..k steps, run, metrics, plots."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from metaops import map_tasks
from metaops.distributed import is_main_process
from metaops.experiment._logger import save_json
from metaops.experiment._loop import RunArgs, meta_train
from metaops.experiment._plots import FitPanel, plot_fits, plot_learning_curve
from metaops.experiment._stats import format_summary, summarize_steps, summarize_tasks
from metaops.tasks import Polynomial, Sinusoid
from metaops.tree import stop_gradient
from metaops.typing import PyTree

if TYPE_CHECKING:
    from metaops._compile import CompiledMetaStep

__all__ = ["SinusoidArgs", "adaptation_curves", "run_sinusoid"]


def adaptation_curves(
    measure: Callable[[PyTree, Any], Tensor],
    adapt_step: Callable[[PyTree, Any], PyTree],
    meta_params: PyTree,
    support: Any,
    data: Any,
    *,
    steps: int,
    data_dim: int | None = 0,
) -> Tensor:
    r"""Measures the model adapted to each task after 0, 1, ..., ``steps`` adaptation steps.

    For task $i$ with support set $S_i$ and evaluation data $D_i$, starting from the
    meta-parameters $\phi_i^{(0)} = \theta$,

    $$\phi_i^{(k+1)} = \mathrm{adapt\_step}\big(\phi_i^{(k)}, S_i\big),\qquad
      c_{ik} = \mathrm{measure}\big(\phi_i^{(k)}, D_i\big),\quad k = 0, \dots, \text{steps},$$

    all tasks in one batch ([metaops.map_tasks][]). This is the few-shot evaluation of MAML
    and its relatives: the held-out error before adaptation ($k = 0$) and after each step.
    $\theta$ is treated as a constant (stop-gradient).

    Args:
        measure: ``measure(params, data)`` for one task, e.g. the query MSE or the predictions
            at some inputs; returns a tensor (a scalar for an error curve).
        adapt_step: One adaptation step for one task, ``adapt_step(params, support) ->
            params``, e.g. one [metaops.inner.adapt][] step of SGD. ``params`` can be any
            pytree that ``measure`` understands (e.g. ``{"params": ..., "lrs": ...}`` to carry
            Meta-SGD's learned rates along).
        meta_params: The starting point $\theta$, shared by all tasks.
        support: The tasks' support sets, batched over tasks (leading dimension).
        data: The evaluation data, batched over tasks (``data_dim=0``) or shared
            (``data_dim=None``).
        steps: The number of adaptation steps.
        data_dim: ``0`` if ``data`` has a task dimension, ``None`` if every task uses it whole.

    Returns:
        Shape `(tasks, steps + 1, *measure_shape)`: column $k$ is ``measure`` after $k$ steps.

    Examples:
        >>> import metaops as mo
        >>> def loss_fn(params, batch):  # fit y = w x
        ...     x, y = batch
        ...     return ((params["w"] * x - y) ** 2).mean()
        >>> def sgd_step(params, support):
        ...     return mo.inner.adapt(loss_fn, params, support, mo.inner.sgd(0.25), steps=1)
        >>> x = torch.ones(2, 3)                                  # 2 tasks: y = 2x and y = 4x
        >>> tasks = (x, torch.tensor([[2.0], [4.0]]) * x)
        >>> adaptation_curves(loss_fn, sgd_step, {"w": torch.tensor(0.0)}, tasks, tasks, steps=2)
        tensor([[ 4.0000,  1.0000,  0.2500],
                [16.0000,  4.0000,  1.0000]])
    """
    if steps < 0:
        raise ValueError(f"adaptation_curves: steps must be >= 0, got {steps}")

    def curve(params, support, data):
        values = [measure(params, data)]
        for _ in range(steps):
            params = adapt_step(params, support)
            values.append(measure(params, data))
        return torch.stack(values)

    return map_tasks(curve, in_dims=(None, 0, data_dim))(stop_gradient(meta_params), support, data)


@dataclass
class SinusoidArgs(RunArgs):
    """The options of a sinusoid script: run control, task family and evaluation protocol.

    The fields of [metaops.experiment.RunArgs][], the task family (``task``: sinusoids, or
    polynomials of degree ``degree``; see ``task_distribution``), and the held-out evaluation that
    [metaops.experiment.run_sinusoid][] applies: the MAML paper's protocol of ``eval_tasks``
    tasks with ``eval_shots`` support points, MSE on ``eval_query_shots`` query points after
    each of ``eval_steps`` adaptation steps, and a validation curve on ``val_tasks`` other
    held-out tasks every ``eval_every`` iterations. A script subclasses it with its
    algorithm's hyperparameters and calls ``args.validate(...)`` with those that must be positive.

    Examples:
        >>> args = SinusoidArgs(eval_steps=(1, 5), eval_every=250)
        >>> args.validate()
        Traceback (most recent call last):
        ...
        ValueError: eval_every (250) must be a multiple of log_every (100)
    """

    task: Literal["sinusoid", "polynomial"] = "sinusoid"
    """task family: metaops.tasks.Sinusoid() or metaops.tasks.Polynomial(degree=degree)"""
    degree: int = 3
    """degree of the polynomial tasks (with --task polynomial)"""
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
    eval_every: int = 1_000
    """iterations between validation evaluations (a multiple of log_every)"""

    def validate(self, *positive: str) -> None:
        """Checks the run control and the evaluation protocol, and that ``positive`` fields are ``> 0``.

        Args:
            *positive: Further fields (the algorithm's) that must be positive finite numbers.

        Raises:
            ValueError: Naming the first offending field.
        """
        super().validate(*positive, "eval_shots", "eval_query_shots", "val_tasks", "eval_every")
        if self.eval_tasks < 2:
            raise ValueError(f"eval_tasks must be >= 2 for a confidence interval, got {self.eval_tasks}")
        if not self.eval_steps or min(self.eval_steps) < 1:
            raise ValueError(f"eval_steps must be a non-empty tuple of steps >= 1, got {self.eval_steps}")
        if self.eval_every % self.log_every:
            raise ValueError(f"eval_every ({self.eval_every}) must be a multiple of log_every ({self.log_every})")
        self.task_distribution()  # an unknown task family or a bad degree raises here

    def task_distribution(self) -> Sinusoid | Polynomial:
        """Returns the task distribution that ``task`` (and ``degree``) name.

        Raises:
            ValueError: For an unknown ``task`` or a ``degree`` that is not an int ``>= 0``.

        Examples:
            >>> SinusoidArgs(task="polynomial", degree=2).task_distribution()
            Polynomial(degree=2, coeff_range=(-1.0, 1.0), input_range=(-2.0, 2.0))
        """
        if self.task == "sinusoid":
            return Sinusoid()
        if self.task == "polynomial":
            return Polynomial(degree=self.degree)
        raise ValueError(f"task must be 'sinusoid' or 'polynomial', got {self.task!r}")


def run_sinusoid(
    args: SinusoidArgs,
    step: Callable[[], Tensor | float],
    *,
    recipe: str,
    state: Mapping[str, Any],
    tasks: Sinusoid | Polynomial,
    meta_params: Callable[[], PyTree],
    adapt_step: Callable[[PyTree, tuple[Tensor, Tensor]], PyTree],
    predict: Callable[[PyTree, Tensor], Tensor],
    title: str,
    fits_title: str,
    loss_name: str = "meta_loss",
    loss_label: str = "meta-train query loss",
    fields: Sequence[str] = (),
    on_log: Callable[[int], Mapping[str, float]] | None = None,
    task_metrics: Mapping[str, Callable[[PyTree, Any, Any], Tensor]] | None = None,
    compiled: CompiledMetaStep | None = None,
) -> dict[str, float]:
    r"""Meta-trains on sinusoid regression, then evaluates on held-out tasks and plots the run.

    The whole of a sinusoid experiment except the algorithm, in ``args.out_dir``:

    1. **Meta-training**: [metaops.experiment.meta_train][] calls ``step()`` for
       ``args.iterations`` iterations, with the run log, checkpoints, exact resumption and
       Ctrl-C handling described there. Every ``args.eval_every`` iterations the row also
       holds ``val/mse_pre`` and ``val/mse_{k}`` for ``k`` in ``args.eval_steps``: the mean
       query MSE on ``args.val_tasks`` validation tasks (seed ``args.eval_seed + 1``) before
       and after ``k`` adaptation steps.
    2. **Held-out evaluation**: ``args.eval_tasks`` tasks from seed ``args.eval_seed``, each
       with ``args.eval_shots`` support and ``args.eval_query_shots`` query points. From
       ``meta_params()``, ``adapt_step`` runs on the support points and the query MSE is
       measured after 0 and ``k`` steps ([metaops.experiment.adaptation_curves][]), summarised
       as ``mse_pre``, ``mse_{k}`` with 95% intervals ``*_ci95``; a task whose adaptation
       diverges is counted, not dropped ([metaops.experiment.summarize_steps][]). Each
       ``task_metrics`` function adds its own summary the same way.
    3. **Metrics**: those, plus ``final_<loss_name>``, ``train_seconds`` and (with
       ``compiled``) ``compile_seconds``, go to ``metrics.json`` and are returned;
       ``held-out MSE: ...`` prints the intervals.
    4. **Plots**: ``learning_curve.png`` (the training loss and the validation curves) and
       ``fits.png`` (three held-out tasks: target, support points, prediction before and
       after each of ``args.eval_steps`` steps).

    The validation and held-out tasks come from their own generators, so evaluating does not
    change training. All evaluation is without meta-gradient.

    Under ``torchrun`` (see [metaops.experiment.meta_train][] and the guide "Running on many
    machines"), every process trains and evaluates, and only the main process writes files,
    plots and prints; every process returns the same metrics (``train_seconds`` aside).

    Args:
        args: The run's options.
        step: One meta-iteration (sample a task batch, update the meta-parameters); returns
            its loss.
        recipe: The script's name: checkpoint tag and progress-bar label.
        state: Name -> model, optimizer, ``torch.Generator``, ... to checkpoint
            ([metaops.experiment.meta_train][]).
        tasks: The task distribution (usually ``args.task_distribution()``); held-out tasks
            are drawn from it too.
        meta_params: Returns the current meta-parameters, the start of every adaptation.
        adapt_step: One evaluation adaptation step for one task,
            ``adapt_step(params, support) -> params`` (a pytree like ``meta_params()``).
        predict: ``predict(params, x) -> y`` for one task's inputs ``x`` of shape
            `(points, 1)`; the MSE is ``F.mse_loss(predict(params, x), y)``.
        title: Title of the learning-curve plot.
        fits_title: Title of the fits plot.
        loss_name: Name of the loss ``step`` returns (column ``train/<loss_name>``).
        loss_label: Its legend label in the learning curve.
        fields: Further columns that ``on_log`` fills.
        on_log: ``on_log(iteration)`` returns further values for each logged row.
        task_metrics: Name -> ``fn(meta_params, support, query)`` returning one task's value;
            evaluated on the held-out tasks and summarised like the MSE (``name``,
            ``name_ci95``, ...).
        compiled: The [metaops.CompiledMetaStep][] that ``step`` calls, if compiled.

    Returns:
        The final metrics (also in ``metrics.json``).

    Raises:
        ValueError: For invalid ``args``, or when resuming from a checkpoint of another recipe
            or configuration (see [metaops.experiment.meta_train][] for the others).

    Examples:
        >>> import tempfile
        >>> import torch.nn.functional as F
        >>> import metaops as mo
        >>> args = SinusoidArgs(out_dir=tempfile.mkdtemp(), iterations=2, log_every=1, eval_every=1,
        ...                     eval_tasks=4, val_tasks=2, eval_steps=(1,), progress=False,
        ...                     tensorboard=False)
        >>> model = torch.nn.Linear(1, 1)
        >>> opt = torch.optim.SGD(model.parameters(), lr=0.01)
        >>> g, dist = torch.Generator().manual_seed(0), mo.tasks.Sinusoid()
        >>> def predict(params, x):
        ...     return torch.func.functional_call(model, params, (x,))
        >>> def loss_fn(params, batch):
        ...     return F.mse_loss(predict(params, batch[0]), batch[1])
        >>> def sgd_step(params, support):
        ...     return mo.inner.adapt(loss_fn, params, support, mo.inner.sgd(0.01), steps=1)
        >>> def step():  # one iteration of plain multi-task training, for brevity
        ...     (x, y), _ = dist.sample_batch(dist.sample_tasks(4, generator=g), 10, generator=g)
        ...     loss = F.mse_loss(model(x), y)
        ...     opt.zero_grad()
        ...     loss.backward()
        ...     opt.step()
        ...     return loss
        >>> metrics = run_sinusoid(
        ...     args, step, recipe="demo", state={"model": model, "opt": opt, "generator": g},
        ...     tasks=dist, meta_params=lambda: dict(model.named_parameters()), adapt_step=sgd_step,
        ...     predict=predict, title="demo", fits_title="5-shot adaptation")
        held-out MSE: mse_pre ... ± ..., mse_1 ... ± ...
        >>> sorted(metrics)
        ['final_meta_loss', 'mse_1', 'mse_1_ci95', 'mse_pre', 'mse_pre_ci95', 'train_seconds']
    """
    args.validate()
    out = Path(args.out_dir)

    def held_out(num_tasks: int, seed: int):
        generator = torch.Generator().manual_seed(seed)
        sampled = tasks.sample_tasks(num_tasks, generator=generator)
        support, query = tasks.sample_batch(sampled, args.eval_shots, generator=generator,
                                            query_shots=args.eval_query_shots)
        return sampled, support, query

    def mse(params, query):
        x, y = query
        return F.mse_loss(predict(params, x), y)

    def mse_curves(num_tasks: int, seed: int) -> Tensor:  # (tasks, max(eval_steps) + 1)
        _, support, query = held_out(num_tasks, seed)
        return adaptation_curves(mse, adapt_step, meta_params(), support, query, steps=max(args.eval_steps))

    def log_row(iteration: int) -> dict[str, float]:
        row = dict(on_log(iteration)) if on_log is not None else {}
        if iteration % args.eval_every == 0:
            curve = mse_curves(args.val_tasks, args.eval_seed + 1).mean(0)
            row["val/mse_pre"] = curve[0].item()
            row |= {f"val/mse_{k}": curve[k].item() for k in args.eval_steps}
        return row

    val_fields = ["val/mse_pre", *[f"val/mse_{k}" for k in args.eval_steps]]
    history, run_metrics = meta_train(args, step, recipe=recipe, state=state, loss_name=loss_name,
                                      fields=[*fields, *val_fields], on_log=log_row, compiled=compiled)

    # held-out evaluation: MSE after 0 and k steps, 95% confidence intervals
    metrics = summarize_steps(mse_curves(args.eval_tasks, args.eval_seed), args.eval_steps, prefix="mse")
    if task_metrics:
        _, support, query = held_out(args.eval_tasks, args.eval_seed)
        params = stop_gradient(meta_params())
        for name, fn in task_metrics.items():
            metrics |= summarize_tasks(map_tasks(fn, in_dims=(None, 0, 0))(params, support, query), name=name)
    metrics |= run_metrics
    if not is_main_process():  # another process of a distributed run: same metrics, no files, no output
        return metrics
    save_json(out / "metrics.json", metrics)
    print("held-out MSE: " + format_summary(metrics))

    # plots: the learning curve, and fits before and after adaptation on three held-out tasks
    plot_learning_curve(out / "learning_curve.png", {
        loss_label: (history["step"], history[f"train/{loss_name}"]),
        "validation, pre-update": (history["step"], history["val/mse_pre"]),
        **{f"validation, {k} step(s)": (history["step"], history[f"val/mse_{k}"]) for k in args.eval_steps},
    }, title=title, ylabel="MSE")
    sampled, support, _ = held_out(3, args.eval_seed)
    x = torch.linspace(*tasks.input_range, 200).view(-1, 1)
    preds = adaptation_curves(predict, adapt_step, meta_params(), support, x, steps=max(args.eval_steps),
                              data_dim=None)
    panels = [
        FitPanel(x=x, target=task.target(x), support_x=support[0][i], support_y=support[1][i], title=task.label,
                 curves={"pre-update": preds[i, 0], **{f"{k} step(s)": preds[i, k] for k in args.eval_steps}})
        for i, task in enumerate(sampled)
    ]
    plot_fits(out / "fits.png", panels, title=fits_title)
    return metrics
