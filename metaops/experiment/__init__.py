"""Experiment utilities shared by the recipes: checkpoints, logging, statistics and plots.

Nothing here is meta-learning specific; it is the plumbing every recipe needs, kept out of
the recipe files so that they show only the algorithm.
"""

from metaops.experiment._checkpoint import CheckpointError, load_checkpoint, load_run_checkpoint, save_checkpoint
from metaops.experiment._config import check_positive, check_same_config
from metaops.experiment._interrupt import RunInterrupted
from metaops.experiment._logger import RunLogger, save_json
from metaops.experiment._plots import FitPanel, plot_fits, plot_learning_curve
from metaops.experiment._stats import (
    format_summary,
    last_finite,
    mean_confidence_interval,
    summarize_steps,
    summarize_tasks,
)

__all__ = [
    "save_checkpoint",
    "load_checkpoint",
    "load_run_checkpoint",
    "CheckpointError",
    "RunLogger",
    "RunInterrupted",
    "save_json",
    "mean_confidence_interval",
    "summarize_tasks",
    "summarize_steps",
    "format_summary",
    "last_finite",
    "plot_learning_curve",
    "plot_fits",
    "FitPanel",
    "check_positive",
    "check_same_config",
]
