"""A FAKE node tree (a stand-in for a Kata node's ``/``) for ``doctor --node`` tests: a
kata-deploy install, containerd's configuration and task bundles of one pod (the seed's GPU
group and raw block volume), and a fake sysfs."""

from __future__ import annotations

import json
from pathlib import Path

from podplug.host.fakesysfs import demo_host, write_fake_sysfs
from tests.support import REPO

SEED_CONFIG = REPO / "podplug" / "demo" / "configuration.toml"
SEED_SPEC = REPO / "podplug" / "demo" / "spec.json"
KATA_CONFIG = "/opt/kata/share/defaults/kata-containers/configuration-qemu.toml"
SHIM = "/opt/kata/bin/containerd-shim-kata-v2"
TASKS = "run/containerd/io.containerd.runtime.v2.task/k8s.io"
SANDBOX_ID = "5b1e0c0ffee"
CONTAINER_ID = "9a7d00dcafe"

CONTAINERD_V3 = f'''version = 3
[plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"
[plugins."io.containerd.cri.v1.runtime".containerd.runtimes.kata-qemu]
  runtime_type = "io.containerd.kata-qemu.v2"
  runtime_path = "{SHIM}"
[plugins."io.containerd.cri.v1.runtime".containerd.runtimes.kata-qemu.options]
  ConfigPath = "{KATA_CONFIG}"
'''


def _write(root: Path, rel: str, text: str) -> Path:
    path = root / rel.lstrip("/")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def pod_specs(pod: str = "gpu-job", namespace: str = "ml") -> tuple[dict[str, object], ...]:
    """The sandbox's spec and the workload's (the seed spec), with containerd's CRI
    annotations for one pod."""
    common = {"io.kubernetes.cri.sandbox-id": SANDBOX_ID,
              "io.kubernetes.cri.sandbox-name": pod,
              "io.kubernetes.cri.sandbox-namespace": namespace}
    sandbox = {"ociVersion": "1.1.0", "annotations": {
        **common, "io.kubernetes.cri.container-type": "sandbox"}, "linux": {"devices": []}}
    workload = json.loads(SEED_SPEC.read_text())
    workload["annotations"] = {**common, "io.kubernetes.cri.container-type": "container",
                               "io.kubernetes.cri.container-name": "trainer"}
    return sandbox, workload


def fake_node(root: Path, version: str = "3.16.0", *, containerd: str = CONTAINERD_V3,
              config_text: str | None = None) -> Path:
    """Write the node below ``root`` and return it."""
    _write(root, "opt/kata/VERSION", version + "\n")
    _write(root, KATA_CONFIG, config_text or SEED_CONFIG.read_text())
    _write(root, SHIM, "#!/bin/false\n")
    _write(root, "etc/containerd/config.toml", containerd)
    sandbox, workload = pod_specs()
    for cid, spec in ((SANDBOX_ID, sandbox), (CONTAINER_ID, workload)):
        _write(root, f"{TASKS}/{cid}/config.json", json.dumps(spec))
        _write(root, f"{TASKS}/{cid}/shim-binary-path", SHIM)
    _write(root, f"{TASKS}/runc0000/config.json", json.dumps(sandbox))  # not Kata's
    _write(root, f"{TASKS}/runc0000/shim-binary-path", "/usr/bin/containerd-shim-runc-v2")
    disk = root / "var" / "lib" / "disk.img"
    disk.parent.mkdir(parents=True, exist_ok=True)
    disk.write_bytes(bytes(1 << 20))
    write_fake_sysfs(root / "sys", demo_host(str(disk)))
    return root
