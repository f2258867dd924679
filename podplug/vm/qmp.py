"""Synchronous facade over ``qemu.qmp.QMPClient``: the only asyncio code in podplug.

QMP (QEMU's ``docs/interop/qmp-spec.rst``) is asynchronous: replies and events share one
socket. ``qemu.qmp`` speaks it with asyncio; the rest of podplug is synchronous (DESIGN.md
section 4). :class:`QmpSession` owns one event loop in a dedicated daemon thread, so

* every public method is a plain blocking call with an explicit, bounded timeout;
* event listeners live in that loop and keep collecting while the caller does other work
  (:meth:`QmpSession.watch`): a listener opened *before* a command cannot miss the event the
  command triggers.

Errors map onto podplug's tree (:mod:`podplug.errors`):

* QEMU answered ``{"error": ...}`` -> :class:`~podplug.errors.QmpCommandError` with QMP's own
  ``error_class`` (``GenericError``, ``DeviceNotFound``, ...), the ``qemu.qmp`` error as cause;
* a bounded wait ran out (reply, event) -> :class:`~podplug.errors.HotplugTimeout`;
* the connection broke or never came -> :class:`~podplug.errors.VmError`;
* a call on a session that is not connected -> :class:`~podplug.errors.StateError`.

``DEVICE_DELETED`` (QAPI ``qapi/qdev.json``) carries ``path`` and, for devices with an id,
``device``. For a virtio device QEMU emits it twice: first for the internal
``/machine/peripheral/ID/virtio-backend`` (no ``device`` key), then for the device itself
(qemu-recipe.md pitfall 3). :meth:`QmpSession.device_del_and_wait` matches only the second.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, TypeVar

from qemu.qmp import (
    EventListener,
    ExecInterruptedError,
    ExecuteError,
    Message,
    QMPClient,
    QMPError,
)

from podplug.errors import HotplugTimeout, QmpCommandError, StateError, VmError
from podplug.interrupts import deferred, pending

_log = logging.getLogger(__name__)

_T = TypeVar("_T")

#: Extra time the calling thread grants the loop beyond a coroutine's own timeout.
_GRACE_S = 2.0
#: How often a waiting caller looks for a held-back signal (a reply ends the wait at once).
_POLL_S = 0.05
#: How many recent events :meth:`QmpSession.recent_events` keeps.
_EVENT_LOG_SIZE = 256
#: Default bound for a QMP reply.
DEFAULT_REPLY_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class QmpEvent:
    """One QMP event: ``{"event": name, "data": {...}, "timestamp": {seconds, microseconds}}``."""

    name: str
    data: Mapping[str, object] = field(default_factory=dict)
    timestamp: float = 0.0  # host wall clock, seconds since the epoch, as QEMU stamped it

    @classmethod
    def from_message(cls, msg: Message) -> QmpEvent:
        raw_data = msg.get("data", {})
        data = dict(raw_data) if isinstance(raw_data, Mapping) else {}
        stamp = msg.get("timestamp", {})
        seconds = 0.0
        if isinstance(stamp, Mapping):
            secs, usecs = stamp.get("seconds", 0), stamp.get("microseconds", 0)
            if isinstance(secs, int) and isinstance(usecs, int):
                seconds = secs + usecs / 1e6
        return cls(str(msg["event"]), data, seconds)


EventMatch = Callable[[QmpEvent], bool]


@dataclass(frozen=True)
class Answer:
    """One command's outcome in :meth:`QmpSession.execute_many`: the ``return`` value, or the
    error QEMU answered with; ``seconds`` from the batch's start until this reply."""

    command: str
    value: object
    seconds: float

    @property
    def error(self) -> QmpCommandError | None:
        return self.value if isinstance(self.value, QmpCommandError) else None


def deleted_event_matches(event: QmpEvent, device_id: str) -> bool:
    """True for the ``DEVICE_DELETED`` that ends the unplug of the device with id ``device_id``.

    Matches ``data.device == id`` or ``data.path == /machine/peripheral/ID`` (``device`` is
    the older member; ``path`` is what QEMU keeps). The ``.../ID/virtio-backend`` event that
    precedes it for virtio devices has neither, so it never matches (pitfall 3).
    """
    if event.name != "DEVICE_DELETED":
        return False
    return (
        event.data.get("device") == device_id
        or event.data.get("path") == f"/machine/peripheral/{device_id}"
    )


class EventWatch:
    """A registered QMP event listener; use through ``with session.watch(...) as w``."""

    def __init__(self, session: QmpSession, names: tuple[str, ...], match: EventMatch | None):
        self._session = session
        self.names = names

        def _filter(msg: Message) -> bool:
            return match is None or match(QmpEvent.from_message(msg))

        self._listener = EventListener(list(names) or None, _filter)

    def __enter__(self) -> EventWatch:
        self._session._in_loop(
            self._session._client_or_raise("watch events").register_listener, self._listener
        )
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        client = self._session._client
        if client is not None and self._session._loop_alive():
            self._session._in_loop(client.remove_listener, self._listener)

    def wait(self, timeout: float, subject: str = "QMP") -> QmpEvent:
        """The next matching event (possibly one that arrived already); bounded by ``timeout``.

        :raise HotplugTimeout: nothing matched within ``timeout`` seconds
            (``device`` = ``subject``, ``expected`` = the event names).
        """
        try:
            msg = self._session._run(self._listener.get(), timeout)
        except TimeoutError as exc:
            expected = " or ".join(self.names) or "a QMP event"
            raise HotplugTimeout(subject, expected, timeout) from exc
        return QmpEvent.from_message(msg)


class QmpSession:
    """One QMP connection to one QEMU, driven synchronously.

    Lifecycle: new -> :meth:`connect` -> connected -> :meth:`close` -> closed (final).
    """

    def __init__(self, name: str = "podplug") -> None:
        self.name = name
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._client: QMPClient | None = None
        self._drain: asyncio.Task[None] | None = None
        self._events: collections.deque[QmpEvent] = collections.deque(maxlen=_EVENT_LOG_SIZE)
        self._events_lock = threading.Lock()
        self._closed = False
        self.socket_path: str | None = None

    # -- plumbing -----------------------------------------------------------------------

    def _loop_alive(self) -> bool:
        return self._loop is not None and self._thread is not None and self._thread.is_alive()

    def _start_loop(self) -> asyncio.AbstractEventLoop:
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=loop.run_forever, name=f"qmp-{self.name}", daemon=True)
        thread.start()
        self._loop, self._thread = loop, thread
        return loop

    def _run(self, awaitable: Awaitable[_T], timeout: float) -> _T:
        """Run ``awaitable`` in the loop thread; ``TimeoutError`` after ``timeout`` seconds."""
        loop = self._loop
        assert loop is not None, "QMP loop not started"

        async def bounded() -> _T:
            return await asyncio.wait_for(awaitable, timeout)

        future = asyncio.run_coroutine_threadsafe(bounded(), loop)
        deadline = time.monotonic() + timeout + _GRACE_S
        try:
            # a signal is held while the future's Condition is waited on and raised once out
            # of it (interrupts.deferred): raised inside, it broke the lock
            with deferred():
                while not pending():
                    try:
                        return future.result(min(_POLL_S, max(0.0, deadline - time.monotonic())))
                    except concurrent.futures.TimeoutError:
                        if time.monotonic() >= deadline:
                            raise
            # only inside an outer deferred() block, which raises the signal when it ends
            raise VmError("a QMP wait was cut short by a signal")
        except BaseException:
            # a timeout, KeyboardInterrupt in the caller, or the coroutine's own error: never
            # leave the command pending in the loop.
            future.cancel()
            raise

    def _in_loop(self, fn: Callable[..., _T], *args: Any) -> _T:
        """Call a synchronous ``fn(*args)`` inside the loop thread (listener bookkeeping)."""

        async def call() -> _T:
            return fn(*args)

        return self._run(call(), DEFAULT_REPLY_TIMEOUT_S)

    def _client_or_raise(self, operation: str) -> QMPClient:
        if self._client is None or self._closed:
            state = "closed" if self._closed else "not connected"
            raise StateError(operation, state, ["connected"])
        return self._client

    async def _drain_events(self, client: QMPClient) -> None:
        """Move every event off the client's default listener into a bounded log."""
        while True:
            msg = await client.events.get()
            with self._events_lock:
                self._events.append(QmpEvent.from_message(msg))

    # -- public API ---------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._client is not None and not self._closed

    def connect(self, socket_path: str, timeout: float) -> None:
        """Connect to QEMU's QMP Unix socket, read the greeting and negotiate capabilities.

        :raise HotplugTimeout: no greeting within ``timeout`` seconds
        :raise VmError: the connection was refused or broke
        :raise StateError: already connected, or closed
        """
        if self._closed or self._client is not None:
            raise StateError("connect QMP", "closed" if self._closed else "connected", ["new"])
        if not self._loop_alive():
            self._start_loop()

        async def make_client() -> QMPClient:
            return QMPClient(self.name)

        client = self._run(make_client(), DEFAULT_REPLY_TIMEOUT_S)
        try:
            self._run(client.connect(socket_path), timeout)
        except TimeoutError as exc:
            raise HotplugTimeout(socket_path, "QMP greeting", timeout) from exc
        except (QMPError, OSError, EOFError) as exc:
            raise VmError(f"QMP connect to {socket_path} failed: {exc}") from exc
        self._client = client
        self.socket_path = socket_path

        async def start_drain() -> asyncio.Task[None]:
            return asyncio.get_running_loop().create_task(self._drain_events(client))

        self._drain = self._run(start_drain(), DEFAULT_REPLY_TIMEOUT_S)

    def execute(
        self,
        command: str,
        arguments: Mapping[str, object] | None = None,
        timeout: float = DEFAULT_REPLY_TIMEOUT_S,
    ) -> object:
        """Run one QMP command and return its ``return`` value.

        :raise QmpCommandError: QEMU replied with an error (its class and description kept)
        :raise HotplugTimeout: no reply within ``timeout`` seconds
        :raise VmError: the connection was lost before the reply (QEMU exited)
        :raise StateError: the session is not connected
        """
        client = self._client_or_raise(f"execute {command}")
        args = dict(arguments) if arguments is not None else None
        return self._command(command, args, client.execute(command, args), timeout)

    def execute_many(
        self,
        commands: Sequence[tuple[str, Mapping[str, object] | None]],
        timeout: float = DEFAULT_REPLY_TIMEOUT_S,
    ) -> list[Answer]:
        """Send ``commands`` back to back without waiting for replies, then collect them.

        QMP pipelining (``docs/interop/qmp-spec.rst``, "Commands Responses"): a monitor
        runs the commands it reads one after the other, in the order received, and answers
        each; ``qemu.qmp`` matches each reply to its command by ``id``. So the outcome of
        each command is what it would be if sent alone after the ones before it, without a
        round trip between them. The answers come in the order of ``commands``: a return
        value or the :class:`~podplug.errors.QmpCommandError` QEMU gave; a refusal does not
        stop the commands after it.

        :raise HotplugTimeout: not every reply came within ``timeout`` seconds (all)
        :raise VmError: the connection was lost before every reply
        :raise StateError: the session is not connected
        """
        client = self._client_or_raise("execute a batch")
        started = time.monotonic()
        names = [command for command, _ in commands]

        async def one(command: str, args: dict[str, object] | None) -> tuple[object, float]:
            try:
                value: object = await client.execute(command, args)
            except ExecuteError as exc:
                value = QmpCommandError(command, args, exc.error_class, str(exc))
            return value, time.monotonic() - started

        async def every() -> list[tuple[object, float]]:
            tasks = [asyncio.ensure_future(one(c, dict(a) if a is not None else None))
                     for c, a in commands]  # created in order: sent in order
            try:
                return await asyncio.gather(*tasks)
            finally:
                for task in tasks:
                    task.cancel()

        try:
            replies = self._run(every(), timeout)
        except TimeoutError as exc:
            raise HotplugTimeout(f"QMP {', '.join(sorted(set(names)))}",
                                 f"{len(names)} replies", timeout) from exc
        except (ExecInterruptedError, QMPError, OSError, EOFError) as exc:
            raise VmError(f"QMP batch ({len(names)} commands): connection to QEMU lost "
                          f"({exc!r})") from exc
        return [Answer(command, value, seconds)
                for command, (value, seconds) in zip(names, replies, strict=True)]

    def add_fd(self, fd: int, fdset_id: int, opaque: str,
               timeout: float = DEFAULT_REPLY_TIMEOUT_S) -> object:
        """QMP ``add-fd``: ``fd`` (not closed) goes to QEMU by ``SCM_RIGHTS`` with the command
        itself, into fd set ``fdset_id``; QEMU then opens ``/dev/fdset/<fdset_id>`` by
        duplicating it. The send and the command run back to back in the loop thread, so
        no other command can take the descriptor (QEMU hands it to the next command read).

        :raise QmpCommandError, HotplugTimeout, VmError, StateError: as :meth:`execute`
        """
        client = self._client_or_raise("add-fd")
        args: dict[str, object] = {"fdset-id": fdset_id, "opaque": opaque}

        async def send() -> object:
            client.send_fd_scm(fd)
            return await client.execute("add-fd", args)

        return self._command("add-fd", args, send(), timeout)

    def get_fd(self, fd: int, name: str, timeout: float = DEFAULT_REPLY_TIMEOUT_S) -> object:
        """QMP ``getfd``: ``fd`` (not closed) goes to QEMU by ``SCM_RIGHTS`` under ``name``,
        for one later command to take (a chardev's ``addr`` of type ``fd``), sent back to
        back with the command as :meth:`add_fd` does.

        :raise QmpCommandError, HotplugTimeout, VmError, StateError: as :meth:`execute`
        """
        client = self._client_or_raise("getfd")
        args: dict[str, object] = {"fdname": name}

        async def send() -> object:
            client.send_fd_scm(fd)
            return await client.execute("getfd", args)

        return self._command("getfd", args, send(), timeout)

    def _command(self, command: str, args: dict[str, object] | None,
                 awaitable: Awaitable[object], timeout: float) -> object:
        """Await one command's reply, with QEMU's answers turned into podplug errors."""
        try:
            return self._run(awaitable, timeout)
        except ExecuteError as exc:
            raise QmpCommandError(command, args, exc.error_class, str(exc)) from exc
        except TimeoutError as exc:
            raise HotplugTimeout(f"QMP {command}", "a reply", timeout) from exc
        except (ExecInterruptedError, QMPError, OSError, EOFError) as exc:
            raise VmError(f"QMP {command}: connection to QEMU lost ({exc!r})") from exc

    def qom_get(self, path: str, prop: str, timeout: float = DEFAULT_REPLY_TIMEOUT_S) -> object:
        """``qom-get``: one QOM property. Use absolute paths (``/machine/peripheral/ID``):
        a bare id is a *partial* path, and QEMU rejects it as ambiguous for every bridge or
        port because its bus child carries the same name (``/machine/peripheral/rp1/rp1``)."""
        return self.execute("qom-get", {"path": path, "property": prop}, timeout)

    def watch(self, *names: str, match: EventMatch | None = None) -> EventWatch:
        """A listener for events named ``names`` (all if none) that also pass ``match``.

        Register it *before* the command that causes the event::

            with qmp.watch("DEVICE_DELETED", match=...) as w:
                qmp.execute(...)
                event = w.wait(5.0, subject="d1")
        """
        self._client_or_raise("watch events")
        return EventWatch(self, names, match)

    def device_del_and_wait(self, device_id: str, timeout: float) -> QmpEvent:
        """``device_del`` and wait for the device's own ``DEVICE_DELETED`` (bounded).

        The listener is registered before ``device_del`` is sent. Returns the event.

        :raise QmpCommandError: QEMU refused the unplug (``DeviceNotFound``, ...)
        :raise HotplugTimeout: no ``DEVICE_DELETED`` for ``device_id`` within ``timeout``
            (seconds counted from the call, ``device_del`` included)
        """
        started = time.monotonic()
        with self.watch(
            "DEVICE_DELETED", match=lambda ev: deleted_event_matches(ev, device_id)
        ) as watch:
            self.execute("device_del", {"id": device_id}, timeout)
            remaining = max(0.0, timeout - (time.monotonic() - started))
            try:
                return watch.wait(remaining, subject=device_id)
            except HotplugTimeout as exc:
                raise HotplugTimeout(device_id, "DEVICE_DELETED", timeout) from exc

    def recent_events(self) -> tuple[QmpEvent, ...]:
        """The last events QEMU sent on this session (bounded log, oldest first)."""
        with self._events_lock:
            return tuple(self._events)

    def close(self, timeout: float = 5.0) -> None:
        """Disconnect and stop the loop thread. Idempotent; never raises for a dead QEMU."""
        if self._closed:
            return
        self._closed = True
        loop, client = self._loop, self._client
        self._client = None
        if loop is None or not self._loop_alive():
            return
        try:
            if self._drain is not None:
                drain = self._drain
                self._in_loop(drain.cancel)
            if client is not None:
                self._run(client.disconnect(), timeout)
        except (QMPError, OSError, EOFError, TimeoutError) as exc:
            # After `quit` or a crash QEMU has hung up: the disconnect reports how.
            _log.debug("QMP disconnect: %r", exc)
        finally:
            loop.call_soon_threadsafe(loop.stop)
            assert self._thread is not None
            self._thread.join(timeout)
            if not self._thread.is_alive():
                loop.close()

    def __enter__(self) -> QmpSession:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


__all__ = [
    "DEFAULT_REPLY_TIMEOUT_S",
    "Answer",
    "EventMatch",
    "EventWatch",
    "QmpEvent",
    "QmpSession",
    "deleted_event_matches",
]
