"""OCI runtime spec parsing: ``linux.devices``, annotations and the CRI container type."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from podplug.errors import InputError, SpecError
from podplug.inputs.load import load_oci_spec
from podplug.inputs.oci import parse_oci_spec
from podplug.model.enums import ContainerType, NodeType
from podplug.model.request import ContainerDevice

CONTAINERD = "io.kubernetes.cri.container-type"
CRIO = "io.kubernetes.cri-o.ContainerType"


def _config() -> dict[str, Any]:
    """A trimmed but realistic config.json of a container with a VFIO GPU and a raw block."""
    return {
        "ociVersion": "1.1.0",
        "process": {"user": {"uid": 0, "gid": 0}, "args": ["/bin/sh"], "cwd": "/"},
        "root": {"path": "rootfs", "readonly": False},
        "hostname": "gpu-pod",
        "mounts": [{"destination": "/proc", "type": "proc", "source": "proc"}],
        "annotations": {
            CONTAINERD: "container",
            "io.kubernetes.cri.sandbox-id": "4f1c2e",
            "io.kubernetes.cri.container-name": "cuda",
        },
        "linux": {
            "namespaces": [{"type": "pid"}, {"type": "mount"}],
            "resources": {"devices": [{"allow": False, "access": "rwm"}]},
            "devices": [
                {"path": "/dev/vfio/12", "type": "c", "major": 236, "minor": 12},
                {"path": "/dev/vfio/vfio", "type": "c", "major": 10, "minor": 196,
                 "fileMode": 0o666, "uid": 0, "gid": 0},
                {"path": "/dev/xda", "type": "b", "major": 7, "minor": 0, "fileMode": 438},
            ],
        },
    }  # fmt: skip


def test_realistic_config_devices() -> None:
    request = parse_oci_spec(_config())
    assert request.devices == (
        ContainerDevice("/dev/vfio/12", NodeType.CHAR, 236, 12),
        ContainerDevice("/dev/vfio/vfio", NodeType.CHAR, 10, 196, file_mode=0o666, uid=0, gid=0),
        ContainerDevice("/dev/xda", NodeType.BLOCK, 7, 0, file_mode=0o666),
    )
    assert all(d.source == "oci" and d.host_path is None for d in request.devices)
    assert request.annotations["io.kubernetes.cri.container-name"] == "cuda"
    assert request.container_type is ContainerType.CONTAINER
    assert not request.is_sandbox


@pytest.mark.parametrize(
    ("annotations", "expected"),
    [
        ({CONTAINERD: "sandbox"}, ContainerType.SANDBOX),
        ({CONTAINERD: "container"}, ContainerType.CONTAINER),
        ({CRIO: "sandbox"}, ContainerType.SANDBOX),
        ({CRIO: "container"}, ContainerType.CONTAINER),
        ({CONTAINERD: "sandbox", CRIO: "sandbox"}, ContainerType.SANDBOX),
        ({}, ContainerType.CONTAINER),
    ],
    ids=["containerd-sandbox", "containerd-container", "crio-sandbox", "crio-container",
         "both-agree", "absent"],
)  # fmt: skip
def test_container_type_from_cri_annotations(
    annotations: dict[str, str], expected: ContainerType
) -> None:
    doc = _config()
    doc["annotations"] = annotations
    assert parse_oci_spec(doc).container_type is expected


def test_unknown_container_type_names_annotation_and_allowed() -> None:
    with pytest.raises(SpecError) as info:
        parse_oci_spec({"annotations": {CRIO: "podsandbox"}})
    assert info.value.field == f'annotations["{CRIO}"]'
    assert "sandbox, container" in info.value.problem


def test_conflicting_cri_annotations_fail() -> None:
    with pytest.raises(SpecError, match="says 'sandbox' but"):
        parse_oci_spec({"annotations": {CONTAINERD: "sandbox", CRIO: "container"}})


@pytest.mark.parametrize("doc", [{}, {"linux": {}}, {"linux": {"devices": None}}])
def test_no_linux_or_no_devices_is_valid(doc: dict[str, Any]) -> None:
    request = parse_oci_spec(doc)
    assert request.devices == ()
    assert request.container_type is ContainerType.CONTAINER


def test_fifo_needs_no_numbers() -> None:
    doc = {"linux": {"devices": [{"path": "/dev/fifo0", "type": "p"}]}}
    assert parse_oci_spec(doc).devices == (ContainerDevice("/dev/fifo0", NodeType.FIFO, 0, 0),)


def test_wrong_type_letter_names_field_and_allowed() -> None:
    doc = _config()
    doc["linux"]["devices"][1]["type"] = "x"
    with pytest.raises(SpecError) as info:
        parse_oci_spec(doc)
    assert info.value.field == "linux.devices[1].type"
    assert "c, u, b, p" in str(info.value)


def test_missing_major_on_char_device() -> None:
    doc = _config()
    del doc["linux"]["devices"][0]["major"]
    with pytest.raises(SpecError, match=r"^linux\.devices\[0\]\.major: is required for char"):
        parse_oci_spec(doc)


def test_devices_not_a_list() -> None:
    doc = _config()
    doc["linux"]["devices"] = {"path": "/dev/vfio/12"}
    with pytest.raises(SpecError) as info:
        parse_oci_spec(doc)
    assert info.value.field == "linux.devices"
    assert "must be a list" in info.value.problem


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda d: d["linux"]["devices"][2].pop("path"), "linux.devices[2].path"),
        (lambda d: d["linux"]["devices"][2].update(path="dev/xda"), "linux.devices[2].path"),
        (lambda d: d["linux"]["devices"][2].update(minor=-1), "linux.devices[2].minor"),
        (lambda d: d["linux"]["devices"][2].update(major=True), "linux.devices[2].major"),
        (lambda d: d["linux"]["devices"][0].update(uid="root"), "linux.devices[0].uid"),
        (lambda d: d["linux"]["devices"][0].update(fileMode=2**32), "linux.devices[0].fileMode"),
        (lambda d: d["linux"]["devices"].append("/dev/null"), "linux.devices[3]"),
        (lambda d: d.update(linux=[]), "linux"),
        (lambda d: d["annotations"].update(x=1), 'annotations["x"]'),
    ],
)
def test_other_malformed_values_name_their_field(mutate: Any, field: str) -> None:
    doc = _config()
    mutate(doc)
    with pytest.raises(SpecError) as info:
        parse_oci_spec(doc)
    assert info.value.field == field
    assert info.value.path is None


def test_parse_does_not_modify_input() -> None:
    doc = _config()
    before = copy.deepcopy(doc)
    parse_oci_spec(doc)
    assert doc == before


def test_load_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_text(json.dumps(_config()))
    assert load_oci_spec(path) == parse_oci_spec(_config())


def test_load_missing_file_names_path(tmp_path: Path) -> None:
    path = tmp_path / "nope" / "config.json"
    with pytest.raises(InputError) as info:
        load_oci_spec(path)
    assert str(info.value).startswith(f"{path}: cannot open")


def test_load_invalid_json_names_path_and_line(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_text('{\n  "linux": {"devices": [}\n}\n')
    with pytest.raises(SpecError) as info:
        load_oci_spec(path)
    assert info.value.path == str(path)
    assert "invalid JSON at line 2" in str(info.value)


def test_load_adds_path_to_parse_error(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"linux": {"devices": [{"path": "/dev/x", "type": "q"}]}}))
    with pytest.raises(SpecError) as info:
        load_oci_spec(path)
    assert info.value.path == str(path)
    assert info.value.field == "linux.devices[0].type"
    assert str(info.value).startswith(f"{path}: linux.devices[0].type: ")


_DEVICE = st.fixed_dictionaries(
    {
        "path": st.from_regex(r"/dev/[a-z]{1,8}", fullmatch=True),
        "type": st.sampled_from(["c", "u", "b"]),
        "major": st.integers(0, 2**63 - 1),
        "minor": st.integers(0, 2**63 - 1),
    },
    optional={"fileMode": st.integers(0, 2**32 - 1), "uid": st.integers(0, 2**32 - 1)},
)


@given(st.lists(_DEVICE, max_size=6, unique_by=lambda d: d["path"]))
def test_every_valid_entry_is_read_back(entries: list[dict[str, Any]]) -> None:
    devices = parse_oci_spec({"linux": {"devices": entries}}).devices
    assert [(d.path, d.type.value, d.major, d.minor) for d in devices] == [
        (e["path"], e["type"], e["major"], e["minor"]) for e in entries
    ]
    assert [d.file_mode for d in devices] == [e.get("fileMode") for e in entries]
    assert [d.uid for d in devices] == [e.get("uid") for e in entries]
