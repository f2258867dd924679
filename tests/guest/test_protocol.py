"""The guest agent's line protocol (:mod:`podplug.guest.protocol`): pure, values in and out."""

from __future__ import annotations

import time

import pytest

from podplug.errors import AgentError, HotplugTimeout
from podplug.guest.protocol import (
    AGENT_PORT_NAME,
    UNKNOWN_ID,
    VERBS,
    AgentReply,
    BarPeek,
    GuestPciDevice,
    ReplyLine,
    error_for,
    finish,
    format_request,
    parse_bars,
    parse_devnum,
    parse_fields,
    parse_lspci,
    parse_reply_line,
    parse_resolution,
)


def test_format_request_joins_words_and_ends_in_newline() -> None:
    assert format_request("7", "wait-pci", "02/00", "5000") == "7 wait-pci 02/00 5000\n"
    assert format_request("p1", "ping") == "p1 ping\n"


@pytest.mark.parametrize("bad_id", ["", "a b", "x" * 33, "id\n", "é", "?"])
def test_format_request_rejects_bad_ids(bad_id: str) -> None:
    with pytest.raises(ValueError, match="request id"):
        format_request(bad_id, "ping")


@pytest.mark.parametrize("bad_word", ["", "two words", "tab\there", "new\nline", "ü"])
def test_format_request_rejects_words_with_spaces_or_non_ascii(bad_word: str) -> None:
    with pytest.raises(ValueError, match="protocol word"):
        format_request("1", "rw", bad_word)


def test_format_request_allows_unknown_verbs_so_the_agent_can_reject_them() -> None:
    assert format_request("1", "frobnicate") == "1 frobnicate\n"


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("3 OK pong version=1", ReplyLine("3", "ok", "pong version=1")),
        ("3 OK", ReplyLine("3", "ok", "")),
        ("3 ERR usage wait-pci PATH MS\r\n", ReplyLine("3", "err", "usage wait-pci PATH MS")),
        ("3 - 0000:00:01.0 1af4:1003", ReplyLine("3", "data", "0000:00:01.0 1af4:1003")),
        ("? ERR malformed request", ReplyLine(UNKNOWN_ID, "err", "malformed request")),
        ("garbage", None),
        ("3 MAYBE x", None),
        ("", None),
        ("bad id! OK", None),
    ],
)
def test_parse_reply_line(line: str, expected: ReplyLine | None) -> None:
    assert parse_reply_line(line) == expected


def test_finish_collects_data_lines_and_payload() -> None:
    lines = [ReplyLine("5", "data", "a"), ReplyLine("5", "data", "b"), ReplyLine("5", "ok", "2")]
    reply = finish("lspci", (), lines)
    assert reply == AgentReply("5", "lspci", "2", ("a", "b"))


def test_finish_raises_agent_error_on_err() -> None:
    with pytest.raises(AgentError, match="guest agent rw: not-found /dev/x is not") as info:
        finish("rw", ("/dev/x",), [ReplyLine("1", "err", "not-found /dev/x is not a node")])
    assert info.value.verb == "rw"


def test_finish_without_final_line_is_an_agent_error() -> None:
    with pytest.raises(AgentError, match="no final"):
        finish("ping", (), [ReplyLine("1", "data", "x")])
    with pytest.raises(AgentError, match="no final"):
        finish("ping", (), [])


def test_guest_timeout_becomes_hotplug_timeout() -> None:
    err = error_for("wait-pci", ("02/00", "1500"), "timeout 02/00: 0000:01:00.0 not present")
    assert isinstance(err, HotplugTimeout)
    assert err.waited_s == 1.5
    assert err.device == "guest wait-pci 02/00"
    assert err.expected == "PCI device (02/00: 0000:01:00.0 not present)"
    other = error_for("vfio-bind", ("0000:01:00.0",), "timeout whatever")
    assert isinstance(other, AgentError)


def test_other_codes_stay_agent_errors() -> None:
    err = error_for("frob", (), "unknown-verb frob (try help)")
    assert isinstance(err, AgentError)
    assert err.problem == "unknown-verb frob (try help)"


def test_reply_words_and_fields() -> None:
    reply = AgentReply("1", "vfio-bind", "group=7 dev=/dev/vfio/7 devnum=243:0 stray")
    assert reply.fields == {"group": "7", "dev": "/dev/vfio/7", "devnum": "243:0"}
    assert reply.words[-1] == "stray"
    assert parse_fields("") == {}


def test_parse_lspci() -> None:
    reply = AgentReply(
        "1",
        "lspci",
        "2",
        (
            "0000:00:03.0 1b36:000c 060400 pcieport pci0000:00/0000:00:03.0",
            "0000:01:00.0 1af4:1042 010000 - pci0000:00/0000:00:03.0/0000:01:00.0",
        ),
    )
    port, blk = parse_lspci(reply)
    assert port == GuestPciDevice(
        "0000:00:03.0", 0x1B36, 0x000C, 0x060400, "pcieport", "pci0000:00/0000:00:03.0"
    )
    assert blk.driver is None
    assert blk.vendor_device == "1af4:1042"
    assert blk.parents == ("0000:00:03.0",)
    assert port.parents == ()


@pytest.mark.parametrize("line", ["nonsense", "0000:01:00.0 1af4 010000 - p", "x y z w v"])
def test_parse_lspci_rejects_bad_lines(line: str) -> None:
    with pytest.raises(AgentError, match="unparsable"):
        parse_lspci(AgentReply("1", "lspci", "1", (line,)))


def test_parse_devnum() -> None:
    assert parse_devnum("254:16") == (254, 16)
    for bad in ("254", "a:b", "", "1:2:3"):
        with pytest.raises(AgentError):
            parse_devnum(bad)


def test_every_verb_is_documented_in_the_agent_script() -> None:
    from importlib import resources

    script = resources.files("podplug.guest").joinpath("agent.sh").read_text()
    assert f"\nPORT_NAME={AGENT_PORT_NAME}\n" in script
    for verb in VERBS:
        assert f"\n#   {verb}" in script, verb
        assert f"        {verb}) _fn=v_" in script, verb


def test_wait_ready_skips_pings_while_the_channel_is_full() -> None:
    """Before the guest opens its port QEMU stops reading the socket; pings that the full
    socket cannot take are skipped instead of failing the wait (seen nested: minutes)."""
    import socket
    import threading
    from pathlib import Path

    from podplug.guest.agent_client import AgentClient

    ours, qemu_side = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    ours.settimeout(0.0)
    try:
        while True:
            ours.send(b"x" * 1024)  # fill the channel, as early pings do
    except BlockingIOError:
        pass

    def guest_opens_port_late() -> None:
        time.sleep(1.5)
        qemu_side.settimeout(5.0)
        buf = b""
        while True:
            buf += qemu_side.recv(65536)
            for line in buf.split(b"\n"):
                words = line.split()
                if len(words) == 2 and words[1] == b"ping" and words[0].startswith(b"p"):
                    qemu_side.sendall(words[0] + b" OK pong version=1\n")
                    return

    peer = threading.Thread(target=guest_opens_port_late)
    peer.start()
    client = AgentClient(ours, Path("socketpair"))
    try:
        reply = client.wait_ready(10.0)
    finally:
        peer.join()
        client.close()
        qemu_side.close()
    assert reply.payload.startswith("pong")


@pytest.mark.parametrize("payload", [
    "type=frob node=/x devnum=1:2",  # unknown type
    "type=blk vm_path=/dev/vda",  # no node, no devnum
    "type=vfio-pci node=/x devnum=1:2 group=3",  # no map
    "type=vfio-pci-gk map=0000:41:00.0>nonsense",  # bad guest BDF
    "type=vfio-pci-gk map=0000:41:00.0",  # no '>'
    "type=vfio-pci-gk map=0000:41:00.0>0000:01:00.0 peek=0000:41:00.0=1",  # no BAR
    "type=vfio-pci-gk map=0000:41:00.0>0000:01:00.0 peek=0000:41:00.0@2=zz",  # not hex
    "type=vfio-pci-gk map=0000:41:00.0>0000:01:00.0 peek=0000:41:00.0@2=123456789",  # > 32 bit
])
def test_parse_resolution_refuses_malformed_replies(payload: str) -> None:
    with pytest.raises(AgentError):
        parse_resolution(AgentReply("r1", "device", payload))


def test_device_timeout_is_a_hotplug_timeout() -> None:
    err = error_for("device", ("/run/podplug/ctr", "660", "300", "blk", "02/01", "-", "/x"),
                    "timeout no block device below 0000:00:02.0 (02/01) after 300 ms")
    assert isinstance(err, HotplugTimeout)
    assert "blk entry 02/01" in str(err) and err.waited_s == 0.3


@pytest.mark.parametrize("line", ["x fe000000 fe003fff 140204", "0 fe000000", "0 10 5 0"])
def test_parse_bars_refuses_malformed_lines(line: str) -> None:
    with pytest.raises(AgentError):
        parse_bars(AgentReply("r1", "bars", "1", (line,)))


def test_parse_resolution_reads_viability_and_bar_peeks_little_endian() -> None:
    reply = AgentReply("r1", "device", "type=vfio-pci node=/d/vfio/6 devnum=241:0 group=6 "
                       "viable=yes map=0000:41:00.0>0000:01:00.0,0000:41:00.1>0000:01:00.1 "
                       "peek=0000:41:00.0@2=50444f50.2d47554c,0000:41:00.1@0=-")
    resolution = parse_resolution(reply)
    assert resolution.viable
    assert resolution.peeks == (BarPeek("0000:41:00.0", 2, b"PODPLUG-"),
                                BarPeek("0000:41:00.1", 0, None))
    assert resolution.peeks[0].answers and not resolution.peeks[1].answers
    assert not BarPeek("0000:41:00.0", 2, b"\xff" * 8).answers
