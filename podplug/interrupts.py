"""SIGINT, SIGTERM and SIGHUP as an exception, so that every cleanup runs (issue 11).

SIGTERM's and SIGHUP's default action ends the process at once: no ``finally``, no
``with`` exit, so a ``podplug run`` stopped that way left its temporary directories, agent
socket and (had ``PR_SET_PDEATHSIG`` not been set) QEMU behind. :func:`handled` turns the
first of these signals into :class:`Interrupted` (a ``KeyboardInterrupt``, so the code
that already cleans up after Ctrl-C cleans up after each), and ignores the ones that
follow while that cleanup runs: a second Ctrl-C must not cut short the teardown of the
first. The CLI exits ``128 + signal number`` (130, 143, 129), as a shell reports a signal.

:func:`deferred` holds a signal back over a few statements that must not be split (a
child process started but not yet recorded), or over a wait inside ``threading``'s lock
code, where an exception raised by a signal handler leaves the lock half released
("cannot release un-acquired lock" replaced the interrupt, measured in a run stopped
during a QMP call): it is raised when the block ends; :func:`pending` lets such a wait
end early.
:func:`until_signal` waits for one where a signal is the expected end (``run
--keep-running``), taking it as a value instead of an exception landing anywhere.

An exception raised where Python can only report it (a weakref callback, ``__del__``: "Exception
ignored in ...") does not propagate, so the interrupt would be lost, and with it every later
signal (seen once in a ``podplug run`` sent SIGTERM during its unplug: it ran to the end and
exited 0). :func:`handled` catches that through ``sys.unraisablehook``: the signal is pending
again, raised at the end of the next :func:`deferred` block, or at the end of
:func:`handled`'s own block.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from types import FrameType

HANDLED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class Interrupted(KeyboardInterrupt):
    """A handled signal arrived; ``signum`` says which."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


class _State:
    depth = 0  # inside deferred() blocks
    pending: int | None = None  # a signal held back by deferred()
    raised = False  # the one Interrupted has been raised: ignore the rest


def _handler(signum: int, _frame: FrameType | None) -> None:
    if _State.raised:
        return
    if _State.depth:
        _State.pending = _State.pending or signum
        return
    _State.raised = True
    raise Interrupted(signum)


@contextlib.contextmanager
def handled() -> Iterator[None]:
    """Signals become :class:`Interrupted` inside the block; the old handlers after it.
    Outside the main thread (where Python cannot take signals) it changes nothing. An
    interrupt Python swallowed (see the module's docstring) is raised again when the block
    ends, if nothing else did."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.getsignal(s) for s in HANDLED}
    previous_hook = sys.unraisablehook

    def unraisable(report: sys.UnraisableHookArgs) -> None:
        if isinstance(report.exc_value, Interrupted) and _State.pending is None:
            _State.raised, _State.pending = False, report.exc_value.signum
        previous_hook(report)

    _State.raised, _State.pending = False, None
    sys.unraisablehook = unraisable
    for s in HANDLED:
        signal.signal(s, _handler)
    try:
        yield
    finally:
        for s, old in previous.items():
            signal.signal(s, old)
        sys.unraisablehook = previous_hook
    if _State.pending is not None and not _State.raised:  # the block ended normally
        signum, _State.pending = _State.pending, None
        raise Interrupted(signum)


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """A signal that arrives inside the block is raised when it ends (outermost block)."""
    _State.depth += 1
    try:
        yield
    finally:
        _State.depth -= 1
    # on an exception the signal stays pending (the exception is already ending the block)
    if not _State.depth and _State.pending is not None and not _State.raised:
        signum, _State.pending = _State.pending, None
        _State.raised = True
        raise Interrupted(signum)


def pending() -> bool:
    """A signal is being held back by :func:`deferred` (the block should end soon)."""
    return _State.pending is not None


def until_signal(done: Callable[[], bool], interval: float = 0.2) -> int | None:
    """Wait until a handled signal arrives (returned, and consumed) or ``done()``."""
    _State.depth += 1
    try:
        while _State.pending is None and not done():
            time.sleep(interval)
        signum, _State.pending = _State.pending, None
        return signum
    finally:
        _State.depth -= 1
