"""Experiment support for meta-training scripts: a resumable training loop, checkpoints, logs,
statistics and plots.

Public, documented API, used by the recipes and meant for your own scripts. It is kept apart
from the functional core: the core never imports it, and ``metaops`` loads it on first use.
The sinusoid benchmark's protocol (``SinusoidArgs``, ``run_sinusoid``) is the one piece
specific to a task family.
"""

from metaops.experiment._checkpoint import CheckpointError, load_checkpoint, load_run_checkpoint, save_checkpoint
from metaops.experiment._config import check_positive, check_same_config
from metaops.experiment._evaluation import write_adaptation_evaluation
from metaops.experiment._interrupt import RunInterrupted
from metaops.experiment._logger import RunLogger, save_json
from metaops.experiment._loop import RunArgs, meta_train
from metaops.experiment._meta_rl import held_out_adaptation
from metaops.experiment._plots import FitPanel, plot_adaptation_curve, plot_fits, plot_learning_curve
from metaops.experiment._sinusoid import SinusoidArgs, adaptation_curves, run_sinusoid
from metaops.experiment._stats import (
    format_summary,
    last_finite,
    mean_confidence_interval,
    paired_gains,
    summarize_steps,
    summarize_tasks,
)

__all__ = [
    "RunArgs",
    "meta_train",
    "SinusoidArgs",
    "run_sinusoid",
    "adaptation_curves",
    "save_checkpoint",
    "load_checkpoint",
    "load_run_checkpoint",
    "CheckpointError",
    "RunLogger",
    "RunInterrupted",
    "save_json",
    "mean_confidence_interval",
    "paired_gains",
    "summarize_tasks",
    "summarize_steps",
    "format_summary",
    "last_finite",
    "plot_learning_curve",
    "plot_adaptation_curve",
    "write_adaptation_evaluation",
    "held_out_adaptation",
    "plot_fits",
    "FitPanel",
    "check_positive",
    "check_same_config",
]
