"""Container Device Interface (CDI) specs and device requests, as the reference loads them.

The reference is the Go library ``tags.cncf.io/container-device-interface`` at v1.1.0
(spec 1.1.0), which Kata's Go runtime uses; its rules, read from ``pkg/cdi``,
``pkg/parser`` and ``specs-go`` (the JSON schema of ``schema/`` is not part of loading there,
so it is not here either):

* decoding: :mod:`podplug.inputs.cdi_decode` (YAML 1.1 for every file, strict fields,
  scalars into strings, duplicate keys refused);
* then, in the reference's order, the first failure refusing the whole file:

  1. ``cdiVersion``: one of the released versions (``v`` prefix allowed) and at least what
     the fields in use need (``specs-go/version.go``): 0.3.0 for any spec, 0.4.0 a mount
     ``type``, 0.5.0 a device name starting with a digit or a ``hostPath``, 0.6.0
     annotations or a ``.`` in the class, 0.7.0 ``intelRdt`` or ``additionalGids``, 1.1.0
     ``netDevices`` or ``intelRdt.schemata``/``enableMonitoring`` (so 0.1.0 and 0.2.0, though
     known, never load);
  2. ``kind`` = vendor ``/`` class, split at the first ``/``; vendor and class each start
     with a letter, end with a letter or digit, and hold letters, digits, ``_ - .``
     (``pkg/parser`` ``validateVendorOrClassName``; no length limit, no DNS rule; v1.1.0
     crashes on a one-character vendor or class, so it is refused here);
  3. annotations: not checked on load (the reference's check never runs on them);
  4. the spec-level ``containerEdits`` (may be absent, null or empty);
  5. each device: its name (starts and ends with a letter or digit, ``_ - . :`` inside, one
     character is fine), its own edits, which must not be empty ("empty device edits"), and
     their rules: ``env`` is ``NAME=value``; a device node has a ``path``, a ``type`` of
     ``b c u p`` or none, ``permissions`` of the letters ``rwm``; a hook is one of six names
     with a ``path``; a mount has both paths; a net device both names, none twice;
     ``intelRdt.closID`` is not ``.``, ``..``, nor holds ``/`` (``/`` alone is) or a newline;
  6. no device name twice; at least one device.

Files: a directory yields its regular files named ``*.json`` or ``*.yaml`` (exactly: not
``.yml``, not symbolic links, not below it), in name order; later directories take precedence.
A file that fails is recorded against that file and the others still load; two files of one
directory defining the same device make it unavailable, with an error recorded for both,
even when a later directory defines it too (``pkg/cdi/cache.go``).

Requests: ``cdi.k8s.io/*`` annotations name devices ``vendor/class=name``;
:func:`apply_cdi` adds each requested device's nodes (its spec's own edits once, first),
completing each node from the host as the reference's ``fillMissingInfo`` does (see there).
Only ``deviceNodes`` are modelled: env, mounts, hooks and the rest are validated and left
alone, since podplug places devices and does not run the container.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any

from podplug.errors import CdiError
from podplug.inputs.cdi_decode import decode_spec
from podplug.inputs.cdi_defaults import CDI_ANNOTATION_PREFIX
from podplug.model.enums import NodeType
from podplug.model.request import ContainerDevice, ContainerRequest
from podplug.model.text import path_problem, shown

SPEC_FILE_SUFFIXES = (".json", ".yaml")  # pkg/cdi/spec-dirs.go, case-sensitive

#: released spec versions, oldest first (specs-go/version.go)
KNOWN_CDI_VERSIONS = (
    "0.1.0", "0.2.0", "0.3.0", "0.4.0", "0.5.0", "0.6.0", "0.7.0", "0.8.0", "1.0.0", "1.1.0",
)  # fmt: skip
HOOK_NAMES = ("prestart", "createRuntime", "createContainer", "startContainer", "poststart",
              "poststop")
_VENDOR_OR_CLASS = re.compile(r"[A-Za-z][A-Za-z0-9_.-]*[A-Za-z0-9]")
_DEVICE_NAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9_.:-]*[A-Za-z0-9])?")
_ASCII_PRINTABLE = re.compile(r"[\x20-\x7e]*")


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

    @property
    def minimally_specified(self) -> bool:
        """The reference's rule: a type, and a major number (or a FIFO)."""
        return self.type is not None and (bool(self.major) or self.type is NodeType.FIFO)


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
    """Every loadable CDI device by fully-qualified name, with the spec defining it, and
    the errors recorded against files (``pkg/cdi/cache.go``)."""

    entries: Mapping[str, tuple[CdiSpec, CdiDevice]] = field(default_factory=dict)
    searched: tuple[str, ...] = ()  # the directories it was loaded from, for messages
    errors: tuple[tuple[str, str], ...] = ()  # (file, problem)

    @classmethod
    def from_layers(
        cls, layers: Iterable[Iterable[CdiSpec]], *, searched: Sequence[str] = (),
        errors: Sequence[tuple[str, str]] = (),
    ) -> CdiRegistry:
        """Build from specs grouped by directory, lowest priority first.

        A later layer replaces a device of the same fully-qualified name. Two specs of one
        layer defining the same device: an error for each, and the device is removed once
        every layer is in (so a later layer does not bring it back, as in the reference).
        """
        entries: dict[str, tuple[CdiSpec, CdiDevice]] = {}
        problems = list(errors)
        clashing: set[str] = set()
        for layer in layers:
            seen: dict[str, CdiSpec] = {}
            for spec in layer:
                for device in spec.devices.values():
                    name = spec.qualified_name(device.name)
                    if name in seen:
                        clashing.add(name)
                        for source in (seen[name].source, spec.source):
                            problems.append((source, f"{name} is defined by both "
                                             f"{seen[name].source} and {spec.source} in one "
                                             "directory"))
                    seen[name] = spec
                    entries[name] = (spec, device)
        for name in clashing:
            entries.pop(name, None)
        return cls(MappingProxyType(entries), tuple(str(s) for s in searched), tuple(problems))

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
        related = [f"{source}: {why}" for source, why in self.errors]
        more = f" and {len(related) - 3} more" if len(related) > 3 else ""
        broken = f"; spec files refused: {' | '.join(related[:3])}{more}" if related else ""
        raise CdiError(name, f"unresolvable CDI device; {hint}{where}{broken}")


# --------------------------------------------------------------------------------- rules


def parse_cdi_spec(doc: object, *, source: str = "<memory>") -> CdiSpec:
    """Decode and validate one CDI document. Raises :class:`CdiError` whose ``subject`` is
    the JSON path of the (first) offending value, in the reference's order of checks."""
    spec = decode_spec(doc)
    version = _check_version(spec)
    kind = spec.get("kind", "")
    problem = _kind_problem(kind)
    if problem:
        raise CdiError("kind", f"{kind!r} is not vendor/class: {problem}")
    spec_edits = _edits(spec.get("containerEdits", {}), "containerEdits")
    devices: dict[str, CdiDevice] = {}
    for i, raw in enumerate(spec.get("devices", [])):
        name = raw.get("name", "")
        where = f"devices[{i}]"
        if not _DEVICE_NAME.fullmatch(name):
            raise CdiError(f"{where}.name", f"{name!r} is not a device name: a letter or "
                           "digit first and last, letters, digits, _ - . : inside")
        edits = raw.get("containerEdits", {})
        if not _edits_present(edits):
            raise CdiError(f"{where}.containerEdits", f"device {name!r} has empty edits: a "
                           "device must change something (nodes, env, mounts, hooks, ...)")
        parsed = _edits(edits, f"{where}.containerEdits")
        if name in devices:
            raise CdiError(f"{where}.name", f"device {name!r} is defined twice")
        devices[name] = CdiDevice(name, parsed)
    if not devices:
        raise CdiError("devices", "a CDI spec must define at least one device")
    return CdiSpec(kind, version, MappingProxyType(devices), spec_edits, source)


def _kind_problem(kind: str) -> str:
    vendor, slash, cls = kind.partition("/")
    if not slash or not vendor or not cls:
        return "expected a vendor and a class separated by '/'"
    for part, what in ((vendor, "vendor"), (cls, "class")):
        if not _VENDOR_OR_CLASS.fullmatch(part):
            return (f"{what} {part!r} must start with a letter, end with a letter or digit, "
                    "and hold only letters, digits, _ - . (two characters at least)")
    return ""


def _version_index(raw: str) -> int:
    version = raw.removeprefix("v")
    if version not in KNOWN_CDI_VERSIONS:
        known = ", ".join(KNOWN_CDI_VERSIONS)
        raise CdiError("cdiVersion", f"{raw!r} is not a released CDI version ({known})")
    return KNOWN_CDI_VERSIONS.index(version)


def _check_version(spec: Mapping[str, Any]) -> str:
    raw = spec.get("cdiVersion", "")
    index = _version_index(raw)
    needed, reason = max(_feature_versions(spec), key=lambda f: KNOWN_CDI_VERSIONS.index(f[0]))
    if KNOWN_CDI_VERSIONS.index(needed) > index:
        raise CdiError("cdiVersion", f"{raw} is too old: {reason} needs at least {needed}")
    return KNOWN_CDI_VERSIONS[index]


def _all_edits(spec: Mapping[str, Any]) -> Iterator[tuple[str, Mapping[str, Any]]]:
    """Every ``containerEdits`` object with its JSON path, spec level first."""
    yield "containerEdits", spec.get("containerEdits", {})
    for i, device in enumerate(spec.get("devices", [])):
        yield f"devices[{i}].containerEdits", device.get("containerEdits", {})


def _feature_versions(spec: Mapping[str, Any]) -> Iterator[tuple[str, str]]:
    """(minimum version, the field needing it) for every versioned feature in use
    (``specs-go/version.go`` ``requiredVersion``)."""
    yield "0.3.0", "the spec"
    if "." in spec.get("kind", "").partition("/")[2]:
        yield "0.6.0", "a dot in the class of kind"
    if spec.get("annotations"):
        yield "0.6.0", "annotations"
    for i, device in enumerate(spec.get("devices", [])):
        if device.get("name", "")[:1].isdigit():
            yield "0.5.0", f"devices[{i}].name starting with a digit"
        if device.get("annotations"):
            yield "0.6.0", f"devices[{i}].annotations"
    for where, edits in _all_edits(spec):
        for j, node in enumerate(edits.get("deviceNodes", [])):
            if node.get("hostPath"):
                yield "0.5.0", f"{where}.deviceNodes[{j}].hostPath"
        for j, mount in enumerate(edits.get("mounts", [])):
            if mount.get("type"):
                yield "0.4.0", f"{where}.mounts[{j}].type"
        if edits.get("additionalGids"):
            yield "0.7.0", f"{where}.additionalGids"
        if "intelRdt" in edits:
            rdt = edits["intelRdt"]
            yield "0.7.0", f"{where}.intelRdt"
            if "schemata" in rdt or rdt.get("enableMonitoring"):
                yield "1.1.0", f"{where}.intelRdt.schemata/enableMonitoring"
        if edits.get("netDevices"):
            yield "1.1.0", f"{where}.netDevices"


def _edits_present(edits: Mapping[str, Any]) -> bool:
    """The reference's ``isEmpty``, negated: a list with items, or an ``intelRdt`` at all."""
    return "intelRdt" in edits or any(edits.get(k) for k in (
        "env", "deviceNodes", "hooks", "mounts", "additionalGids", "netDevices"))


def _check_env(env: Iterable[str], where: str) -> None:
    for j, item in enumerate(env):
        if item.find("=") <= 0:
            raise CdiError(f"{where}[{j}]", f"{item!r} is not NAME=value")


def _edits(raw: Mapping[str, Any], where: str) -> ContainerEdits:
    env = tuple(raw.get("env", []))
    _check_env(env, f"{where}.env")
    nodes = tuple(_node(n, f"{where}.deviceNodes[{j}]")
                  for j, n in enumerate(raw.get("deviceNodes", [])))
    for j, hook in enumerate(raw.get("hooks", [])):
        at = f"{where}.hooks[{j}]"
        if hook.get("hookName") not in HOOK_NAMES:
            raise CdiError(f"{at}.hookName", f"{hook.get('hookName', '')!r} is not a hook; "
                           f"allowed: {', '.join(HOOK_NAMES)}")
        if not hook.get("path"):
            raise CdiError(f"{at}.path", "a hook needs a path")
        _check_env(hook.get("env", []), f"{at}.env")
    for j, mount in enumerate(raw.get("mounts", [])):
        for key in ("hostPath", "containerPath"):
            if not mount.get(key):
                raise CdiError(f"{where}.mounts[{j}].{key}", "a mount needs both paths")
    _check_net_devices(raw.get("netDevices", []), f"{where}.netDevices")
    if "intelRdt" in raw:
        closid = raw["intelRdt"].get("closID", "")
        bad = closid != "/" and (len(closid) >= 4096 or closid in (".", "..")
                                 or "/" in closid or "\n" in closid)
        if bad:
            raise CdiError(f"{where}.intelRdt.closID", f"{closid[:40]!r} is not a CLOS name")
    return ContainerEdits(device_nodes=nodes, env=env)


def _check_net_devices(devices: Sequence[Mapping[str, str]], where: str) -> None:
    hosts: set[str] = set()
    names: set[str] = set()
    for j, dev in enumerate(devices):
        host, name = dev.get("hostInterfaceName", ""), dev.get("name", "")
        if not host or not name:
            raise CdiError(f"{where}[{j}]", "a net device needs hostInterfaceName and name")
        if host in hosts or name in names:
            raise CdiError(f"{where}[{j}]", f"net device {host!r} -> {name!r} repeats a "
                           "host interface or a name")
        hosts.add(host)
        names.add(name)


def _node(raw: Mapping[str, Any], where: str) -> CdiDeviceNode:
    path = raw.get("path", "")
    if not path:
        raise CdiError(f"{where}.path", "a device node needs a path")
    node_type: NodeType | None = None
    if raw.get("type"):
        allowed = [t.value for t in NodeType]
        if raw["type"] not in allowed:
            raise CdiError(f"{where}.type", f"{raw['type']!r}; allowed: {', '.join(allowed)}")
        node_type = NodeType(raw["type"])
    permissions = raw.get("permissions")
    if permissions and set(permissions) - set("rwm"):
        raise CdiError(f"{where}.permissions", f"{permissions!r}: only the letters r w m")
    return CdiDeviceNode(
        path=path, host_path=raw.get("hostPath") or None, type=node_type,
        major=raw.get("major"), minor=raw.get("minor"), file_mode=raw.get("fileMode"),
        uid=raw.get("uid"), gid=raw.get("gid"), permissions=permissions or None,
    )


def parse_cdi_text(text: str, *, source: str = "<memory>") -> CdiSpec:
    """Decode one spec's text as the reference decodes any file: YAML 1.1 (JSON being
    YAML), duplicate keys and aliases refused (:mod:`podplug.inputs.strict_yaml`)."""
    from podplug.inputs.strict_yaml import StrictYamlError, load_yaml

    try:
        doc = load_yaml(text)
    except StrictYamlError as err:
        raise CdiError("$", str(err)) from err
    return parse_cdi_spec(doc, source=source)


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
                    f"annotations[{_quoted(key)}]",
                    f"{_quoted(item)} is not a CDI device name (vendor.com/class=name): "
                    f"{problem}",
                )
            found.setdefault(item, None)
    return tuple(found)


def _quoted(text: str) -> str:
    """JSON-style quoting for messages: one line whatever the bytes."""
    import json

    return json.dumps(text)


def _reference_problem(name: str) -> str:
    kind, eq, device = name.partition("=")
    if not eq or not device:
        return "expected kind=name"
    problem = _kind_problem(kind)
    if problem:
        return problem
    if not _DEVICE_NAME.fullmatch(device):
        return f"device name {_quoted(device)} must be letters and digits with - _ . : inside"
    return ""


@dataclass(frozen=True)
class HostNode:
    """A host device node as ``lstat`` saw it (the reference reads it with ``Lstat``)."""

    type: NodeType
    major: int
    minor: int
    mode: int  # permission bits


#: host path -> the node there, or why there is none (read by :mod:`podplug.host.devnodes`)
HostNodes = Mapping[str, HostNode | str]


def requested_nodes(request: ContainerRequest,
                    registry: CdiRegistry) -> Iterator[tuple[str, CdiDeviceNode]]:
    """(device name, node) for every node the request's CDI devices bring, in order: the
    spec's own edits once, before its first requested device, then the device's."""
    specs_applied: set[tuple[str, str]] = set()
    for ref in cdi_references(request.annotations):
        spec, device = registry.resolve(ref)
        if (spec.source, spec.kind) not in specs_applied:
            specs_applied.add((spec.source, spec.kind))
            for node in spec.spec_edits.device_nodes:
                yield ref, node
        for node in device.edits.device_nodes:
            yield ref, node


def host_paths(request: ContainerRequest, registry: CdiRegistry) -> tuple[str, ...]:
    """The host nodes :func:`apply_cdi` will need to look at."""
    return tuple(dict.fromkeys(node.host_path or node.path
                               for _, node in requested_nodes(request, registry)))


def complete_node(node: CdiDeviceNode, host: HostNode | str | None,
                  device: str) -> CdiDeviceNode:
    """The reference's ``fillMissingInfo``: ``hostPath`` defaults to ``path``; a node with
    a type and a major number (or a FIFO) needs nothing from the host, though its file mode
    is still taken from it when there; any other node takes its type, major and minor from
    the host node (a given type must match it), so a host that lacks it refuses it.

    :raises CdiError: naming the device and the node.
    """
    for what, path in (("path", node.path), ("hostPath", node.host_path or node.path)):
        if problem := path_problem(path):
            raise CdiError(device, f"device node {what} {shown(path, 80)} {problem}")
    host_path = node.host_path or node.path
    node = replace(node, host_path=host_path)
    if not isinstance(host, HostNode):
        if node.minimally_specified:
            return node
        why = host or "not looked up"
        raise CdiError(device, f"host device node {host_path} (for {node.path}): {why}")
    if node.file_mode is None:
        node = replace(node, file_mode=host.mode)
    if node.minimally_specified:
        return node
    if node.type is not None and node.type is not host.type:
        raise CdiError(device, f"host device node {host_path} is of type {host.type.value}, "
                       f"the spec says {node.type.value}")
    node = replace(node, type=host.type)
    if node.type is NodeType.FIFO or node.major:
        return node
    return replace(node, major=host.major, minor=host.minor)


def apply_cdi(request: ContainerRequest, registry: CdiRegistry,
              host: HostNodes) -> ContainerRequest:
    """The request with the device nodes of every CDI device its annotations ask for,
    each completed from ``host`` (:func:`complete_node`). A CDI node replaces an OCI
    ``linux.devices`` entry of the same container path, in its place, as the reference's
    ``Apply`` does; others are appended. ``permissions`` has no place in
    :class:`ContainerDevice` and is dropped.

    :raises CdiError: for an unknown device or a node the host cannot complete.
    """
    devices = list(request.devices)
    index = {d.path: i for i, d in enumerate(devices)}
    for ref, node in requested_nodes(request, registry):
        done = complete_node(node, host.get(node.host_path or node.path), ref)
        entry = _container_device(done, ref)
        if done.path in index:
            devices[index[done.path]] = entry
        else:
            index[done.path] = len(devices)
            devices.append(entry)
    return replace(request, devices=tuple(devices))


def _container_device(node: CdiDeviceNode, source: str) -> ContainerDevice:
    return ContainerDevice(
        path=node.path,
        type=node.type or NodeType.CHAR,
        major=node.major or 0,
        minor=node.minor or 0,
        file_mode=node.file_mode,
        uid=node.uid,
        gid=node.gid,
        host_path=node.host_path,
        source=source,
    )
