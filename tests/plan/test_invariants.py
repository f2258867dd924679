"""Property-based tests of the planner's invariants over random configs and device sets."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from podplug.errors import ConfigError, PlanError
from podplug.model.enums import Bucket, NodeType
from podplug.model.request import ContainerDevice
from podplug.plan.plan import plan
from podplug.plan.presentation import controller_device
from podplug.plan.topology import BUS_NUMBERS
from podplug.plan.windows import assignable_units, shortfall, unit_window
from tests.plan.scenarios import DRIVERS, MODES, PORTS
from tests.support import block, config, inventory, iommufd_dev, request, vfio_control, vfio_group

HOST = inventory(groups=10, functions=2, blocks=6, iommufd=2, nvswitches=2)

device_pool = st.sampled_from(
    [vfio_group(12 + g) for g in range(10)] + [vfio_group(100), vfio_group(101), vfio_group(9),
                                                 vfio_group(200)]
    + [block(i) for i in range(7)] + [iommufd_dev(0), iommufd_dev(1), vfio_control()]
    + [ContainerDevice("/dev/null", NodeType.CHAR, 1, 3),
       ContainerDevice("/dev/sr0", NodeType.BLOCK, 11, 0)]
)


@st.composite
def cases(draw: st.DrawFn) -> tuple[object, ...]:
    mode = draw(st.sampled_from(MODES))
    port = draw(st.sampled_from(PORTS))
    cold = draw(st.booleans())
    devices = draw(st.lists(device_pool, max_size=14, unique_by=lambda d: d.path))
    return (mode, port if cold else "no-port", "no-port" if cold else port,
            draw(st.sampled_from(DRIVERS)), draw(st.integers(0, 16)), draw(st.integers(0, 16)),
            draw(st.integers(0, 5)), devices, draw(st.booleans()))


def _plan(case: tuple[object, ...]):  # type: ignore[no-untyped-def]
    mode, cold, hot, driver, rp, sp, br, devices, sandbox = case
    cfg = config(mode, cold, hot, driver, root_ports=rp, switch_ports=sp,  # type: ignore[arg-type]
                 bridges=br)  # type: ignore[arg-type]
    return plan(cfg, request(*devices, sandbox=sandbox), HOST)  # type: ignore[arg-type]


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(cases())
def test_planner_invariants(case: tuple[object, ...]) -> None:
    try:
        result = _plan(case)
    except (PlanError, ConfigError):
        return  # a budget error is a clear refusal of the whole plan, not a lost device
    devices = case[7]
    # nothing lost: one plan per request, buckets sum to the input, rejections give reasons
    assert [d.request for d in result.devices] == list(devices)  # type: ignore[arg-type]
    assert sum(result.counts().values()) == len(devices)  # type: ignore[arg-type]
    for d in result.devices:
        if d.bucket is Bucket.REJECTED:
            assert d.reason
    kept = {d.request.path for d in result.devices if d.bucket is not Bucket.REJECTED}
    assert {d.request.path for d in result.container_devices} == kept
    # VFIO and block devices that are kept carry an agent entry (but not in the sandbox)
    for d in result.devices:
        if d.bucket in (Bucket.HOT_VFIO, Bucket.COLD_VFIO, Bucket.HOT_BLOCK):
            assert d.qemu_devices
            wants_agent = d.bucket is Bucket.HOT_BLOCK or not case[8]
            assert (d.agent is not None) == wants_agent
    # ids unique; (chassis, slot) unique among PCIe ports; bus budget respected
    ids = [c.id for c in result.topology.controllers] + [
        q.id for d in result.devices for q in d.qemu_devices]
    assert len(ids) == len(set(ids))
    pcie = [(c.chassis, c.slot) for c in result.topology.controllers
            if c.role.value in ("pcie-root-port", "xio3130-downstream")]
    assert len(pcie) == len(set(pcie))
    assert result.topology.bus_numbers <= BUS_NUMBERS
    # every device sits on a controller that exists (or the SCSI bus), at a unique address
    buses = {c.id for c in result.topology.controllers}
    places = []
    for d in result.devices:
        for q in d.qemu_devices:
            props = dict(q.props)
            assert q.bus in buses or q.bus == "scsi0.0"
            places.append((q.bus, props.get("addr"), props.get("scsi-id"), props.get("lun")))
    assert len(places) == len(set(places))
    # root-bus slots are unique
    root = [controller_device(c) for c in result.topology.controllers if c.bus == "pcie.0"]
    slots = [dict(q.props)["addr"] for q in root]
    assert len(slots) == len(set(slots))
    # every hot-plugged VFIO unit finds a prefetchable window that holds it on its port,
    # and every hot-pluggable spare one that holds the host's largest assignable unit
    ports = {c.id: c for c in result.topology.controllers}
    for d in result.in_bucket(Bucket.HOT_VFIO):
        for bus in {q.bus for q in d.qemu_devices}:
            funcs = [HOST.functions[f.host] for f in d.functions if f.qemu.bus == bus]
            assert shortfall(ports[bus].window, funcs).pref64 == 0
    if result.config.hypervisor.hot_plug_vfio.value != "no-port":
        largest = max(assignable_units(HOST), key=lambda u: unit_window(u).pref64)
        for c in result.topology.controllers:
            if c.use.value == "spare":
                assert shortfall(c.window, largest).pref64 == 0
    # same input, same plan
    assert _plan(case) == result


@settings(max_examples=100, deadline=None)
@given(st.sampled_from(MODES), st.sampled_from(PORTS[1:]), st.sampled_from(DRIVERS))
def test_vfio_mode_never_changes_which_devices_exist(mode: str, port: str, driver: str) -> None:
    devices = (vfio_control(), vfio_group(12), block(0), iommufd_dev(0))
    other = "guest-kernel" if mode == "vfio" else "vfio"
    a = plan(config(mode, port, "no-port", driver), request(*devices), HOST)
    b = plan(config(other, port, "no-port", driver), request(*devices), HOST)
    assert [d.bucket for d in a.devices] == [d.bucket for d in b.devices]
    assert [d.qemu_devices for d in a.devices] == [d.qemu_devices for d in b.devices]


def test_a_host_function_is_passed_once() -> None:
    result = plan(config("vfio", "root-port"), request(vfio_group(200), iommufd_dev(0)),
                  inventory(0, iommufd=1))
    first, second = result.devices
    assert first.bucket is Bucket.COLD_VFIO
    assert second.bucket is Bucket.REJECTED
    assert "0000:c0:00.0 already passed with /dev/vfio/200" in second.reason
