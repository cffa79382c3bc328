"""Faults on simulated devices (embedded SSH server and, where installed, OpenSSH sshd): dropped upload, the SSH
server killed during a build, failing build, full disk, hung command.

After every fault the device runs a complete, smoke-tested model: the one deployed before, or the new one when
the deploy could recover.
"""

import asyncio
import fcntl
import os
import subprocess
import threading
import time
from pathlib import Path

import pytest

from taoflow.deploy import (AgentError, RemoteTimeout, Session, UnreachableError, UploadError, fleet_status,
                            load_inventory, load_package)
from tests.deploy.sync import deploy_to_device
from taoflow.deploy.selftest import write_selftest_package
from taoflow.deploy.ssh import CHUNK
from taoflow.deploy.simulator import descendants

pytestmark = pytest.mark.slow


def current(sim, name="lpd"):
    link = sim.root / "models" / name / "current"
    return os.readlink(link) if os.path.islink(link) else None


def agent_processes(sim, command):
    """pids of agent processes running `command` under this device's sshd (including orphans' parents gone)."""
    found = []
    for pid in Path("/proc").glob("[0-9]*"):
        try:
            argv = (pid / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if any(a.endswith((b"taoflow_agent.py", b"taoflow_agent.pyz")) for a in argv) and command.encode() in argv and \
                str(sim.root).encode() in argv:
            found.append(int(pid.name))
    return found


@pytest.fixture
def one_device(sim_fleet, device_python):
    sims = sim_fleet(1)
    device = load_inventory(sims.write_inventory(device_python)).devices[0]
    return sims.devices[0], device


def test_connection_dropped_mid_upload_resumes(one_device, tmp_path):
    sim, device = one_device
    package = load_package(write_selftest_package(tmp_path / "big", padding_bytes=3 * CHUNK))
    seen = []

    def progress(session, local, done, size):
        if local.name == "padding.bin":
            seen.append(done)
            if len(seen) == 1:
                sim.kill_sessions()  # the connection drops while the next chunk is in flight

    result = deploy_to_device(device, package, name="lpd", progress=progress)
    assert result["current"] == package.version and current(sim) == package.version
    assert seen[0] == CHUNK and seen[1] > CHUNK, seen  # after the drop: resumed, not restarted at zero
    assert result["bytes_uploaded"] < package.size + CHUNK // 2  # a restart would have sent CHUNK more
    assert not list(sim.root.rglob("*.part"))


def hold_build_lock(sim):
    (sim.root / "locks").mkdir(parents=True, exist_ok=True)
    f = open(sim.root / "locks" / "build.lock", "a+")
    fcntl.flock(f.fileno(), fcntl.LOCK_EX)
    return f


def kill_when_building(sim, restart_after=None, release=None):
    """Background: wait until the agent's build runs on the device, kill its sshd, maybe restart it.
    The returned thread's `.killed_during` lists the build pids that were running when sshd died."""
    def run():
        deadline = time.monotonic() + 60
        while not agent_processes(sim, "build") and time.monotonic() < deadline:
            time.sleep(0.05)
        port = sim.port
        thread.killed_during = agent_processes(sim, "build")
        sim.kill()
        if restart_after is not None:
            time.sleep(restart_after)
            sim.start(port=port)
        if release is not None:
            time.sleep(0.3)
            release.close()

    thread = threading.Thread(target=run, daemon=True)
    thread.killed_during = None
    thread.start()
    return thread


def test_sshd_killed_during_build_is_recovered(one_device, package_copy):
    sim, device = one_device
    first = load_package(package_copy("one"))
    deploy_to_device(device, first, name="lpd")
    second = load_package(package_copy("two"))
    lock = hold_build_lock(sim)  # the build waits on the device lock: it is running when sshd dies
    killer = kill_when_building(sim, restart_after=0.5, release=lock)
    try:
        result = deploy_to_device(device, second, name="lpd")
    finally:
        killer.join(30)  # never leave a restarted sshd behind the fixture's back
        lock.close()
    assert killer.killed_during, "sshd was not killed while the build ran"
    assert result["current"] == second.version and result["previous"] == first.version
    assert current(sim) == second.version
    assert result["build"]["runtime"] == "onnxruntime"


def test_sshd_killed_during_build_for_good_keeps_the_previous_model(one_device, package_copy):
    sim, device = one_device
    first = load_package(package_copy("one"))
    deploy_to_device(device, first, name="lpd")
    lock = hold_build_lock(sim)
    killer = kill_when_building(sim)
    try:
        with pytest.raises(UnreachableError, match="cannot connect"):
            deploy_to_device(device, load_package(package_copy("two")), name="lpd", retries=2)
    finally:
        killer.join(30)
        lock.close()
    assert killer.killed_during, "sshd was not killed while the build ran"
    assert current(sim) == first.version
    deadline = time.monotonic() + 30
    while agent_processes(sim, "build") and time.monotonic() < deadline:  # the orphaned build finishes
        time.sleep(0.1)
    sim.start(port=device.port)
    assert fleet_status([device])["nano-00"]["lpd"]["current"] == first.version


def test_failing_build_keeps_the_previous_model(one_device, package_copy):
    sim, device = one_device
    first = load_package(package_copy("one"))
    deploy_to_device(device, first, name="lpd")
    broken = package_copy("broken")
    (broken / "model.onnx").write_bytes(b"\x08\x07garbage, not a protobuf")
    broken = load_package(broken)
    with pytest.raises(AgentError, match="onnxruntime cannot load the model") as e:
        deploy_to_device(device, broken, name="lpd")
    assert e.value.command == "build"
    assert current(sim) == first.version and not (sim.root / "staging" / "lpd" / broken.version).exists()


@pytest.fixture
def small_disk(one_device):
    """The device root on a 40 MiB tmpfs (needs root and CAP_SYS_ADMIN; skipped elsewhere)."""
    sim, device = one_device
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=40m", "tmpfs", str(sim.root)], capture_output=True,
                          text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a size-limited tmpfs here: {proc.stderr.strip()}")
    yield sim, device
    subprocess.run(["umount", "-l", str(sim.root)], check=True)


def test_device_disk_full(small_disk, tmp_path):
    sim, device = small_disk
    first = load_package(write_selftest_package(tmp_path / "one"))
    deploy_to_device(device, first, name="lpd")

    too_big = load_package(write_selftest_package(tmp_path / "big", padding_bytes=16 << 20))
    with pytest.raises(UploadError, match="device disk full: .* MiB free"):
        deploy_to_device(device, too_big, name="lpd")
    assert current(sim) == first.version

    fits = load_package(write_selftest_package(tmp_path / "fits", padding_bytes=6 << 20))
    filler = sim.root / "filler.bin"

    def fill_disk(session, local, done, size):  # something else on the device eats the space mid-upload
        if not filler.exists():
            subprocess.run(["dd", "if=/dev/zero", f"of={filler}", "bs=1M", "count=64"], capture_output=True)

    with pytest.raises(UploadError, match=r"upload failed: .* MiB free on the device: disk full\?"):
        deploy_to_device(device, fits, name="lpd", progress=fill_disk)
    assert current(sim) == first.version
    filler.unlink()
    assert not (sim.root / "staging" / "lpd" / fits.version).exists()  # discarded, space given back
    assert fleet_status([device])["nano-00"]["lpd"]["current"] == first.version


def test_hung_remote_command_is_killed_on_the_device(one_device):
    sim, device = one_device
    marker = "3600.123"

    async def hang():
        async with Session(device) as s:
            await s.run(f"sleep {marker}", timeout=1)

    started = time.monotonic()
    with pytest.raises(RemoteTimeout, match="ran past 1 s and was stopped on the device"):
        asyncio.run(hang())
    assert time.monotonic() - started < 15
    leftovers = [p for p in descendants(1) if marker.encode() in _cmdline(p)]
    assert leftovers == []


def _cmdline(pid):
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""
