"""``doctor --node``: every container of every Kata pod on the node, diagnosed (pure).

Per container: its devices planned under the configuration its handler uses (annotation
overrides applied), what the installed Kata release would lose (:mod:`podplug.doctor`'s
checks, the era models of :mod:`podplug.matrix.kata_models`), and the host checks. A pod
whose handler is not known (containerd does not record it in the bundle) is checked under
each configuration the node's Kata handlers use, each finding naming it. The JSON document
(:func:`node_json`) is one per node, for a fleet tool to aggregate; the exit code is the
worst finding's.
"""

from __future__ import annotations

from dataclasses import dataclass

from podplug.doctor import Finding, Severity, diagnose, worst
from podplug.errors import ConfigError, PodplugError, UnsupportedPlatform
from podplug.inputs.kata import RuntimeConfig, apply_annotations
from podplug.matrix.kata_models import KataEra, era_for_version
from podplug.model.host import HostInventory
from podplug.node.discover import Node, NodeConfig
from podplug.node.podresources import (
    KUBELET_SOCKET,
    AssignedDevices,
    ContainerAssignment,
    PodResources,
)
from podplug.node.pods import NodeContainer, NodePod

FORMAT = "podplug.doctor.node/v1"


@dataclass(frozen=True)
class ContainerReport:
    pod: NodePod
    container: NodeContainer
    config: NodeConfig | None
    findings: tuple[Finding, ...]
    assigned: ContainerAssignment | None = None  # what the kubelet says it assigned


def _ids(devices: tuple[AssignedDevices, ...]) -> str:
    return "; ".join(f"{d.resource} {','.join(d.device_ids)}" for d in devices)


def _assignment(resources: PodResources | None, pod: NodePod, container: NodeContainer
                ) -> tuple[ContainerAssignment | None, list[Finding]]:
    """The kubelet's devices for ``container``, said as a finding."""
    if resources is None or container.request.is_sandbox:
        return None, []
    entry = resources.pod(pod.namespace, pod.name)
    assigned = entry.container(container.name) if entry is not None else None
    if assigned is None or assigned.empty:
        return assigned, []
    parts = [p for p in (_ids(assigned.devices),
                         "CDI " + ", ".join(assigned.cdi_devices) if assigned.cdi_devices
                         else "") if p]
    return assigned, [Finding(Severity.INFO, "kubelet", "assigned by the kubelet: "
                              + "; ".join(parts))]


def _era(node: Node) -> tuple[KataEra | None, Finding]:
    if not node.version:
        return None, Finding(Severity.WARNING, "kata-version", "the installed Kata release is "
                             f"not known (no {node.root.rstrip('/')}/opt/kata/VERSION)",
                             "pass --kata-version X.Y.Z")
    try:
        era = era_for_version(node.version)
    except ValueError as exc:
        return None, Finding(Severity.WARNING, "kata-version", f"{node.version_source}: {exc}",
                             "pass --kata-version X.Y.Z")
    return era, Finding(Severity.OK, "kata-version", f"Kata {node.version} ({era.value}), "
                        f"from {node.version_source}")


def _findings(container: NodeContainer, config: NodeConfig | None,
              inventory: HostInventory, era: KataEra | None, version: str) -> list[Finding]:
    """The doctor's findings for one container under one of the node's configurations."""
    if config is None:
        return [Finding(Severity.ERROR, "config", "no Kata configuration found for this pod",
                        "see the node's problems")]
    effective: RuntimeConfig | ConfigError | UnsupportedPlatform
    if isinstance(config.config, RuntimeConfig):
        try:
            effective = apply_annotations(config.config, container.request.annotations)
        except ConfigError as exc:
            effective = exc.with_path(container.spec_path)
    elif isinstance(config.config, ConfigError | UnsupportedPlatform):
        effective = config.config
    else:
        effective = ConfigError(config.path, str(config.config))
    return diagnose(effective, request=container.request, inventory=inventory, era=era,
                    version=version)


def _kubelet(resources: PodResources | PodplugError | None) -> Finding:
    if resources is None:
        return Finding(Severity.INFO, "kubelet", f"no PodResources socket ({KUBELET_SOCKET}): "
                       "the devices the kubelet assigned are not known")
    if isinstance(resources, PodplugError):
        return Finding(Severity.WARNING, "kubelet", str(resources),
                       "check that the kubelet runs and its pod-resources directory is mounted")
    offered = _ids(resources.allocatable) or "none"
    return Finding(Severity.OK, "kubelet", f"PodResources API: {len(resources.pods)} pod(s); "
                   f"allocatable devices: {offered}")


def diagnose_node(node: Node, inventory: HostInventory,
                  resources: PodResources | PodplugError | None = None,
                  ) -> tuple[list[Finding], list[ContainerReport]]:
    """The node's own findings, and one report per container per configuration."""
    era, about = _era(node)
    own = [about, _kubelet(resources)] + [Finding(Severity.WARNING, "node", p,
                                                  "fix or remove it") for p in node.problems]
    listing = resources if isinstance(resources, PodResources) else None
    if not node.pods:
        own.append(Finding(Severity.OK, "node", "no running Kata pod found"))
    reports = []
    for pod in node.pods:
        configs: list[NodeConfig | None] = [c for c in node.configs
                                            if not pod.handler or pod.handler in c.handlers]
        for config in configs or [None]:
            for container in pod.containers:
                found = _findings(container, config, inventory, era, node.version)
                assigned, said = _assignment(listing, pod, container)
                reports.append(ContainerReport(pod, container, config, (*found, *said),
                                               assigned))
    return own, reports


def node_worst(own: list[Finding], reports: list[ContainerReport]) -> Severity:
    return worst(own + [f for r in reports for f in r.findings])


def _finding(f: Finding) -> dict[str, str]:
    return {"severity": f.severity.name, "check": f.check, "message": f.message, "fix": f.fix}


def node_json(node: Node, own: list[Finding], reports: list[ContainerReport]
              ) -> dict[str, object]:
    """One document per node (``format`` names its shape)."""
    pods: dict[str, dict[str, object]] = {}
    for r in reports:
        pod = pods.setdefault(r.pod.sandbox_id, {
            "namespace": r.pod.namespace, "name": r.pod.name, "sandbox_id": r.pod.sandbox_id,
            "containers": []})
        containers = pod["containers"]
        assert isinstance(containers, list)
        containers.append({
            "name": r.container.name, "id": r.container.id,
            "sandbox": r.container.request.is_sandbox, "spec": r.container.spec_path,
            "config": r.config.path if r.config else None,
            "assigned": None if r.assigned is None else {
                "devices": [{"resource": d.resource, "device_ids": list(d.device_ids),
                             "numa_nodes": list(d.numa_nodes)} for d in r.assigned.devices],
                "cdi_devices": list(r.assigned.cdi_devices)},
            "worst": worst(list(r.findings)).name,
            "findings": [_finding(f) for f in r.findings]})
    return {
        "format": FORMAT,
        "root": node.root,
        "kata": {"version": node.version or None, "source": node.version_source or None},
        "handlers": [{"name": h.name, "engine": h.engine.value, "runtime": h.runtime.value,
                      "config_path": h.config_path or None, "source": h.source}
                     for h in node.handlers],
        "configs": [{"path": c.path, "how": c.how, "handlers": list(c.handlers),
                     "error": str(c.config) if isinstance(c.config, PodplugError) else None}
                    for c in node.configs],
        "findings": [_finding(f) for f in own],
        "pods": list(pods.values()),
        "worst": node_worst(own, reports).name,
    }


def node_text(node: Node, own: list[Finding], reports: list[ContainerReport]) -> str:
    lines = [f"node {node.root}: Kata {node.version or 'release unknown'}; "
             f"{len(node.handlers)} Kata handler(s), {len(node.pods)} Kata pod(s)"]
    for f in own:
        lines.append(_line(f))
    for r in reports:
        who = r.container.name or "(sandbox)"
        lines.append(f"pod {r.pod.namespace}/{r.pod.name} container {who} "
                     f"[{r.config.path if r.config else 'no configuration'}]")
        lines += ["  " + _line(f) for f in r.findings if f.severity >= Severity.WARNING
                  or f.check in ("kata-version", "kubelet")]
    lines.append(f"doctor: worst finding {node_worst(own, reports).name}")
    return "\n".join(lines) + "\n"


def _line(f: Finding) -> str:
    fix = f"  -> {f.fix}" if f.fix and f.severity >= Severity.WARNING else ""
    return f"{f.severity.name:<7} {f.check:<12} {f.message}{fix}"
