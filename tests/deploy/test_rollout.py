"""The deploy-ssd rollout on simulated devices (embedded SSH server, and OpenSSH sshd where installed): canary +
waves per engine-key group, abort and revert, refusals."""

import json
import os
import sys

import pytest

from taoflow.cli import main as taoflow_main
from taoflow.deploy import build_package, compare_detections, fleet_status, load_inventory, load_package, rollout
from taoflow.deploy import ssh
from taoflow.deploy.rollout import waves_of
from tests.deploy.probes import package_variant, ready_nano
from tests.deploy.sync import deploy_all, probe_all

pytestmark = pytest.mark.slow


def current(sim, name="lpd"):
    link = sim.root / "models" / name / "current"
    return os.readlink(link) if os.path.islink(link) else None


def break_staging(sim):
    """A regular file where staging/ must be: every later upload to this device fails at `mkdir`."""
    staging = sim.root / "staging"
    if staging.is_dir():
        for path in sorted(staging.rglob("*"), reverse=True):
            path.rmdir() if path.is_dir() else path.unlink()
        staging.rmdir()
    staging.write_text("not a directory")


def two_group_fleet(sim_fleet, py36, n36, nhost, tags=None):
    if py36[0] is None:
        pytest.skip(f"{py36[1]}: two engine groups need the 3.6 venv next to the host Python")
    sims = sim_fleet(n36 + nhost)
    pythons = [py36[0]] * n36 + [sys.executable] * nhost
    return sims, load_inventory(sims.write_inventory(pythons, tags=tags))


def test_native_export_rolls_out_to_three_devices_in_two_groups(sim_fleet, py36, native_export, tmp_path, capsys,
                                                              monkeypatch):
    sims, inventory = two_group_fleet(sim_fleet, py36, 2, 1, tags={"nano-00": ["canary"]})
    export, images = native_export
    passport = {"format": "taoflow-passport/1", "stages": {"export": "k-export"}, "id": "pp-native-1"}
    package = build_package(export, tmp_path / "pkg", images, count=3, passport=passport)
    events, connections = [], []
    real_connect = ssh.asyncssh.connect

    async def counting_connect(host, port, **kwargs):  # the real connection, recorded
        conn = await real_connect(host, port, **kwargs)
        connections.append((port, conn))
        return conn

    monkeypatch.setattr(ssh.asyncssh, "connect", counting_connect)
    report = rollout(inventory.devices, package, name="lpd", wave_size=1, on_event=events.append)
    assert report.ok, report.table()
    # one connection per device from probe to activation, and none left open afterwards
    assert sorted(port for port, _ in connections) == sorted(d.port for d in inventory.devices)
    assert all(conn.is_closed() for _, conn in connections)
    monkeypatch.setattr(ssh.asyncssh, "connect", real_connect)
    assert len(report.groups) == 2 and report.builds == 2
    for group in report.groups.values():
        assert group.status == "deployed" and group.agreement["passed"] and group.agreement["checked"] > 0
        assert group.agreement["max_confidence_delta"] < 0.01  # onnxruntime 1.10 (py3.6) vs the host's
    for sim, row in zip(sims.devices, report.table()):
        assert current(sim) == package.version == row["current"] and row["previous"] is None
        assert row["status"] == "deployed" and row["passport"] == "pp-native-1" and row["fps"] > 0
        device = report.devices[row["device"]]
        assert device.agent_cpu_s > 0 and device.bytes_uploaded > package.size  # agent + package, probe included
    roles = {(r["device"], r["role"], r["wave"]) for r in report.table()}
    assert roles == {("nano-00", "canary", 0), ("nano-01", "wave", 1), ("nano-02", "canary", 0)}
    assert [e["device"] for e in events if e["event"] == "deployed"].count("nano-01") == 1
    # nano-01 got the package while its canary nano-00 built and smoke-tested, so its wave only switched
    order = [(e["event"], e["device"]) for e in events if e.get("device") in ("nano-00", "nano-01")]
    assert order.index(("staged", "nano-01")) < order.index(("deploy", "nano-01"))
    assert next(e for e in events if e["event"] == "staged")["files"] > 0
    assert not list((sims.devices[1].root / "staging").rglob("*.onnx"))  # activated: staging moved into models/

    assert taoflow_main(["fleet", "status", "-i", str(inventory.path), "--model", "lpd"]) == 0
    out = capsys.readouterr().out
    for device in ("nano-00", "nano-01", "nano-02"):
        line = next(line for line in out.splitlines() if line.startswith(device))
        assert f"lpd    {package.version}  pp-native-1" in line
    assert taoflow_main(["fleet", "status", "-i", str(inventory.path), "--json"]) == 0
    full = json.loads(capsys.readouterr().out)
    assert full["nano-02"]["lpd"]["versions"][0]["passport"]["lineage"] == passport


def test_a_wave_failing_above_the_threshold_reverts_every_switched_device(sim_fleet, py36, package_copy):
    # group A (py3.6): a fresh canary, then one wave of two devices, one of which fails; group B (host Python).
    tags = {"nano-00": ["canary"], "nano-03": ["canary"]}
    sims, inventory = two_group_fleet(sim_fleet, py36, 3, 2, tags)
    v1, v2 = load_package(package_copy("one")), load_package(package_copy("two"))
    before = deploy_all(inventory.devices[1:], v1, name="lpd")
    assert all(r["current"] == v1.version for r in before.values())
    break_staging(sims.devices[2])

    report = rollout(inventory.devices, v2, name="lpd", wave_size=2, abort_threshold=0.25)
    rows = {r["device"]: r for r in report.table()}
    assert report.aborted.startswith("wave 1 of group ") and "1 of 2 devices failed" in report.aborted
    assert not report.ok
    assert rows["nano-00"]["status"] == "rolled_back" and rows["nano-00"]["current"] is None
    assert rows["nano-01"]["status"] == "rolled_back" and rows["nano-01"]["current"] == v1.version
    assert rows["nano-02"]["status"] == "failed" and "cannot create directories" in rows["nano-02"]["error"]
    assert rows["nano-03"]["status"] == "rolled_back"
    assert rows["nano-04"]["status"] in ("rolled_back", "skipped")  # group B's wave may start before the abort
    assert {g.status for g in report.groups.values()} == {"aborted"}
    # On the devices themselves: everyone is back where they were; the fresh canary runs nothing, as before,
    # and keeps v2 installed for a deliberate `fleet rollback --to`.
    assert current(sims.devices[0]) is None and (sims.devices[0].root / "models" / "lpd" / v2.version).is_dir()
    assert [current(s) for s in sims.devices[1:]] == [v1.version] * 4
    status = fleet_status(inventory.devices, "lpd")
    assert status["nano-01"]["lpd"]["history"] == [v1.version]
    assert all(r["passport"] == rows["nano-01"]["passport"] for n, r in rows.items() if n != "nano-00")


def test_a_failing_canary_stops_only_its_group(sim_fleet, py36, package_copy):
    tags = {"nano-00": ["canary"]}
    sims, inventory = two_group_fleet(sim_fleet, py36, 3, 2, tags)
    v1, v2 = load_package(package_copy("one")), load_package(package_copy("two"))
    deploy_all(inventory.devices, v1, name="lpd")
    break_staging(sims.devices[0])

    report = rollout(inventory.devices, v2, name="lpd", abort_threshold=0.25)
    rows = {r["device"]: r for r in report.table()}
    assert report.aborted is None
    assert rows["nano-00"]["status"] == "failed" and rows["nano-00"]["role"] == "canary"
    assert [rows[n]["status"] for n in ("nano-01", "nano-02")] == ["skipped", "skipped"]
    assert "canary nano-00 failed" in rows["nano-01"]["error"]
    assert [rows[n]["status"] for n in ("nano-03", "nano-04")] == ["deployed", "deployed"]
    assert [current(s) for s in sims.devices] == [v1.version] * 3 + [v2.version] * 2
    for sim in sims.devices[1:3]:  # staged while the canary ran, discarded when it failed
        assert not (sim.root / "staging" / "lpd" / v2.version).exists()
    assert sorted(g.status for g in report.groups.values()) == ["deployed", "stopped"]
    assert report.builds == 1


def test_canary_detections_must_agree_with_the_hosts(sim_fleet, device_python, selftest_package, tmp_path):
    sims = sim_fleet(2)
    inventory = load_inventory(sims.write_inventory(device_python))
    v1 = load_package(package_variant(selftest_package, tmp_path / "v1"))
    deploy_all(inventory.devices, v1, name="lpd")
    # The device's own rule (label + IoU) still passes when only a confidence is off; the host's check does not.
    v2_dir = package_variant(selftest_package, tmp_path / "v2")
    expected = json.loads((v2_dir / "samples" / "expected.json").read_text())
    expected["images"]["one_car.png"][0]["confidence"] = 0.7
    (v2_dir / "samples" / "expected.json").write_text(json.dumps(expected))
    v2 = load_package(v2_dir)

    report = rollout(inventory.devices, v2, name="lpd")
    (group,) = report.groups.values()
    assert group.status == "stopped" and not group.agreement["passed"]
    assert "one_car.png: car [0.0, 0.0, 24.0, 24.0] confidence 0.99" in group.agreement["problems"][0]
    assert "on the host" in report.devices[group.canary].error
    assert [current(s) for s in sims.devices] == [v1.version, v1.version]
    assert not (sims.devices[0].root / "staging" / "lpd" / v2.version).exists()


def test_int8_package_is_refused_on_a_nano_before_anything_is_sent(sim_fleet, device_python, selftest_package,
                                                                     tmp_path):
    sims = sim_fleet(2)
    inventory = load_inventory(sims.write_inventory(device_python))
    int8 = load_package(package_variant(selftest_package, tmp_path / "int8", {"precision": "int8"},
                                       {"cal.bin": b"calibration cache"}))
    probes = probe_all(inventory.devices)
    # Only the probe data is faked: no simulated device can claim a Maxwell GPU with TensorRT.
    probes["nano-00"] = {**probes["nano-00"], **{k: v for k, v in ready_nano().items()
                                               if k in ("tensorrt", "gpu", "runtimes", "tools", "tool_links", "l4t")}}
    report = rollout(inventory.devices, int8, name="lpd", probes=probes)
    rows = {r["device"]: r for r in report.table()}
    assert rows["nano-00"]["status"] == "refused" and "INT8 refused" in rows["nano-00"]["error"]
    assert "sm_53" in rows["nano-00"]["error"] and rows["nano-00"]["engine"].startswith("TensorRT 8.2.1")
    assert not (sims.devices[0].root / "staging").exists() and current(sims.devices[0]) is None
    assert rows["nano-01"]["status"] == "deployed"  # onnxruntime runs the float model of the same package


def test_unreachable_devices_are_reported_and_the_rest_deploy(sim_fleet, device_python, selftest_package):
    sims = sim_fleet(2)
    inventory = load_inventory(sims.write_inventory(device_python))
    sims.devices[1].kill()
    report = rollout(inventory.devices, selftest_package, name="lpd")
    rows = {r["device"]: r for r in report.table()}
    assert rows["nano-00"]["status"] == "deployed"
    assert rows["nano-01"]["status"] == "unreachable" and "cannot connect" in rows["nano-01"]["error"]


def test_compare_detections_and_waves():
    expected = {"iou_threshold": 0.5, "score_threshold": 0.3, "images": {"a.jpg": [
        {"label": "car", "confidence": 0.9, "box": [0, 0, 10, 10]},
        {"label": "car", "confidence": 0.25, "box": [20, 20, 30, 30]}]}}
    same = {"a.jpg": {"detections": [{"label": "car", "confidence": 0.89, "box": [0, 0, 10, 9.5]},
                                     {"label": "car", "confidence": 0.45, "box": [20, 20, 30, 30]}]}}
    result = compare_detections(expected, same, 0.1)
    assert result["passed"] and result["checked"] == 1 and result["max_confidence_delta"] == 0.01
    assert result["min_iou"] == 0.95  # the 0.45 detection matched the host's 0.25 one: not unexpected
    extra = {"a.jpg": {"detections": same["a.jpg"]["detections"] + [
        {"label": "car", "confidence": 0.5, "box": [50, 50, 60, 60]}]}}
    assert compare_detections(expected, extra)["problems"] == [
        "a.jpg: unexpected car [50, 50, 60, 60] (0.5) on the device"]
    assert compare_detections(expected, {})["problems"] == ["a.jpg: no device detection for car [0, 0, 10, 10] (0.9)"]
    assert waves_of(list("abcde"), 2) == [["a", "b"], ["c", "d"], ["e"]]
