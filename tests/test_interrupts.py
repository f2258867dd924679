"""Signals as one exception, held back where a statement pair must not be split
(:mod:`podplug.interrupts`)."""

from __future__ import annotations

import os
import signal
import weakref

import pytest

from podplug.interrupts import Interrupted, deferred, handled, until_signal


def test_sigterm_becomes_interrupted_with_the_shells_exit_code() -> None:
    with pytest.raises(Interrupted) as caught, handled():
        os.kill(os.getpid(), signal.SIGTERM)
        signal.sigtimedwait([], 0)  # a bytecode boundary for the handler to run at
    assert caught.value.exit_code == 143 and caught.value.signum == signal.SIGTERM
    assert isinstance(caught.value, KeyboardInterrupt)  # the Ctrl-C cleanups apply


def test_the_signals_after_the_first_are_ignored_during_cleanup() -> None:
    with handled():
        try:
            os.kill(os.getpid(), signal.SIGINT)
            signal.sigtimedwait([], 0)
        except Interrupted:
            os.kill(os.getpid(), signal.SIGTERM)  # a second one while cleaning up
            os.kill(os.getpid(), signal.SIGINT)
            cleaned = True
    assert cleaned


def test_deferred_raises_at_the_end_of_the_block() -> None:
    steps = []
    with pytest.raises(Interrupted), handled():
        with deferred():
            os.kill(os.getpid(), signal.SIGHUP)
            steps.append("started")
            steps.append("recorded")  # the pair is not split
        steps.append("never")
    assert steps == ["started", "recorded"]


def test_until_signal_takes_it_as_a_value() -> None:
    with handled():
        signal.setitimer(signal.ITIMER_REAL, 0.05)
        previous = signal.signal(signal.SIGALRM, lambda *_: os.kill(os.getpid(),
                                                                    signal.SIGINT))
        try:
            assert until_signal(lambda: False, interval=0.01) == signal.SIGINT
        finally:
            signal.signal(signal.SIGALRM, previous)
        assert until_signal(lambda: True) is None  # done() ends it without a signal
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def test_a_signal_during_a_qmp_wait_ends_it_as_the_interrupt() -> None:
    """A QMP call waits on a ``concurrent.futures`` Condition; the signal is held while in
    ``threading``'s lock code and raised once out of it (an exception raised inside had
    left "cannot release un-acquired lock" in its place), within the poll interval."""
    import asyncio
    import threading
    import time

    from podplug.vm.qmp import QmpSession

    session = QmpSession("signal-test")
    loop = session._start_loop()
    timer = threading.Timer(0.2, os.kill, (os.getpid(), signal.SIGTERM))
    started = time.monotonic()
    try:
        with pytest.raises(Interrupted) as caught, handled():
            timer.start()
            session._run(asyncio.sleep(30), 30.0)
        assert caught.value.signum == signal.SIGTERM
        assert time.monotonic() - started < 5.0
    finally:
        timer.cancel()
        loop.call_soon_threadsafe(loop.stop)


def _swallowing_callback(_ref: object) -> None:
    """The signal's handler runs inside a weakref callback, where Python only reports an
    exception ("Exception ignored in ..."): the interrupt does not propagate."""
    os.kill(os.getpid(), signal.SIGTERM)
    signal.sigtimedwait([], 0)


class _Thing:
    pass


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_an_interrupt_python_swallowed_is_raised_at_the_next_deferred_block() -> None:
    steps = []
    with pytest.raises(Interrupted) as caught, handled():
        thing = _Thing()
        ref = weakref.ref(thing, _swallowing_callback)
        del thing
        assert ref() is None
        steps.append("swallowed")  # the run goes on
        with deferred():
            steps.append("deferred")
        steps.append("never")
    assert caught.value.signum == signal.SIGTERM and steps == ["swallowed", "deferred"]


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_an_interrupt_python_swallowed_is_raised_when_the_block_ends() -> None:
    with pytest.raises(Interrupted) as caught, handled():
        thing = _Thing()
        ref = weakref.ref(thing, _swallowing_callback)
        del thing
        assert ref() is None
    assert caught.value.exit_code == 143
