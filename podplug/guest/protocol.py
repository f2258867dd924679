"""The guest agent's line protocol, version 1: request formatting and reply parsing (pure).

The agent (``podplug/guest/agent.sh``) listens on the virtio-serial port named
``podplug.agent``. It offers a fixed set of named verbs; there is no verb that runs an
arbitrary shell command.

Request, one line::

    ID VERB [ARG]...

* ``ID``: 1-32 characters of ``[A-Za-z0-9._-]``. The host chooses it, and the agent echoes
  it on every reply line.
* ``ARG``: printable ASCII without whitespace.

Reply: zero or more data lines, then exactly one final line::

    ID - TEXT              a data line
    ID OK [PAYLOAD]        success (final)
    ID ERR CODE MESSAGE    failure (final)

``CODE`` is one of :data:`ERROR_CODES`. A request whose ID cannot be used is answered with
the ID ``?``. Blank lines are ignored. After any error the agent keeps serving. The waiting
verbs (:data:`TIMEOUT_VERBS`) answer ``ERR timeout`` when their ``MS`` (> 0) runs out, and
``ERR not-found`` when ``MS`` is 0 or the path can never resolve.

Verbs. ``PATH`` is a Kata guest PCI path such as ``02/00``: one hex slot per bus level,
starting on root bus ``0000:00``. ``MS`` is milliseconds.

======================================  ===================================================
``ping``                                ``OK pong version=1 kernel=KREL uptime=S``
``help``                                data ``VERB ARGS`` lines; ``OK COUNT``
``lspci``                               data ``BDF VVVV:DDDD CLASS DRIVER SYSFS_PATH`` lines;
                                        ``OK COUNT`` (DRIVER ``-`` when unbound)
``wait-pci PATH MS``                    ``OK BDF...``: the chain from the root bus to the
                                        device; the last BDF is the device
``blk-of-pci PATH [MS]``                ``OK NAME...``: whole-disk block nodes below it
``blk-of-scsi H:C:T:L|TARGET:LUN [MS]`` ``OK NAME...``
``wait-pcis MS PATH...``                data ``PATH BDF`` lines, ``OK COUNT``: each path
                                        waited for, in one request
``wait-blks MS PATH...``                data ``PATH NAME`` lines, ``OK COUNT``: the
                                        virtio-blk disk below each path, waited for at once
``mknod DIR CPATH b|c MAJ MIN MODE``    ``OK path=DIR/CPATH type=b devnum=MAJ:MIN mode=660``.
                                        DIR is under ``/run/podplug/``, the numbers are the
                                        guest's, and MODE is octal.
``devnum NAME``                         ``OK devnum=MAJ:MIN type=b|c``
``rw NODE``                             block: ``OK type=b read=4096 md5=HEX write=ok
                                        offset=N restored=ok``; char: ``OK type=c
                                        open=ok|error read=N md5=HEX`` or ``read=error``
``vfio-bind BDF``                       ``OK group=G dev=/dev/vfio/G devnum=MAJ:MIN
                                        driver=vfio-pci previous=DRIVER``
``fs-check NODE``                       ``OK fs=ext2|ext4 write=ok readback=ok``. This is
                                        destructive. busybox ``mke2fs`` makes ext2 when the
                                        image has no ``mkfs.ext4``.
``serial BDF|DISK``                     ``OK serial=TEXT``: the serial of an nvme controller
                                        or virtio-blk disk (driver bound), or of a disk by
                                        block name (virtio-blk, SCSI VPD page 0x80). The VFIO
                                        stand-in carries the host BDF it stands for.
``ro-check NODE``                       ``OK type=b size=BYTES head=SHA256 tail=SHA256``:
                                        reads only, the first and last 4 KiB (direct I/O)
``modules GROUP``                       ``OK group=GROUP``: load a module group now (``boot``,
                                        ``blk``, ``scsi``, ``nvme``, ``vfio``, ``fs``)
``bars BDF``                            data ``INDEX START END FLAGS`` lines (hex, sysfs
                                        ``resource``; 13-15 are a bridge's IO, memory and
                                        prefetchable windows); ``OK COUNT``
``device DIR MODE MS TYPE ID VM_PATH``  resolve one kata-agent ``Device`` entry as Kata's
``CPATH [OPTION]...``                   agent does, from the entry alone (``VM_PATH`` ``-``
                                        when empty): see :class:`Resolution`
======================================  ===================================================

``device`` is the contract podplug proves: the guest is handed each ``Device`` entry exactly
as rendered for Kata's agent and resolves it by the agent's rules (``blk``: the disk below
PCI path ``ID``; ``scsi``: the disk at SCSI ``ID`` = ``TARGET:LUN``; ``vfio-pci``: every
``HOSTBDF=PCIPATH`` option waited for, bound to vfio-pci, one guest IOMMU group, node
``/dev/vfio/<group>``; ``vfio-pci-gk``: waited for, left on its guest driver, no node).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from podplug.errors import AgentError, HotplugTimeout, VmError

PROTOCOL_VERSION = 1
AGENT_PORT_NAME = "podplug.agent"
UNKNOWN_ID = "?"

#: verb -> (minimum, maximum) number of arguments
VERBS: dict[str, tuple[int, int]] = {
    "ping": (0, 0),
    "help": (0, 0),
    "lspci": (0, 0),
    "wait-pci": (2, 2),
    "blk-of-pci": (1, 2),
    "blk-of-scsi": (1, 2),
    "wait-blks": (2, 1 + 256),  # MS, then up to 256 paths
    "wait-pcis": (2, 1 + 256),
    "blk-sums": (3, 3),
    "blk-write": (3, 3),
    "mknod": (6, 6),
    "devnum": (1, 1),
    "rw": (1, 1),
    "vfio-bind": (1, 1),
    "fs-check": (1, 1),
    "serial": (1, 1),
    "bars": (1, 1),
    "modules": (1, 1),
    "ro-check": (1, 1),
    "device": (7, 7 + 64),  # DIR MODE MS TYPE ID VM_PATH CPATH, then up to 64 options
}

#: verbs whose second argument is a guest-side wait in milliseconds (ERR timeout when it ends)
TIMEOUT_VERBS = {"wait-pci": "PCI device", "blk-of-pci": "block device", "blk-of-scsi": "SCSI disk"}
#: ``device``'s wait is its third argument
DEVICE_WAIT_ARG = 2

ERROR_CODES = frozenset(
    {
        "malformed",
        "unknown-verb",
        "usage",
        "invalid",
        "not-found",
        "timeout",
        "no-iommu",
        "failed",
        "internal",
    }
)

_ID_RE = re.compile(r"[A-Za-z0-9._-]{1,32}")
_WORD_RE = re.compile(r"[\x21-\x7e]+")
_BDF_RE = re.compile(r"[0-9a-f]{4}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]")


#: the ID of the line the agent sends unasked when it opens its port (a ping's reply)
HELLO_ID = "hello"


def format_request(request_id: str, verb: str, *args: str) -> str:
    """Render one request line (with its trailing newline).

    The verb is only checked for syntax, not against :data:`VERBS`, so that the agent's
    unknown-verb path can be exercised. Bad IDs or arguments are API misuse: ``ValueError``.
    """
    if not _ID_RE.fullmatch(request_id):
        raise ValueError(f"request id {request_id!r} must be 1-32 of [A-Za-z0-9._-]")
    for word in (verb, *args):
        if not _WORD_RE.fullmatch(word):
            raise ValueError(f"protocol word {word!r} must be printable ASCII without spaces")
    return " ".join((request_id, verb, *args)) + "\n"


@dataclass(frozen=True)
class ReplyLine:
    """One parsed reply line: a data line, or the final ``OK``/``ERR`` line."""

    request_id: str
    kind: Literal["data", "ok", "err"]
    text: str

    @property
    def final(self) -> bool:
        return self.kind != "data"


def parse_reply_line(line: str) -> ReplyLine | None:
    """Parse one line the agent sent, or return ``None`` for a line that is not protocol."""
    line = line.rstrip("\r\n")
    request_id, _, rest = line.partition(" ")
    if request_id != UNKNOWN_ID and not _ID_RE.fullmatch(request_id):
        return None
    tag, _, text = rest.partition(" ")
    if tag == "-":
        return ReplyLine(request_id, "data", text)
    if tag == "OK":
        return ReplyLine(request_id, "ok", text)
    if tag == "ERR":
        return ReplyLine(request_id, "err", text)
    return None


@dataclass(frozen=True)
class AgentReply:
    """A successful reply: the ``OK`` payload and the data lines that came before it."""

    request_id: str
    verb: str
    payload: str
    lines: tuple[str, ...] = ()

    @property
    def words(self) -> tuple[str, ...]:
        """The payload split into words (for example the BDF chain of ``wait-pci``)."""
        return tuple(self.payload.split())

    @property
    def fields(self) -> dict[str, str]:
        """The payload's ``key=value`` words as a dict."""
        return parse_fields(self.payload)


def parse_fields(payload: str) -> dict[str, str]:
    """``"a=1 b=x"`` -> ``{"a": "1", "b": "x"}``; words without ``=`` are skipped."""
    out: dict[str, str] = {}
    for word in payload.split():
        key, sep, value = word.partition("=")
        if sep:
            out[key] = value
    return out


def error_for(verb: str, args: tuple[str, ...], message: str) -> VmError:
    """Turn an ``ERR CODE MESSAGE`` text into the exception podplug raises for it.

    A ``timeout`` of a verb in :data:`TIMEOUT_VERBS` becomes :class:`HotplugTimeout` (the
    guest waited for a device in vain); everything else is an :class:`AgentError`.
    """
    code, _, detail = message.partition(" ")
    if code == "timeout" and verb in TIMEOUT_VERBS and args:
        waited = int(args[1]) / 1000 if len(args) == 2 and args[1].isdigit() else 0.0
        return HotplugTimeout(
            f"guest {verb} {args[0]}", f"{TIMEOUT_VERBS[verb]} ({detail})", waited
        )
    if code == "timeout" and verb == "device" and len(args) > 4:
        ms = args[DEVICE_WAIT_ARG]
        waited = int(ms) / 1000 if ms.isdigit() else 0.0
        return HotplugTimeout(f"guest resolving the {args[3]} entry {args[4]}",
                              f"device of the entry ({detail})", waited)
    return AgentError(verb, message)


def finish(verb: str, args: tuple[str, ...], lines: list[ReplyLine]) -> AgentReply:
    """Assemble the reply lines of one request (the last one final) into an AgentReply.

    Raises the exception of :func:`error_for` when the final line is ``ERR``.
    """
    if not lines or not lines[-1].final:
        raise AgentError(verb, "reply has no final OK/ERR line")
    last = lines[-1]
    if last.kind == "err":
        raise error_for(verb, args, last.text)
    data = tuple(item.text for item in lines[:-1] if item.kind == "data")
    return AgentReply(last.request_id, verb, last.text, data)


@dataclass(frozen=True)
class GuestPciDevice:
    """One ``lspci`` line: a PCI function as the guest sees it."""

    bdf: str
    vendor: int
    device: int
    pci_class: int
    driver: str | None
    sysfs_path: str

    @property
    def vendor_device(self) -> str:
        return f"{self.vendor:04x}:{self.device:04x}"

    @property
    def parents(self) -> tuple[str, ...]:
        """The BDFs of the bridges above this function, root first (from the sysfs path)."""
        return tuple(p for p in self.sysfs_path.split("/")[1:-1] if _BDF_RE.fullmatch(p))


def parse_lspci(reply: AgentReply) -> tuple[GuestPciDevice, ...]:
    """Parse the data lines of an ``lspci`` reply."""
    out: list[GuestPciDevice] = []
    for line in reply.lines:
        parts = line.split()
        if len(parts) != 5 or not _BDF_RE.fullmatch(parts[0]) or ":" not in parts[1]:
            raise AgentError("lspci", f"unparsable line {line!r}")
        ven, _, dev = parts[1].partition(":")
        try:
            vendor, device, pci_class = int(ven, 16), int(dev, 16), int(parts[2], 16)
        except ValueError as exc:
            raise AgentError("lspci", f"unparsable line {line!r}") from exc
        driver = None if parts[3] == "-" else parts[3]
        out.append(GuestPciDevice(parts[0], vendor, device, pci_class, driver, parts[4]))
    return tuple(out)


@dataclass(frozen=True)
class GuestBar:
    """One line of a ``bars`` reply: a BAR or bridge window as the guest kernel assigned it."""

    index: int
    start: int
    end: int
    flags: int

    @property
    def size(self) -> int:
        return self.end - self.start + 1

    @property
    def assigned(self) -> bool:
        """Linux moves a resource it could not place to start 0 (``IORESOURCE_UNSET``)."""
        return self.start != 0

    def contains(self, other: GuestBar) -> bool:
        return self.start <= other.start and other.end <= self.end


#: ``resource`` line indices of a bridge's windows (``PCI_BRIDGE_RESOURCES``)
BRIDGE_IO_WINDOW, BRIDGE_MEM_WINDOW, BRIDGE_PREF_WINDOW = 13, 14, 15


def parse_bars(reply: AgentReply) -> tuple[GuestBar, ...]:
    """Parse the data lines of a ``bars`` reply."""
    out = []
    for line in reply.lines:
        parts = line.split()
        try:
            index, start, end, flags = (int(parts[0]), *(int(p, 16) for p in parts[1:]))
        except (ValueError, IndexError, TypeError) as exc:
            raise AgentError("bars", f"unparsable line {line!r}") from exc
        if len(parts) != 4 or end < start:
            raise AgentError("bars", f"unparsable line {line!r}")
        out.append(GuestBar(index, start, end, flags))
    return tuple(out)


@dataclass(frozen=True)
class Resolution:
    """What the guest made of one kata-agent ``Device`` entry (a ``device`` reply).

    :ivar node: the node created in the container's dev directory ("" for vfio-pci-gk)
    :ivar vm_path: the guest block device the entry resolved to (blk, scsi)
    :ivar group: the guest IOMMU group (vfio-pci)
    :ivar functions: (host BDF, guest BDF) per ``HOSTBDF=PATH`` option, in option order
    :ivar viable: the guest checked the group's viability (vfio-pci)
    :ivar peeks: the first bytes the guest read from each prefetchable BAR of a function no
        guest driver held, before binding it: (host BDF, BAR index, bytes or None when the
        read was refused)
    """

    type: str
    node: str = ""
    devnum: tuple[int, int] | None = None
    vm_path: str = ""
    group: str = ""
    functions: tuple[tuple[str, str], ...] = ()
    viable: bool = False
    peeks: tuple[BarPeek, ...] = ()


@dataclass(frozen=True)
class BarPeek:
    """The first bytes of one BAR as the guest read them (agent ``peek_bars``)."""

    host: str
    bar: int
    data: bytes | None  # None: the read was refused or the BAR not placed

    @property
    def answers(self) -> bool:
        """A function that does not decode the address reads all ones (a master abort)."""
        return self.data is not None and self.data != b"\xff" * len(self.data)


def parse_peeks(text: str, reply: AgentReply) -> tuple[BarPeek, ...]:
    """``HOST@BAR=W0.W1.W2.W3`` (32-bit little-endian reads, in hex) or ``HOST@BAR=-``."""
    out = []
    for item in filter(None, text.split(",")):
        where, sep, words = item.partition("=")
        host, at, bar = where.partition("@")
        if not (sep and at and _BDF_RE.fullmatch(host) and bar.isdigit()):
            raise AgentError("device", f"bad peek {item!r} in {reply.payload!r}")
        if words == "-":
            out.append(BarPeek(host, int(bar), None))
            continue
        try:
            data = b"".join(int(w, 16).to_bytes(4, "little") for w in words.split("."))
        except (ValueError, OverflowError) as exc:
            raise AgentError("device", f"bad peek {item!r} in {reply.payload!r}") from exc
        out.append(BarPeek(host, int(bar), data))
    return tuple(out)


def parse_resolution(reply: AgentReply) -> Resolution:
    """Parse a ``device`` reply's ``key=value`` payload."""
    fields = reply.fields
    kind = fields.get("type", "")
    if kind not in ("blk", "scsi", "vfio-pci", "vfio-pci-gk"):
        raise AgentError("device", f"reply without a known type: {reply.payload!r}")
    functions = []
    for pair in filter(None, fields.get("map", "").split(",")):
        host, sep, guest = pair.partition(">")
        if not (sep and _BDF_RE.fullmatch(host) and _BDF_RE.fullmatch(guest)):
            raise AgentError("device", f"bad map entry {pair!r} in {reply.payload!r}")
        functions.append((host, guest))
    devnum = parse_devnum(fields["devnum"]) if "devnum" in fields else None
    if kind != "vfio-pci-gk" and (devnum is None or not fields.get("node")):
        raise AgentError("device", f"{kind} reply without node and devnum: {reply.payload!r}")
    if kind.startswith("vfio") and not functions:
        raise AgentError("device", f"{kind} reply without a map: {reply.payload!r}")
    return Resolution(kind, fields.get("node", ""), devnum, fields.get("vm_path", ""),
                      fields.get("group", ""), tuple(functions),
                      viable=fields.get("viable") == "yes",
                      peeks=parse_peeks(fields.get("peek", ""), reply))


def parse_devnum(text: str) -> tuple[int, int]:
    """``"254:16"`` -> ``(254, 16)``."""
    major, sep, minor = text.partition(":")
    if not (sep and major.isdigit() and minor.isdigit()):
        raise AgentError("devnum", f"not MAJOR:MINOR: {text!r}")
    return int(major), int(minor)
