"""Everything ``doctor --node`` needs, found on the node itself (shell).

``root`` stands for ``/`` (tests and a DaemonSet that mounts the host below a directory pass
another); every read is confined below it (:class:`podplug.host.confined.Confined`: no link
leaves it, nothing but regular files is read, each read is bounded). The Kata release
comes from :mod:`.release` (``--kata-version``, kata-deploy's ``/opt/kata/VERSION``, or
``kata-runtime --version`` when only root could have installed that binary).

Read, in order:

* runtime handlers (:mod:`.handlers`): ``/etc/containerd/config.toml`` and the files its
  ``imports`` name (globs of their last component), ``/etc/crio/crio.conf`` and
  ``/etc/crio/crio.conf.d/*.conf``;
* each handler's Kata configuration, by Kata's own order (:func:`.handlers.kata_config_path`);
* the pods: containerd's task bundles ``/run/containerd/io.containerd.runtime.v2.task/
  <namespace>/<id>/`` whose ``shim-binary-path`` (containerd 1.6+) is Kata's shim, and
  CRI-O's ``/run/containers/storage/overlay-containers/<id>/userdata/`` whose
  ``io.kubernetes.cri-o.RuntimeHandler`` names a Kata handler; their ``config.json``;
* the host's ``/sys`` (IOMMU groups, block devices), as everywhere else;
* the kubelet's PodResources API on its socket (:mod:`.podresources`).

What cannot be read is a problem of the node (one line each), not a stop.
"""

from __future__ import annotations

import fnmatch
import os
import tomllib
from dataclasses import dataclass

from podplug.errors import PodplugError
from podplug.host.confined import Confined
from podplug.inputs.kata import RuntimeConfig, parse_kata_text
from podplug.inputs.oci import parse_oci_text
from podplug.model.request import ContainerRequest
from podplug.model.text import shown
from podplug.node.handlers import (
    KataHandler,
    containerd_handlers,
    crio_handlers,
    kata_config_path,
)
from podplug.node.podresources import KUBELET_SOCKET_DIR
from podplug.node.pods import NodePod, group_pods
from podplug.node.release import installed_release

CONTAINERD_CONFIG = "/etc/containerd/config.toml"
CRIO_CONFIG = "/etc/crio/crio.conf"
CRIO_DROP_INS = "/etc/crio/crio.conf.d"
CONTAINERD_TASKS = "/run/containerd/io.containerd.runtime.v2.task"
CRIO_CONTAINERS = "/run/containers/storage/overlay-containers"
KATA_SHIM = "containerd-shim-kata-v2"
CRIO_HANDLER = "io.kubernetes.cri-o.RuntimeHandler"
SPEC_LIMIT = 4 << 20  # an OCI spec with many mounts is tens of KiB
MAX_BUNDLES = 4096

#: every host path discovery reads (the DaemonSet mounts these, read-only): only the task
#: directories of the engines' state, never their API sockets beside them
READ_PATHS = ("/etc/containerd", "/etc/crio", "/etc/kata-containers",
              "/usr/share/defaults/kata-containers", "/opt/kata", CONTAINERD_TASKS,
              CRIO_CONTAINERS, "/sys", KUBELET_SOCKET_DIR)


@dataclass(frozen=True)
class NodeConfig:
    """One Kata configuration file the node's handlers use, read and parsed."""

    path: str
    how: str
    handlers: tuple[str, ...]
    config: RuntimeConfig | PodplugError


@dataclass(frozen=True)
class Node:
    root: str
    handlers: tuple[KataHandler, ...]
    configs: tuple[NodeConfig, ...]
    version: str
    version_source: str
    pods: tuple[NodePod, ...]
    problems: tuple[str, ...]

    @property
    def sysfs(self) -> str:
        return os.path.join(self.root, "sys")


def _toml(tree: Confined, path: str, problems: list[str]) -> dict[str, object] | None:
    real = tree.at(path)
    try:
        text = tree.optional(real)
        if text is None:
            return None
        return tomllib.loads(text)
    except PodplugError as exc:
        problems.append(str(exc))
    except (tomllib.TOMLDecodeError, ValueError, RecursionError) as exc:
        problems.append(f"{path}: not TOML podplug can read: {shown(str(exc), 120)}")
    return None


def _imports(tree: Confined, doc: dict[str, object]) -> list[str]:
    """The files a containerd config's ``imports`` names (a glob in the last component)."""
    names = doc.get("imports", [])
    out: list[str] = []
    for pattern in names if isinstance(names, list) else []:
        if not isinstance(pattern, str) or not pattern.startswith("/"):
            continue
        folder, glob = os.path.split(pattern)
        base = tree.at(folder)
        if not tree.isdir(base):
            continue
        out += [os.path.join(folder, n) for n in sorted(tree.listdir(base))
                if fnmatch.fnmatchcase(n, glob)]
    return out


def _handlers(tree: Confined, problems: list[str]) -> list[KataHandler]:
    found: list[KataHandler] = []
    main = _toml(tree, CONTAINERD_CONFIG, problems)
    if main is not None:
        for path, doc in [(CONTAINERD_CONFIG, main)] + [
                (p, d) for p in _imports(tree, main)
                if (d := _toml(tree, p, problems)) is not None]:
            more, said = containerd_handlers({**doc, "version": main.get("version", 1)}, path)
            found += more
            problems += said
    crio = [CRIO_CONFIG]
    drop_ins = tree.at(CRIO_DROP_INS)
    if tree.isdir(drop_ins):
        crio += [f"{CRIO_DROP_INS}/{n}" for n in sorted(tree.listdir(drop_ins))
                 if n.endswith(".conf")]
    for path in crio:
        crio_doc = _toml(tree, path, problems)
        if crio_doc is not None:
            found += crio_handlers(crio_doc, path)
    return found


def _configs(tree: Confined, handlers: list[KataHandler], env_file: str,
             problems: list[str]) -> list[NodeConfig]:
    def exists(path: str) -> bool:
        return tree.optional(tree.at(path)) is not None

    chosen: dict[str, tuple[str, list[str]]] = {}
    candidates: list[KataHandler | None] = list(handlers) or [None]
    for handler in candidates:
        try:
            found = kata_config_path(handler, env_file, exists)
        except PodplugError as exc:
            problems.append(str(exc))
            continue
        if isinstance(found, str):
            problems.append(f"{handler.label if handler else 'Kata'}: {found}")
            continue
        path, how = found
        chosen.setdefault(path, (how, []))[1].append(handler.name if handler else "")
    out = []
    for path, (how, names) in chosen.items():
        config: RuntimeConfig | PodplugError
        try:
            config = parse_kata_text(tree.read(tree.at(path)))
        except PodplugError as exc:
            config = exc
        out.append(NodeConfig(path, how, tuple(n for n in names if n), config))
    return out


def _spec(tree: Confined, path: str, problems: list[str]) -> ContainerRequest | None:
    try:
        return parse_oci_text(tree.read(tree.at(path), limit=SPEC_LIMIT))
    except PodplugError as exc:
        problems.append(f"{path}: {exc}")
        return None


def _containerd_bundles(tree: Confined, problems: list[str]
                        ) -> list[tuple[str, str, ContainerRequest]]:
    base = tree.at(CONTAINERD_TASKS)
    found: list[tuple[str, str, ContainerRequest]] = []
    if not tree.isdir(base):
        return found
    for namespace in sorted(tree.listdir(base))[:MAX_BUNDLES]:
        ns_dir = f"{CONTAINERD_TASKS}/{namespace}"
        if not tree.isdir(tree.at(ns_dir)):
            continue
        for cid in sorted(tree.listdir(tree.at(ns_dir)))[:MAX_BUNDLES]:
            bundle = f"{ns_dir}/{cid}"
            try:
                shim = tree.optional(tree.at(bundle + "/shim-binary-path"))
            except PodplugError as exc:
                problems.append(str(exc))
                continue
            if shim is None or not shim.strip().endswith(KATA_SHIM):
                continue
            request = _spec(tree, bundle + "/config.json", problems)
            if request is not None:
                found.append((cid, bundle + "/config.json", request))
    return found


def _crio_bundles(tree: Confined, handlers: list[KataHandler], problems: list[str]
                  ) -> list[tuple[str, str, ContainerRequest]]:
    base = tree.at(CRIO_CONTAINERS)
    kata = {h.name for h in handlers}
    found: list[tuple[str, str, ContainerRequest]] = []
    if not tree.isdir(base) or not kata:
        return found
    specs = [(cid, f"{CRIO_CONTAINERS}/{cid}/userdata/config.json")
             for cid in sorted(tree.listdir(base))[:MAX_BUNDLES]]
    requests = [(cid, path, r) for cid, path in specs
                if (r := _spec(tree, path, problems)) is not None]
    sandboxes = {r.annotations.get("io.kubernetes.cri-o.SandboxID", cid): r
                 for cid, _, r in requests if r.is_sandbox}
    for cid, path, request in requests:
        sandbox = sandboxes.get(request.annotations.get("io.kubernetes.cri-o.SandboxID", cid))
        handler = (sandbox or request).annotations.get(CRIO_HANDLER, "")
        if handler in kata:
            found.append((cid, path, request))
    return found


def discover(root: str = "/", *, kata_version: str = "", env_kata_conf: str = "") -> Node:
    """The node below ``root``: its Kata handlers and configurations, release and pods.

    :raises HostError: ``root`` is not a directory.
    """
    tree = Confined(root)
    problems: list[str] = []
    handlers = _handlers(tree, problems)
    configs = _configs(tree, handlers, env_kata_conf, problems)
    version, source, said = installed_release(tree, kata_version)
    problems += said
    pods = group_pods(_containerd_bundles(tree, problems)) + \
        group_pods(_crio_bundles(tree, handlers, problems))
    return Node(tree.root, tuple(handlers), tuple(configs), version, source, pods,
                tuple(problems))
