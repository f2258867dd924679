"""CDI specs loaded as the reference Go library loads them (v1.1.0): the project's own
good/bad cases (``tests/fixtures/cdi``, each testing one rule, listed in ``CASES.md``),
directory scans, references, and device nodes completed from a host ``/dev``."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

import pytest

from podplug.errors import CdiError
from podplug.host.devnodes import read_nodes
from podplug.inputs.cdi import (
    CdiDeviceNode,
    CdiRegistry,
    HostNode,
    apply_cdi,
    cdi_references,
    complete_node,
    host_paths,
    parse_cdi_spec,
)
from podplug.inputs.load import load_cdi_dirs, load_cdi_file, with_cdi
from podplug.inputs.oci import parse_oci_spec
from podplug.model.enums import NodeType
from podplug.model.request import ContainerDevice, ContainerRequest
from tests.support import FIXTURES

CDI_FIXTURES = FIXTURES / "cdi"

PGPU_YAML = """\
cdiVersion: "1.1.0"
kind: nvidia.com/pgpu
devices:
  - name: "0"
    containerEdits:
      deviceNodes:
        - path: /dev/vfio/12
          type: c
          major: 236
          minor: 12
"""


def _fixture_params(kind: str) -> list[Any]:
    """One param per fixture file. A missing or empty directory yields a param that fails
    (an empty parameter list would make pytest skip, and these fixtures must be there)."""
    folder = CDI_FIXTURES / kind
    files = sorted(folder.iterdir()) if folder.is_dir() else []
    if not files:
        return [pytest.param(folder, id=f"{kind}-fixtures-missing")]
    return [pytest.param(f, id=f.name) for f in files]


def _spec(devices: list[dict[str, Any]], **top: Any) -> dict[str, Any]:
    return {"cdiVersion": "1.1.0", "kind": "nvidia.com/pgpu", "devices": devices, **top}


def _dev(name: str, *nodes: dict[str, Any]) -> dict[str, Any]:
    """A device with these nodes, or with one env edit (a device's edits may not be empty)."""
    edits = {"deviceNodes": list(nodes)} if nodes else {"env": ["PODPLUG_TEST=1"]}
    return {"name": name, "containerEdits": edits}


def _write(folder: Path, name: str, doc: dict[str, Any] | str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(doc if isinstance(doc, str) else json.dumps(doc))
    return path


# ------------------------------------------------------------------ the project's cases


def test_every_case_is_listed() -> None:
    listed = (CDI_FIXTURES / "CASES.md").read_text()
    for folder in ("good", "bad"):
        for path in sorted((CDI_FIXTURES / folder).iterdir()):
            assert f"{folder}/{path.name}" in listed, path


@pytest.mark.parametrize("path", _fixture_params("good"))
def test_good_case_loads(path: Path) -> None:
    assert path.is_file(), f"no fixture files in {path}"
    spec = load_cdi_file(path)
    assert spec.devices and spec.source == str(path)


@pytest.mark.parametrize("path", _fixture_params("bad"))
def test_bad_case_is_refused_in_one_line(path: Path) -> None:
    assert path.is_file(), f"no fixture files in {path}"
    with pytest.raises(CdiError) as info:
        load_cdi_file(path)
    assert info.value.path == str(path)
    assert "\n" not in str(info.value) and "None" not in str(info.value)


def test_good_values_the_reference_reads() -> None:
    good = CDI_FIXTURES / "good"
    assert set(load_cdi_file(good / "device-name-unquoted-integer.yaml").devices) == {"7"}
    assert set(load_cdi_file(good / "device-name-yaml11-boolean.yaml").devices) == {"true"}
    ctk = load_cdi_file(good / "nvidia-ctk-style.yaml")
    assert ctk.devices["0"].edits.device_nodes == (CdiDeviceNode("/dev/nvidia0"),)
    assert [n.path for n in ctk.spec_edits.device_nodes] == ["/dev/nvidiactl",
                                                             "/dev/nvidia-uvm"]
    vendor = load_cdi_file(good / "vendor-with-underscore-and-dots.yaml")
    assert "_" in vendor.vendor
    null_edits = load_cdi_file(good / "top-level-container-edits-null.yaml")
    assert null_edits.spec_edits.device_nodes == () and null_edits.spec_edits.env == ()


def test_bad_values_the_reference_refuses() -> None:
    bad = CDI_FIXTURES / "bad"
    with pytest.raises(CdiError, match="has empty edits"):
        load_cdi_file(bad / "device-with-empty-edits.yaml")
    with pytest.raises(CdiError, match="duplicate key"):
        load_cdi_file(bad / "duplicate-key.json")
    with pytest.raises(CdiError, match="unknown field"):
        load_cdi_file(bad / "unknown-device-field.json")


# ------------------------------------------------------------------ validation


@pytest.mark.parametrize("doc", [{}, None])
def test_empty_document_fails(doc: object) -> None:
    with pytest.raises(CdiError, match="no spec data"):
        parse_cdi_spec(doc)


def test_a_string_where_a_number_belongs_names_its_json_path() -> None:
    doc = _spec([_dev("0", {"path": "/dev/vfio/12", "major": "236"})])
    with pytest.raises(CdiError) as info:
        parse_cdi_spec(doc)
    assert info.value.subject == "devices[0].containerEdits.deviceNodes[0].major"
    assert "must be an integer (int64), not a string" in info.value.problem


@pytest.mark.parametrize("device", [{"name": "0"}, {"name": "0", "containerEdits": None},
                                    {"name": "0", "containerEdits": {"env": []}}])
def test_a_device_without_edits_is_refused(device: dict[str, Any]) -> None:
    with pytest.raises(CdiError) as info:
        parse_cdi_spec(_spec([device]))
    assert info.value.subject == "devices[0].containerEdits"
    assert "empty edits" in info.value.problem


def test_null_top_level_edits_are_no_edits() -> None:
    spec = parse_cdi_spec(_spec([_dev("0", {"path": "/dev/vfio/12"})], containerEdits=None))
    assert spec.spec_edits.device_nodes == ()


def test_unknown_field_is_refused_and_case_is_ignored() -> None:
    with pytest.raises(CdiError) as info:
        parse_cdi_spec(_spec([{**_dev("0", {"path": "/dev/vfio/12"}), "vendorExtra": True}]))
    assert info.value.subject == "devices[0].vendorExtra"
    assert "unknown field" in info.value.problem
    doc = _spec([{"Name": "0", "ContainerEdits": {"DeviceNodes": [{"PATH": "/dev/x"}]}}])
    assert parse_cdi_spec(doc).devices["0"].edits.device_nodes == (CdiDeviceNode("/dev/x"),)


def test_unknown_field_in_device_node() -> None:
    doc = _spec([_dev("0", {"path": "/dev/vfio/12", "majr": 236})])
    with pytest.raises(CdiError) as info:
        parse_cdi_spec(doc)
    assert info.value.subject == "devices[0].containerEdits.deviceNodes[0].majr"


@pytest.mark.parametrize("name", ["0", "gpu0", "a.b_c-d", "0:1", "GPU-7f3e"])
def test_good_device_names(name: str) -> None:
    assert name in parse_cdi_spec(_spec([_dev(name)])).devices


@pytest.mark.parametrize("name", ["-0", "gpu0-", "a b", "gpu/0", "", "x=y", "é", "_a"])
def test_bad_device_name(name: str) -> None:
    with pytest.raises(CdiError) as info:
        parse_cdi_spec(_spec([_dev(name)]))
    assert info.value.subject == "devices[0].name"


def test_duplicate_device_name() -> None:
    with pytest.raises(CdiError, match="defined twice"):
        parse_cdi_spec(_spec([_dev("0"), _dev("0")]))


def test_no_devices() -> None:
    with pytest.raises(CdiError, match="at least one device"):
        parse_cdi_spec(_spec([]))


@pytest.mark.parametrize(
    "kind", ["nvidia.com", "nvidia.com/", "/pgpu", "nvidia.com/pgpu/x", "-nv.com/pgpu",
             "9nv.com/a", "nv.com/9a", "nv.com./a", "x/gpu", "nv.com/é"]
)
def test_bad_kind(kind: str) -> None:
    with pytest.raises(CdiError) as info:
        parse_cdi_spec(_spec([_dev("0")], kind=kind))
    assert info.value.subject == "kind"


@pytest.mark.parametrize(
    ("doc", "needs"),
    [
        (_spec([_dev("0")], cdiVersion="0.4.0"), "0.5.0"),
        (_spec([_dev("a", {"path": "/dev/x", "hostPath": "/dev/y"})], cdiVersion="0.3.0"), "0.5.0"),
        (_spec([_dev("a")], cdiVersion="0.5.0", annotations={"k": "v"}), "0.6.0"),
        (_spec([_dev("a")], cdiVersion="1.0.0",
               containerEdits={"netDevices": [{"hostInterfaceName": "e0", "name": "e1"}]}),
         "1.1.0"),
    ],
)  # fmt: skip
def test_version_too_old_for_fields(doc: dict[str, Any], needs: str) -> None:
    with pytest.raises(CdiError) as info:
        parse_cdi_spec(doc)
    assert info.value.subject == "cdiVersion"
    assert f"needs at least {needs}" in info.value.problem


@pytest.mark.parametrize("version", ["2.0.0", "1.1", "latest", ""])
def test_unknown_version(version: str) -> None:
    with pytest.raises(CdiError, match="not a released CDI version"):
        parse_cdi_spec(_spec([_dev("a")], cdiVersion=version))


@pytest.mark.parametrize("kind", ["nv_x.com/ab", "nvidia.com/p_gpu", "a-b/c-d"])
def test_vendor_and_class_allow_underscore_dash_and_dot(kind: str) -> None:
    assert parse_cdi_spec(_spec([_dev("a")], kind=kind)).kind == kind


@pytest.mark.parametrize(
    ("node", "field"),
    [
        ({"path": "/dev/x", "type": "char"}, "type"),
        ({"path": "/dev/x", "permissions": "rwx"}, "permissions"),
        ({"path": "/dev/x", "permissions": "none"}, "permissions"),
        ({"path": "/dev/x", "fileMode": -1}, "fileMode"),
        ({"path": "/dev/x", "uid": 2**32}, "uid"),
        ({"path": ""}, "path"),
    ],
)
def test_bad_device_node_values(node: dict[str, Any], field: str) -> None:
    with pytest.raises(CdiError) as info:
        parse_cdi_spec(_spec([_dev("a", node)]))
    assert info.value.subject == f"devices[0].containerEdits.deviceNodes[0].{field}"


def test_bad_env_entry() -> None:
    doc = _spec([{"name": "a", "containerEdits": {"env": ["=x"]}}])
    with pytest.raises(CdiError) as info:
        parse_cdi_spec(doc)
    assert info.value.subject == "devices[0].containerEdits.env[0]"


# ------------------------------------------------------------------ directories

NODES = {"/dev/vfio/12": HostNode(NodeType.CHAR, 236, 12, 0o600)}


def test_yaml_spec_resolves_from_annotation_into_request(tmp_path: Path) -> None:
    _write(tmp_path / "cdi", "pgpu.yaml", PGPU_YAML)
    registry = load_cdi_dirs([tmp_path / "cdi"])
    oci = parse_oci_spec({"annotations": {"cdi.k8s.io/vfio12": "nvidia.com/pgpu=0"}})
    request = apply_cdi(oci, registry, NODES)
    assert request.devices == (
        ContainerDevice("/dev/vfio/12", NodeType.CHAR, 236, 12, file_mode=0o600,
                        source="nvidia.com/pgpu=0", host_path="/dev/vfio/12"),
    )
    assert request.annotations == oci.annotations
    assert oci.devices == ()  # the input is not modified


def _scan(*parts: str) -> CdiRegistry:
    return load_cdi_dirs([CDI_FIXTURES / "dirs" / p for p in parts])


def _env(registry: CdiRegistry, name: str) -> tuple[str, ...]:
    return registry.resolve(name)[1].edits.env


def test_later_directory_wins() -> None:
    registry = _scan("override/low", "override/high")
    assert _env(registry, "example.com/layer=dev0") == ("PODPLUG_LAYER=high",)
    assert "example.com/layer=dev1" in registry.entries and registry.errors == ()


def test_clash_inside_one_directory_drops_the_device_and_names_both_files() -> None:
    registry = _scan("same-dir-conflict")
    assert set(registry.entries) == {"example.com/layer=dev1", "example.com/layer=dev2"}
    assert {source.rsplit("/", 1)[1] for source, _ in registry.errors} == {"first.yaml",
                                                                           "second.yaml"}
    with pytest.raises(CdiError) as info:
        registry.resolve("example.com/layer=dev0")
    assert "first.yaml" in info.value.problem and "second.yaml" in info.value.problem


def test_a_clash_is_not_undone_by_a_later_directory() -> None:
    registry = _scan("conflict-survives-override/low", "conflict-survives-override/high")
    assert "example.com/layer=dev0" not in registry.entries


def test_only_regular_json_and_yaml_files_directly_in_the_directory(tmp_path: Path) -> None:
    registry = _scan("scan-filters")
    names = {n.split("=")[1] for n in registry.entries}
    assert names == {"dev0", "dev-json"}
    link = tmp_path / "linked.yaml"
    link.symlink_to(CDI_FIXTURES / "dirs" / "scan-filters" / "loaded.yaml")
    assert load_cdi_dirs([tmp_path]).entries == {}  # a symbolic link is not followed


def test_a_broken_file_is_recorded_and_the_others_load() -> None:
    registry = _scan("broken-file-isolated")
    assert "example.com/layer=dev0" in registry.entries
    ((source, problem),) = registry.errors
    assert source.endswith("broken.yaml") and "empty edits" in problem


def test_missing_directories_are_skipped(tmp_path: Path) -> None:
    _write(tmp_path / "run", "pgpu.yaml", PGPU_YAML)
    registry = load_cdi_dirs([tmp_path / "etc", tmp_path / "run", tmp_path / "other"])
    assert list(registry.entries) == ["nvidia.com/pgpu=0"]
    assert load_cdi_dirs([tmp_path / "none"]).entries == {}


@pytest.mark.parametrize(
    ("name", "text", "problem"),
    [
        ("bad.json", "{", "invalid YAML"),
        ("bad.yaml", "devices: [", "invalid YAML"),
        ("bad.yaml", "", "no spec data"),
        ("bad.yaml", "a: &x [1]\nb: *x\n", "aliases (*name) are not accepted"),
        ("bad.yaml", "cdiVersion: 1.1.0\nkind: a.com/bb\ndevices: []\n", "at least one device"),
    ],
)
def test_bad_file_names_the_file(tmp_path: Path, name: str, text: str, problem: str) -> None:
    bad = _write(tmp_path, name, text)
    with pytest.raises(CdiError) as info:
        load_cdi_file(bad)
    assert info.value.path == str(bad)
    assert problem in str(info.value) and "\n" not in str(info.value)


def test_unknown_device_lists_known_ones(tmp_path: Path) -> None:
    _write(tmp_path, "pgpu.json", _spec([_dev(str(i)) for i in range(8)]))
    registry = load_cdi_dirs([tmp_path])
    with pytest.raises(CdiError) as info:
        registry.resolve("nvidia.com/pgpu=9")
    assert info.value.subject == "nvidia.com/pgpu=9"
    assert "known nvidia.com/pgpu devices: 0, 1, 2, 3, 4 and 3 more" in info.value.problem
    with pytest.raises(CdiError, match=r"no CDI spec of kind amd\.com/gpu"):
        registry.resolve("amd.com/gpu=0")


def test_resolve_rejects_unqualified_name() -> None:
    with pytest.raises(CdiError, match="not a CDI device name"):
        CdiRegistry().resolve("pgpu0")


# ------------------------------------------------------------------ references and merge


def test_references_order_and_dedup() -> None:
    annotations = {
        "cdi.k8s.io/b": "nvidia.com/pgpu=2,nvidia.com/pgpu=1",
        "cdi.k8s.io/a": "nvidia.com/pgpu=1",
        "io.kubernetes.cri.container-type": "container",
        "other/x": "not=checked",
    }
    assert cdi_references(annotations) == ("nvidia.com/pgpu=1", "nvidia.com/pgpu=2")


@pytest.mark.parametrize(
    "value", ["nvidia.com/pgpu", "pgpu=0", "nvidia.com/pgpu=0, nvidia.com/pgpu=1", "a.com/b=0,",
              "a.com/b=0\nforged"]
)
def test_bad_reference_names_annotation_key(value: str) -> None:
    with pytest.raises(CdiError) as info:
        cdi_references({"cdi.k8s.io/gpu": value})
    assert info.value.subject == 'annotations["cdi.k8s.io/gpu"]'
    assert "\n" not in str(info.value)


def test_apply_merges_spec_and_device_nodes_once_and_replaces_by_path(tmp_path: Path) -> None:
    doc = _spec(
        [_dev("0", {"path": "/dev/vfio/12", "type": "c", "major": 236, "minor": 12}),
         _dev("1", {"path": "/dev/vfio/13", "hostPath": "/dev/vfio/devices/vfio3"})],
        containerEdits={"deviceNodes": [{"path": "/dev/vfio/vfio", "fileMode": 438}]},
    )  # fmt: skip
    _write(tmp_path, "pgpu.json", doc)
    request = ContainerRequest(
        devices=(ContainerDevice("/dev/vfio/12", NodeType.CHAR, 236, 99),),
        annotations={"cdi.k8s.io/x": "nvidia.com/pgpu=0,nvidia.com/pgpu=1"},
    )
    host = {"/dev/vfio/vfio": HostNode(NodeType.CHAR, 10, 196, 0o666),
            "/dev/vfio/devices/vfio3": HostNode(NodeType.CHAR, 237, 3, 0o600)}
    registry = load_cdi_dirs([tmp_path])
    assert host_paths(request, registry) == ("/dev/vfio/vfio", "/dev/vfio/12",
                                             "/dev/vfio/devices/vfio3")
    merged = apply_cdi(request, registry, host)
    assert merged.devices == (
        # the CDI node replaces the OCI entry of its path, in its place (reference Apply)
        ContainerDevice("/dev/vfio/12", NodeType.CHAR, 236, 12, host_path="/dev/vfio/12",
                        source="nvidia.com/pgpu=0"),
        ContainerDevice("/dev/vfio/vfio", NodeType.CHAR, 10, 196, file_mode=438,
                        host_path="/dev/vfio/vfio", source="nvidia.com/pgpu=0"),
        ContainerDevice("/dev/vfio/13", NodeType.CHAR, 237, 3, file_mode=0o600,
                        host_path="/dev/vfio/devices/vfio3", source="nvidia.com/pgpu=1"),
    )


def test_apply_without_cdi_annotations_keeps_devices() -> None:
    request = ContainerRequest(devices=(ContainerDevice("/dev/xda", NodeType.BLOCK, 7, 0),))
    assert apply_cdi(request, CdiRegistry(), {}) == request


def test_apply_unknown_reference_fails() -> None:
    request = ContainerRequest(devices=(), annotations={"cdi.k8s.io/x": "nvidia.com/pgpu=0"})
    with pytest.raises(CdiError, match=r"no CDI spec of kind nvidia\.com/pgpu"):
        apply_cdi(request, CdiRegistry(), {})


# ------------------------------------------------------------------ completing from the host


def test_a_node_without_numbers_takes_them_from_the_host() -> None:
    node = CdiDeviceNode("/dev/nvidia0")  # as nvidia-ctk writes it
    done = complete_node(node, HostNode(NodeType.CHAR, 195, 0, 0o666), "nvidia.com/gpu=0")
    assert (done.type, done.major, done.minor, done.file_mode, done.host_path) == (
        NodeType.CHAR, 195, 0, 0o666, "/dev/nvidia0")


def test_a_host_without_the_node_refuses_it_naming_both() -> None:
    with pytest.raises(CdiError) as info:
        complete_node(CdiDeviceNode("/dev/nvidia0"), "no such node (No such file or directory)",
                      "nvidia.com/gpu=0")
    assert info.value.subject == "nvidia.com/gpu=0"
    assert "host device node /dev/nvidia0 (for /dev/nvidia0): no such node" in str(info.value)


def test_a_minimally_specified_node_needs_no_host_node() -> None:
    node = CdiDeviceNode("/dev/x", type=NodeType.CHAR, major=240, minor=7)
    assert complete_node(node, "no such node", "v.com/c=x") == CdiDeviceNode(
        "/dev/x", host_path="/dev/x", type=NodeType.CHAR, major=240, minor=7)
    fifo = CdiDeviceNode("/dev/f", type=NodeType.FIFO)
    assert complete_node(fifo, None, "v.com/c=f").type is NodeType.FIFO


def test_a_type_the_host_contradicts_is_refused() -> None:
    with pytest.raises(CdiError, match="is of type c, the spec says b"):
        complete_node(CdiDeviceNode("/dev/x", type=NodeType.BLOCK),
                      HostNode(NodeType.CHAR, 1, 3, 0o666), "v.com/c=x")


def _mknod(root: Path, rel: str, kind: int, major: int, minor: int) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    os.mknod(path, 0o620 | kind, os.makedev(major, minor))
    os.chmod(path, 0o620)  # past the umask


def test_host_nodes_are_read_below_the_dev_root_without_following_links(tmp_path: Path) -> None:
    """Needs CAP_MKNOD (root), as the CI has."""
    dev = tmp_path / "dev"
    _mknod(dev, "nvidia0", stat.S_IFCHR, 195, 0)
    _mknod(dev, "vfio/12", stat.S_IFCHR, 236, 12)
    _mknod(dev, "loop0", stat.S_IFBLK, 7, 0)
    os.mkfifo(dev / "fifo")
    (dev / "link").symlink_to("nvidia0")
    (dev / "out").symlink_to(tmp_path)
    (dev / "plain").write_text("x")
    got = read_nodes(["/dev/nvidia0", "/dev/vfio/12", "/dev/loop0", "/dev/fifo", "/dev/link",
                      "/dev/out/dev/nvidia0", "/dev/plain", "/dev/none", "/etc/passwd",
                      "/dev/../etc/passwd", "dev/nvidia0"], dev)
    assert got["/dev/nvidia0"] == HostNode(NodeType.CHAR, 195, 0, 0o620)
    assert got["/dev/vfio/12"] == HostNode(NodeType.CHAR, 236, 12, 0o620)
    assert got["/dev/loop0"] == HostNode(NodeType.BLOCK, 7, 0, 0o620)
    assert isinstance(got["/dev/fifo"], HostNode) and got["/dev/fifo"].type is NodeType.FIFO
    assert got["/dev/link"] == "not a device node"
    assert "links are not followed" in str(got["/dev/out/dev/nvidia0"])
    assert got["/dev/plain"] == "not a device node"
    assert str(got["/dev/none"]).startswith("no such node")
    assert str(got["/etc/passwd"]).startswith("outside /dev")
    assert got["/dev/../etc/passwd"] == "not an absolute, normal path"
    assert got["dev/nvidia0"] == "not an absolute, normal path"


def test_a_cdi_request_is_completed_from_the_dev_root(tmp_path: Path) -> None:
    dev = tmp_path / "dev"
    _mknod(dev, "nvidia0", stat.S_IFCHR, 195, 0)
    _write(tmp_path / "cdi", "gpu.yaml", (CDI_FIXTURES / "good" / "nvidia-ctk-style.yaml")
           .read_text())
    registry = load_cdi_dirs([tmp_path / "cdi"])
    request = ContainerRequest((), {"cdi.k8s.io/gpu": "nvidia.com/gpu=0"})
    with pytest.raises(CdiError, match="/dev/nvidiactl"):
        with_cdi(request, registry, dev)  # the spec-level nodes are not on this host
    _mknod(dev, "nvidiactl", stat.S_IFCHR, 195, 255)
    _mknod(dev, "nvidia-uvm", stat.S_IFCHR, 510, 0)
    done = with_cdi(request, registry, dev)
    assert [(d.path, d.major, d.minor) for d in done.devices] == [
        ("/dev/nvidiactl", 195, 255), ("/dev/nvidia-uvm", 510, 0), ("/dev/nvidia0", 195, 0)]


@pytest.mark.parametrize("path", ["dev/x", "/dev/../etc/x", "/dev/x\nforged"])
def test_a_node_path_podplug_cannot_place_is_refused_on_apply(path: str) -> None:
    with pytest.raises(CdiError) as info:
        complete_node(CdiDeviceNode(path, type=NodeType.CHAR, major=1, minor=3), None,
                      "v.com/c=x")
    assert "must" in str(info.value) and "\n" not in str(info.value)
