"""A resumable run logger: CSV rows, TensorBoard scalars and a tqdm progress bar."""

from __future__ import annotations

import csv
import io
import json
import math
import os
import tempfile
import time
import weakref
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from metaops.distributed import is_main_process
from metaops.experiment._checkpoint import default_permissions
from metaops.experiment._interrupt import RunInterrupted, _DeferredSigint

__all__ = ["RunLogger", "save_json"]


def save_json(path: str | os.PathLike, obj: Any) -> None:
    """Writes ``obj`` as indented JSON to ``path`` atomically (temporary file + rename).

    Args:
        path: Destination file; its parent directory is created if needed.
        obj: Anything ``json.dumps`` accepts (non-finite floats are written as ``NaN``).

    Examples:
        >>> import tempfile, pathlib
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "metrics.json"
        >>> save_json(path, {"mse": 0.5})
        >>> print(path.read_text())
        {
          "mse": 0.5
        }
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(obj, indent=2, sort_keys=True) + "\n"
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        default_permissions(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class RunLogger:
    """Logs scalars to ``<out_dir>/metrics.csv`` and TensorBoard, and drives a progress bar.

    Each [log][metaops.experiment.RunLogger.log] call appends one CSV row (``step`` plus the
    metrics, under the columns declared by ``fields``; a metric left out is an empty cell) and
    one TensorBoard scalar per metric under ``<out_dir>/tensorboard``.
    [advance][metaops.experiment.RunLogger.advance] moves the tqdm bar.

    **Resuming without duplicates.** Save [rows][metaops.experiment.RunLogger.rows] in the
    checkpoint together with the iteration. To resume, construct the logger with
    ``rows=<saved rows>`` and ``initial=<saved iteration>``: the CSV is cut back to its
    first ``rows`` data rows (dropping anything logged after the checkpoint, which the resumed
    run logs again) and TensorBoard hides every earlier event at a step after the last kept
    row's, so that the CSV and TensorBoard hold the same scalars as an uninterrupted run. With
    ``rows=0`` the CSV is started afresh and TensorBoard hides all earlier events.

    **Stopping on Ctrl-C.** With ``defer_interrupt=True``, a first Ctrl-C only sets
    [interrupted][metaops.experiment.RunLogger.interrupted]: the training loop finishes its
    iteration, writes a checkpoint and calls
    [stop_if_interrupted][metaops.experiment.RunLogger.stop_if_interrupted], which prints
    ``interrupted: checkpoint at iteration N`` and raises
    `metaops.experiment.RunInterrupted` (a ``SystemExit`` with status 130: no traceback). A
    second Ctrl-C raises ``KeyboardInterrupt`` at once, as usual; inside a
    ``with RunLogger(...)`` block it too ends in ``RunInterrupted``, naming the last
    checkpoint. Ctrl-C behaves as usual again after [close][metaops.experiment.RunLogger.close].
    SIGTERM (what ``torchrun`` forwards and batch schedulers send before killing a job) is
    handled exactly like Ctrl-C.

    **Many processes.** Under ``torch.distributed`` only the main process
    ([metaops.distributed.is_main_process][]) writes: on the others the logger creates no
    file or directory, shows no progress bar and prints nothing, and
    [history][metaops.experiment.RunLogger.history] holds only the rows this process logged.

    Args:
        out_dir: Run directory (created if needed).
        fields: The metric names (CSV columns after ``step``).
        total: Total iterations, for the progress bar.
        initial: Iteration the run starts (or resumes, from a checkpoint) at.
        rows: CSV data rows to keep from an earlier run (``0``: start a new file).
        tensorboard: Also write TensorBoard event files.
        progress: Show a tqdm progress bar (on stderr).
        desc: Progress bar label.
        defer_interrupt: Turn the first Ctrl-C into a request to checkpoint and stop (above).

    Raises:
        ValueError: If ``rows`` is negative, exceeds the rows the existing CSV holds, or the
            existing CSV has other columns than ``fields``.

    Examples:
        >>> import tempfile
        >>> out = tempfile.mkdtemp()
        >>> with RunLogger(out, fields=["loss"], total=2, tensorboard=False, progress=False) as logger:
        ...     logger.log(0, {"loss": 1.0})
        ...     logger.log(1, {"loss": 0.5})
        ...     logger.rows
        2
        >>> resumed = RunLogger(out, fields=["loss"], total=2, initial=1, rows=1,
        ...                     tensorboard=False, progress=False)
        >>> with resumed as logger:
        ...     logger.log(1, {"loss": 0.25})       # the resumed run logs step 1 again
        ...     logger.history()["loss"]
        [1.0, 0.25]
    """

    def __init__(
        self,
        out_dir: str | os.PathLike,
        *,
        fields: Sequence[str],
        total: int,
        initial: int = 0,
        rows: int = 0,
        tensorboard: bool = True,
        progress: bool = True,
        desc: str | None = None,
        defer_interrupt: bool = False,
    ) -> None:
        self.out_dir = Path(out_dir)
        self.csv_path = self.out_dir / "metrics.csv"
        if rows < 0:
            raise ValueError(f"RunLogger: rows must be >= 0, got {rows}")
        self._fields = ["step", *fields]
        if len(set(self._fields)) != len(self._fields):
            raise ValueError(f"RunLogger: duplicate or reserved ('step') names in fields {list(fields)}")
        self._silent = not is_main_process()  # another process of a distributed run: compute, write nothing
        self._memory: list[dict[str, float]] = []  # the rows a silent logger was given
        self._rows = rows if self._silent else 0
        self._file = None
        self._tb = None
        if not self._silent:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            last_step = self._truncate(rows) if rows > 0 else None
            self._file = open(self.csv_path, "a" if rows > 0 else "w", newline="")  # noqa: SIM115
            self._writer = csv.DictWriter(self._file, self._fields)
            if rows == 0:
                self._writer.writeheader()
                self._file.flush()
        if tensorboard and not self._silent:
            from torch.utils.tensorboard import SummaryWriter

            # TensorBoard hides the events of earlier files at steps >= purge_step: here those after the last
            # kept CSV row (a resumed run logs them again), or all of them when the CSV starts afresh
            tb_dir = self.out_dir / "tensorboard"
            _wait_for_a_later_second(tb_dir)
            self._tb = SummaryWriter(str(tb_dir), purge_step=0 if last_step is None else last_step + 1)
        self._bar = tqdm(total=total, initial=initial, desc=desc, disable=not progress or self._silent,
                         dynamic_ncols=True)
        self._last_checkpoint = initial if initial > 0 else None  # a run resumes from a checkpoint at `initial`
        self._interrupt = _DeferredSigint() if defer_interrupt else None
        if self._interrupt is not None:
            self._interrupt.install()
            weakref.finalize(self, self._interrupt.restore)  # also if an error skips close()

    def _truncate(self, rows: int) -> int:
        """Cuts the CSV back to its first ``rows`` data rows and returns the last kept row's step."""
        if not self.csv_path.is_file():
            raise ValueError(f"RunLogger: resuming at {rows} rows, but {str(self.csv_path)!r} does not exist")
        with open(self.csv_path, newline="") as f:
            lines = f.read().splitlines(keepends=True)
        if len(lines) - 1 < rows:
            raise ValueError(
                f"RunLogger: resuming at {rows} rows, but {str(self.csv_path)!r} holds only "
                f"{max(len(lines) - 1, 0)}; the log does not belong to this checkpoint"
            )
        header = next(csv.reader(io.StringIO(lines[0])))
        if header != self._fields:
            raise ValueError(
                f"RunLogger: {str(self.csv_path)!r} has columns {header}, this run logs {self._fields}"
            )
        self._rows = rows
        fd, tmp = tempfile.mkstemp(prefix=".metrics.", suffix=".tmp", dir=self.out_dir)
        with os.fdopen(fd, "w", newline="") as f:
            f.writelines(lines[: rows + 1])
        default_permissions(tmp)
        os.replace(tmp, self.csv_path)
        return int(float(next(csv.reader(io.StringIO(lines[rows])))[0]))

    @property
    def rows(self) -> int:
        """Number of CSV data rows written so far (store it in checkpoints)."""
        return self._rows

    def log(self, step: int, metrics: dict[str, float]) -> None:
        """Appends one row of scalars at ``step`` (CSV, flushed at once, and TensorBoard).

        Args:
            step: The iteration the metrics belong to.
            metrics: Name -> number, names among ``fields``; names left out are empty cells.

        Raises:
            ValueError: If ``metrics`` has a name that is not among ``fields``.
        """
        row = {"step": step, **{k: float(v) for k, v in metrics.items()}}
        unknown = sorted(set(row) - set(self._fields))
        if unknown:
            raise ValueError(f"RunLogger.log: {unknown} are not columns of {str(self.csv_path)!r} ({self._fields})")
        if self._silent:
            self._memory.append(row)
            self._rows += 1
            return
        self._writer.writerow(row)
        self._file.flush()
        self._rows += 1
        if self._tb is not None:
            for name, value in metrics.items():
                self._tb.add_scalar(name, float(value), step)

    def advance(self, n: int = 1, **postfix: float) -> None:
        """Moves the progress bar by ``n`` iterations, optionally showing ``postfix`` values."""
        if postfix:
            self._bar.set_postfix({k: f"{v:.4g}" for k, v in postfix.items()}, refresh=False)
        self._bar.update(n)

    @property
    def interrupted(self) -> bool:
        """Whether Ctrl-C was pressed (``defer_interrupt=True`` only): time to checkpoint and stop."""
        return self._interrupt is not None and self._interrupt.requested

    def request_stop(self) -> None:
        """Acts as if Ctrl-C was pressed here: [interrupted][metaops.experiment.RunLogger.interrupted] becomes true.

        For a distributed run in which Ctrl-C reached only some processes: once they agree
        (e.g. with [metaops.distributed.any_process][]), every process calls it, checkpoints and
        stops at the same iteration. Without ``defer_interrupt`` it does nothing.
        """
        if self._interrupt is not None:
            self._interrupt.requested = True

    def stop_if_interrupted(self, iteration: int) -> None:
        """Records a checkpoint just written at ``iteration``; after a Ctrl-C, ends the run there.

        Call it right after every checkpoint. If [interrupted][metaops.experiment.RunLogger.interrupted],
        it prints ``interrupted: checkpoint at iteration <iteration>``, closes the logger and raises
        `metaops.experiment.RunInterrupted`.

        Args:
            iteration: The iteration whose checkpoint was just written.

        Raises:
            RunInterrupted: After a Ctrl-C (a ``SystemExit`` with status 130).
        """
        self._checkpointed(iteration)
        if self.interrupted:
            raise self._stop()

    def _checkpointed(self, iteration: int) -> None:
        """Records a checkpoint written at ``iteration`` without acting on Ctrl-C (private)."""
        self._last_checkpoint = iteration

    def _stop(self) -> RunInterrupted:
        error = RunInterrupted(self._last_checkpoint)
        self.close()
        self.write(str(error))
        return error

    def write(self, message: str) -> None:
        """Prints a message without breaking the progress bar (``tqdm.write``; main process only)."""
        if not self._silent:
            self._bar.write(message)

    def history(self) -> dict[str, list[float]]:
        """Reads the CSV back as columns (``step`` included); empty cells become NaN.

        Works after [close][metaops.experiment.RunLogger.close] too. On a process other than the
        main one of a distributed run: only the rows this process logged.
        """
        if self._silent:
            rows = [{k: str(v) for k, v in row.items()} for row in self._memory]
        else:
            if not self._file.closed:
                self._file.flush()
            with open(self.csv_path, newline="") as f:
                rows = list(csv.DictReader(f))
        return {k: [float(r[k]) if r.get(k) not in (None, "") else math.nan for r in rows] for k in self._fields}

    def close(self) -> None:
        """Flushes and closes the CSV file, the TensorBoard writer and the progress bar; restores Ctrl-C."""
        if self._interrupt is not None:
            self._interrupt.restore()
        self._bar.close()
        if self._tb is not None:
            self._tb.close()
        if self._file is not None:
            self._file.close()

    def __enter__(self) -> RunLogger:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        self.close()
        if self._interrupt is None:
            return
        if exc_type is not None and issubclass(exc_type, KeyboardInterrupt):
            raise self._stop() from None  # a second Ctrl-C, mid-iteration: the last checkpoint is all there is
        if exc_type is None and self._interrupt.requested:  # Ctrl-C after the loop's last check
            raise self._stop()


def _wait_for_a_later_second(directory: Path) -> None:
    """Waits (at most 1 s) until the clock is past the second of every event file in ``directory``.

    TensorBoard reads the files in name order, and a name starts with the second the file was
    created in; the rest (host, process id, a counter compared as text) need not sort in time
    order. A file created in a later second always sorts after the earlier ones, so that the
    purge of a resumed run applies to the events written before it.
    """
    seconds = [int(part[3]) for part in (p.name.split(".") for p in directory.glob("events.out.tfevents.*"))
               if len(part) > 3 and part[3].isdigit()]
    if seconds:
        time.sleep(min(max(max(seconds) + 1 - time.time(), 0.0), 1.0))
