"""The OCI runtime spec (``config.json``): the container's device nodes and annotations.

Pure: :func:`parse_oci_text` (text) and :func:`parse_oci_spec` (the decoded mapping) return
a :class:`~podplug.model.request.ContainerRequest`; files are read by
:mod:`podplug.inputs.load`.

Fields read (opencontainers/runtime-spec ``config-linux.md``, "Devices"):

* ``linux.devices[]``: ``path`` (absolute and normal, the one canonical form of
  :func:`podplug.model.text.path_problem`, required, each path once), ``type``
  (``c`` | ``u`` | ``b`` | ``p``, required), ``major`` / ``minor`` (required except for
  ``p``, where absence means 0), and the optional ``fileMode``, ``uid`` and ``gid``.
  No ``linux`` or no ``devices`` means no devices.
* ``annotations``: string to string.
* The container type, from the CRI annotations ``io.kubernetes.cri.container-type``
  (containerd) and ``io.kubernetes.cri-o.ContainerType`` (CRI-O), each ``sandbox`` or
  ``container``; absent means an ordinary container. If both are present they must agree.

Every malformed value raises :class:`~podplug.errors.SpecError` whose ``field`` is a JSON
path such as ``linux.devices[2].type`` and whose problem says what is allowed.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence

from podplug.errors import SpecError
from podplug.model.enums import ContainerType, NodeType
from podplug.model.request import ContainerDevice, ContainerRequest
from podplug.model.text import path_problem, shown

CONTAINERD_TYPE_ANNOTATION = "io.kubernetes.cri.container-type"
CRIO_TYPE_ANNOTATION = "io.kubernetes.cri-o.ContainerType"
CONTAINER_TYPE_ANNOTATIONS = (CONTAINERD_TYPE_ANNOTATION, CRIO_TYPE_ANNOTATION)

_INT64_MAX = 2**63 - 1
_UINT32_MAX = 2**32 - 1
_NODE_TYPES = tuple(t.value for t in NodeType)
_CONTAINER_TYPES = tuple(t.value for t in ContainerType)


def parse_oci_spec(doc: Mapping[str, object]) -> ContainerRequest:
    """Read the device-relevant part of an OCI runtime spec."""
    if not isinstance(doc, Mapping):
        raise SpecError("$", f"must be a JSON object, not {_json_type(doc)}")
    annotations = _parse_annotations(doc.get("annotations"))
    return ContainerRequest(
        devices=_parse_devices(doc.get("linux")),
        annotations=annotations,
        container_type=_container_type(annotations),
    )


def parse_oci_text(text: str) -> ContainerRequest:
    """Parse the text of a ``config.json``: any text gives a request or a podplug error."""
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as err:
        raise SpecError(
            "$", f"invalid JSON at line {err.lineno} column {err.colno}: {err.msg}") from err
    except (ValueError, RecursionError) as err:
        raise SpecError("$", f"not JSON podplug can read: {err}") from err
    if not isinstance(doc, dict):
        raise SpecError("$", f"must be a JSON object, not {_json_type(doc)}")
    return parse_oci_spec(doc)


def _parse_devices(linux: object) -> tuple[ContainerDevice, ...]:
    if linux is None:
        return ()
    if not isinstance(linux, Mapping):
        raise SpecError("linux", f"must be an object, not {_json_type(linux)}")
    devices = linux.get("devices")
    if devices is None:
        return ()
    if not isinstance(devices, list):
        raise SpecError("linux.devices", f"must be a list, not {_json_type(devices)}")
    parsed = tuple(_parse_device(f"linux.devices[{i}]", d) for i, d in enumerate(devices))
    first: dict[str, int] = {}
    for i, device in enumerate(parsed):
        if device.path in first:
            raise SpecError(f"linux.devices[{i}].path", f"{shown(device.path)} is also "
                            f"linux.devices[{first[device.path]}]: a container path is one node")
        first[device.path] = i
    return parsed


def _parse_device(where: str, entry: object) -> ContainerDevice:
    if not isinstance(entry, Mapping):
        raise SpecError(where, f"must be an object, not {_json_type(entry)}")
    path = entry.get("path")
    if not isinstance(path, str):
        problem = "is required" if path is None else f"must be a string, not {_json_type(path)}"
        raise SpecError(f"{where}.path", problem)
    if problem := path_problem(path):
        raise SpecError(f"{where}.path", f"{shown(path, 80)} {problem}")
    raw_type = entry.get("type")
    if raw_type not in _NODE_TYPES:
        given = "is required" if raw_type is None else f"is {shown(repr(raw_type), 40)}"
        raise SpecError(f"{where}.type", f"{given}; allowed: {', '.join(_NODE_TYPES)}")
    node_type = NodeType(raw_type)
    required = node_type is not NodeType.FIFO
    return ContainerDevice(
        path=path,
        type=node_type,
        major=_int_field(entry, where, "major", _INT64_MAX, required=required) or 0,
        minor=_int_field(entry, where, "minor", _INT64_MAX, required=required) or 0,
        file_mode=_int_field(entry, where, "fileMode", _UINT32_MAX),
        uid=_int_field(entry, where, "uid", _UINT32_MAX),
        gid=_int_field(entry, where, "gid", _UINT32_MAX),
    )


def _int_field(
    entry: Mapping[str, object], where: str, key: str, maximum: int, *, required: bool = False
) -> int | None:
    value = entry.get(key)
    if value is None:
        if required:
            raise SpecError(f"{where}.{key}", f"is required for {_node_kind(entry)} devices")
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= maximum:
        raise SpecError(f"{where}.{key}", f"must be an integer 0..{maximum}, not {value!r}")
    return value


def _node_kind(entry: Mapping[str, object]) -> str:
    return {"c": "char", "u": "unbuffered char", "b": "block"}.get(str(entry.get("type")), "")


def _parse_annotations(raw: object) -> dict[str, str]:
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise SpecError("annotations", f"must be an object, not {_json_type(raw)}")
    out: dict[str, str] = {}
    for key, value in raw.items():
        if not isinstance(value, str):
            raise SpecError(
                f"annotations[{json.dumps(key)}]", f"must be a string, not {_json_type(value)}"
            )
        out[str(key)] = value
    return out


def _container_type(annotations: Mapping[str, str]) -> ContainerType:
    found: list[tuple[str, ContainerType]] = []
    for key in CONTAINER_TYPE_ANNOTATIONS:
        value = annotations.get(key)
        if value is None:
            continue
        if value not in _CONTAINER_TYPES:
            raise SpecError(
                f"annotations[{json.dumps(key)}]",
                f"is {value!r}; allowed: {', '.join(_CONTAINER_TYPES)}",
            )
        found.append((key, ContainerType(value)))
    if len({kind for _, kind in found}) > 1:
        (k1, t1), (k2, t2) = found
        raise SpecError(
            f"annotations[{json.dumps(k1)}]",
            f"says {t1.value!r} but annotations[{json.dumps(k2)}] says {t2.value!r}",
        )
    return found[0][1] if found else ContainerType.CONTAINER


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, Sequence):
        return "a list"
    if isinstance(value, Mapping):
        return "an object"
    return type(value).__name__


