"""A resumable meta-training loop: run log, checkpoints, exact resumption and Ctrl-C."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch
import torch.distributed as dist
from torch import Tensor

from metaops.distributed import any_process, is_initialized, is_main_process, on_main_process
from metaops.experiment._checkpoint import load_run_checkpoint, save_checkpoint
from metaops.experiment._config import check_positive
from metaops.experiment._logger import RunLogger, save_json
from metaops.experiment._stats import last_finite
from metaops.inner import NonFiniteError

if TYPE_CHECKING:
    from metaops._compile import CompiledMetaStep

__all__ = ["RunArgs", "meta_train"]

_RESERVED = ("recipe", "config", "iteration", "log_rows", "window")  # checkpoint keys meta_train writes itself


@dataclass
class RunArgs:
    """The run-control options of a meta-training script: subclass it and add the algorithm's.

    ``tyro.cli(Args)`` turns every field into a flag (``--out-dir``, ``--no-resume``, ...) whose
    help is the field's docstring. A subclass adds its hyperparameters after these fields and
    may redeclare one of them to change its default (``out_dir = "runs/my_recipe"``).
    [metaops.experiment.meta_train][] reads the fields; the script itself applies ``seed``,
    ``threads`` and ``compile``.

    ``run_control`` (a class attribute, not a flag) names the fields a resumed run may change.

    Examples:
        >>> from dataclasses import dataclass
        >>> @dataclass
        ... class Args(RunArgs):
        ...     out_dir: str = "runs/demo"
        ...     lr: float = 0.1
        >>> args = Args(iterations=3)
        >>> args.validate("lr")
        >>> args.out_dir, args.iterations, args.lr
        ('runs/demo', 3, 0.1)
        >>> Args(lr=0.0).validate("lr")
        Traceback (most recent call last):
        ...
        ValueError: lr must be > 0, got 0.0
    """

    out_dir: str = "runs/experiment"
    """run directory: config, metrics CSV, TensorBoard events, checkpoint, PNGs, final metrics"""
    seed: int = 0
    """seed of the meta-training task stream and the model initialisation"""
    iterations: int = 10_000
    """meta-iterations (a finished run resumed with a larger value continues training)"""
    log_every: int = 100
    """iterations per CSV/TensorBoard row (the training loss is averaged over them)"""
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
    """torch intra-op threads (one is fastest for small models, and robust on busy machines)"""

    run_control: ClassVar[tuple[str, ...]] = (
        "out_dir", "iterations", "checkpoint_every", "resume", "compile", "progress", "tensorboard", "threads",
    )
    """Fields a resumed run may change; every other field must equal the checkpoint's (a subclass may extend it)."""

    def validate(self, *positive: str) -> None:
        """Checks the run-control fields, and that the fields named in ``positive`` are ``> 0``.

        Args:
            *positive: Further fields (the algorithm's) that must be positive finite numbers.

        Raises:
            ValueError: Naming the first offending field (see
                [metaops.experiment.check_positive][]).
        """
        check_positive(self, "iterations", *positive, "log_every", "checkpoint_every", "threads")


def meta_train(
    args: RunArgs,
    step: Callable[[], Tensor | float],
    *,
    recipe: str,
    state: Mapping[str, Any],
    loss_name: str = "meta_loss",
    fields: Sequence[str] = (),
    on_log: Callable[[int], Mapping[str, float]] | None = None,
    compiled: CompiledMetaStep | None = None,
) -> tuple[dict[str, list[float]], dict[str, float]]:
    """Runs ``step`` until ``args.iterations`` with a run log, checkpoints and exact resumption.

    Each iteration calls ``step()``, which does one meta-update (sample tasks, compute the
    meta-gradient, step the optimizer) and returns its loss. Around it this loop does what every
    meta-training script needs, in ``args.out_dir``:

    - **Logs** (``metrics.csv``, TensorBoard; [metaops.experiment.RunLogger][]): every
      ``args.log_every`` iterations one row with ``train/<loss_name>``, the mean loss of those
      iterations, plus whatever ``on_log(iteration)`` returns (validation scores, say). A run
      that ends between two rows logs the partial window at its last iteration, after its last
      checkpoint, so that a longer resumed run replaces that row with the full window's.
    - **Checkpoints** (``checkpoint.pt``; [metaops.experiment.save_checkpoint][]) every
      ``args.checkpoint_every`` iterations and at the end: ``state_dict()`` of every object in
      ``state`` (``get_state()`` of a ``torch.Generator``), plus the iteration, the log position
      and the partial loss window.
    - **Exact resumption**: with ``args.resume`` and a checkpoint in ``args.out_dir``, the
      checkpoint must come from ``recipe`` with the same configuration (all fields of ``args``
      but ``args.run_control``; [metaops.experiment.load_run_checkpoint][]); ``state`` is
      restored, ``resumed from <path> at iteration N`` is printed and the run continues. If
      ``step`` draws its data from a generator in ``state``, the resumed run computes the
      same parameters, rows and TensorBoard scalars as an uninterrupted one.
    - **Ctrl-C** finishes the iteration, writes a checkpoint, prints
      ``interrupted: checkpoint at iteration N`` and raises
      [metaops.experiment.RunInterrupted][] (exit status 130, no traceback).
    - **Divergence**: a non-finite loss stops the run with
      [metaops.inner.NonFiniteError][] naming the iteration (compiled steps skip metaops' own
      finiteness checks).

    ``config.json`` receives the configuration (``asdict(args)``).

    **Many processes** (``torchrun``, [metaops.distributed.init][]): every process runs the
    same loop and ``step()``, which must reduce its meta-gradient over the processes (e.g.
    ``metaops.meta_value_and_grad(..., process_group=group)``) so that all hold the same state,
    and should return the loss averaged over all processes (what is logged). Only the main
    process (global rank 0) writes ``config.json``, the logs, the checkpoint and prints;
    the others compute silently. To resume, the main process reads the checkpoint and sends
    the full state to every process, so a run may resume with any number of processes, and
    the out_dir need not be on a shared file system. Ctrl-C (SIGINT) that reaches some of
    the processes is agreed on at the next log row or checkpoint (one small ``all_reduce``
    every ``args.log_every`` iterations): all processes checkpoint and stop at the same
    iteration instead of leaving others waiting. ``torchrun`` passes its Ctrl-C (or SIGTERM) on
    to every worker, which then checkpoint and stop together, as does a scheduler's SIGTERM. The
    returned ``history`` is the main process's on every process.

    Args:
        args: The run's options (a [metaops.experiment.RunArgs][] subclass); all of its
            fields are the configuration the checkpoint records.
        step: One meta-iteration; returns its loss (a scalar tensor or a float).
        recipe: The script's name: checkpoint tag and progress-bar label.
        state: Name -> object to checkpoint and restore: anything with ``state_dict()`` and
            ``load_state_dict()`` (models, optimizers) or a ``torch.Generator``. The names
            ``recipe``, ``config``, ``iteration``, ``log_rows`` and ``window`` are reserved.
        loss_name: Name of the loss ``step`` returns: the column ``train/<loss_name>``, the
            progress-bar postfix and the metric ``final_<loss_name>``.
        fields: The further columns ``on_log`` fills.
        on_log: Called with the iteration of each row (the final partial one included); returns
            more values for it, under names among ``fields``.
        compiled: The [metaops.CompiledMetaStep][] that ``step`` calls, if compiled: its compile
            time is printed after the second iteration and returned as ``compile_seconds``.

    Returns:
        ``(history, metrics)``: the run log as columns (``step`` and every field, with NaN for
        empty cells; [metaops.experiment.RunLogger.history][]) and
        ``{"final_<loss_name>": last logged loss, "train_seconds": wall time of this call's
        training, "compile_seconds": ...}`` (the last only with ``compiled``).

    Raises:
        ValueError: For invalid ``args`` or a reserved ``state`` name, or when resuming from
            another recipe's or configuration's checkpoint.
        TypeError: If an object in ``state`` cannot be checkpointed.
        metaops.experiment.CheckpointError: If the checkpoint to resume from is corrupt.
        metaops.inner.NonFiniteError: If ``step`` returns a NaN or infinite loss.
        metaops.experiment.RunInterrupted: After Ctrl-C, once the checkpoint is written.

    Examples:
        >>> import tempfile
        >>> args = RunArgs(out_dir=tempfile.mkdtemp(), iterations=5, log_every=2, progress=False,
        ...                tensorboard=False)
        >>> w = torch.zeros(1, requires_grad=True)
        >>> opt = torch.optim.SGD([w], lr=0.5)
        >>> def step():  # one iteration: minimise (w - 1)^2
        ...     loss = ((w - 1.0) ** 2).sum()
        ...     opt.zero_grad()
        ...     loss.backward()
        ...     opt.step()
        ...     return loss
        >>> history, metrics = meta_train(args, step, recipe="demo", state={"opt": opt}, loss_name="loss")
        >>> history["step"], history["train/loss"]      # rows at 2, 4 and the partial window at 5
        ([2.0, 4.0, 5.0], [0.5, 0.0, 0.0])
        >>> sorted(metrics)
        ['final_loss', 'train_seconds']
        >>> _ = meta_train(args, step, recipe="demo", state={"opt": opt}, loss_name="loss")
        resumed from ... at iteration 5
    """
    args.validate()
    for name, obj in state.items():
        if name in _RESERVED:
            raise ValueError(f"meta_train: state name {name!r} is reserved (reserved: {', '.join(_RESERVED)})")
        checkpointable = hasattr(obj, "state_dict") and hasattr(obj, "load_state_dict")
        if not (checkpointable or isinstance(obj, torch.Generator)):
            raise TypeError(f"meta_train: state[{name!r}] ({type(obj).__name__}) has no state_dict/load_state_dict "
                            "and is not a torch.Generator")
    out = Path(args.out_dir)
    ckpt_path = out / "checkpoint.pt"
    config = asdict(args)
    loss_field = f"train/{loss_name}"
    group = dist.group.WORLD if is_initialized() else None  # every process of a torchrun job
    main = is_main_process()
    start, log_rows, window = 0, 0, []

    def read_checkpoint() -> dict[str, Any] | None:
        if not (args.resume and ckpt_path.exists()):
            return None
        return load_run_checkpoint(ckpt_path, recipe=recipe, config=config, ignore=args.run_control,
                                   iterations=args.iterations)

    ckpt = on_main_process(read_checkpoint, group=group)  # one reader; every process gets the full state
    if ckpt is not None:
        for name, obj in state.items():
            if isinstance(obj, torch.Generator):
                obj.set_state(ckpt[name])
            else:
                obj.load_state_dict(ckpt[name])
        start, log_rows, window = ckpt["iteration"], ckpt["log_rows"], list(ckpt["window"])
        if main:
            print(f"resumed from {ckpt_path} at iteration {start}")
    if main:
        save_json(out / "config.json", config)

    def row(iteration: int) -> dict[str, float]:
        return {loss_field: sum(window) / len(window), **(on_log(iteration) if on_log is not None else {})}

    with RunLogger(out, fields=[loss_field, *fields], total=args.iterations, initial=start, rows=log_rows,
                   tensorboard=args.tensorboard, progress=args.progress, desc=recipe,
                   defer_interrupt=True) as logger:  # Ctrl-C: checkpoint, then stop

        def checkpoint(iteration: int) -> None:
            if not main:
                return
            save_checkpoint(ckpt_path, {
                "recipe": recipe, "config": config, "iteration": iteration,
                **{name: obj.get_state() if isinstance(obj, torch.Generator) else obj.state_dict()
                   for name, obj in state.items()},
                "log_rows": logger.rows, "window": window,
            })

        train_start = time.perf_counter()
        for it in range(start, args.iterations):
            loss = step()
            loss = loss.detach().item() if isinstance(loss, Tensor) else float(loss)
            window.append(loss)
            if not math.isfinite(loss):  # compiled steps skip metaops' own finiteness checks
                raise NonFiniteError(f"the {loss_name.replace('_', '-')} is {loss} at meta-iteration {it + 1}; "
                                     "lower the learning rates")
            if (it + 1) % args.log_every == 0:
                logger.log(it + 1, row(it + 1))
                window = []
            logger.advance(1, **{loss_name: loss})
            if compiled is not None and it == start + 1:
                logger.write(f"compile_meta_step: compiled={compiled.compiled}, took {compiled.compile_seconds} s")
            scheduled = (it + 1) % args.checkpoint_every == 0 or it + 1 == args.iterations
            if group is None:
                stop = logger.interrupted
            else:  # the processes agree, at log rows and checkpoints, so that they stop at the same iteration
                agree = scheduled or (it + 1) % args.log_every == 0
                stop = agree and any_process(logger.interrupted, group=group)
            if scheduled or stop:
                checkpoint(it + 1)
                if stop:
                    logger.request_stop()
                    logger.stop_if_interrupted(it + 1)  # "interrupted: checkpoint at iteration N"
                logger._checkpointed(it + 1)
        if window:  # the iterations after the last full window (all of a run shorter than one): logged after
            # the final checkpoint, so that a longer resumed run replaces this row with the full window's
            logger.log(args.iterations, row(args.iterations))
    train_seconds = time.perf_counter() - train_start

    history = on_main_process(logger.history, group=group)
    metrics = {f"final_{loss_name}": last_finite(history[loss_field]), "train_seconds": train_seconds}
    if compiled is not None:
        metrics["compile_seconds"] = compiled.compile_seconds if compiled.compile_seconds is not None else math.nan
    return history, metrics
