"""``doctor --node`` on FAKE node trees (stand-ins for a Kata node's ``/``): the handlers and
Kata configuration found as Kata finds them, the pods grouped from their bundles, and the
issue's scenario: Kata 3.16.0 drops /dev/xda of the seed's pod, 3.17.0 keeps it."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from podplug.cli import EXIT_DOCTOR_ERROR, main
from podplug.model.enums import KataRuntime
from podplug.node.discover import discover
from podplug.node.handlers import (
    GO_DEFAULTS,
    Engine,
    KataHandler,
    containerd_handlers,
    crio_handlers,
    kata_config_path,
)
from tests.node.fakenode import CONTAINERD_V3, KATA_CONFIG, SANDBOX_ID, fake_node, pod_specs


def _doctor(capsys: pytest.CaptureFixture[str], root: Path, *extra: str) -> tuple[int, str]:
    code = main(["doctor", "--node", "--root", str(root), *extra])
    return code, capsys.readouterr().out


def test_316_drops_the_seed_pods_volume_and_names_the_fix(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out = _doctor(capsys, fake_node(tmp_path / "node", "3.16.0"), "--format", "json")
    assert code == EXIT_DOCTOR_ERROR
    doc = json.loads(out)
    assert doc["format"] == "podplug.doctor.node/v1" and doc["kata"]["version"] == "3.16.0"
    (pod,) = doc["pods"]
    assert (pod["namespace"], pod["name"], pod["sandbox_id"]) == ("ml", "gpu-job", SANDBOX_ID)
    sandbox, trainer = pod["containers"]
    assert sandbox["sandbox"] and trainer["name"] == "trainer"
    assert trainer["config"] == KATA_CONFIG
    drops = [f for f in trainer["findings"] if f["check"] == "kata-version"
             and "drops /dev/xda" in f["message"]]
    assert len(drops) == 1 and drops[0]["severity"] == "ERROR"
    assert "upgrade Kata to 3.17.0" in drops[0]["fix"]


def test_317_drops_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out = _doctor(capsys, fake_node(tmp_path / "node", "3.17.0"))
    assert code == 0, out
    assert " drops " not in out and "keeps all 3 devices" in out
    assert "pod ml/gpu-job container trainer" in out


def test_a_given_version_wins_over_the_installed_one(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out = _doctor(capsys, fake_node(tmp_path / "node", "3.16.0"),
                        "--kata-version", "3.17.0")
    assert code == 0 and "from --kata-version" in out


def test_only_kata_bundles_are_pods(tmp_path: Path) -> None:
    node = discover(str(fake_node(tmp_path / "node")))
    assert [p.name for p in node.pods] == ["gpu-job"]  # the runc bundle is not Kata's
    assert [len(p.containers) for p in node.pods] == [2]
    assert node.pods[0].containers[0].request.is_sandbox
    assert [h.name for h in node.handlers] == ["kata-qemu"]
    assert node.configs[0].path == KATA_CONFIG and "ConfigPath" in node.configs[0].how


def test_containerd_v2_and_imports(tmp_path: Path) -> None:
    v2 = CONTAINERD_V3.replace("version = 3", "version = 2\nimports = "
                               '["/etc/containerd/conf.d/*.toml"]').replace(
        "io.containerd.cri.v1.runtime", "io.containerd.grpc.v1.cri")
    root = fake_node(tmp_path / "node", containerd=v2)
    drop_in = root / "etc/containerd/conf.d/kata-clh.toml"
    drop_in.parent.mkdir(parents=True)
    drop_in.write_text('[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.kata-rs]\n'
                       'runtime_type = "io.containerd.kata-rs.v2"\n'
                       'runtime_path = "/opt/kata/runtime-rs/bin/containerd-shim-kata-v2"\n')
    node = discover(str(root))
    assert [(h.name, h.runtime) for h in node.handlers] == [
        ("kata-qemu", KataRuntime.GO), ("kata-rs", KataRuntime.RUST)]
    assert any("runtime-rs/configuration.toml" in p for p in node.problems)  # none there


def test_version_1_is_named_not_read() -> None:
    found, said = containerd_handlers({"version": 1}, "/etc/containerd/config.toml")
    assert found == () and "versions 2 and 3" in said[0]


def test_crio_handlers() -> None:
    doc = {"crio": {"runtime": {"runtimes": {
        "kata": {"runtime_type": "vm", "runtime_path": "/usr/bin/containerd-shim-kata-v2",
                 "runtime_config_path": "/etc/kata-containers/configuration.toml"},
        "runc": {"runtime_type": "oci", "runtime_path": "/usr/bin/runc"},
        "other-vm": {"runtime_type": "vm", "runtime_path": "/usr/bin/other-shim"}}}}}
    (kata,) = crio_handlers(doc, "/etc/crio/crio.conf")
    assert (kata.name, kata.engine, kata.config_path) == (
        "kata", Engine.CRIO, "/etc/kata-containers/configuration.toml")


def test_kata_order_config_path_then_env_then_defaults() -> None:
    named = KataHandler("kata", Engine.CONTAINERD, "/x.toml", KataRuntime.GO, "src")
    bare = KataHandler("kata", Engine.CONTAINERD, "", KataRuntime.GO, "src")
    assert kata_config_path(named, GO_DEFAULTS[1], lambda _: True)[0] == "/x.toml"
    assert kata_config_path(bare, GO_DEFAULTS[1], lambda _: True)[0] == GO_DEFAULTS[1]
    refused = kata_config_path(bare, "/tmp/evil.toml", lambda _: True)
    assert isinstance(refused, str) and "not a shipped default" in refused
    assert kata_config_path(bare, "", lambda p: p == GO_DEFAULTS[2])[0] == GO_DEFAULTS[2]
    assert "no Kata configuration" in str(kata_config_path(bare, "", lambda _: False))


def test_a_link_out_of_the_root_is_a_problem_not_a_read(tmp_path: Path) -> None:
    root = fake_node(tmp_path / "node")
    secret = tmp_path / "secret.toml"
    secret.write_text("[hypervisor.qemu]\n")
    target = root / KATA_CONFIG.lstrip("/")
    target.unlink()
    target.symlink_to(secret)
    node = discover(str(root))
    assert "leaves the root" in str(node.configs[0].config)
    fifo = root / "run/containerd/io.containerd.runtime.v2.task/k8s.io/fifo0"
    fifo.mkdir()
    os.mkfifo(fifo / "shim-binary-path")
    node = discover(str(root))  # returns: the FIFO is refused without being opened
    assert any("fifo0" in p and "not a regular file" in p for p in node.problems)


def test_crio_pods_run_by_a_kata_handler(tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    root = fake_node(tmp_path / "node", "3.16.0", containerd="version = 3\n")
    (root / "etc/crio/crio.conf.d").mkdir(parents=True)
    (root / "etc/crio/crio.conf.d/99-kata.conf").write_text(
        '[crio.runtime.runtimes.kata]\nruntime_type = "vm"\n'
        'runtime_path = "/opt/kata/bin/containerd-shim-kata-v2"\n'
        f'runtime_config_path = "{KATA_CONFIG}"\n')
    sandbox, workload = pod_specs()
    crio = {"io.kubernetes.cri-o.SandboxID": "crio-sb", "io.kubernetes.pod.name": "gpu-job",
            "io.kubernetes.pod.namespace": "ml"}
    specs = {
        "crio-sb": {**sandbox, "annotations": {**crio, "io.kubernetes.cri-o.ContainerType":
                                               "sandbox",
                                               "io.kubernetes.cri-o.RuntimeHandler": "kata"}},
        "crio-ctr": {**workload, "annotations": {**crio, "io.kubernetes.cri-o.ContainerType":
                                                 "container",
                                                 "io.kubernetes.container.name": "trainer"}},
        "crio-runc": {**sandbox, "annotations": {"io.kubernetes.cri-o.SandboxID": "crio-runc",
                                                 "io.kubernetes.cri-o.ContainerType": "sandbox",
                                                 "io.kubernetes.cri-o.RuntimeHandler": "runc"}},
    }
    for cid, spec in specs.items():
        path = root / "run/containers/storage/overlay-containers" / cid / "userdata"
        path.mkdir(parents=True)
        (path / "config.json").write_text(json.dumps(spec))
    shutil.rmtree(root / "run/containerd")
    node = discover(str(root))
    assert [(h.name, h.engine) for h in node.handlers] == [("kata", Engine.CRIO)]
    assert [(p.namespace, p.name, [c.name for c in p.containers]) for p in node.pods] == [
        ("ml", "gpu-job", ["", "trainer"])]
    code, out = _doctor(capsys, root)
    assert code == EXIT_DOCTOR_ERROR and "drops /dev/xda" in out
