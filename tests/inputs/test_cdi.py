"""CDI spec validation, directory loading, references and merging into a request."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft7Validator
from referencing import Registry
from referencing.jsonschema import DRAFT7

from podplug.errors import CdiError
from podplug.inputs.cdi import (
    CdiDeviceNode,
    CdiRegistry,
    apply_cdi,
    cdi_references,
    load_cdi_dirs,
    load_cdi_file,
    parse_cdi_spec,
)
from podplug.inputs.oci import parse_oci_spec
from podplug.model.enums import NodeType
from podplug.model.request import ContainerDevice, ContainerRequest

# /work/main/tests/inputs/test_cdi.py -> parents[2] is the clone; shared/ sits beside it.
CDI_FIXTURES = Path(__file__).resolve().parents[2] / ".." / "shared" / "fixtures" / "cdi"

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
    folder = CDI_FIXTURES / "testdata" / kind
    files = sorted(folder.iterdir()) if folder.is_dir() else []
    if not files:
        return [pytest.param(folder, id=f"{kind}-fixtures-missing")]
    return [pytest.param(f, id=f.name) for f in files]


def _spec(devices: list[dict[str, Any]], **top: Any) -> dict[str, Any]:
    return {"cdiVersion": "1.1.0", "kind": "nvidia.com/pgpu", "devices": devices, **top}


def _dev(name: str, *nodes: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "containerEdits": {"deviceNodes": list(nodes)}}


def _write(folder: Path, name: str, doc: dict[str, Any] | str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(doc if isinstance(doc, str) else json.dumps(doc))
    return path


# ------------------------------------------------------------------ upstream fixtures


def test_fixture_directory_present() -> None:
    assert (CDI_FIXTURES / "schema.json").is_file(), f"missing CDI fixtures at {CDI_FIXTURES}"


@pytest.mark.parametrize("path", _fixture_params("good"))
def test_good_fixture_parses(path: Path) -> None:
    assert path.is_file(), f"no fixture files in {path}"
    spec = load_cdi_file(path)
    assert spec.devices
    assert spec.source == str(path)


@pytest.mark.parametrize("path", _fixture_params("bad"))
def test_bad_fixture_fails(path: Path) -> None:
    assert path.is_file(), f"no fixture files in {path}"
    with pytest.raises(CdiError) as info:
        load_cdi_file(path)
    assert info.value.path == str(path)


@pytest.mark.parametrize("name", ["schema.json", "defs.json"])
def test_packaged_schema_matches_upstream_copy(name: str) -> None:
    packaged = resources.files("podplug.inputs").joinpath("cdi_schema", name).read_bytes()
    assert packaged == (CDI_FIXTURES / name).read_bytes()


def test_spec_example_values() -> None:
    spec = load_cdi_file(CDI_FIXTURES / "testdata" / "good" / "spec-example.json")
    assert spec.kind == "vendor.com/device"
    assert (spec.vendor, spec.device_class) == ("vendor.com", "device")
    assert spec.cdi_version == "0.6.0"
    assert spec.spec_edits.env == ("FOO=CDI_SPEC", "BAR=BARVALUE1")
    assert spec.spec_edits.device_nodes == (CdiDeviceNode("/dev/vendorctl", uid=1000, gid=1000),)
    assert spec.devices["myDevice"].edits.device_nodes == (
        CdiDeviceNode("/dev/card1", host_path="/vendorroot/dev/card1"),
        CdiDeviceNode("/dev/card2"),
    )


# ------------------------------------------------------------------ validation


@pytest.mark.parametrize("doc", [{}, None])
def test_empty_document_fails(doc: object) -> None:
    with pytest.raises(CdiError, match="empty CDI spec"):
        parse_cdi_spec(doc)


def test_schema_error_names_json_path() -> None:
    doc = _spec([_dev("0", {"path": "/dev/vfio/12", "major": "236"})])
    with pytest.raises(CdiError) as info:
        parse_cdi_spec(doc)
    assert info.value.subject == "devices[0].containerEdits.deviceNodes[0].major"
    assert "is not of type 'integer'" in info.value.problem
    assert "\n" not in str(info.value)


def test_missing_required_field() -> None:
    doc = _spec([{"name": "0"}])
    with pytest.raises(CdiError) as info:
        parse_cdi_spec(doc)
    assert info.value.subject == "devices[0]"
    assert "'containerEdits' is a required property" in info.value.problem


def test_unknown_field_fails_though_the_schema_allows_it() -> None:
    doc = _spec([{**_dev("0", {"path": "/dev/vfio/12"}), "vendorExtra": True}])
    # The upstream schema has no additionalProperties: false ...
    defs = json.loads((CDI_FIXTURES / "defs.json").read_text())
    schema = json.loads((CDI_FIXTURES / "schema.json").read_text())
    registry: Registry[Any] = Registry().with_resource("defs.json", DRAFT7.create_resource(defs))
    assert Draft7Validator(schema, registry=registry).is_valid(doc)
    # ... but SPEC.md says loading fails on unknown fields, and podplug checks that itself.
    with pytest.raises(CdiError) as info:
        parse_cdi_spec(doc)
    assert info.value.subject == "devices[0].vendorExtra"
    assert "unknown field" in info.value.problem


def test_unknown_field_in_device_node() -> None:
    doc = _spec([_dev("0", {"path": "/dev/vfio/12", "majr": 236})])
    with pytest.raises(CdiError) as info:
        parse_cdi_spec(doc)
    assert info.value.subject == "devices[0].containerEdits.deviceNodes[0].majr"


@pytest.mark.parametrize("name", ["0", "gpu0", "a.b_c-d", "0:1", "GPU-7f3e"])
def test_good_device_names(name: str) -> None:
    assert name in parse_cdi_spec(_spec([_dev(name)])).devices


@pytest.mark.parametrize("name", ["-0", "gpu0-", "a b", "gpu/0", "", "x=y", "é"])
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
    "kind", ["nvidia.com", "nvidia.com/", "/pgpu", "nvidia.com/pgpu/x", "-nv.com/pgpu", "nv_x/a"]
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


@pytest.mark.parametrize("version", ["2.0.0", "1.1", "latest"])
def test_unknown_version(version: str) -> None:
    with pytest.raises(CdiError, match="not a released CDI version"):
        parse_cdi_spec(_spec([_dev("a")], cdiVersion=version))


@pytest.mark.parametrize(
    ("node", "field"),
    [
        ({"path": "/dev/x", "type": "char"}, "type"),
        ({"path": "/dev/x", "permissions": "rwx"}, "permissions"),
        ({"path": "/dev/x", "fileMode": -1}, "fileMode"),
        ({"path": "/dev/x", "major": -1}, "major"),
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


def test_yaml_spec_resolves_from_annotation_into_request(tmp_path: Path) -> None:
    _write(tmp_path / "cdi", "pgpu.yaml", PGPU_YAML)
    registry = load_cdi_dirs([tmp_path / "cdi"])
    oci = parse_oci_spec({"annotations": {"cdi.k8s.io/vfio12": "nvidia.com/pgpu=0"}})
    request = apply_cdi(oci, registry)
    assert request.devices == (
        ContainerDevice(
            "/dev/vfio/12", NodeType.CHAR, 236, 12, source="nvidia.com/pgpu=0", host_path=None
        ),
    )
    assert request.annotations == oci.annotations
    assert oci.devices == ()  # the input is not modified


def test_later_directory_wins(tmp_path: Path) -> None:
    etc, run = tmp_path / "etc", tmp_path / "run"
    _write(etc, "pgpu.json", _spec([_dev("0", {"path": "/dev/vfio/12"})]))
    _write(run, "pgpu.yml", _spec([_dev("0", {"path": "/dev/vfio/13"})]))
    spec, device = load_cdi_dirs([etc, run]).resolve("nvidia.com/pgpu=0")
    assert device.edits.device_nodes[0].path == "/dev/vfio/13"
    assert spec.source == str(run / "pgpu.yml")
    _, device = load_cdi_dirs([run, etc]).resolve("nvidia.com/pgpu=0")
    assert device.edits.device_nodes[0].path == "/dev/vfio/12"


def test_clash_inside_one_directory_names_both_files(tmp_path: Path) -> None:
    a = _write(tmp_path, "a.json", _spec([_dev("0")]))
    b = _write(tmp_path, "b.yaml", _spec([_dev("1"), _dev("0")]))
    with pytest.raises(CdiError) as info:
        load_cdi_dirs([tmp_path])
    assert info.value.subject == "nvidia.com/pgpu=0"
    assert str(a) in info.value.problem
    assert str(b) in info.value.problem


def test_missing_directories_are_skipped(tmp_path: Path) -> None:
    _write(tmp_path / "run", "pgpu.yaml", PGPU_YAML)
    registry = load_cdi_dirs([tmp_path / "etc", tmp_path / "run", tmp_path / "other"])
    assert list(registry.entries) == ["nvidia.com/pgpu=0"]
    assert load_cdi_dirs([tmp_path / "none"]).entries == {}


def test_other_files_are_ignored(tmp_path: Path) -> None:
    _write(tmp_path, "pgpu.yaml", PGPU_YAML)
    _write(tmp_path, "README.md", "not a spec")
    _write(tmp_path, "pgpu.json.bak", "{")
    assert list(load_cdi_dirs([tmp_path]).entries) == ["nvidia.com/pgpu=0"]


@pytest.mark.parametrize(
    ("name", "text", "problem"),
    [
        ("bad.json", "{", "invalid JSON at line 1"),
        ("bad.yaml", "devices: [", "invalid YAML"),
        ("bad.yaml", "", "empty file"),
        ("bad.yaml", "cdiVersion: 1.1.0\nkind: a.com/b\ndevices: []\n", "at least one device"),
    ],
)
def test_bad_file_names_the_file(tmp_path: Path, name: str, text: str, problem: str) -> None:
    _write(tmp_path, "good.yaml", PGPU_YAML)
    bad = _write(tmp_path, name, text)
    with pytest.raises(CdiError) as info:
        load_cdi_dirs([tmp_path])
    assert info.value.path == str(bad)
    assert problem in str(info.value)


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
    "value", ["nvidia.com/pgpu", "pgpu=0", "nvidia.com/pgpu=0, nvidia.com/pgpu=1", "a.com/b=0,"]
)
def test_bad_reference_names_annotation_key(value: str) -> None:
    with pytest.raises(CdiError) as info:
        cdi_references({"cdi.k8s.io/gpu": value})
    assert info.value.subject == 'annotations["cdi.k8s.io/gpu"]'


def test_apply_merges_spec_and_device_nodes_once(tmp_path: Path) -> None:
    doc = _spec(
        [_dev("0", {"path": "/dev/vfio/12", "type": "c", "major": 236, "minor": 12}),
         _dev("1", {"path": "/dev/vfio/13", "hostPath": "/dev/vfio/devices/vfio3"})],
        containerEdits={"deviceNodes": [{"path": "/dev/vfio/vfio", "fileMode": 438}]},
    )  # fmt: skip
    _write(tmp_path, "pgpu.json", doc)
    request = ContainerRequest(
        devices=(ContainerDevice("/dev/vfio/12", NodeType.CHAR, 236, 12),),
        annotations={"cdi.k8s.io/x": "nvidia.com/pgpu=0,nvidia.com/pgpu=1"},
    )
    merged = apply_cdi(request, load_cdi_dirs([tmp_path]))
    assert merged.devices == (
        ContainerDevice("/dev/vfio/12", NodeType.CHAR, 236, 12),  # the OCI entry wins
        ContainerDevice(
            "/dev/vfio/vfio", NodeType.CHAR, 0, 0, file_mode=438,
            host_path="/dev/vfio/vfio", source="nvidia.com/pgpu=0",
        ),
        ContainerDevice(
            "/dev/vfio/13", NodeType.CHAR, 0, 0,
            host_path="/dev/vfio/devices/vfio3", source="nvidia.com/pgpu=1",
        ),
    )  # fmt: skip


def test_apply_without_cdi_annotations_keeps_devices() -> None:
    request = ContainerRequest(devices=(ContainerDevice("/dev/xda", NodeType.BLOCK, 7, 0),))
    assert apply_cdi(request, CdiRegistry()) == request


def test_apply_unknown_reference_fails() -> None:
    request = ContainerRequest(devices=(), annotations={"cdi.k8s.io/x": "nvidia.com/pgpu=0"})
    with pytest.raises(CdiError, match=r"no CDI spec of kind nvidia\.com/pgpu"):
        apply_cdi(request, CdiRegistry())
