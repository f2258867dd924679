"""kubelet's PodResources API (``v1``), read with a real gRPC client (shell).

The kubelet serves it on a unix socket, ``/var/lib/kubelet/pod-resources/kubelet.sock``
(Kubernetes device-plugin docs: mount the directory, not the socket, so a kubelet restart
does not leave a dead inode). ``List`` gives, per pod and container, the device IDs device
plugins assigned (``resource_name``, ``device_ids``, NUMA nodes) and the CDI devices
dynamic resource allocation assigned (``dynamic_resources[].claim_resources[].cdi_devices``);
``GetAllocatableResources`` the devices the node can assign at all. The messages come from
``podresources.proto`` (written for podplug from the published definition), compiled at
first use by ``grpcio-tools`` (``grpc.protos_and_services``: in memory, nothing written).

The socket is looked up below the node's root without following a link out of it, must be
a socket, and every call has a deadline: a kubelet that does not answer is a one-line
:class:`~podplug.errors.HostError`, never a hang.
"""

from __future__ import annotations

import os
import stat
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache
from typing import Any

from podplug.errors import HostError, PodplugError
from podplug.host.confined import Confined

KUBELET_SOCKET_DIR = "/var/lib/kubelet/pod-resources"
KUBELET_SOCKET = f"{KUBELET_SOCKET_DIR}/kubelet.sock"
CALL_TIMEOUT_S = 5.0
_PROTO = "podresources.proto"


@dataclass(frozen=True)
class AssignedDevices:
    """Devices of one resource a device plugin assigned (or the node offers)."""

    resource: str  # "nvidia.com/gpu"
    device_ids: tuple[str, ...]
    numa_nodes: tuple[int, ...] = ()


@dataclass(frozen=True)
class ContainerAssignment:
    name: str
    devices: tuple[AssignedDevices, ...]
    cdi_devices: tuple[str, ...]  # "vendor.com/class=name", from dynamic resources

    @property
    def empty(self) -> bool:
        return not self.devices and not self.cdi_devices


@dataclass(frozen=True)
class PodAssignment:
    namespace: str
    name: str
    containers: tuple[ContainerAssignment, ...]

    def container(self, name: str) -> ContainerAssignment | None:
        return next((c for c in self.containers if c.name == name), None)


@dataclass(frozen=True)
class PodResources:
    """What the kubelet said: every pod's assignments, and what the node can assign."""

    socket: str
    pods: tuple[PodAssignment, ...]
    allocatable: tuple[AssignedDevices, ...]

    def pod(self, namespace: str, name: str) -> PodAssignment | None:
        return next((p for p in self.pods if (p.namespace, p.name) == (namespace, name)),
                    None)


@cache
def protos_and_services() -> tuple[Any, Any]:
    """The compiled messages and service stubs of :data:`_PROTO` (once per process)."""
    import grpc

    here = os.path.dirname(os.path.abspath(__file__))
    sys.path.insert(0, here)
    try:
        return grpc.protos_and_services(_PROTO)  # type: ignore[no-any-return]
    finally:
        sys.path.remove(here)


def _devices(listed: Any) -> tuple[AssignedDevices, ...]:
    return tuple(AssignedDevices(d.resource_name, tuple(d.device_ids),
                                 tuple(n.ID for n in d.topology.nodes)) for d in listed)


def _container(c: Any) -> ContainerAssignment:
    cdi = tuple(dev.name for dyn in c.dynamic_resources for claim in dyn.claim_resources
                for dev in claim.cdi_devices)
    return ContainerAssignment(c.name, _devices(c.devices), cdi)


def socket_below(root: str, path: str = KUBELET_SOCKET) -> str | None:
    """The kubelet's socket below ``root`` (links resolved inside it), or None when absent.

    :raises HostError: a link leaves the root, or something other than a socket is there.
    """
    tree = Confined(root)
    real = tree.resolve(tree.at(path))
    try:
        info = os.lstat(real)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise HostError(path, f"cannot look at the kubelet's socket: {exc.strerror}") from exc
    if not stat.S_ISSOCK(info.st_mode):
        raise HostError(path, "not a unix socket (the kubelet's PodResources API)")
    return real


@contextmanager
def _channel(socket_path: str) -> Iterator[Any]:
    import grpc

    channel = grpc.insecure_channel(f"unix://{socket_path}")
    try:
        yield channel
    finally:
        channel.close()


def read_pod_resources(socket_path: str, timeout: float = CALL_TIMEOUT_S) -> PodResources:
    """``List`` and ``GetAllocatableResources`` of the kubelet at ``socket_path``.

    :raises HostError: naming the socket, when the kubelet cannot be reached or answers
        with an error.
    """
    import grpc

    protos, services = protos_and_services()
    with _channel(socket_path) as channel:
        stub = services.PodResourcesListerStub(channel)
        try:
            listed = stub.List(protos.ListPodResourcesRequest(), timeout=timeout)
            offered = stub.GetAllocatableResources(protos.AllocatableResourcesRequest(),
                                                   timeout=timeout)
        except grpc.RpcError as exc:
            code = exc.code().name if hasattr(exc, "code") else "UNKNOWN"
            details = exc.details() if hasattr(exc, "details") else str(exc)
            raise HostError(socket_path, f"PodResources API: {code}: "
                            f"{' '.join(str(details).split())[:200]}") from exc
    pods = tuple(PodAssignment(p.namespace, p.name, tuple(_container(c) for c in p.containers))
                 for p in listed.pod_resources)
    return PodResources(socket_path, pods, _devices(offered.devices))


def pod_resources_below(root: str) -> PodResources | PodplugError | None:
    """The kubelet's answers on the node below ``root``; None when it has no socket."""
    try:
        path = socket_below(root)
        return None if path is None else read_pod_resources(path)
    except PodplugError as exc:
        return exc
