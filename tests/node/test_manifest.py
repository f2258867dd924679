"""``deploy/podplug-doctor.yaml``, the DaemonSet that runs ``doctor --node`` on every node
(``docs/fleet.md``): valid against Kubernetes' own API schemas (``kubernetes_validate``,
strict, so an unknown field fails); its init container ``doctor`` mounts host paths
discovery reads and nothing else (exactly those of the containerd + kata-deploy layout),
each read-only at ``/host<path>``, with no privilege, prints the report and ends; an idle
container with nothing of the host keeps the pod. The guide's recipe for other layouts runs
as printed and its copies pass the same checks. Every check also runs on a broken copy of
the manifest, to show that it can fail."""

from __future__ import annotations

import contextlib
import copy
import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from podplug.node.discover import CONTAINERD_TASKS, CRIO_CONTAINERS, READ_PATHS
from podplug.node.podresources import KUBELET_SOCKET, KUBELET_SOCKET_DIR

REPO = Path(__file__).resolve().parents[2]
MANIFEST = REPO / "deploy" / "podplug-doctor.yaml"
GUIDE = REPO / "docs" / "fleet.md"
#: 1.31: the oldest release the manifest supports (``recursiveReadOnly`` on by default);
#: 1.33: the field's GA. Both ship with kubernetes-validate 1.33 and later.
SCHEMA_VERSIONS = ("1.31", "1.33")
DOCTOR = "podplug doctor --node --root /host --format json"
#: the only host paths the DaemonSet, or a copy for another layout, may mount: what discovery
#: reads, and the kubelet's PodResources directory (the directory, not the socket file)
HOST_PATHS = frozenset(READ_PATHS) | {KUBELET_SOCKET_DIR}
#: what the shipped DaemonSet mounts, exactly: the layout of containerd with Kata from
#: kata-deploy, the most common on Kubernetes. Every such node has each of these directories,
#: and hostPath type Directory keeps the pod from starting on a node that lacks one, so the
#: other READ_PATHS (CRI-O's, and Kata's from distribution packages, absent on such a node)
#: stay out of it and are added by a copy for the nodes of their layout (docs/fleet.md).
SHIPPED_PATHS = frozenset({"/etc/containerd", "/opt/kata", CONTAINERD_TASKS, "/sys",
                           KUBELET_SOCKET_DIR})
LAYOUT_LABEL = "podplug/doctor-layout"
#: the shipped DaemonSet's own value of LAYOUT_LABEL (its pods', not a node's)
SHIPPED_LAYOUT = "default"
DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")

Doc = dict[str, Any]


def _documents() -> list[Doc]:
    with MANIFEST.open() as f:
        docs = list(yaml.safe_load_all(f))
    assert all(isinstance(d, dict) for d in docs), f"{MANIFEST}: an empty or non-mapping document"
    return docs


def _daemonset(docs: list[Doc]) -> Doc:
    found = [d for d in docs if d.get("kind") == "DaemonSet"]
    assert len(found) == 1, f"{MANIFEST}: expected one DaemonSet, found {len(found)}"
    return found[0]


def _pod(ds: Doc) -> Doc:
    pod: Doc = ds["spec"]["template"]["spec"]
    return pod


def _containers(ds: Doc) -> list[Doc]:
    pod = _pod(ds)
    return [*pod.get("initContainers", []), *pod["containers"]]


def _doctor(ds: Doc) -> Doc:
    """The init container that runs the doctor."""
    found = [c for c in _pod(ds).get("initContainers", []) if c["name"] == "doctor"]
    assert len(found) == 1, (
        "the doctor runs as the init container 'doctor': it ends after the report, and its "
        "host mounts with it")
    doctor: Doc = found[0]
    return doctor


def _idle(ds: Doc) -> Doc:
    """The one app container, which keeps the pod once the report is out."""
    containers = _pod(ds)["containers"]
    assert len(containers) == 1, f"one app container (idle), not {len(containers)}"
    idle: Doc = containers[0]
    return idle


def _script(container: Doc) -> str:
    assert container.get("command") == ["/bin/sh", "-c"], container.get("command")
    assert len(container.get("args", [])) == 1, container.get("args")
    script: str = container["args"][0]
    return script


# -- the checks, each run on the manifest and on broken copies --------------------------------


def check_volumes(ds: Doc, expected: frozenset[str] = SHIPPED_PATHS) -> None:
    """Every volume a hostPath of ``type: Directory`` of a path discovery reads; the paths
    exactly ``expected``."""
    volumes = _pod(ds)["volumes"]
    names = [v["name"] for v in volumes]
    assert len(set(names)) == len(names), f"volume names repeat: {names}"
    for v in volumes:
        assert DNS_LABEL.fullmatch(v["name"]), f"volume name {v['name']!r} is not a DNS label"
        assert set(v) == {"name", "hostPath"}, (
            f"volume {v['name']}: only hostPath volumes of the host paths discovery reads "
            f"belong here, found {sorted(set(v) - {'name'})}")
        assert set(v["hostPath"]) <= {"path", "type"}, f"volume {v['name']}: {v['hostPath']}"
        assert v["hostPath"].get("type") == "Directory", (
            f"volume {v['name']} ({v['hostPath']['path']}): type must be Directory; with no "
            "type the runtime, with DirectoryOrCreate the kubelet, creates a missing path "
            "on the host (docs/fleet.md)")
    paths = [v["hostPath"]["path"] for v in volumes]
    assert len(set(paths)) == len(paths), f"host paths mounted twice: {paths}"
    unread = set(paths) - HOST_PATHS
    assert not unread, (
        f"host paths mounted that discovery does not read: {sorted(unread)}; the DaemonSet "
        f"mounts only paths of podplug.node.discover.READ_PATHS {list(READ_PATHS)} and "
        f"{KUBELET_SOCKET_DIR}")
    extra, missing = set(paths) - expected, expected - set(paths)
    assert not extra, (
        f"host paths mounted that the layout's nodes may lack: {sorted(extra)}; with type "
        f"Directory the pod does not start there (mounted must be {sorted(expected)})")
    assert not missing, (
        f"host paths of the layout the DaemonSet does not mount: {sorted(missing)}; the "
        f"doctor would report them absent (mounted must be {sorted(expected)})")


def check_mounts(ds: Doc) -> None:
    """Each volume mounted once, by the doctor only, at ``/host<path>``, read-only all the
    way down."""
    by_name = {v["name"]: v["hostPath"]["path"] for v in _pod(ds)["volumes"]}
    for container in _containers(ds):
        for m in container.get("volumeMounts", []):
            where = f"container {container['name']}, mount {m['name']}"
            assert m["name"] in by_name, f"{where}: no such volume"
            assert m.get("readOnly") is True, f"{where}: readOnly must be true"
            assert m.get("recursiveReadOnly") == "Enabled", (
                f"{where}: recursiveReadOnly must be Enabled, or every submount below the "
                "host path stays writable (docs/fleet.md, Privileges)")
            assert m.get("mountPropagation", "None") == "None", (
                f"{where}: mountPropagation {m['mountPropagation']!r} (recursive read-only "
                "mounts take none)")
            assert "subPath" not in m and "subPathExpr" not in m, (
                f"{where}: a subPath is created on the host when missing")
            assert m["mountPath"] == "/host" + by_name[m["name"]], (
                f"{where}: at {m['mountPath']}, not /host{by_name[m['name']]}: discovery "
                "reads the host's paths below --root /host")
    mounted = [m["name"] for m in _doctor(ds).get("volumeMounts", [])]
    assert sorted(mounted) == sorted(by_name), (
        f"the doctor mounts {sorted(mounted)}, the volumes are {sorted(by_name)}")
    for container in _containers(ds):
        if container is not _doctor(ds):
            assert not container.get("volumeMounts"), (
                f"container {container['name']} mounts host paths; only the doctor, and only "
                "while it runs, may")


def check_command(ds: Doc) -> None:
    """The doctor runs with the node mounted at ``/host``, in JSON, and ends; the idle
    container waits (what the scripts do when run: ``test_the_*_script_*``)."""
    doctor = _script(_doctor(ds))
    assert DOCTOR in " ".join(doctor.split()), f"the doctor does not run {DOCTOR!r}: {doctor!r}"
    assert "sleep" not in doctor and "wait" not in doctor.split(), (
        "the doctor's script must end after the report, releasing the host's mounts")
    idle = _script(_idle(ds))
    assert "sleep infinity" in idle and "podplug" not in idle, (
        f"the idle container must only wait: a DaemonSet restarts a container that exits: "
        f"{idle!r}")


def check_security(ds: Doc) -> None:
    """No capability, no privilege, no escalation, read-only root, RuntimeDefault; uid 0 for
    the doctor only."""
    pod_sc = _pod(ds).get("securityContext", {})
    for container in _containers(ds):
        sc = container.get("securityContext", {})
        who = f"container {container['name']}"
        assert sc.get("privileged") is not True, f"{who}: privileged"
        assert sc.get("allowPrivilegeEscalation") is False, (
            f"{who}: allowPrivilegeEscalation must be false")
        assert sc.get("readOnlyRootFilesystem") is True, f"{who}: readOnlyRootFilesystem"
        caps = sc.get("capabilities", {})
        assert caps.get("drop") == ["ALL"], f"{who}: capabilities must drop ALL, not {caps}"
        assert not caps.get("add"), (
            f"{who}: adds {caps['add']}; uid 0 reads root's files and connects to root's "
            "socket as their owner, and DAC_READ_SEARCH would also let open_by_handle_at "
            "reach every file of the host (docs/fleet.md, Privileges)")
        seccomp = sc.get("seccompProfile", pod_sc.get("seccompProfile", {}))
        assert seccomp.get("type") == "RuntimeDefault", f"{who}: seccomp {seccomp}"
        uid = sc.get("runAsUser", pod_sc.get("runAsUser"))
        if container is _doctor(ds):
            assert uid == 0, f"{who}: runs as {uid}; only root's uid owns what discovery reads"
        else:
            assert uid not in (None, 0) and sc.get("runAsNonRoot") is True, (
                f"{who}: reads nothing, so it runs as a non-root uid, not {uid}")


def check_pod(ds: Doc) -> None:
    """No host namespace, no token, no host port, every taint tolerated."""
    pod = _pod(ds)
    for field in ("hostPID", "hostIPC", "hostNetwork"):
        assert pod.get(field) is False, f"{field} must be false"
    assert pod.get("automountServiceAccountToken") is False, (
        "the doctor never talks to the API server: automountServiceAccountToken false")
    assert {"operator": "Exists"} in pod.get("tolerations", []), (
        "one toleration with operator Exists and no key or effect, so every node runs it")
    assert pod.get("restartPolicy", "Always") == "Always"
    for container in _containers(ds):
        for port in container.get("ports", []):
            assert "hostPort" not in port, f"container {container['name']}: hostPort"


CHECKS = (check_volumes, check_mounts, check_command, check_security, check_pod)


# -- the manifest ----------------------------------------------------------------------------


@pytest.mark.parametrize("version", SCHEMA_VERSIONS)
def test_every_document_is_valid_against_the_kubernetes_schema(version: str) -> None:
    docs = _documents()
    assert [d["kind"] for d in docs] == ["Namespace", "ServiceAccount", "DaemonSet"]
    for doc in docs:
        try:
            used = kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            where = ".".join(str(p) for p in exc.path)
            pytest.fail(f"{doc['kind']} {doc['metadata']['name']}: {where}: {exc.message}")
        assert used == version, f"validated against {used}, not the {version} schema asked for"


@pytest.mark.parametrize("check", CHECKS, ids=lambda c: c.__name__)
def test_daemonset(check: Callable[[Doc], None]) -> None:
    check(_daemonset(_documents()))


def test_the_objects_fit_together() -> None:
    namespace, account, ds = _documents()
    name = namespace["metadata"]["name"]
    assert account["metadata"]["namespace"] == ds["metadata"]["namespace"] == name
    assert account.get("automountServiceAccountToken") is False
    assert _pod(ds)["serviceAccountName"] == account["metadata"]["name"]
    # hostPath volumes are outside the baseline Pod Security level
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "privileged"
    # the API server (not the schema) refuses a selector the template does not match
    labels = ds["spec"]["template"]["metadata"]["labels"]
    selector = ds["spec"]["selector"]["matchLabels"]
    assert selector.items() <= labels.items(), f"selector {selector} misses labels {labels}"
    assert labels["app"] == "podplug-doctor", "docs/fleet.md selects -l app=podplug-doctor"
    # the shipped DaemonSet leaves the nodes labelled with a layout to their own copies
    assert selector[LAYOUT_LABEL] == labels[LAYOUT_LABEL] == SHIPPED_LAYOUT
    terms = _pod(ds)["affinity"]["nodeAffinity"][
        "requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    assert terms == [{"matchExpressions": [{"key": LAYOUT_LABEL, "operator": "DoesNotExist"}]}]
    assert KUBELET_SOCKET.startswith(KUBELET_SOCKET_DIR + "/")


def test_the_shipped_layout_is_paths_discovery_reads() -> None:
    assert SHIPPED_PATHS <= HOST_PATHS, sorted(SHIPPED_PATHS - HOST_PATHS)
    assert {CONTAINERD_TASKS, CRIO_CONTAINERS} <= HOST_PATHS


# -- the validator and the checks can fail ----------------------------------------------------


def _broken(mutate: Callable[[Doc], object]) -> Doc:
    ds = copy.deepcopy(_daemonset(_documents()))
    mutate(ds)
    return ds


def _set(path: str, value: object) -> Callable[[Doc], None]:
    """Set ``value`` at a dotted path below the DaemonSet (``pod.`` is the pod spec,
    ``doctor.`` and ``idle.`` its containers); ``value`` None deletes the key."""
    def mutate(ds: Doc) -> None:
        first, *rest = path.split(".")
        node: Any = {"pod": _pod(ds), "doctor": _doctor(ds), "idle": _idle(ds),
                     "spec": ds["spec"]}[first]
        for key in rest[:-1]:
            node = node[int(key)] if isinstance(node, list) else node.setdefault(key, {})
        if value is None:
            node.pop(rest[-1], None)
        elif isinstance(node, list):
            node[int(rest[-1])] = value
        else:
            node[rest[-1]] = value
    return mutate


@pytest.mark.parametrize(("mutate", "where", "message"), [
    pytest.param(_set("pod.privileged", False), "spec.template.spec",
                 "'privileged' was unexpected", id="container field in the pod spec"),
    pytest.param(_set("pod.volumes.0.hostPath.readOnly", True),
                 "spec.template.spec.volumes.0.hostPath", "'readOnly' was unexpected",
                 id="readOnly on a hostPath"),
    pytest.param(_set("doctor.volumeMounts.0.readonly", True),
                 "spec.template.spec.initContainers.0.volumeMounts.0",
                 "'readonly' was unexpected", id="misspelt readOnly"),
    pytest.param(_set("idle.securityContext.capabilities.remove", ["ALL"]),
                 "spec.template.spec.containers.0.securityContext.capabilities",
                 "'remove' was unexpected", id="unknown capabilities field"),
    pytest.param(_set("spec.template.spec.hostPIDs", False), "spec.template.spec",
                 "'hostPIDs' was unexpected", id="misspelt hostPID"),
    pytest.param(_set("spec.updateStrategy.maxUnavailable", 1), "spec.updateStrategy",
                 "'maxUnavailable' was unexpected", id="field one level too high"),
    pytest.param(_set("doctor.volumeMounts.0.readOnly", "true"),
                 "spec.template.spec.initContainers.0.volumeMounts.0.readOnly",
                 "is not of type 'boolean'", id="string for a boolean"),
    pytest.param(_set("doctor.name", None), "spec.template.spec.initContainers.0",
                 "'name' is a required property", id="container without a name"),
])
def test_the_validator_refuses_a_broken_manifest(mutate: Callable[[Doc], None], where: str,
                                                 message: str) -> None:
    ds = _broken(mutate)
    for version in SCHEMA_VERSIONS:
        with pytest.raises(kubernetes_validate.ValidationError) as caught:
            kubernetes_validate.validate(ds, version, strict=True)
        assert ".".join(str(p) for p in caught.value.path) == where
        assert message in caught.value.message


def test_only_strict_validation_refuses_unknown_fields() -> None:
    """What strict mode adds: the schema without it lets an unknown field through."""
    ds = _broken(_set("pod.privileged", False))
    assert kubernetes_validate.validate(ds, SCHEMA_VERSIONS[-1], strict=False)
    with pytest.raises(kubernetes_validate.ValidationError, match="privileged"):
        kubernetes_validate.validate(ds, SCHEMA_VERSIONS[-1], strict=True)


def _add_volume(path: str, mount: bool = True, **source: object) -> Callable[[Doc], None]:
    def mutate(ds: Doc) -> None:
        name = "extra"
        _pod(ds)["volumes"].append(
            {"name": name, **(source or {"hostPath": {"path": path, "type": "Directory"}})})
        if mount:
            _doctor(ds)["volumeMounts"].append({"name": name, "mountPath": "/host" + path,
                                                "readOnly": True,
                                                "recursiveReadOnly": "Enabled"})
    return mutate


def _drop_path(path: str) -> Callable[[Doc], None]:
    def mutate(ds: Doc) -> None:
        pod = _pod(ds)
        name = next(v["name"] for v in pod["volumes"] if v["hostPath"]["path"] == path)
        pod["volumes"] = [v for v in pod["volumes"] if v["name"] != name]
        doctor = _doctor(ds)
        doctor["volumeMounts"] = [m for m in doctor["volumeMounts"] if m["name"] != name]
    return mutate


def _volume_of(path: str, key: str, value: object) -> Callable[[Doc], None]:
    def mutate(ds: Doc) -> None:
        volume = next(v for v in _pod(ds)["volumes"] if v["hostPath"]["path"] == path)
        if value is None:
            volume["hostPath"].pop(key)
        else:
            volume["hostPath"][key] = value
    return mutate


def _move_doctor_to_containers(ds: Doc) -> None:
    pod = _pod(ds)
    pod["containers"] = pod.pop("initContainers")


BROKEN = [
    (check_volumes, _add_volume("/etc"), "a host path discovery does not read"),
    (check_volumes, _add_volume("/var/lib/kubelet"), "the kubelet's whole directory"),
    (check_volumes, _add_volume("/usr/bin"), "kata-runtime's directory"),
    (check_volumes, _add_volume("/etc/crio"), "a READ_PATHS entry of another layout"),
    (check_volumes, _add_volume(CRIO_CONTAINERS), "CRI-O's bundles on containerd nodes"),
    (check_volumes, _drop_path("/sys"), "a shipped path not mounted"),
    (check_volumes, _drop_path(CONTAINERD_TASKS), "containerd's bundles not mounted"),
    (check_volumes, _drop_path(KUBELET_SOCKET_DIR), "the kubelet's directory not mounted"),
    (check_volumes, _volume_of(KUBELET_SOCKET_DIR, "path", KUBELET_SOCKET),
     "the socket file instead of its directory"),
    (check_volumes, _volume_of("/etc/containerd", "type", "DirectoryOrCreate"),
     "DirectoryOrCreate"),
    (check_volumes, _volume_of("/etc/containerd", "type", None), "no hostPath type"),
    (check_volumes, _add_volume("/tmp", emptyDir={}), "an emptyDir"),
    (check_mounts, _set("doctor.volumeMounts.0.readOnly", False), "a writable mount"),
    (check_mounts, _set("doctor.volumeMounts.0.readOnly", None), "readOnly unset"),
    (check_mounts, _set("doctor.volumeMounts.0.recursiveReadOnly", "IfPossible"),
     "recursive read-only only if possible"),
    (check_mounts, _set("doctor.volumeMounts.0.mountPath", "/etc/containerd"),
     "mounted over the container's own path"),
    (check_mounts, _set("doctor.volumeMounts.0.subPath", "x"), "a subPath"),
    (check_mounts, _set("doctor.volumeMounts.0.mountPropagation", "HostToContainer"),
     "propagation"),
    (check_mounts, _add_volume("/etc/kubernetes", mount=False), "a volume not mounted"),
    (check_mounts, _set("idle.volumeMounts", [{"name": "sys", "mountPath": "/host/sys",
                                                "readOnly": True,
                                                "recursiveReadOnly": "Enabled"}]),
     "the idle container mounts a host path"),
    (check_command, _set("doctor.args", ["podplug doctor --node --format json"]),
     "no --root /host"),
    (check_command, _set("doctor.args", ["podplug doctor --node --root /host"]), "text format"),
    (check_command, _set("doctor.args", [DOCTOR + "\nsleep infinity"]),
     "the doctor keeps the host's mounts"),
    (check_command, _set("idle.args", ["true"]), "the idle container exits"),
    (check_command, _set("idle.args", [DOCTOR + "\nsleep infinity"]),
     "the idle container runs the doctor"),
    (check_command, _set("doctor.command", None), "no shell"),
    (check_command, _move_doctor_to_containers, "the doctor as an app container"),
    (check_security, _set("doctor.securityContext.privileged", True), "privileged"),
    (check_security, _set("doctor.securityContext.allowPrivilegeEscalation", None),
     "escalation allowed by default"),
    (check_security, _set("doctor.securityContext.allowPrivilegeEscalation", True),
     "escalation allowed"),
    (check_security, _set("doctor.securityContext.readOnlyRootFilesystem", False),
     "writable root filesystem"),
    (check_security, _set("doctor.securityContext.capabilities.drop", ["NET_RAW"]),
     "capabilities kept"),
    (check_security, _set("doctor.securityContext.capabilities.add", ["DAC_READ_SEARCH"]),
     "a capability added"),
    (check_security, _set("doctor.securityContext.seccompProfile", {"type": "Unconfined"}),
     "seccomp unconfined"),
    (check_security, _set("doctor.securityContext.runAsUser", 65534), "not root"),
    (check_security, _set("idle.securityContext.runAsUser", 0), "idle as root"),
    (check_security, _set("idle.securityContext.capabilities.add", ["SYS_ADMIN"]),
     "idle with a capability"),
    (check_security, _set("idle.securityContext.privileged", True), "idle privileged"),
    (check_pod, _set("pod.hostPID", True), "host PID namespace"),
    (check_pod, _set("pod.hostNetwork", True), "host network"),
    (check_pod, _set("pod.automountServiceAccountToken", None), "a token"),
    (check_pod, _set("pod.tolerations", [{"key": "gpu", "operator": "Exists"}]),
     "one taint tolerated"),
]


@pytest.mark.parametrize(("check", "mutate"), [pytest.param(c, m, id=f"{c.__name__}: {why}")
                                               for c, m, why in BROKEN])
def test_each_check_fails_on_a_broken_copy(check: Callable[[Doc], None],
                                           mutate: Callable[[Doc], None]) -> None:
    with pytest.raises(AssertionError):
        check(_broken(mutate))


def test_every_check_has_a_broken_copy() -> None:
    assert {c for c, _, _ in BROKEN} == set(CHECKS)


# -- the containers' scripts, run for real with a stand-in podplug ---------------------------


def _run(script: str, tmp_path: Path) -> tuple[str, str, bool, int]:
    """``script`` under /bin/sh as the container runs it, with a FAKE ``podplug`` first on
    PATH (it prints its arguments as a JSON document and exits 11, as the doctor does for an
    error): its stdout, its stderr, whether it still runs after a second, and its exit
    status (after SIGTERM if it was still running)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    fake = bin_dir / "podplug"
    fake.write_text('#!/bin/sh\nprintf \'{\\n  "argv": "%s"\\n}\\n\' "$*"\nexit 11\n')
    fake.chmod(0o755)
    out, err = tmp_path / "stdout", tmp_path / "stderr"
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
           "NODE_NAME": "node-a"}
    with out.open("wb") as o, err.open("wb") as e:
        proc = subprocess.Popen(["/bin/sh", "-c", script], stdout=o, stderr=e, env=env,
                                start_new_session=True)
    try:
        try:
            proc.wait(timeout=1)
            alive = False
        except subprocess.TimeoutExpired:
            alive = True
            proc.send_signal(signal.SIGTERM)
        status = proc.wait(timeout=5)
    finally:
        # the session started here, with whatever the script left behind (a ``sleep``)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    return out.read_text(), err.read_text(), alive, status


linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="runs the containers' /bin/sh scripts")


@linux_only
def test_the_doctors_script_prints_one_report_and_ends(tmp_path: Path) -> None:
    out, err, alive, status = _run(_script(_doctor(_daemonset(_documents()))), tmp_path)
    assert json.loads(out) == {"argv": DOCTOR.removeprefix("podplug ")}, (
        f"stdout must hold the report and nothing else: {out!r}")
    assert err == "podplug-doctor: node node-a done, exit status 11\n", err
    assert not alive, "the doctor's script must end, releasing the host's mounts"
    assert status == 0, (
        f"the doctor's script ends with {status}: an init container that fails is restarted")


@linux_only
def test_the_idle_script_waits_until_sigterm(tmp_path: Path) -> None:
    out, err, alive, status = _run(_script(_idle(_daemonset(_documents()))), tmp_path)
    assert alive, "the idle container exited: the DaemonSet would restart it"
    assert status == 0, f"SIGTERM should end the wait with status 0, not {status}"
    assert (out, err) == ("", "")


@linux_only
def test_the_script_checks_can_fail(tmp_path: Path) -> None:
    """The same runs, on scripts that do it wrong: a doctor that stays, an idle that ends."""
    doctor = _script(_doctor(_daemonset(_documents())))
    _, _, alive, _ = _run(doctor + "sleep infinity\n", tmp_path)
    assert alive
    _, _, alive, status = _run("sleep 0", tmp_path)
    assert not alive and status == 0
    _, _, _, status = _run(doctor + "exit 11\n", tmp_path)
    assert status == 11


# -- the guide --------------------------------------------------------------------------------


def test_the_guide_says_why_each_path_is_mounted() -> None:
    """A row per path discovery reads, saying whether the shipped manifest mounts it."""
    guide = GUIDE.read_text()
    for path in sorted(HOST_PATHS):
        shipped = "yes" if path in SHIPPED_PATHS else "no"
        assert f"| `{path}` | {shipped} |" in guide, (
            f"{GUIDE.name}: no row `| `{path}` | {shipped} |` in the mount table")
    image = _doctor(_daemonset(_documents()))["image"]
    assert f"s|{image}|" in guide, f"{GUIDE.name} does not replace the image {image}"


# -- the guide's recipe for nodes of another layout -------------------------------------------


def _layout_snippet() -> str:
    match = re.search(r"python3 - deploy/podplug-doctor\.yaml [^\n]*<<'EOF'[^\n]*\n(.*?)\nEOF\n",
                      GUIDE.read_text(), re.S)
    assert match, f"{GUIDE.name}: no layout snippet (python3 - deploy/podplug-doctor.yaml ...)"
    return match.group(1)


def _layout_copy(layout: str, *changes: str) -> subprocess.CompletedProcess[str]:
    """docs/fleet.md's snippet, run as printed there, from the repository's top directory."""
    return subprocess.run([sys.executable, "-", "deploy/podplug-doctor.yaml", layout, *changes],
                          input=_layout_snippet(), capture_output=True, text=True, cwd=REPO,
                          check=False)


def _expected(changes: tuple[str, ...]) -> tuple[frozenset[str], str]:
    """The paths a copy with ``changes`` mounts, and the release it passes ('' for none)."""
    paths, version = set(SHIPPED_PATHS), ""
    for change in changes:
        if change.startswith("--kata-version="):
            version = change.removeprefix("--kata-version=")
        elif change.startswith("+"):
            paths.add(change[1:])
        else:
            paths.remove(change.removeprefix("-"))
    return frozenset(paths), version


def _check_copy(layout: str, changes: tuple[str, ...]) -> Doc:
    """The copy for ``layout``: strictly valid, every check passes, mounting the shipped paths
    with ``changes``, for the nodes labelled ``layout`` only, otherwise the same."""
    done = _layout_copy(layout, *changes)
    assert done.returncode == 0 and not done.stderr, done.stderr
    ds: Doc = yaml.safe_load(done.stdout)
    for version in SCHEMA_VERSIONS:
        kubernetes_validate.validate(ds, version, strict=True)
    expected, release = _expected(changes)
    check_volumes(ds, expected=expected)
    for check in (check_mounts, check_command, check_security, check_pod):
        check(ds)
    assert ds["metadata"]["name"] == f"podplug-doctor-{layout}"
    assert ds["spec"]["selector"]["matchLabels"] == {"app": "podplug-doctor",
                                                     LAYOUT_LABEL: layout}
    assert ds["spec"]["template"]["metadata"]["labels"][LAYOUT_LABEL] == layout
    assert _pod(ds)["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][
        "nodeSelectorTerms"] == [{"matchExpressions": [
            {"key": LAYOUT_LABEL, "operator": "In", "values": [layout]}]}]
    script = " ".join(_script(_doctor(ds)).split())
    assert (f"{DOCTOR} --kata-version {release}" in script) == bool(release), script
    assert ("--kata-version" in script) == bool(release), script
    # the rest is the shipped DaemonSet's: only the volumes, mounts, names, labels, node
    # affinity and the doctor's script may differ
    same, original = copy.deepcopy(ds), copy.deepcopy(_daemonset(_documents()))
    for doc in (same, original):
        doc["metadata"].pop("name")
        doc["spec"].pop("selector")
        doc["spec"]["template"]["metadata"]["labels"].pop(LAYOUT_LABEL)
        pod = _pod(doc)
        pod.pop("volumes")
        pod.pop("affinity")
        _doctor(doc).pop("volumeMounts")
        _doctor(doc).pop("args")
    assert same == original
    return ds


#: CRI-O nodes with kata-deploy: CRI-O's configuration and bundles instead of containerd's
CRIO_CHANGES = ("+/etc/crio", "+" + CRIO_CONTAINERS, "-" + CONTAINERD_TASKS, "-/etc/containerd")


@pytest.mark.parametrize(("layout", "changes"), [
    pytest.param("crio-kata-deploy", CRIO_CHANGES, id="CRI-O"),
    pytest.param("old-containerd", (), id="no change (an older runtime's pool)"),
    pytest.param("crio-kata-packages",
                 (*CRIO_CHANGES, "+/usr/share/defaults/kata-containers",
                  "+/etc/kata-containers", "-/opt/kata", "--kata-version=3.16.0"),
                 id="CRI-O, Kata from packages, every READ_PATHS entry of theirs"),
    pytest.param("readd", ("-" + CONTAINERD_TASKS, "+" + CONTAINERD_TASKS), id="removed, added"),
])
def test_the_guides_layout_copy_keeps_every_check(layout: str, changes: tuple[str, ...]) -> None:
    _check_copy(layout, changes)


def _guide_examples() -> list[tuple[str, tuple[str, ...]]]:
    found = re.findall(r'^LAYOUT=(\S+)\nCHANGES="([^"\n]*)"$', GUIDE.read_text(), re.M)
    return [(layout, tuple(changes.split())) for layout, changes in found]


def test_the_guides_examples_make_valid_copies() -> None:
    examples = _guide_examples()
    assert ("crio-kata-deploy", CRIO_CHANGES) in examples, (
        f"{GUIDE.name}: no CRI-O example (LAYOUT=crio-kata-deploy, CHANGES=...): {examples}")
    assert any(any(c.startswith("--kata-version=") for c in changes)
               for _, changes in examples), f"{GUIDE.name}: no example with --kata-version"
    for layout, changes in examples:
        _check_copy(layout, changes)


@linux_only
def test_the_copys_doctor_passes_the_release(tmp_path: Path) -> None:
    ds = _check_copy("containerd-kata-packages",
                     ("+/usr/share/defaults/kata-containers", "-/opt/kata",
                      "--kata-version=3.16.0"))
    out, err, alive, status = _run(_script(_doctor(ds)), tmp_path)
    assert json.loads(out) == {
        "argv": DOCTOR.removeprefix("podplug ") + " --kata-version 3.16.0"}, out
    assert err == "podplug-doctor: node node-a done, exit status 11\n", err
    assert not alive and status == 0


@pytest.mark.parametrize(("layout", "changes", "named"), [
    pytest.param("x", ("+/etc/nope",), "/etc/nope", id="a path discovery does not read"),
    pytest.param("x", ("+/usr/bin",), "/usr/bin", id="kata-runtime's directory"),
    pytest.param("x", ("+/etc",), "/etc", id="the parent of a path discovery reads"),
    pytest.param("x", ("+/etc/crio/",), "/etc/crio/", id="a trailing slash"),
    pytest.param("x", ("+/etc/containerd",), "/etc/containerd", id="a path mounted already"),
    pytest.param("x", ("-" + CRIO_CONTAINERS,), CRIO_CONTAINERS,
                 id="removing a path not mounted"),
    pytest.param("x", ("/etc/crio",), "/etc/crio", id="neither + nor -"),
    pytest.param("x", ("--kata-version=3.16",), "3.16", id="a release not X.Y.Z"),
    pytest.param("x", ("--kata-version=3.16.0;reboot",), "reboot",
                 id="a shell command in the release"),
    pytest.param(SHIPPED_LAYOUT, (), SHIPPED_LAYOUT, id="the shipped DaemonSet's layout"),
    pytest.param("CRI_O", (), "CRI_O", id="a layout that is no label value"),
])
def test_the_guides_layout_copy_refuses(layout: str, changes: tuple[str, ...],
                                        named: str) -> None:
    # after a change that is right: a refusal leaves nothing, not a copy half made
    done = _layout_copy(layout, "+/etc/crio", *changes)
    assert done.returncode == 1, (done.returncode, done.stderr)
    assert done.stdout == "", "a refused copy must not be written"
    assert done.stderr.count("\n") == 1 and named in done.stderr, done.stderr
