"""Generated inputs for the fuzzer (pure: a ``random.Random`` in, bytes out).

Each generator builds a document from pools of values that sit on the edges the parsers
guard (issue 10): valid values, near misses, wrong types, forged and non-canonical paths,
non-ASCII digits, huge numbers, control characters. :mod:`podplug.fuzz.mutate` then damages
the bytes. Files from a seed corpus (the repository's real Kata, OCI and CDI fixtures) are
mutated the same way.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from typing import TypeVar

from podplug.host.fakesysfs import FakeBlock, FakeFunction, FakeHost

Value = object
_T = TypeVar("_T")

#: strings that hit the canonical-form rules (paths, digits, controls, sizes)
NASTY_STRINGS: tuple[str, ...] = (
    "", " ", "\n", "\x00", "\x1b[31m", "a\nb", "\u202e", "\ud7ff", "²", "١٢", "1_6", "0x10",
    "+1", "-1", "08", "9" * 40, "x" * 300, "/", "//", "/dev/vfio/../12", "/dev/vfio/./12",
    "/dev//vfio/12", "/dev/vfio/12/", "/dev/vfio/x/../../../tmp/12", "/etc/12", "dev/vfio/12",
    "/dev/vfio/12\n", "/dev/vfio/٣", "/dev/vfio/devices/vfio", "/dev/vfio/devices/vfio²",
    "/dev/vfio/devices/vfio0", "/dev/vfio/vfio", "/dev/vfio/12", "/dev/vfio/13", "/dev/xda",
    "/dev/sda", "/dev/loop0", "/dev/zero", "/dev/vfio/4294967296", "(", "[", ".*", "a{99999}",
)
PORTS = ("no-port", "root-port", "switch-port", "bridge-port")
MODES = ("vfio", "guest-kernel")
DRIVERS = ("virtio-blk", "virtio-scsi", "virtio-blk-pci")
#: values one step off the valid ones, mixed into the edge values
NEAR_MISSES: tuple[Value, ...] = ("Root-Port", "root_port", "VFIO", "guest_kernel", "pc",
                                  "virt", "virtio-mmio", "nvdimm", "ide", 17, 6, "q35 ")
TABLES = ("qemu", "clh", "cloud-hypervisor", "firecracker", "dragonball", "qemu-coco-dev",
          "stratovirt", "remote")
KATA_PREFIX = "io.katacontainers.config.hypervisor."
CDI_KINDS = ("example.com/gpu", "vendor.io/nic", "nvidia.com/gpu", "bad kind", "x/y/z")


def pick(r: random.Random, pool: Sequence[_T]) -> _T:
    return pool[r.randrange(len(pool))]


def nasty_value(r: random.Random) -> Value:
    """Any TOML/JSON value, leaning to the edges."""
    roll = r.random()
    if roll < 0.15:
        return pick(r, NEAR_MISSES)
    if roll < 0.45:
        return pick(r, NASTY_STRINGS)
    if roll < 0.65:
        return pick(r, (0, 1, 2, 5, 6, 16, 17, 255, -1, 2**31, 2**63 - 1, 10**30))
    if roll < 0.72:
        return pick(r, (True, False, 1.5, float("inf")))
    if roll < 0.85:
        return [nasty_value(r) for _ in range(r.randrange(4))]
    return {str(pick(r, NASTY_STRINGS)) or "k": nasty_value(r) for _ in range(r.randrange(3))}


class Edgy:
    """How often a generator reaches for an edge value instead of a good one."""

    def __init__(self, r: random.Random, edge: float) -> None:
        self.r = r
        self.edge = edge

    def __call__(self, good: Sequence[Value], scale: float = 1.0) -> Value:
        r = self.r
        return nasty_value(r) if r.random() < self.edge * scale else pick(r, good)

    def chance(self, p: float) -> bool:
        return self.r.random() < p


# --- Kata configuration.toml -------------------------------------------------------------


def _toml_value(value: Value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return "inf" if value == float("inf") else repr(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)  # a TOML basic string
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(str(k))} = {_toml_value(v)}"
                               for k, v in value.items()) + "}"
    return '""'


def _table_name(r: random.Random, edge: float) -> str:
    if r.random() > edge:
        return pick(r, TABLES[:3])  # the tables podplug plans
    return pick(r, TABLES) if r.random() < 0.7 else pick(r, NASTY_STRINGS) or "t"


def kata_toml(r: random.Random, edge: float = 0.25) -> bytes:
    """A ``configuration.toml`` with one (or sometimes two, or no) hypervisor tables."""
    m = Edgy(r, edge)
    count = 1 if r.random() > edge * 0.2 else pick(r, (0, 2))
    tables = [_table_name(r, edge) for _ in range(count)]
    lines: list[str] = []
    for table in tables:
        lines.append(f"[hypervisor.{json.dumps(str(table))}]")
        keys: dict[str, Value] = {
            "machine_type": m(("q35",)),
            **({"cold_plug_vfio": m(PORTS), "hot_plug_vfio": m(PORTS[:1], 3)}
               if r.random() < 0.5 else
               {"cold_plug_vfio": m(PORTS[:1], 3), "hot_plug_vfio": m(PORTS)}),
            "pcie_root_port": m((0, 1, 2, 4, 8, 16)),
            "pcie_switch_port": m((0, 1, 2, 4, 16)),
            "default_bridges": m((0, 1, 2, 5)),
            "block_device_driver": m(DRIVERS),
            "enable_annotations": m(([], ["cold_plug_vfio"], [".*"],
                                             ["hot_plug_vfio", "pcie_root_port"], ["(a+)+$"],
                                             ["["], ["pcie_.*_port"])),
            "path": m(("/usr/bin/qemu-system-x86_64", "", "/nonexistent")),
        }
        for key, value in keys.items():
            if r.random() < 0.7:
                lines.append(f"{key} = {_toml_value(value)}")
    runtime = {"vfio_mode": m(MODES)}
    if r.random() < 0.15:
        runtime["name"] = m(("virt_container",))
    if r.random() < 0.1:
        runtime["hypervisor_name"] = m(("qemu", "cloud-hypervisor"))
    if r.random() < 0.9:
        lines.append("[runtime]")
        lines += [f"{k} = {_toml_value(v)}" for k, v in runtime.items() if r.random() < 0.8]
    return ("\n".join(lines) + "\n").encode()


# --- OCI config.json ---------------------------------------------------------------------


def _oci_device(r: random.Random, m: Edgy) -> dict[str, Value]:
    path = pick(r, NASTY_STRINGS) if m.chance(m.edge) else pick(
        r, ("/dev/vfio/vfio", "/dev/vfio/12", "/dev/vfio/13", "/dev/xda", "/dev/vfio/devices/vfio0",
            "/dev/vfio/devices/vfio1", "/dev/vdb", "/dev/nvme0n1"))
    kind = m(("c", "b"), 0.5) if m.chance(0.9) else pick(r, ("u", "p"))
    entry: dict[str, Value] = {"path": path, "type": kind,
                               "major": m((10, 236, 7, 511, 259, 0)),
                               "minor": m((196, 12, 13, 0, 1, 2**20))}
    for key in ("fileMode", "uid", "gid"):
        if r.random() < 0.3:
            entry[key] = m((438, 0, 432))
    for key in list(entry):
        if m.chance(m.edge * 0.1):
            del entry[key]
    return entry


def _annotations(r: random.Random, m: Edgy) -> dict[str, Value]:
    found: dict[str, Value] = {}
    if r.random() < 0.5:
        found["io.kubernetes.cri.container-type"] = m(("container", "sandbox"))
    if r.random() < 0.2:
        found["io.kubernetes.cri-o.ContainerType"] = m(("container", "sandbox"))
    for suffix in ("cold_plug_vfio", "hot_plug_vfio", "pcie_root_port", "pcie_switch_port"):
        if r.random() < 0.15:
            found[KATA_PREFIX + suffix] = m(PORTS if suffix.endswith("vfio") else
                                            ("0", "1", "4", "16"))
    if r.random() < 0.3:
        key = pick(r, ("cdi.k8s.io/fuzz", "cdi.k8s.io/", "cdi.k8s.io/a_b", "cdi.k8s.io/x\n"))
        refs = [f"{pick(r, CDI_KINDS[:3])}={pick(r, ('gpu0', 'nic0', 'all', '0'))}"
                for _ in range(r.randrange(1, 4))]
        found[str(key)] = m((",".join(refs),), 0.5)
    return found


def oci_json(r: random.Random, edge: float = 0.25) -> bytes:
    m = Edgy(r, edge)
    devices = [_oci_device(r, m) for _ in range(pick(r, (0, 1, 2, 3, 3, 4, 8)))]
    if not m.chance(edge):  # the same container path twice is an edge case of its own
        devices = list({str(d.get("path")): d for d in devices}.values())
    doc: dict[str, Value] = {"ociVersion": m(("1.1.0", "1.0.2")),
                             "annotations": _annotations(r, m),
                             "linux": {"devices": devices}}
    if m.chance(edge * 0.2):
        doc["linux"] = nasty_value(r)
    if m.chance(edge * 0.2):
        doc["annotations"] = nasty_value(r)
    return json.dumps(doc, ensure_ascii=m.chance(0.5)).encode("utf-8", "surrogatepass")


# --- CDI specs ---------------------------------------------------------------------------


def _cdi_node(r: random.Random, m: Edgy) -> dict[str, Value]:
    node: dict[str, Value] = {"path": m(("/dev/vfio/12", "/dev/vfio/13", "/dev/xda",
                                                  "/dev/vfio/devices/vfio0", "/dev/fuzz0"))}
    if r.random() < 0.5:
        node["hostPath"] = m(("/dev/vfio/12", "/dev/null", "/dev/fuzzblk", "/etc/12",
                                      "/dev/fuzzlink"))
    for key, good in (("type", ("c", "b")), ("major", (236, 7, 10)), ("minor", (12, 0, 196))):
        if r.random() < 0.4:
            node[key] = m(good)
    return node


def cdi_doc(r: random.Random, edge: float = 0.25) -> dict[str, Value]:
    m = Edgy(r, edge)
    devices = [{"name": m(("gpu0", "nic0", "0", "all", "a:b")),
                "containerEdits": {"deviceNodes": [_cdi_node(r, m) for _ in range(r.randrange(3))],
                                   "env": [m(("A=1", "B"))]}}
               for _ in range(pick(r, (0, 1, 1, 2, 3)))]
    doc: dict[str, Value] = {"cdiVersion": m(("0.3.0", "0.5.0", "0.6.0", "1.0.0",
                                                     "1.1.0", "v0.6.0", "9.9.9")),
                             "kind": m(CDI_KINDS), "devices": devices}
    if r.random() < 0.2:
        doc["containerEdits"] = {"deviceNodes": [_cdi_node(r, m)]}
    return doc


YAML_HOSTILE: tuple[bytes, ...] = (
    b"a: &a [x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\n"
    b"c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]\nd: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]\n"
    b"e: [*d, *d, *d, *d, *d, *d, *d, *d, *d]\n",
    b"a: &a [*a]\n", b"!!python/object/apply:os.system [id]\n", b"kind: !!binary aGk=\n",
    b"cdiVersion: 0.3.0\ncdiVersion: 0.3.0\n", b"[" * 5000, b"{a: " * 3000,
    b"\xef\xbb\xbfcdiVersion: 0.3.0\n", b"%YAML 1.1\n---\nkind: x\n", b"? [a]\n: b\n",
    b"cdiVersion: 0.3.0\nkind: example.com/gpu\ndevices:\n  - name: gpu0\n    containerEdits:\n"
    b"      deviceNodes:\n        - path: /dev/vfio/12\n          major: 0x10\n",
    b"a: <<\n", b"<<: {a: 1}\n", b"a: 1e999999\n", b"a: 0o777777777777777777777777777\n",
)


def cdi_text(r: random.Random, edge: float = 0.25) -> tuple[str, bytes]:
    """A CDI spec file (name, bytes): JSON or a YAML rendering, sometimes hostile YAML."""
    if r.random() < edge * 0.4:
        return "hostile.yaml", pick(r, YAML_HOSTILE)
    doc = cdi_doc(r, edge)
    if r.random() < 0.5:
        return "spec.json", json.dumps(doc).encode()
    return "spec.yaml", _yaml(doc).encode()


def _yaml(value: Value, indent: int = 0) -> str:
    """Block-style YAML lines for ``value`` (scalars written as JSON, which YAML reads)."""
    pad = " " * indent
    if isinstance(value, dict) and value:
        return "".join(_yaml_item(f"{pad}{json.dumps(str(k))}:", v, indent) for k, v in
                       value.items())
    if isinstance(value, list) and value:
        return "".join(_yaml_item(f"{pad}-", v, indent) for v in value)
    return f"{pad}{json.dumps(value)}\n"


def _yaml_item(head: str, value: Value, indent: int) -> str:
    if isinstance(value, (dict, list)) and value:
        return f"{head}\n{_yaml(value, indent + 2)}"
    return f"{head} {json.dumps(value)}\n"


# --- sysfs trees -------------------------------------------------------------------------


def fake_host(r: random.Random, backing: str) -> FakeHost:
    """A random host: functions on random BDFs in random groups, drivers and BARs."""
    functions = []
    for index in range(r.randrange(1, 9)):
        bus, fn = r.randrange(1, 0x80), r.randrange(2)
        bars = tuple((slot, 1 << r.randrange(12, 34), pick(r, (0x200, 0x14220C, 0x40200)))
                     for slot in (0, 2, 4)[:r.randrange(4)])
        functions.append(FakeFunction(
            bdf=f"0000:{bus:02x}:{index:02x}.{fn}",
            vendor=pick(r, (0x10DE, 0x8086, 0x15B3, 0x1AF4)), device=r.randrange(0x10000),
            class_code=pick(r, (0x030200, 0x040300, 0x020000, 0x068000, 0x060400)),
            driver=pick(r, ("vfio-pci", "vfio-pci", "nvidia", None)),
            iommu_group=pick(r, (12, 13, 14, index, None)),
            bars=bars, pcie=r.random() < 0.8, numa_node=pick(r, (-1, 0, 1))))
    blocks = (FakeBlock(7, 0, "loop0", backing),) if r.random() < 0.8 else ()
    return FakeHost(tuple(functions), blocks, iommufd=r.random() < 0.3)
