"""Ctrl-C during a training loop: finish the iteration, write a checkpoint, stop without a traceback."""

from __future__ import annotations

import os
import signal
import sys
import threading
from types import FrameType

__all__ = ["RunInterrupted"]


class RunInterrupted(SystemExit):
    """Raised when a run stops after Ctrl-C; ``iteration`` is that of its last checkpoint.

    It is a ``SystemExit`` with exit status 130 (the shell's code for Ctrl-C), so a recipe run
    from the command line ends without a traceback, while Python callers can catch it.
    [metaops.experiment.RunLogger][] raises it (with ``defer_interrupt=True``).

    Args:
        iteration: Iteration of the last checkpoint written, or ``None`` if there is none.

    Examples:
        >>> error = RunInterrupted(40)
        >>> error.code, error.iteration, str(error)
        (130, 40, 'interrupted: checkpoint at iteration 40')
    """

    def __init__(self, iteration: int | None) -> None:
        super().__init__(130)
        self.iteration = iteration

    def __str__(self) -> str:
        if self.iteration is None:
            return "interrupted before the first checkpoint: nothing was saved"
        return f"interrupted: checkpoint at iteration {self.iteration}"


_SIGNALS = (signal.SIGINT, signal.SIGTERM)
_NAMES = {signal.SIGINT: "Ctrl-C", signal.SIGTERM: "SIGTERM"}


class _DeferredSigint:
    """While installed, the first SIGINT or SIGTERM only sets ``requested``; the next one acts as usual.

    SIGTERM is what ``torchrun`` sends its workers when it is interrupted, and what batch schedulers
    (SLURM) send before killing a job: both get the same checkpoint-then-stop as Ctrl-C.
    """

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict[int, object] = {}
        self._handler = self._handle  # one bound method, to recognise it in signal.getsignal
        self._installed = False

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # signal handlers can only be set from the main thread, which alone receives signals
        previous = {sig: signal.getsignal(sig) for sig in _SIGNALS}
        if any(handler is None for handler in previous.values()):  # pragma: no cover - set from C: not restorable
            return
        self._previous = {sig: signal.signal(sig, self._handler) for sig in _SIGNALS}
        self._installed = True

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.requested = True
        for sig, handler in self._previous.items():  # a second signal stops at once
            signal.signal(sig, handler)
        name = _NAMES.get(signum, f"signal {signum}")
        notice = f"\n{name}: stopping after this iteration's checkpoint (press Ctrl-C again to stop at once)\n"
        try:  # os.write, unbuffered: a buffered write could re-enter one that the signal interrupted
            fd = sys.stderr.fileno()
        except (OSError, ValueError, AttributeError):  # sys.stderr replaced, e.g. by a notebook or pytest
            fd = 2
        try:
            os.write(fd, notice.encode())
        except OSError:  # pragma: no cover - no usable stderr
            pass

    def restore(self) -> None:
        if not self._installed or threading.current_thread() is not threading.main_thread():
            return
        self._installed = False
        for sig, handler in self._previous.items():
            if signal.getsignal(sig) == self._handler:  # not if already restored, or replaced since
                signal.signal(sig, handler)
