"""`taoflow fleet status|rollback` and `taoflow device doctor` against simulated devices (embedded SSH server, and
OpenSSH sshd where installed): output and exit codes."""

import getpass
import os

import pytest

from taoflow.cli import main
from taoflow.deploy import load_inventory, load_package
from tests.deploy.sync import deploy_all


def current(sim, name="lpd"):
    link = sim.root / "models" / name / "current"
    return os.readlink(link) if os.path.islink(link) else None


@pytest.fixture
def deployed(sim_fleet, device_python, package_copy):
    """Two devices running v2 of `lpd` over v1: (sims, inventory path, v1, v2)."""
    sims = sim_fleet(2)
    path = sims.write_inventory(device_python)
    devices = load_inventory(path).devices
    v1, v2 = load_package(package_copy("one")), load_package(package_copy("two"))
    deploy_all(devices, v1, name="lpd")
    deploy_all(devices, v2, name="lpd")
    return sims, path, v1, v2


@pytest.mark.slow
def test_fleet_status_and_rollback(deployed, capsys):
    sims, path, v1, v2 = deployed
    assert main(["fleet", "status", "-i", str(path)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["DEVICE", "MODEL", "CURRENT", "PASSPORT", "FPS", "ACTIVATED", "VERSIONS", "LIVE", "ERROR"]
    assert [line.split()[:3] for line in out[1:]] == [["nano-00", "lpd", v2.version], ["nano-01", "lpd", v2.version]]

    assert main(["fleet", "rollback", "-i", str(path), "--device", "nano-01"]) == 0
    assert capsys.readouterr().out == f"nano-01 lpd: current {v2.version} -> {v1.version}\n"
    assert current(sims.devices[1]) == v1.version and current(sims.devices[0]) == v2.version
    assert main(["fleet", "rollback", "-i", str(path), "--device", "nano-01", "--model", "lpd",
                 "--to", v2.version]) == 0
    assert current(sims.devices[1]) == v2.version
    capsys.readouterr()

    assert main(["fleet", "rollback", "-i", str(path), "--device", "nano-01", "--to", "v9"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: nano-01: version v9 of lpd is not installed") and "Traceback" not in err
    assert main(["fleet", "rollback", "-i", str(path), "--device", "nano-07"]) == 2
    assert "no device named nano-07 in the inventory" in capsys.readouterr().err


@pytest.mark.slow
def test_rollback_asks_which_model_when_there_are_several(deployed, package_copy, capsys):
    sims, path, v1, _ = deployed
    deploy_all(load_inventory(path).select(["nano-00"]), v1, name="other")
    assert main(["fleet", "rollback", "-i", str(path), "--device", "nano-00"]) == 2
    assert "the device has 2 models (lpd, other): choose one with --model" in capsys.readouterr().err


@pytest.mark.slow
def test_fleet_status_reports_unreachable_devices_with_exit_1(deployed, capsys):
    sims, path, _, v2 = deployed
    sims.devices[1].kill()
    assert main(["fleet", "status", "-i", str(path), "--model", "lpd"]) == 1
    captured = capsys.readouterr()
    assert "nano-00  lpd" in captured.out and v2.version in captured.out
    assert "nano-01  -" in captured.out and "unreachable: cannot connect" in captured.out
    assert captured.err == "1 of 2 devices unreachable\n"


def test_device_doctor_by_name_or_host_port(sim_fleet, device_python, capsys):
    sims = sim_fleet(1)
    path = sims.write_inventory(device_python)
    assert main(["device", "doctor", "nano-00", "-i", str(path)]) == 0
    out = capsys.readouterr().out
    sim = sims.devices[0]
    assert out.startswith(f"nano-00 ({getpass.getuser()}@127.0.0.1:{sim.port}, root {sim.root})\n")
    assert "ONNX packages: yes, on onnxruntime" in out
    assert "onnxruntime" in out and "numpy" in out and "Traceback" not in out
    assert main(["device", "doctor", f"127.0.0.1:{sims.devices[0].port}", "-i", str(path)]) == 0
    capsys.readouterr()
    assert main(["device", "doctor", "10.9.9.9", "-i", str(path)]) == 2
    assert "no device named or at '10.9.9.9' in the inventory" in capsys.readouterr().err


def test_inventory_errors_are_one_line(tmp_path, capsys):
    bad = tmp_path / "fleet.toml"
    bad.write_text("[[devices]]\nname = 'x'\n")
    assert main(["fleet", "status", "-i", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"error: {bad}:1: x: device needs 'host'")
    assert main(["fleet", "status", "-i", str(tmp_path / "missing.toml")]) == 2
    assert "inventory file not found" in capsys.readouterr().err


@pytest.mark.slow
def test_fleet_deploy_packages_and_rolls_out_then_a_bad_export_exits_2(sim_fleet, device_python, selftest_export,
                                                                       tmp_path, capsys):
    export, images = selftest_export
    sims = sim_fleet(2)
    path = sims.write_inventory(device_python)
    package = tmp_path / "package"
    assert main(["fleet", "deploy", "-i", str(path), "--export", str(export), "--samples", str(images),
                 "--package", str(package), "--name", "lpd"]) == 0
    captured = capsys.readouterr()
    version = load_package(package).version
    assert [line.split()[0] for line in captured.out.splitlines()[1:3]] == ["nano-00", "nano-01"]
    assert "2 deployed" in captured.out and "canary" in captured.out and "deployed" in captured.err
    assert current(sims.devices[0]) == version and current(sims.devices[1]) == version

    assert main(["fleet", "deploy", "-i", str(path), "--export", str(images), "--samples", str(images)]) == 2
    err = capsys.readouterr().err
    assert "no model.json" in err and "Traceback" not in err
