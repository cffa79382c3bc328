"""Devices that answer badly, over real SSH sessions: each malformed reply is that device's failure with a readable
reason, the other devices deploy, nothing a device sends reaches the terminal raw; and a device whose SSH server
dies for good while its agent activates ends on the version the report says.

A bad device's `python` (inventory) is a wrapper that runs the real agent and mangles its reply, so the host's
whole path (agent upload, SSH, the reply protocol) is the real one.
"""

import fcntl
import json
import re
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from taoflow.deploy import fleet_status, load_inventory, load_package, rollout
from tests.deploy.test_faults import agent_processes, current

pytestmark = pytest.mark.slow

WRAPPER = """\
#!{python}
# A device whose agent answers badly: runs the real agent, then mangles its reply (mode in {mode_file}).
import json, subprocess, sys
MODE = open({mode_file!r}).read().strip()
argv = sys.argv[1:]
command = next((a for a in argv[argv.index("--root") + 2:] if not a.startswith("-")), None) \\
    if "--root" in argv else None
if MODE == "no_switch" and "--activate" in argv:  # answers ok without switching
    argv = [a for a in argv if a != "--activate"]
proc = subprocess.run([{python!r}] + argv, stdout=subprocess.PIPE, input=sys.stdin.buffer.read())
reply = json.loads(proc.stdout.decode().strip().splitlines()[-1])
result = reply.get("result") if isinstance(reply.get("result"), dict) else {{}}
activated = result.get("activated") or {{}}
lpd = (activated.get("models") or {{}}).get("lpd") or {{}}
if MODE == "no_switch" and command == "smoke" and reply.get("ok"):
    status = subprocess.run([{python!r}] + argv[:argv.index("smoke")] + ["status", "--name", "lpd"],
                            stdout=subprocess.PIPE)
    result["activated"] = json.loads(status.stdout.decode().strip().splitlines()[-1])["result"]
elif MODE == "probe_runtimes_5" and command == "probe":
    result["runtimes"] = 5
elif MODE == "probe_no_result" and command == "probe":
    reply.pop("result")
elif MODE == "probe_models_list" and command == "probe":
    result["models"] = ["lpd"]
elif MODE == "cpu_lots":
    reply["cpu_s"] = "lots"
elif MODE == "huge" and command == "probe":
    chunk = "x" * (1 << 20) + "\\n"
    for _ in range(100):
        sys.stdout.write(chunk)
elif MODE == "activate_without_model" and command == "smoke":
    activated.get("models", {{}}).pop("lpd", None)
elif MODE == "activated_at_string" and command == "smoke":
    for v in lpd.get("versions", []):
        v["passport"]["activated_at"] = "yesterday"
elif MODE == "fps_fast" and command == "smoke":
    result["fps"] = "fast"
elif MODE == "current_traversal" and command == "smoke":
    lpd["current"] = "../../../../etc"
elif MODE == "ansi" and command == "smoke":
    reply = {{"ok": False, "protocol": 1, "error": "\\x1b[31mboom\\x1b[0m\\x1b]0;pwned\\x07", "cpu_s": 0.1}}
sys.stdout.write(json.dumps(reply) + "\\n")
sys.exit(proc.returncode)
"""

# mode -> (what the report must say about the bad device: status, a regular expression in its error)
MODES = {
    "probe_runtimes_5": ("unreachable", r"result\.runtimes: expected a list, got 5"),
    "probe_no_result": ("unreachable", r"reply\.result: missing"),
    "probe_models_list": ("unreachable", r"result\.models: expected an object"),
    "cpu_lots": ("unreachable", r"reply\.cpu_s: expected a number, got 'lots'"),
    "huge": ("unreachable", r"more than 4 MiB on stdout"),
    "activate_without_model": ("failed", r"reported no state for model lpd"),
    "activated_at_string": ("failed", r"activated_at: expected a number, got 'yesterday'"),
    "fps_fast": ("failed", r"result\.fps: expected a number, got 'fast'"),
    "current_traversal": ("failed", r"current: expected a model or version name .*'\.\./\.\./\.\./\.\./etc'"),
    "no_switch": ("failed", r"answered ok but lpd current is \S+, not "),
    "ansi": ("failed", r"\\x1b\[31mboom\\x1b\[0m\\x1b\]0;pwned\\x07"),
}


def bad_python(tmp_path, mode):
    mode_file = tmp_path / "mode"
    mode_file.write_text(mode)
    path = tmp_path / "bad-python"
    path.write_text(WRAPPER.format(python=sys.executable, mode_file=str(mode_file)))
    path.chmod(0o755)
    return path


@pytest.mark.parametrize("mode", sorted(MODES))
def test_a_malformed_reply_fails_only_that_device_with_the_reason(sim_fleet, package_copy, tmp_path, mode, capsys):
    sims = sim_fleet(3)
    tags = {"nano-00": ["canary"], "nano-01": ["wave"], "nano-02": ["wave"]}
    inventory = load_inventory(sims.write_inventory([sys.executable, sys.executable, bad_python(tmp_path, mode)],
                                                    tags=tags))
    first = load_package(package_copy("one"))
    (tmp_path / "mode").write_text("none")
    assert rollout(inventory.devices, first, name="lpd").ok  # every device runs `first`
    (tmp_path / "mode").write_text(mode)
    second = load_package(package_copy("two"))
    report = rollout(inventory.devices, second, name="lpd", abort_threshold=0.5)
    status, reason = MODES[mode]
    bad, good = report.devices["nano-02"], [report.devices[n] for n in ("nano-00", "nano-01")]
    assert bad.status == status and re.search(reason, bad.error), (bad.status, bad.error)
    assert [d.status for d in good] == ["deployed", "deployed"], report.table()
    assert [current(s) for s in sims.devices[:2]] == [second.version] * 2
    assert current(sims.devices[2]) == first.version
    shown = json.dumps(report.table()) + report.summary() + capsys.readouterr().out
    assert "\x1b" not in shown and "\x07" not in shown
    (tmp_path / "mode").write_text("none")
    if status == "unreachable":  # its probe failed: nothing was sent, and the report does not guess what it runs
        assert bad.current is None
    else:  # touched: the report says what the device runs
        assert bad.current == first.version
        assert fleet_status([inventory.devices[2]], "lpd")["nano-02"]["lpd"]["current"] == bad.current


def hold(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    f = open(path, "a+")
    fcntl.flock(f.fileno(), fcntl.LOCK_EX)
    return f


def test_server_dies_for_good_during_a_waves_activation_and_report_status_and_device_agree(sim_fleet,
                                                                                            package_copy):
    sims = sim_fleet(2)
    canary, orphan = sims.devices
    path = sims.write_inventory(sys.executable, tags={"nano-00": ["canary"], "nano-01": ["wave"]},
                                command_timeout=30)
    devices = load_inventory(path).devices
    first, second = load_package(package_copy("one")), load_package(package_copy("two"))
    assert rollout(devices, first, name="lpd").ok
    # The wave device's activation waits for its models lock; meanwhile its SSH server dies for good.
    lock = hold(orphan.root / "locks" / "models-lpd.lock")
    killed = threading.Event()

    def kill_during_activation():
        deadline = time.monotonic() + 60
        while not (pids := agent_processes(orphan, "smoke")) and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)  # the agent is past its smoke test, waiting for the lock to switch
        killed.pids = pids
        orphan.kill()
        killed.set()
        time.sleep(1.0)
        lock.close()  # the orphaned agent now gets the lock: it must not switch

    killer = threading.Thread(target=kill_during_activation, daemon=True)
    killer.start()
    try:
        report = rollout(devices, second, name="lpd", abort_threshold=0.25)
    finally:
        killer.join(60)
        lock.close()
    assert killed.is_set() and killed.pids, "the server was not killed during the activation"
    deadline = time.monotonic() + 30
    while agent_processes(orphan, "smoke") and time.monotonic() < deadline:  # the orphan finishes
        time.sleep(0.1)
    assert report.aborted and report.devices["nano-01"].status == "failed"
    assert report.devices["nano-00"].status == "rolled_back"
    assert current(canary) == current(orphan) == first.version  # the orphan did not switch behind the host
    assert {n: d.current for n, d in report.devices.items()} == {"nano-00": first.version, "nano-01": first.version}
    orphan.start(port=devices[1].port)
    status = fleet_status(devices, "lpd")
    assert {n: s["lpd"]["current"] for n, s in status.items()} == {n: d.current for n, d in report.devices.items()}


def test_a_fenced_rollout_cannot_activate(sim_fleet, package_copy, tmp_path):
    """The host fences a rollout token when it fails or reverts a device; an agent of that rollout that runs
    on afterwards (its connection lost) is refused the switch."""
    from taoflow.deploy import AgentError
    from tests.deploy.sync import deploy_to_device, revert_device
    sims = sim_fleet(1)
    device = load_inventory(sims.write_inventory(sys.executable)).devices[0]
    first = load_package(package_copy("one"))
    deploy_to_device(device, first, name="lpd", rollout="r1")
    revert_device(device, "lpd", first.version, fence="r2")
    second = load_package(package_copy("two"))
    with pytest.raises(AgentError, match="rollout r2 was stopped for this device by the host"):
        deploy_to_device(device, second, name="lpd", rollout="r2")
    assert current(sims.devices[0]) is None
    assert deploy_to_device(device, second, name="lpd", rollout="r3")["current"] == second.version
    passport = json.loads(Path(sims.devices[0].root, "models", "lpd", second.version, "passport.json").read_text())
    assert passport["rollout"] == "r3"


def test_wrapper_is_valid_python():
    compile(textwrap.dedent(WRAPPER.format(python=sys.executable, mode_file="/x")), "wrapper", "exec")


def test_file_names_with_backslashes_and_newlines_upload_and_verify(sim_fleet, selftest_package, tmp_path):
    """sha256sum escapes such names on the device; read literally they never matched their checksum."""
    import shutil

    from tests.deploy.sync import deploy_to_device
    sims = sim_fleet(1)
    device = load_inventory(sims.write_inventory(sys.executable)).devices[0]
    pkg = tmp_path / "odd"
    shutil.copytree(selftest_package, pkg)
    expected = json.loads((pkg / "samples" / "expected.json").read_text())
    old = sorted(expected["images"])[0]
    new = "plate \\ back\nslash.png"
    (pkg / "samples" / old).rename(pkg / "samples" / new)
    expected["images"][new] = expected["images"].pop(old)
    (pkg / "samples" / "expected.json").write_text(json.dumps(expected))
    result = deploy_to_device(device, load_package(pkg), name="lpd")
    assert result["current"] == load_package(pkg).version and result["smoke"]["passed"]
    assert (sims.devices[0].root / "models" / "lpd" / result["current"] / "samples" / new).is_file()


def test_sha256sum_lines_with_escaped_names():
    from taoflow.deploy.ssh import parse_sha256sum_line
    digest = "ab" * 32
    assert parse_sha256sum_line(f"{digest}  a b.png") == (digest, "a b.png")
    assert parse_sha256sum_line(f"\\{digest}  x\\\\y\\nz\\r.png") == (digest, "x\\y\nz\r.png")
    assert parse_sha256sum_line("sha256sum: x: No such file or directory") == (None, None)
    assert parse_sha256sum_line(f"{'zz' * 32}  fake") == (None, None)
