"""A small synchronous client for the guest agent over QEMU's chardev unix socket.

QEMU side::

    -device virtio-serial-pci,id=vser0,...
    -chardev socket,id=agentch,path=SOCK,server=on,wait=off
    -device virtserialport,bus=vser0.0,chardev=agentch,name=podplug.agent

Every wait is bounded. A missing or broken channel, or a reply that never comes, raises
:class:`AgentLost` (an :class:`AgentError`), which names the verb. An ``ERR`` reply is
raised as :func:`podplug.guest.protocol.error_for` maps it: a guest-side ``timeout``
becomes :class:`HotplugTimeout`.
"""

from __future__ import annotations

import socket
import time
from itertools import count
from pathlib import Path
from types import TracebackType

from podplug.errors import AgentError, AgentLost
from podplug.guest.protocol import (
    HELLO_ID,
    AgentReply,
    ReplyLine,
    finish,
    format_request,
    parse_reply_line,
)

PING_INTERVAL_S = 0.5


class AgentClient:
    """One connection to the agent's port; use :meth:`connect` to open it."""

    def __init__(self, sock: socket.socket, path: Path) -> None:
        self._sock = sock
        self.path = path
        self._buf = b""
        self._ids = count(1)
        self.stray: list[ReplyLine] = []  # lines for other/stale IDs, kept for diagnosis

    @classmethod
    def connect(cls, path: Path | str, timeout: float = 30.0) -> AgentClient:
        """Connect to QEMU's socket, retrying until ``timeout`` while QEMU starts."""
        path = Path(path)
        deadline = time.monotonic() + timeout
        while True:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.connect(str(path))
                return cls(sock, path)
            except (FileNotFoundError, ConnectionRefusedError) as exc:
                sock.close()
                if time.monotonic() >= deadline:
                    raise AgentError(
                        "connect", f"{path}: not connectable within {timeout:.1f} s ({exc})"
                    ) from exc
                time.sleep(0.05)

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> AgentClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # ------------------------------------------------------------ raw line I/O

    def _next_id(self, prefix: str = "r") -> str:
        return f"{prefix}{next(self._ids)}"

    def send_raw(self, data: bytes) -> None:
        """Send bytes as they are (for tests of malformed input)."""
        try:
            self._sock.sendall(data)
        except OSError as exc:
            raise AgentLost("send", f"{self.path}: {exc}") from exc

    def _try_send(self, data: bytes) -> bool:
        """Send without blocking; ``False`` when nothing could be sent.

        Until the guest opens its port QEMU stops reading the chardev socket, so the socket
        buffer fills with early pings and a blocking send would stall (measured: the 71st
        ping, about 35 s in, under nested TCG where the guest needs minutes). A partial send
        leaves a truncated line, which the agent answers with an ERR that is set aside.
        """
        self._sock.settimeout(0.0)
        try:
            self._sock.send(data)
        except (BlockingIOError, TimeoutError):
            return False
        except OSError as exc:
            raise AgentLost("send", f"{self.path}: {exc}") from exc
        return True

    def read_line(self, deadline: float, verb: str) -> ReplyLine | None:
        """The next protocol line (``None`` for a line that is not protocol).

        Raises ``TimeoutError`` at ``deadline`` (``time.monotonic()`` based) and AgentError,
        naming ``verb``, when the channel breaks.
        """
        while b"\n" not in self._buf:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(verb)
            self._sock.settimeout(remaining)
            try:
                chunk = self._sock.recv(65536)
            except TimeoutError:
                continue
            except OSError as exc:
                raise AgentLost(verb, f"{self.path}: {exc}") from exc
            if not chunk:
                raise AgentLost(verb, f"{self.path}: channel closed (QEMU gone?)")
            self._buf += chunk
        raw, _, self._buf = self._buf.partition(b"\n")
        return parse_reply_line(raw.decode("utf-8", "replace"))

    # ------------------------------------------------------------ protocol

    def wait_ready(self, timeout: float = 60.0) -> AgentReply:
        """Wait for the agent's unasked ``hello`` line, or its OK to one of the pings sent
        every 0.5 s (new ID each time), whichever comes first.

        The hello arrives the moment the guest opens its port, so no ping interval is lost
        (pinging alone cost a quarter of that interval on average). The pings cover a host
        that connected after the hello was sent. The guest drops data sent while its port is
        still closed, so early pings may be lost or arrive truncated; a ping the full socket
        cannot take is skipped, not waited on.
        Replies to other IDs and ERR replies are set aside in :attr:`stray`. Raises
        AgentError (verb ``ping``) after ``timeout`` seconds.
        """
        start = time.monotonic()
        deadline = start + timeout
        sent: set[str] = set()
        collected: dict[str, list[ReplyLine]] = {}
        while True:
            now = time.monotonic()
            if now >= deadline:
                raise AgentLost("ping", f"agent not ready within {timeout:.1f} s")
            request_id = self._next_id("p")
            if self._try_send(format_request(request_id, "ping").encode()):
                sent.add(request_id)
            tick = min(now + PING_INTERVAL_S, deadline)
            try:
                while True:
                    line = self.read_line(tick, "ping")
                    if line is None:
                        continue
                    if line.request_id == HELLO_ID and line.kind == "ok" and line.final:
                        return finish("ping", (), [line])
                    if line.request_id not in sent or line.kind == "err":
                        self.stray.append(line)  # stale, or a ping mangled during boot
                        continue
                    collected.setdefault(line.request_id, []).append(line)
                    if line.final:
                        return finish("ping", (), collected[line.request_id])
            except TimeoutError:
                continue

    def call(self, verb: str, *args: str, timeout: float = 30.0) -> AgentReply:
        """Send one request and return its reply; raises on ERR or after ``timeout``."""
        request_id = self._next_id()
        line = format_request(request_id, verb, *args)
        self.send_raw(line.encode())
        deadline = time.monotonic() + timeout
        lines: list[ReplyLine] = []
        while True:
            try:
                reply = self.read_line(deadline, verb)
            except TimeoutError:
                raise AgentLost(verb, f"no reply within {timeout:.1f} s") from None
            if reply is None:
                continue
            if reply.request_id != request_id:
                self.stray.append(reply)
                continue
            lines.append(reply)
            if reply.final:
                return finish(verb, args, lines)
