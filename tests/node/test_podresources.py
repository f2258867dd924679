"""kubelet's PodResources API through a real gRPC client and a real gRPC server on a unix
socket, the server answering with recorded answers (``tests/fixtures/podresources``) in the
API's own messages (``podplug/node/podresources.proto``)."""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import json_format

from podplug.cli import EXIT_DOCTOR_ERROR, main
from podplug.errors import HostError
from podplug.node.podresources import (
    KUBELET_SOCKET,
    protos_and_services,
    read_pod_resources,
    socket_below,
)
from tests.node.fakenode import fake_node
from tests.support import REPO

RECORDED = REPO / "tests" / "fixtures" / "podresources"


class _Recorded:
    """A PodResourcesLister that answers with the recorded messages (or fails)."""

    def __init__(self, fail: bool = False) -> None:
        self.protos, _ = protos_and_services()
        self.fail = fail

    def _load(self, name: str, message: Any) -> Any:
        return json_format.ParseDict(json.loads((RECORDED / name).read_text()), message())

    def List(self, request: Any, context: Any) -> Any:  # the API names the methods
        if self.fail:
            context.abort(grpc.StatusCode.UNAVAILABLE, "kubelet is restarting")
        return self._load("list.json", self.protos.ListPodResourcesResponse)

    def GetAllocatableResources(self, request: Any, context: Any) -> Any:
        return self._load("allocatable.json", self.protos.AllocatableResourcesResponse)

    def Get(self, request: Any, context: Any) -> Any:  # beta since Kubernetes 1.34
        context.abort(grpc.StatusCode.UNIMPLEMENTED, "not recorded")


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    """A short directory: a unix socket's path is at most 107 bytes (pytest's are long)."""
    with tempfile.TemporaryDirectory(prefix="pp-", dir="/tmp") as tmp:
        yield Path(tmp)


@pytest.fixture
def kubelet(short_tmp: Path, request: pytest.FixtureRequest) -> Iterator[Path]:
    """A node tree whose kubelet socket is served by a real gRPC server."""
    root = fake_node(short_tmp / "node", "3.16.0")
    sock = root / KUBELET_SOCKET.lstrip("/")
    sock.parent.mkdir(parents=True)
    _, services = protos_and_services()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    services.add_PodResourcesListerServicer_to_server(
        _Recorded(fail=getattr(request, "param", False)), server)
    server.add_insecure_port(f"unix://{sock}")
    server.start()
    yield root
    server.stop(grace=None)


def test_list_and_allocatable_are_read(kubelet: Path) -> None:
    path = socket_below(str(kubelet))
    assert path is not None
    answers = read_pod_resources(path)
    pod = answers.pod("ml", "gpu-job")
    assert pod is not None
    trainer = pod.container("trainer")
    assert trainer is not None
    assert [(d.resource, d.device_ids, d.numa_nodes) for d in trainer.devices] == [
        ("nvidia.com/pgpu", ("0000:41:00.0",), (0,))]
    assert trainer.cdi_devices == ("example.com/blk=xda",)
    assert [d.device_ids for d in answers.allocatable] == [("0000:41:00.0", "0000:42:00.0")]
    web = answers.pod("default", "web")
    assert web is not None and web.containers[0].empty


def test_doctor_node_names_what_the_kubelet_assigned(
        kubelet: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["doctor", "--node", "--root", str(kubelet), "--format", "json"])
    doc = json.loads(capsys.readouterr().out)
    assert code == EXIT_DOCTOR_ERROR  # 3.16.0 still drops /dev/xda
    kube = [f for f in doc["findings"] if f["check"] == "kubelet"]
    assert kube[0]["severity"] == "OK"
    assert "2 pod(s)" in kube[0]["message"]
    (pod,) = doc["pods"]
    trainer = pod["containers"][1]
    assert trainer["assigned"]["devices"][0]["device_ids"] == ["0000:41:00.0"]
    assert trainer["assigned"]["cdi_devices"] == ["example.com/blk=xda"]
    assert any(f["check"] == "kubelet" and "nvidia.com/pgpu 0000:41:00.0" in f["message"]
               for f in trainer["findings"])
    # the scenario, with the kubelet answering: 3.16.0 drops the pod's /dev/xda
    (drop,) = [f for f in trainer["findings"] if "drops /dev/xda" in f["message"]]
    assert (pod["namespace"], pod["name"], trainer["name"]) == ("ml", "gpu-job", "trainer")
    assert drop["severity"] == "ERROR" and "upgrade Kata to 3.17.0" in drop["fix"]


@pytest.mark.parametrize("kubelet", [True], indirect=True)
def test_a_kubelet_error_is_one_line(kubelet: Path, capsys: pytest.CaptureFixture[str]
                                     ) -> None:
    path = socket_below(str(kubelet))
    assert path is not None
    with pytest.raises(HostError) as caught:
        read_pod_resources(path)
    assert "UNAVAILABLE: kubelet is restarting" in str(caught.value)
    assert "\n" not in str(caught.value)
    main(["doctor", "--node", "--root", str(kubelet)])
    assert "WARNING kubelet" in capsys.readouterr().out


def test_no_socket_a_dead_socket_and_a_file_in_its_place(short_tmp: Path) -> None:
    root = fake_node(short_tmp / "node")
    assert socket_below(str(root)) is None
    sock = root / KUBELET_SOCKET.lstrip("/")
    sock.parent.mkdir(parents=True)
    sock.write_text("not a socket")
    with pytest.raises(HostError, match="not a unix socket"):
        socket_below(str(root))
    sock.unlink()
    import socket

    dead = socket.socket(socket.AF_UNIX)
    dead.bind(str(sock))  # bound, never listening: nobody answers
    try:
        with pytest.raises(HostError, match="PodResources API: UNAVAILABLE"):
            read_pod_resources(str(sock), timeout=1.0)
    finally:
        dead.close()
