"""The host-only simulated fleet (bench/fleet.py --host-only): devices that answer the agent's reply protocol and
run its store code on real files but do no device work. The rollout deploys to all of them, sends the agent and
the package once per device, and a second rollout of the same package finds every device already current."""

import os
import sys

import pytest

from taoflow.deploy import load_inventory, load_package, rollout
from taoflow.deploy.agent import agent_bundle
from taoflow.deploy.simulator import SimFleet

pytestmark = pytest.mark.slow


def test_a_host_only_fleet_deploys_and_a_second_rollout_sends_nothing(tmp_path, selftest_package):
    fleet = SimFleet(tmp_path / "fleet", tmp_path / "client_ed25519", kind="host-only")
    try:
        for i in range(24):
            fleet.add(f"sim-{i:02d}")
        devices = load_inventory(fleet.write_inventory(sys.executable, concurrency=12)).devices
        package = load_package(selftest_package)
        report = rollout(devices, package, name="lpd", wave_size=12, concurrency=12)
        assert report.ok and report.builds == 1, report.table()
        once = agent_bundle()[0].stat().st_size + package.size
        assert {d.bytes_uploaded for d in report.devices.values()} == {once}
        for device in fleet.devices:
            assert os.readlink(device.root / "models" / "lpd" / "current") == package.version
        again = rollout(devices, package, name="lpd", wave_size=12, concurrency=12)
        assert again.ok and {d.status for d in again.devices.values()} == {"already_current"}
        assert {d.bytes_uploaded for d in again.devices.values()} == {0}
    finally:
        fleet.stop()
