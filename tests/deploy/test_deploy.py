"""End to end against simulated devices (embedded SSH server, and OpenSSH sshd where installed): probe, groups,
deploy, smoke, atomic switch, status, rollback, host keys."""

import asyncio
import json
import os
import re
import sys

import asyncssh
import pytest

from taoflow.deploy import (AgentError, DeployError, HostKeyError, UnreachableError, fleet_status,
                            group_by_engine_key, load_inventory, load_package, rollback_device, scan_host_key,
                            trust_host_key)
from tests.deploy.sync import deploy_all, deploy_to_device, probe_all
from taoflow.deploy.ssh import fingerprint


def current(sim, name="lpd"):
    link = sim.root / "models" / name / "current"
    return os.readlink(link) if os.path.islink(link) else None


def device_files_text(sim):
    """Everything the device root holds, as text, to prove what never reached it."""
    chunks = []
    for path in sim.root.rglob("*"):
        if path.is_file():
            chunks.append(path.read_bytes().decode("utf-8", "replace"))
    return "\n".join(chunks)


@pytest.mark.slow
def test_deploy_to_three_devices_in_two_groups(sim_fleet, py36, selftest_package):
    if py36[0] is None:
        pytest.skip(f"{py36[1]}: two engine groups need the 3.6 venv next to the host Python")
    sims = sim_fleet(3)
    inventory = load_inventory(sims.write_inventory([py36[0], py36[0], sys.executable]))
    package = load_package(selftest_package)

    probes = probe_all(inventory.devices)
    assert [probes[d.name]["python"]["version"][:3] for d in inventory.devices][:2] == ["3.6", "3.6"]
    groups = group_by_engine_key(probes, package)
    assert sorted(g.devices for g in groups.values()) == [["nano-00", "nano-01"], ["nano-02"]]
    assert {g.key["runtime"] for g in groups.values()} == {"onnxruntime"}

    secret = "tao-key-must-not-leak"
    results = deploy_all(inventory.devices, package, name="lpd", wave=0, etlt_key=secret)
    for device, sim in zip(inventory.devices, sims.devices):
        result = results[device.name]
        assert not isinstance(result, Exception), result
        assert result["current"] == package.version and result["previous"] is None
        assert result["smoke"]["passed"] and result["smoke"]["fps"] > 0
        assert current(sim) == package.version
        assert (sim.root / "models" / "lpd" / package.version / "passport.json").is_file()
        assert not (sim.root / "staging" / "lpd" / package.version).exists()
        assert secret not in json.dumps(result) and secret not in device_files_text(sim)
    assert results["nano-00"]["smoke"]["runtime_version"] == "1.10.0"

    status = fleet_status(inventory.devices)
    for device in inventory.devices:
        model = status[device.name]["lpd"]
        passport = model["versions"][0]["passport"]
        assert model["current"] == package.version and passport["version"] == package.version
        assert passport["lineage"] == json.loads((selftest_package / "passport.json").read_text())
        assert passport["wave"] == 0 and passport["smoke"]["passed"] is True


@pytest.mark.slow
def test_new_version_switches_current_and_rollback_restores(sim_fleet, device_python, package_copy):
    sims = sim_fleet(2)
    inventory = load_inventory(sims.write_inventory(device_python))
    two = package_copy("two")
    # A non-ASCII sample name (CRPD plates are named in Chinese) must survive a session without LANG on 3.6.
    (two / "samples" / "one_car.png").rename(two / "samples" / "皖A12345.png")
    expected = json.loads((two / "samples" / "expected.json").read_text())
    expected["images"]["皖A12345.png"] = expected["images"].pop("one_car.png")
    (two / "samples" / "expected.json").write_text(json.dumps(expected, ensure_ascii=False), encoding="utf-8")
    v1, v2 = load_package(package_copy("one")), load_package(two)
    first = deploy_all(inventory.devices, v1, name="lpd")
    second = deploy_all(inventory.devices, v2, name="lpd", wave=1)
    for device, sim in zip(inventory.devices, sims.devices):
        assert first[device.name]["current"] == v1.version
        assert second[device.name]["previous"] == v1.version and current(sim) == v2.version
        assert first[device.name]["bytes_uploaded"] > second[device.name]["bytes_uploaded"]  # agent unchanged

    back = rollback_device(inventory.devices[0], "lpd")
    assert back == {"device": "nano-00", "name": "lpd", "rolled_back_from": v2.version, "current": v1.version}
    assert current(sims.devices[0]) == v1.version and current(sims.devices[1]) == v2.version
    status = fleet_status(inventory.devices, name="lpd")
    assert status["nano-00"]["lpd"]["history"] == [v1.version]
    with pytest.raises(AgentError, match="no previous version of lpd"):
        rollback_device(inventory.devices[0], "lpd")
    assert rollback_device(inventory.devices[0], "lpd", to=v2.version)["current"] == v2.version


@pytest.mark.slow
def test_failing_smoke_leaves_the_previous_version_current(sim_fleet, device_python, package_copy):
    sims = sim_fleet(1)
    device = load_inventory(sims.write_inventory(device_python)).devices[0]
    good = load_package(package_copy("good"))
    deploy_to_device(device, good, name="lpd")
    bad_dir = package_copy("bad")
    expected = json.loads((bad_dir / "samples" / "expected.json").read_text())
    expected["images"]["one_car.png"][0]["box"] = [48, 48, 96, 96]  # the car is in the top-left cell
    (bad_dir / "samples" / "expected.json").write_text(json.dumps(expected))
    bad = load_package(bad_dir)
    with pytest.raises(AgentError, match="smoke test failed on 1 of 3 sample images") as e:
        deploy_to_device(device, bad, name="lpd")
    assert e.value.details["images"]["one_car.png"]["missing"][0]["box"] == [48, 48, 96, 96]
    sim = sims.devices[0]
    assert current(sim) == good.version
    assert not (sim.root / "staging" / "lpd" / bad.version).exists()
    assert not (sim.root / "models" / "lpd" / bad.version).exists()


def test_unknown_or_wrong_host_key_is_refused_until_trusted(sim_fleet, device_python, tmp_path):
    sims = sim_fleet(2)
    path = sims.write_inventory(device_python, untrusted={"nano-00"})
    text = path.read_text().replace(f'host_key = "{sims.devices[1].host_key}"',
                                    f'host_key = "{sims.devices[0].host_key}"')  # nano-01 expects nano-00's key
    path.write_text(text)
    unknown, wrong = load_inventory(path).devices
    offered = fingerprint(sims.devices[0].host_key)
    with pytest.raises(HostKeyError, match=f"is unknown .*{re.escape(offered)}.*nothing was sent") as e:
        _raise(fleet_status([unknown]))
    assert "fleet.toml" in str(e.value)
    with pytest.raises(HostKeyError, match="does not match the trusted key"):
        _raise(fleet_status([wrong]))
    assert not any(sim.root.joinpath("agent").exists() for sim in sims.devices)

    # Explicit trust: the user scans, checks the fingerprint, and records the key in a known_hosts file.
    scanned = asyncio.run(scan_host_key(unknown))
    assert fingerprint(scanned) == offered
    known = tmp_path / "known_hosts"
    trust_host_key(unknown, scanned, known)
    path.write_text(path.read_text().replace("[defaults]\n", f'[defaults]\nknown_hosts = "{known}"\n'))
    trusted = load_inventory(path).devices[0]
    assert fleet_status([trusted])["nano-00"] == {}


def _raise(results):
    """fleet_status returns per-device errors as values; re-raise the single one."""
    (value,) = results.values()
    if isinstance(value, Exception):
        raise value
    return value


def test_unusable_key_and_bad_names_are_refused_before_connecting(sim_fleet, device_python, tmp_path,
                                                                   selftest_package):
    sims = sim_fleet(1)
    path = sims.write_inventory(device_python)
    device = load_inventory(path).devices[0]
    with pytest.raises(DeployError, match=r"model name '\.\./x' must be"):
        deploy_to_device(device, selftest_package, name="../x")
    encrypted = tmp_path / "encrypted_key"
    asyncssh.generate_private_key("ssh-ed25519").write_private_key(str(encrypted), "pkcs8-pem", passphrase="passphrase")
    secret_part = encrypted.read_text().splitlines()[1]
    path.write_text(path.read_text().replace(str(sims.client_key), str(encrypted)))
    with pytest.raises(UnreachableError, match="cannot use the SSH key .*encrypted_key: Passphrase") as e:
        _raise(fleet_status(load_inventory(path).devices))
    assert secret_part not in str(e.value)
    assert not (sims.devices[0].root / "agent").exists()
