"""`taoflow fleet service`: the detector service on a simulated Nano (the agent under Python 3.6 where it exists) over
real SSH, installed from the host, swapped to new versions by ordinary rollouts while it serves a looping video, its
status, logs and stop; and the service replies as the host checks them."""

import json
import os
import re
import resource
import time
from pathlib import Path

import pytest

from taoflow.cli import main
from taoflow.deploy import load_inventory, load_package, rollout
from taoflow.deploy.replies import ReplyError, check_reply
from tests.deploy.test_detect import write_video

# Where this machine boots with systemd, `auto` would install a real user or system unit here: the simulated Nano
# must use the supervisor, so it is named outright there (tests/device/test_service.py checks auto's choice).
MODE = "auto" if not Path("/run/systemd/system").is_dir() else "supervisor"


def heavy_package(path, extra_mib=64):
    """The package at `path` with a model that computes exactly what the self-test model computes (a zero tensor
    is summed, times zero, onto its scores) but carries `extra_mib` MiB of weights more: its smoke test passes on
    its own, and loading it needs that much memory and more."""
    import numpy as np
    import onnx
    from onnx import helper, numpy_helper
    model = onnx.load(str(path / "model.onnx"))
    graph = model.graph
    for node in graph.node:
        node.output[:] = ["scores_raw" if o == "scores" else o for o in node.output]
    graph.initializer.extend([numpy_helper.from_array(np.zeros(extra_mib << 18, np.float32), "ballast"),
                              numpy_helper.from_array(np.array(0, np.float32), "nothing")])
    graph.node.extend([helper.make_node("ReduceSum", ["ballast"], ["ballast_sum"], keepdims=0),
                       helper.make_node("Mul", ["ballast_sum", "nothing"], ["ballast_zero"]),
                       helper.make_node("Add", ["scores_raw", "ballast_zero"], ["scores"])])
    onnx.save(model, str(path / "model.onnx"))
    return load_package(path)


def leave_room(pid, mib):
    """The process may map only `mib` MiB more than it does now: a Nano with no room for a second model of the
    heavy package's size beside the one it serves (the hot swap loads the new model before it drops the old)."""
    status = Path(f"/proc/{pid}/status").read_text()
    mapped = int(re.search(r"^VmSize:\s+(\d+) kB", status, re.M).group(1)) << 10
    resource.prlimit(pid, resource.RLIMIT_AS, (mapped + (mib << 20), resource.RLIM_INFINITY))


@pytest.fixture
def services():
    """Device roots whose service processes (supervisor and detector) are killed at teardown, whatever happened."""
    roots = []
    yield roots
    for root in roots:
        for state in Path(root, "service").glob("*/state.json"):
            pids = json.loads(state.read_text())
            for pid in (pids.get("child_pid"), pids.get("supervisor_pid")):
                try:
                    os.kill(pid, 9) if pid else None
                except ProcessLookupError:
                    pass


def heartbeat(root):
    path = Path(root) / "detect" / "lpd.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def wait_for(root, predicate, what, limit=60):
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        beat = heartbeat(root)
        if predicate(beat):
            return beat
        time.sleep(0.2)
    pytest.fail(f"service: {what} never happened; last heartbeat {beat}")


@pytest.mark.slow
def test_service_follows_rollouts_without_restarting_keeps_serving_a_model_that_fails_to_load_and_stops(
        sim_fleet, device_python, package_copy, services, capsys):
    sims = sim_fleet(1)
    root = sims.devices[0].root
    services.append(root)
    inventory = sims.write_inventory(device_python, command_timeout=120, extra_defaults=(
        f'min_fps = 0.5\nlive_timeout = 20\nservice_mode = "{MODE}"\n'))
    devices = load_inventory(inventory).devices
    v1, v2 = load_package(package_copy("one")), load_package(package_copy("two"))
    v3 = heavy_package(package_copy("three"))
    assert rollout(devices, v1, name="lpd").ok  # no service yet: no live gate
    write_video(root / "loop.avi", sorted((v1.path / "samples").glob("*.png")), repeat=2)
    jsonl, inv = root / "live.jsonl", ["-i", str(inventory)]

    code = main(["fleet", "service", "install", *inv, "--source", "loop.avi", "--loop", "--jsonl", str(jsonl),
                 "--threshold", "0.2", "--json"])
    out, err = capsys.readouterr()
    installed = json.loads(out)["nano-00"]["services"]["lpd"]
    assert code == 0, (out, err)
    assert installed["mode"] == "supervisor" and installed["state"] == "running" and installed["live"]
    assert installed["heartbeat"]["version"] == v1.version and installed["heartbeat"]["pid"] == installed["pid"]
    assert "nano-00 lpd: supervisor:" in err  # says why (here: no systemd)
    pid = installed["pid"]
    wait_for(root, lambda b: b.get("frames", 0) > 10, "v1 serving")

    report = rollout(devices, v2, name="lpd")  # the live gate waits for the service's heartbeat to show v2
    assert report.ok, report.table()
    beat = heartbeat(root)
    assert beat["version"] == v2.version and beat["pid"] == pid and beat["swaps"] == 1
    assert report.devices["nano-00"].fps > 0.5

    leave_room(pid, 48)
    report = rollout(devices, v3, name="lpd")  # passes its smoke test, cannot load beside v2 in the service
    bad = report.devices["nano-00"]
    assert bad.status == "failed" and "live gate" in bad.error and f"{v3.version} did not load" in bad.error, bad.error
    assert bad.current == v2.version and os.readlink(root / "models" / "lpd" / "current") == v2.version
    beat = wait_for(root, lambda b: b.get("frames", 0) > beat["frames"] + 5, "v2 serving on")
    assert beat["version"] == v2.version and beat["pid"] == pid and beat["dropped"] == 0

    assert main(["fleet", "service", "status", *inv, "--json"]) == 0
    status = json.loads(capsys.readouterr().out)["nano-00"]["services"]["lpd"]
    assert status["state"] == "running" and status["pid"] == pid and status["restarts"] == 0 and status["live"]
    assert status["heartbeat"]["version"] == v2.version and "did not load" in status["heartbeat"]["last_error"]
    assert main(["fleet", "service", "status", *inv]) == 0
    row = capsys.readouterr().out.splitlines()[1].split()
    assert row[:6] == ["nano-00", "lpd", "supervisor", "running", str(pid), v2.version]

    assert main(["fleet", "service", "logs", *inv, "--lines", "50"]) == 0
    logs = capsys.readouterr().out
    assert logs.startswith("==> nano-00 lpd (supervisor log) <==\n")
    assert f"supervisor: started the service, pid {pid}" in logs

    assert main(["fleet", "service", "stop", *inv]) == 0
    assert capsys.readouterr().out.splitlines()[1].split()[:4] == ["nano-00", "lpd", "supervisor", "stopped"]
    assert main(["fleet", "service", "status", *inv, "--json"]) == 0
    status = json.loads(capsys.readouterr().out)["nano-00"]["services"]["lpd"]
    assert status["state"] == "stopped" and not status["live"] and status["heartbeat"]["status"] == "stopped"
    assert not Path(f"/proc/{pid}").exists() or Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] == "Z"

    lines = [json.loads(line) for line in jsonl.read_text().splitlines()]
    assert [line["frame"] for line in lines] == list(range(len(lines)))  # one process, no gap, no restart
    versions = [line["version"] for line in lines]
    switch = versions.index(v2.version)
    assert set(versions[:switch]) == {v1.version} and set(versions[switch:]) == {v2.version}
    # which source frames have detections, as v1 saw them before the swap; around the swap none may go missing
    seen = {}
    for line in lines[:switch]:
        seen.setdefault(line["source_frame"], bool(line["detections"]))
    missed = [line["frame"] for line in lines if seen.get(line["source_frame"]) and not line["detections"]]
    assert any(seen.values()) and len(missed) <= 2, missed


@pytest.mark.slow
def test_service_commands_say_what_is_wrong(sim_fleet, device_python, package_copy, capsys):
    sims = sim_fleet(1)
    inventory = sims.write_inventory(device_python, extra_defaults=f'service_mode = "{MODE}"\n')
    inv = ["-i", str(inventory)]
    assert main(["fleet", "service", "install", *inv, "--source", "x.avi"]) == 1
    out, err = capsys.readouterr()
    assert "the device has 0 models (none): choose one with --name" in out and "Traceback" not in out + err
    assert main(["fleet", "service", "install", *inv, "--model", "lpd", "--source", "x.avi"]) == 1
    assert "no current version of lpd on this device" in capsys.readouterr().out
    assert main(["fleet", "service", "status", *inv]) == 0
    assert "no detector service installed" in capsys.readouterr().out
    assert main(["fleet", "service", "status", *inv, "--model", "lpd", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["nano-00"]["services"]["lpd"]["state"] == "not-installed"
    assert main(["fleet", "service", "stop", *inv, "--model", "lpd"]) == 0  # nothing to stop is not an error
    capsys.readouterr()
    assert main(["fleet", "service", "logs", *inv, "--lines", "0"]) == 2
    assert capsys.readouterr().err == "error: --lines must be 1 to 2000, not 0\n"
    assert main(["fleet", "service", "install", *inv, "--source", "x", "--threshold", "2"]) == 2
    assert main(["fleet", "service", "status", *inv, "--tag", "nowhere"]) == 2


def _reply(result):
    return {"ok": True, "protocol": 1, "result": result}


def test_service_replies_are_checked_and_device_text_escaped():
    good = {"services": {"lpd": {"name": "lpd", "installed": True, "state": "running", "mode": "user", "pid": 42,
                                 "restarts": 0, "live": True, "why": "\x1b[31mred\x1b[0m",
                                 "heartbeat": {"version": "v1", "status": "serving", "fps": 20.5, "pid": 42}}}}
    checked = check_reply("service-status", _reply(good), "nano")
    assert checked["result"]["services"]["lpd"]["why"] == "\\x1b[31mred\\x1b[0m"
    for field, value, message in [
            ("state", "exploded", "expected one of running, starting"),
            ("mode", "docker", "expected one of user, system, supervisor"),
            ("pid", -1, "expected at least 0"),
            ("heartbeat", {"version": "../../etc"}, "expected a model or version name")]:
        bad = json.loads(json.dumps(good))
        bad["services"]["lpd"][field] = value
        with pytest.raises(ReplyError, match=re.escape(f"result.services.lpd.{field}") + ".*" + message):
            check_reply("service-status", _reply(bad), "nano")
    logs = {"services": {"lpd": {"name": "lpd", "lines": ["ok", "\x07bell"], "truncated": False}}}
    assert check_reply("service-logs", _reply(logs))["result"]["services"]["lpd"]["lines"] == ["ok", "\\x07bell"]
    with pytest.raises(ReplyError, match="result.services.lpd.lines: expected a list"):
        check_reply("service-logs", _reply({"services": {"lpd": {"name": "lpd", "lines": "x"}}}))
