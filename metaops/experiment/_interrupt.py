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


class _DeferredSigint:
    """While installed, the first SIGINT only sets ``requested``; the next one raises as usual."""

    def __init__(self) -> None:
        self.requested = False
        self._previous = None
        self._handler = self._handle  # one bound method, to recognise it in signal.getsignal
        self._installed = False

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # signal handlers can only be set from the main thread, which alone receives SIGINT
        previous = signal.getsignal(signal.SIGINT)
        if previous is None:  # pragma: no cover - a handler installed from C cannot be restored
            return
        self._previous = signal.signal(signal.SIGINT, self._handler)
        self._installed = True

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.requested = True
        signal.signal(signal.SIGINT, self._previous)  # a second Ctrl-C stops at once
        notice = "\nCtrl-C: stopping after this iteration's checkpoint (press Ctrl-C again to stop at once)\n"
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
        if signal.getsignal(signal.SIGINT) == self._handler:  # not if already restored, or replaced since
            signal.signal(signal.SIGINT, self._previous)
