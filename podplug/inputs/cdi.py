"""Container Device Interface (CDI) specs, spec version 1.1.0, and CDI device requests.

``cdi_schema/schema.json`` and ``cdi_schema/defs.json`` are verbatim copies of
cncf-tags/container-device-interface ``schema/`` (spec 1.1.0, Apache-2.0).

Pure: :func:`parse_cdi_spec` (one decoded document in, a :class:`CdiSpec` out),
:func:`cdi_references`, :func:`apply_cdi` and :meth:`CdiRegistry.from_layers`. Shell:
:func:`load_cdi_file` and :func:`load_cdi_dirs`, which read files and name them in errors.

What is checked (``SPEC.md`` of the CDI repository):

1. The upstream JSON schema (draft-07). It requires ``cdiVersion``, ``kind``, ``devices`` and,
   per device, ``name`` and ``containerEdits``, and checks value types. It does **not**
   reject unknown fields (no ``additionalProperties: false``), does not know ``fileMode``,
   and does not type-check ``env`` items (the schema says ``"ref"`` instead of ``"$ref"``).
2. What the schema cannot say, from SPEC.md: an empty document fails; unknown fields fail
   loading (as the reference Go loader's strict decoding does); ``cdiVersion`` must be a
   released version at least as new as the fields in use need (hostPath 0.5.0, annotations
   0.6.0, intelRdt/additionalGids 0.7.0, netDevices 1.1.0, ...); ``kind`` is
   ``vendor.com/class`` (vendor a DNS subdomain, class alphanumeric with ``-_.`` inside, at
   most 63 characters); ``devices`` is not empty, device names are unique and alphanumeric with
   ``-_.:`` inside (a leading digit is allowed; ``:`` as the reference Go parser allows it,
   e.g. ``nvidia.com/gpu=0:1`` for MIG); ``deviceNodes[].type`` is one of ``b c u p``,
   ``permissions`` a subset of ``rwm`` or ``none``, ``fileMode`` a uint32; ``env`` entries
   are ``NAME=value``.

Only ``containerEdits.deviceNodes`` and ``env`` are modelled. ``mounts``, ``hooks``,
``netDevices``, ``intelRdt``, ``additionalGids`` and annotations are validated but ignored:
podplug places devices, it does not run the container.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import lru_cache
from importlib import resources
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from podplug.errors import CdiError

if TYPE_CHECKING:  # jsonschema and yaml cost ~120 ms to import: only when a spec is read
    from jsonschema import Draft7Validator
from podplug.model.enums import NodeType
from podplug.model.request import ContainerDevice, ContainerRequest

DEFAULT_CDI_DIRS: tuple[str, ...] = ("/etc/cdi", "/var/run/cdi")
CDI_ANNOTATION_PREFIX = "cdi.k8s.io/"
SPEC_FILE_SUFFIXES = (".json", ".yaml", ".yml")

# Released spec versions, oldest first (specs-go/version.go). 0.1.0 and 0.2.0 are accepted
# as the reference implementation accepts them.
KNOWN_CDI_VERSIONS = (
    "0.1.0", "0.2.0", "0.3.0", "0.4.0", "0.5.0", "0.6.0", "0.7.0", "0.8.0", "1.0.0", "1.1.0",
)  # fmt: skip

_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
_VENDOR_RE = re.compile(rf"{_LABEL}(?:\.{_LABEL})*")
_CLASS_RE = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9_.-]*[A-Za-z0-9])?")
_NAME_RE = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9_.:-]*[A-Za-z0-9])?")
_PERMISSIONS_NONE = "none"
_UINT32_MAX = 2**32 - 1

# Field names per object (specs-go/config.go): anything else is an unknown field.
_SPEC_FIELDS = frozenset({"cdiVersion", "kind", "annotations", "devices", "containerEdits"})
_DEVICE_FIELDS = frozenset({"name", "annotations", "containerEdits"})
_EDITS_FIELDS = frozenset(
    {"env", "deviceNodes", "netDevices", "hooks", "mounts", "intelRdt", "additionalGids"}
)
_NODE_FIELDS = frozenset(
    {"path", "hostPath", "type", "major", "minor", "fileMode", "permissions", "uid", "gid"}
)
_LIST_ITEM_FIELDS = {
    "deviceNodes": _NODE_FIELDS,
    "mounts": frozenset({"hostPath", "containerPath", "options", "type"}),
    "hooks": frozenset({"hookName", "path", "args", "env", "timeout"}),
    "netDevices": frozenset({"hostInterfaceName", "name"}),
}
_RDT_FIELDS = frozenset({"closID", "l3CacheSchema", "memBwSchema", "schemata", "enableMonitoring"})


# --------------------------------------------------------------------------------- values


@dataclass(frozen=True)
class CdiDeviceNode:
    """One ``containerEdits.deviceNodes[]`` entry; absent optional fields are ``None``."""

    path: str
    host_path: str | None = None
    type: NodeType | None = None
    major: int | None = None
    minor: int | None = None
    file_mode: int | None = None
    uid: int | None = None
    gid: int | None = None
    permissions: str | None = None


@dataclass(frozen=True)
class ContainerEdits:
    """The modelled part of a ``containerEdits`` object (``deviceNodes`` and ``env``)."""

    device_nodes: tuple[CdiDeviceNode, ...] = ()
    env: tuple[str, ...] = ()


@dataclass(frozen=True)
class CdiDevice:
    """One ``devices[]`` entry: its ``name`` and its own ``containerEdits``."""

    name: str
    edits: ContainerEdits


@dataclass(frozen=True)
class CdiSpec:
    """One CDI spec document. ``spec_edits`` is the top-level ``containerEdits``, applied
    whenever any device of this spec is requested; ``source`` names the file."""

    kind: str
    cdi_version: str
    devices: Mapping[str, CdiDevice]
    spec_edits: ContainerEdits
    source: str = "<memory>"

    @property
    def vendor(self) -> str:
        return self.kind.split("/", 1)[0]

    @property
    def device_class(self) -> str:
        return self.kind.split("/", 1)[1]

    def qualified_name(self, device: str) -> str:
        """``vendor.com/class=name``."""
        return f"{self.kind}={device}"


@dataclass(frozen=True)
class CdiRegistry:
    """Every loaded CDI device by fully-qualified name, with the spec defining it."""

    entries: Mapping[str, tuple[CdiSpec, CdiDevice]] = field(default_factory=dict)
    searched: tuple[str, ...] = ()  # the directories it was loaded from, for messages

    @classmethod
    def from_layers(
        cls, layers: Iterable[Iterable[CdiSpec]], *, searched: Sequence[str] = ()
    ) -> CdiRegistry:
        """Build from specs grouped by directory, lowest priority first.

        A later layer replaces a device of the same fully-qualified name; two specs of one
        layer defining the same device is an error naming both.
        """
        entries: dict[str, tuple[CdiSpec, CdiDevice]] = {}
        for layer in layers:
            seen: dict[str, CdiSpec] = {}
            for spec in layer:
                for device in spec.devices.values():
                    name = spec.qualified_name(device.name)
                    if name in seen:
                        raise CdiError(
                            name,
                            f"defined by two CDI specs of one directory: "
                            f"{seen[name].source} and {spec.source}",
                        )
                    seen[name] = spec
                    entries[name] = (spec, device)
        return cls(MappingProxyType(entries), tuple(str(s) for s in searched))

    def resolve(self, name: str) -> tuple[CdiSpec, CdiDevice]:
        """The spec and device for ``vendor.com/class=name``."""
        problem = _reference_problem(name)
        if problem:
            raise CdiError(name, f"not a CDI device name (vendor.com/class=name): {problem}")
        found = self.entries.get(name)
        if found is not None:
            return found
        kind = name.split("=", 1)[0]
        known = [n.split("=", 1)[1] for n in self.entries if n.split("=", 1)[0] == kind]
        if known:
            shown = ", ".join(known[:5]) + (f" and {len(known) - 5} more" if len(known) > 5 else "")
            hint = f"known {kind} devices: {shown}"
        else:
            hint = f"no CDI spec of kind {kind} is loaded"
        where = f" (searched {', '.join(self.searched)})" if self.searched else ""
        raise CdiError(name, f"unknown CDI device; {hint}{where}")


# --------------------------------------------------------------------------------- parsing


def parse_cdi_spec(doc: object, *, source: str = "<memory>") -> CdiSpec:
    """Validate one decoded CDI document and return its value. Raises :class:`CdiError`
    whose ``subject`` is the JSON path of the (first) offending value."""
    if doc is None or (isinstance(doc, Mapping) and not doc):
        raise CdiError("$", "empty CDI spec: cdiVersion, kind and devices are required")
    if not isinstance(doc, dict):
        raise CdiError("$", f"a CDI spec must be an object, not {type(doc).__name__}")
    _check_keys_are_strings(doc, [])
    from jsonschema.exceptions import best_match

    error = best_match(_validator().iter_errors(doc))
    if error is not None:
        raise CdiError(_json_path(error.absolute_path), _one_line(error.message))
    _check_known_fields(doc)
    kind: str = doc["kind"]
    problem = _kind_problem(kind)
    if problem:
        raise CdiError("kind", f"{kind!r} is not vendor.com/class: {problem}")
    version = _check_version(doc)
    raw_devices: list[dict[str, Any]] = doc["devices"]
    if not raw_devices:
        raise CdiError("devices", "a CDI spec must define at least one device")
    devices: dict[str, CdiDevice] = {}
    for i, raw in enumerate(raw_devices):
        name: str = raw["name"]
        if not _NAME_RE.fullmatch(name):
            raise CdiError(
                f"devices[{i}].name",
                f"{name!r} is not a device name: letters and digits, with - _ . : inside",
            )
        if name in devices:
            raise CdiError(f"devices[{i}].name", f"device {name!r} is defined twice")
        devices[name] = CdiDevice(name, _parse_edits(raw["containerEdits"], f"devices[{i}]"))
    return CdiSpec(
        kind=kind,
        cdi_version=version,
        devices=MappingProxyType(devices),
        spec_edits=_parse_edits(doc.get("containerEdits"), ""),
        source=source,
    )


@lru_cache(maxsize=1)
def _validator() -> Draft7Validator:
    """The upstream schema, its ``defs.json#/definitions/...`` refs resolved offline."""
    from jsonschema import Draft7Validator
    from referencing import Registry
    from referencing.jsonschema import DRAFT7

    folder = resources.files("podplug.inputs").joinpath("cdi_schema")
    schema = json.loads(folder.joinpath("schema.json").read_text(encoding="utf-8"))
    defs = json.loads(folder.joinpath("defs.json").read_text(encoding="utf-8"))
    registry: Registry[Any] = Registry().with_resource("defs.json", DRAFT7.create_resource(defs))
    return Draft7Validator(schema, registry=registry)


def _check_keys_are_strings(value: object, where: list[str | int]) -> None:
    """YAML allows non-string keys (``1: x``); a CDI spec is JSON, so refuse them."""
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise CdiError(_json_path(where), f"key {key!r} is not a string")
            _check_keys_are_strings(item, [*where, key])
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _check_keys_are_strings(item, [*where, i])


def _check_known_fields(doc: Mapping[str, Any]) -> None:
    _only(doc, "", _SPEC_FIELDS)
    for i, device in enumerate(doc["devices"]):
        _only(device, f"devices[{i}]", _DEVICE_FIELDS)
    for where, edits in _all_edits(doc):
        _only(edits, where, _EDITS_FIELDS)
        for key, fields in _LIST_ITEM_FIELDS.items():
            for j, item in enumerate(edits.get(key) or ()):
                _only(item, f"{where}.{key}[{j}]", fields)
        if edits.get("intelRdt") is not None:
            _only(edits["intelRdt"], f"{where}.intelRdt", _RDT_FIELDS)


def _only(obj: Mapping[str, Any], where: str, allowed: frozenset[str]) -> None:
    for key in obj:
        if key not in allowed:
            path = f"{where}.{key}" if where else key
            raise CdiError(path, f"unknown field; allowed: {', '.join(sorted(allowed))}")


def _all_edits(doc: Mapping[str, Any]) -> Iterator[tuple[str, Mapping[str, Any]]]:
    """Every ``containerEdits`` object with its JSON path, spec level first."""
    if doc.get("containerEdits") is not None:
        yield "containerEdits", doc["containerEdits"]
    for i, device in enumerate(doc["devices"]):
        yield f"devices[{i}].containerEdits", device["containerEdits"]


def _kind_problem(kind: str) -> str:
    vendor, slash, cls = kind.partition("/")
    if not slash or not vendor or not cls:
        return "expected a vendor and a class separated by '/'"
    if len(vendor) > 253 or not _VENDOR_RE.fullmatch(vendor):
        return f"vendor {vendor!r} is not a DNS subdomain (e.g. vendor.com)"
    if len(cls) > 63 or not _CLASS_RE.fullmatch(cls):
        return f"class {cls!r} must be letters and digits with - _ . inside, at most 63"
    return ""


def _check_version(doc: Mapping[str, Any]) -> str:
    raw: str = doc["cdiVersion"]
    version = raw.removeprefix("v")
    if version not in KNOWN_CDI_VERSIONS:
        known = ", ".join(KNOWN_CDI_VERSIONS[2:])
        raise CdiError("cdiVersion", f"{raw!r} is not a released CDI version ({known})")
    needed = max(_feature_versions(doc), key=lambda f: KNOWN_CDI_VERSIONS.index(f[0]))
    if KNOWN_CDI_VERSIONS.index(needed[0]) > KNOWN_CDI_VERSIONS.index(version):
        raise CdiError("cdiVersion", f"{raw} is too old: {needed[1]} needs at least {needed[0]}")
    return version


def _feature_versions(doc: Mapping[str, Any]) -> Iterator[tuple[str, str]]:
    """(minimum version, the field needing it) for every versioned feature in use
    (the table "Released versions" of SPEC.md)."""
    yield "0.3.0", "the spec"
    if "." in doc["kind"].partition("/")[2]:
        yield "0.6.0", "a dot in the class of kind"
    if doc.get("annotations"):
        yield "0.6.0", "annotations"
    for i, device in enumerate(doc["devices"]):
        if device["name"][:1].isdigit():
            yield "0.5.0", f"devices[{i}].name starting with a digit"
        if device.get("annotations"):
            yield "0.6.0", f"devices[{i}].annotations"
    for where, edits in _all_edits(doc):
        for j, node in enumerate(edits.get("deviceNodes") or ()):
            if node.get("hostPath"):
                yield "0.5.0", f"{where}.deviceNodes[{j}].hostPath"
        for j, mount in enumerate(edits.get("mounts") or ()):
            if mount.get("type"):
                yield "0.4.0", f"{where}.mounts[{j}].type"
        if edits.get("additionalGids"):
            yield "0.7.0", f"{where}.additionalGids"
        rdt = edits.get("intelRdt")
        if rdt is not None:
            yield "0.7.0", f"{where}.intelRdt"
            if rdt.get("schemata") is not None or rdt.get("enableMonitoring"):
                yield "1.1.0", f"{where}.intelRdt.schemata/enableMonitoring"
        if edits.get("netDevices"):
            yield "1.1.0", f"{where}.netDevices"


def _parse_edits(raw: Mapping[str, Any] | None, where: str) -> ContainerEdits:
    if raw is None:
        return ContainerEdits()
    prefix = f"{where}.containerEdits" if where else "containerEdits"
    env = tuple(raw.get("env") or ())
    for j, item in enumerate(env):
        if not isinstance(item, str) or item.find("=") <= 0:
            raise CdiError(f"{prefix}.env[{j}]", f"{item!r} is not NAME=value")
    nodes = tuple(
        _parse_node(node, f"{prefix}.deviceNodes[{j}]")
        for j, node in enumerate(raw.get("deviceNodes") or ())
    )
    return ContainerEdits(device_nodes=nodes, env=env)


def _parse_node(raw: Mapping[str, Any], where: str) -> CdiDeviceNode:
    path: str = raw["path"]
    if not path:
        raise CdiError(f"{where}.path", "must not be empty")
    node_type: NodeType | None = None
    if raw.get("type"):
        allowed = [t.value for t in NodeType]
        if raw["type"] not in allowed:
            raise CdiError(f"{where}.type", f"{raw['type']!r}; allowed: {', '.join(allowed)}")
        node_type = NodeType(raw["type"])
    permissions: str | None = raw.get("permissions") or None
    if permissions not in (None, _PERMISSIONS_NONE) and set(permissions or "") - set("rwm"):
        raise CdiError(f"{where}.permissions", f"{permissions!r}: use letters of rwm, or none")
    file_mode = raw.get("fileMode")
    if file_mode is not None and (
        isinstance(file_mode, bool)
        or not isinstance(file_mode, int)
        or not 0 <= file_mode <= _UINT32_MAX
    ):
        problem = f"must be an integer 0..{_UINT32_MAX}, not {file_mode!r}"
        raise CdiError(f"{where}.fileMode", problem)
    return CdiDeviceNode(
        path=path,
        host_path=raw.get("hostPath") or None,
        type=node_type,
        major=_device_number(raw, where, "major"),
        minor=_device_number(raw, where, "minor"),
        file_mode=file_mode,
        uid=_opt_int(raw.get("uid")),
        gid=_opt_int(raw.get("gid")),
        permissions=permissions,
    )


def _device_number(raw: Mapping[str, Any], where: str, key: str) -> int | None:
    value = _opt_int(raw.get(key))
    if value is not None and value < 0:
        raise CdiError(f"{where}.{key}", f"must not be negative, not {value}")
    return value


def _opt_int(value: object) -> int | None:
    """The schema has checked the type; draft-07 counts 1.0 as an integer."""
    if value is None:
        return None
    assert isinstance(value, int | float)
    return int(value)


def _json_path(parts: Iterable[str | int]) -> str:
    out = ""
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        elif re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", part):
            out += f".{part}" if out else part
        else:
            out += f"[{json.dumps(part)}]"
    return out or "$"


def _one_line(message: str, limit: int = 200) -> str:
    text = " ".join(message.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


# --------------------------------------------------------------------------------- files


def load_cdi_file(path: str | os.PathLike[str]) -> CdiSpec:
    """Read one spec file (``.json`` as JSON, anything else as YAML); errors name it."""
    where = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        reason = err.strerror if isinstance(err, OSError) and err.strerror else str(err)
        raise CdiError("$", f"cannot read the file: {reason}", path=where) from err
    if not text.strip():
        raise CdiError("$", "empty file", path=where)
    import yaml

    try:
        if Path(path).suffix == ".json":
            doc: object = json.loads(text)
        else:
            doc = yaml.safe_load(text)
    except json.JSONDecodeError as err:
        problem = f"invalid JSON at line {err.lineno} column {err.colno}: {err.msg}"
        raise CdiError("$", problem, path=where) from err
    except yaml.YAMLError as err:
        raise CdiError("$", f"invalid YAML: {_one_line(str(err))}", path=where) from err
    try:
        return parse_cdi_spec(doc, source=where)
    except CdiError as err:
        raise CdiError(err.subject, err.problem, path=where) from err


def load_cdi_dirs(dirs: Sequence[str | Path] = DEFAULT_CDI_DIRS) -> CdiRegistry:
    """Load every ``*.json``/``*.yaml``/``*.yml`` file of each directory, in name order.

    Later directories take precedence (``/var/run/cdi`` over ``/etc/cdi``). A missing
    directory is skipped; a bad file is an error naming it.
    """
    layers: list[list[CdiSpec]] = []
    for folder in map(Path, dirs):
        if not folder.exists():
            continue
        if not folder.is_dir():
            raise CdiError(str(folder), "is not a directory")
        try:
            files = sorted(
                f for f in folder.iterdir() if f.suffix in SPEC_FILE_SUFFIXES and f.is_file()
            )
        except OSError as err:
            raise CdiError(str(folder), f"cannot list the directory: {err.strerror}") from err
        layers.append([load_cdi_file(f) for f in files])
    return CdiRegistry.from_layers(layers, searched=[str(d) for d in dirs])


# --------------------------------------------------------------------------------- requests


def cdi_references(annotations: Mapping[str, str]) -> tuple[str, ...]:
    """The devices requested by ``cdi.k8s.io/<key>`` annotations.

    Values are comma-separated fully-qualified names. Keys are taken in sorted order (OCI
    annotations are an unordered map), then values in order; duplicates are dropped.
    """
    found: dict[str, None] = {}
    for key in sorted(annotations):
        if not key.startswith(CDI_ANNOTATION_PREFIX):
            continue
        for item in annotations[key].split(","):
            problem = _reference_problem(item)
            if problem:
                raise CdiError(
                    f"annotations[{json.dumps(key)}]",
                    f"{item!r} is not a CDI device name (vendor.com/class=name): {problem}",
                )
            found.setdefault(item, None)
    return tuple(found)


def _reference_problem(name: str) -> str:
    kind, eq, device = name.partition("=")
    if not eq or not device:
        return "expected kind=name"
    problem = _kind_problem(kind)
    if problem:
        return problem
    if not _NAME_RE.fullmatch(device):
        return f"device name {device!r} must be letters and digits with - _ . : inside"
    return ""


def apply_cdi(request: ContainerRequest, registry: CdiRegistry) -> ContainerRequest:
    """The request with the device nodes of every CDI device its annotations ask for.

    Per requested device, in :func:`cdi_references` order: the spec-level
    ``containerEdits.deviceNodes`` (once per spec), then the device's own. A node whose
    container ``path`` is already in the request is skipped, so an OCI ``linux.devices``
    entry wins: by the time Kata sees ``config.json`` the container runtime has usually
    injected the CDI edits already, with numbers taken from the host node. (The reference
    injector replaces the entry instead; here the first one stays.)

    Missing fields get defaults, because podplug cannot ``stat`` the host node as CDI
    tooling does: no ``type`` means char (every ``/dev/vfio/*`` node is one); no
    ``major``/``minor`` means 0, and then ``host_path`` is set to ``hostPath`` or, failing
    that, ``path`` (CDI's default), so the planner finds the node by path, not by a 0:0
    number. With both numbers given and no ``hostPath``, ``host_path`` stays ``None``.
    ``permissions`` has no place in :class:`ContainerDevice` and is dropped.
    """
    added: list[ContainerDevice] = []
    taken = {device.path for device in request.devices}
    specs_applied: set[tuple[str, str]] = set()
    for ref in cdi_references(request.annotations):
        spec, device = registry.resolve(ref)
        nodes = device.edits.device_nodes
        if (spec.source, spec.kind) not in specs_applied:
            specs_applied.add((spec.source, spec.kind))
            nodes = spec.spec_edits.device_nodes + nodes
        for node in nodes:
            if node.path not in taken:
                taken.add(node.path)
                added.append(_container_device(node, ref))
    return replace(request, devices=request.devices + tuple(added))


def _container_device(node: CdiDeviceNode, source: str) -> ContainerDevice:
    unnumbered = node.major is None
    return ContainerDevice(
        path=node.path,
        type=node.type or NodeType.CHAR,
        major=node.major or 0,
        minor=node.minor or 0,
        file_mode=node.file_mode,
        uid=node.uid,
        gid=node.gid,
        host_path=node.host_path or (node.path if unnumbered else None),
        source=source,
    )
