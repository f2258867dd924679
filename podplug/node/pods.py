"""The Kata pods of a node, grouped from their containers' OCI specs (pure).

Each container the engine runs has a bundle with its ``config.json``; the CRI annotations
say which pod it belongs to:

* containerd: ``io.kubernetes.cri.sandbox-id``, ``-sandbox-name``, ``-sandbox-namespace``,
  ``io.kubernetes.cri.container-type`` (``sandbox`` | ``container``) and
  ``io.kubernetes.cri.container-name``;
* CRI-O: ``io.kubernetes.cri-o.SandboxID``, ``io.kubernetes.pod.name``,
  ``io.kubernetes.pod.namespace``, ``io.kubernetes.cri-o.ContainerType`` and
  ``io.kubernetes.container.name``.

A spec without a sandbox id is its own pod (a container not run by Kubernetes).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from podplug.model.request import ContainerRequest

_KEYS = {  # what -> (containerd annotation, CRI-O annotation)
    "sandbox": ("io.kubernetes.cri.sandbox-id", "io.kubernetes.cri-o.SandboxID"),
    "pod": ("io.kubernetes.cri.sandbox-name", "io.kubernetes.pod.name"),
    "namespace": ("io.kubernetes.cri.sandbox-namespace", "io.kubernetes.pod.namespace"),
    "container": ("io.kubernetes.cri.container-name", "io.kubernetes.container.name"),
}


@dataclass(frozen=True)
class NodeContainer:
    """One container of a pod, as the engine's bundle holds it."""

    id: str
    name: str  # the CRI container name ("" for the sandbox)
    spec_path: str  # the bundle's config.json, as a path of the node
    request: ContainerRequest


@dataclass(frozen=True)
class NodePod:
    sandbox_id: str
    name: str
    namespace: str
    handler: str  # the runtime handler ("" when the engine does not say)
    containers: tuple[NodeContainer, ...]  # the sandbox (pause) container first


def _get(request: ContainerRequest, what: str) -> str:
    for key in _KEYS[what]:
        value = request.annotations.get(key)
        if value:
            return value
    return ""


def group_pods(found: Sequence[tuple[str, str, ContainerRequest]],
               handler: str = "") -> tuple[NodePod, ...]:
    """Pods from ``(container id, spec path, request)`` triples, sorted by namespace and
    name; in each, the sandbox first, then the containers by name."""
    pods: dict[str, list[NodeContainer]] = {}
    for cid, path, request in found:
        sandbox = _get(request, "sandbox") or cid
        name = "" if request.is_sandbox else _get(request, "container") or cid
        pods.setdefault(sandbox, []).append(NodeContainer(cid, name, path, request))
    out = []
    for sandbox, members in pods.items():
        members.sort(key=lambda c: (not c.request.is_sandbox, c.name, c.id))
        first = members[0].request
        out.append(NodePod(sandbox, _get(first, "pod") or sandbox,
                           _get(first, "namespace"), handler, tuple(members)))
    return tuple(sorted(out, key=lambda p: (p.namespace, p.name, p.sandbox_id)))
