"""Decode a CDI spec document the way the reference Go library does, before any rule (pure).

The reference (``tags.cncf.io/container-device-interface`` v1.1.0, ``pkg/cdi/spec.go``
``ParseSpec``) reads every spec file alike, whatever its extension: as YAML 1.1, converted to
JSON, then decoded strictly into the ``specs-go`` structs (``sigs.k8s.io/yaml``
``UnmarshalStrict``). What that means, and what this module reproduces:

* a duplicate key anywhere is an error (JSON files included), and so is a field the struct
  does not have; field names match whatever their case (Go's ``encoding/json``);
* a scalar going into a string field becomes a string (``name: 7`` is device ``"7"``, YAML
  1.1's ``yes`` is ``"true"``); nothing becomes a number: a string where an integer belongs is
  an error, as is a number out of its Go type's range;
* ``null`` is the field left out (Go's zero value or nil), anywhere;
* an empty document, or a ``null`` one, is "no spec data".

The result is plain data with the struct fields' canonical names, every value of its Go
type; :mod:`podplug.inputs.cdi` applies the reference's rules to it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from podplug.errors import CdiError

# A field's Go type, as the decoder needs it.
STR, INT64, UINT32, INT, BOOL, STRS, UINT32S, STRMAP = (
    "string", "int64", "uint32", "int", "bool", "[]string", "[]uint32", "map[string]string")
_RANGES = {INT64: (-(2**63), 2**63 - 1), UINT32: (0, 2**32 - 1), INT: (-(2**63), 2**63 - 1)}

#: struct name -> field -> type (a struct name, "[]Struct", or a scalar type above):
#: specs-go/config.go of v1.1.0
STRUCTS: dict[str, dict[str, str]] = {
    "Spec": {"cdiVersion": STR, "kind": STR, "annotations": STRMAP, "devices": "[]Device",
             "containerEdits": "ContainerEdits"},
    "Device": {"name": STR, "annotations": STRMAP, "containerEdits": "ContainerEdits"},
    "ContainerEdits": {"env": STRS, "deviceNodes": "[]DeviceNode",
                       "netDevices": "[]LinuxNetDevice", "hooks": "[]Hook",
                       "mounts": "[]Mount", "intelRdt": "IntelRdt",
                       "additionalGids": UINT32S},
    "DeviceNode": {"path": STR, "hostPath": STR, "type": STR, "major": INT64,
                   "minor": INT64, "fileMode": UINT32, "permissions": STR, "uid": UINT32,
                   "gid": UINT32},
    "Mount": {"hostPath": STR, "containerPath": STR, "options": STRS, "type": STR},
    "Hook": {"hookName": STR, "path": STR, "args": STRS, "env": STRS, "timeout": INT},
    "IntelRdt": {"closID": STR, "l3CacheSchema": STR, "memBwSchema": STR, "schemata": STRS,
                 "enableMonitoring": BOOL},
    "LinuxNetDevice": {"hostInterfaceName": STR, "name": STR},
}


def decode_spec(doc: object) -> dict[str, Any]:
    """Decode one YAML-loaded document into the ``Spec`` struct's shape.

    :raises CdiError: naming the JSON path of the first value that does not fit.
    """
    if doc is None or (isinstance(doc, Mapping) and not doc):
        raise CdiError("$", "no spec data (an empty or null document)")
    value = _decode(doc, "Spec", "$")
    assert isinstance(value, dict)
    return value


def _where(path: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return key if path == "$" else f"{path}.{key}"


def _kind_of(value: object) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, Mapping):
        return "an object"
    return type(value).__name__


def _decode(value: object, kind: str, path: str) -> object:
    if value is None:
        return None
    if kind.startswith("[]") and kind[2:] in STRUCTS:
        if not isinstance(value, list):
            raise CdiError(path, f"must be a list, not {_kind_of(value)}")
        return [_decode(item, kind[2:], _where(path, i)) for i, item in enumerate(value)]
    if kind in STRUCTS:
        return _struct(value, kind, path)
    return _scalar(value, kind, path)


def _struct(value: object, kind: str, path: str) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        raise CdiError(path, f"must be an object ({kind}), not {_kind_of(value)}")
    fields = STRUCTS[kind]
    by_lower = {name.lower(): name for name in fields}
    out: dict[str, Any] = {}
    for raw_key, item in value.items():
        key = str(raw_key)
        name = key if key in fields else by_lower.get(key.lower())
        if name is None:
            raise CdiError(_where(path, key),
                           f"unknown field; {kind} has: {', '.join(fields)}")
        if name in out:
            raise CdiError(_where(path, key), f"{name} given twice (names match any case)")
        decoded = _decode(item, fields[name], _where(path, name))
        if decoded is not None:
            out[name] = decoded
    return out


def _string(value: object, path: str) -> str:
    """A scalar into a Go string, as the YAML-to-JSON conversion turns it."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value) if isinstance(value, float) else str(value)
    raise CdiError(path, f"must be a string, not {_kind_of(value)}")


def _scalar(value: object, kind: str, path: str) -> object:
    if kind == STR:
        return _string(value, path)
    if kind == BOOL:
        if not isinstance(value, bool):
            raise CdiError(path, f"must be true or false, not {_kind_of(value)}")
        return value
    if kind in _RANGES:
        return _integer(value, kind, path)
    if kind == STRS:
        if not isinstance(value, list):
            raise CdiError(path, f"must be a list of strings, not {_kind_of(value)}")
        return [_string(item, _where(path, i)) for i, item in enumerate(value)
                if item is not None]
    if kind == UINT32S:
        if not isinstance(value, list):
            raise CdiError(path, f"must be a list of integers, not {_kind_of(value)}")
        return [_integer(item, UINT32, _where(path, i)) for i, item in enumerate(value)
                if item is not None]
    assert kind == STRMAP, kind
    if not isinstance(value, Mapping):
        raise CdiError(path, f"must be an object of strings, not {_kind_of(value)}")
    return {str(k): _string(v, _where(path, str(k))) for k, v in value.items() if v is not None}


def _integer(value: object, kind: str, path: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise CdiError(path, f"must be an integer ({kind}), not {_kind_of(value)}")
    if isinstance(value, float) and not value.is_integer():
        raise CdiError(path, f"must be an integer ({kind}), not {value!r}")
    number = int(value)
    low, high = _RANGES[kind]
    if not low <= number <= high:
        raise CdiError(path, f"{number} is out of range for {kind} ({low}..{high})")
    return number
