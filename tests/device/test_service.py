"""The detector service's device side (tools/device/agent_service.py).

No systemd runs here, so its path is checked against what systemd's documentation says: the unit text, ExecStart=
quoting read back by a splitter written from systemd.service(5) "Command lines" and systemd.unit(5) "Specifiers",
and the systemctl / journalctl / loginctl / sudo command lines, run against fake tools on PATH that record their
arguments. The fallback supervisor runs for real, under Python 3.6 where it exists."""

import json
import os
import re
import shutil
import signal
import sys
import time

import pytest

import agent_service
from agent_common import AgentError
from tests.device.conftest import AGENT_DIR, run_agent

ROOT = "/home/nvidia/taoflow"
ARGV = ["/usr/bin/python3", ROOT + "/service/agent-0123456789abcdef.pyz", "--root", ROOT, "detect", "--serve",
        "--name", "lpd", "--source", "/dev/video0", "--threshold", "0.3", "--runtime", "auto", "--loop"]


def systemd_split(line):
    """An ExecStart= value as systemd reads it: specifiers expanded first (only %% -> % is allowed here: any other
    %x would be a specifier), then words split at whitespace outside quotes, with C escapes decoded inside double
    quotes, then $$ -> $ in each word (a lone $ would start a variable)."""
    def specifier(match):
        assert match.group(1) == "%", f"unescaped specifier %{match.group(1)} in {line!r}"
        return "%"
    text = re.sub(r"%(.)", specifier, line)
    words, i = [], 0
    escapes = {"\\": "\\", '"': '"', "'": "'", "n": "\n", "t": "\t", "s": " "}
    while i < len(text):
        if text[i].isspace():
            i += 1
            continue
        word = []
        while i < len(text) and not text[i].isspace():
            if text[i] in "\"'":
                quote, i = text[i], i + 1
                while text[i] != quote:
                    if text[i] == "\\":
                        word.append(escapes[text[i + 1]])
                        i += 2
                    else:
                        word.append(text[i])
                        i += 1
                i += 1
            else:
                assert text[i] != "\\", f"an unquoted backslash in {line!r}"
                word.append(text[i])
                i += 1
        words.append("".join(word))

    def dollars(word):
        out, j = [], 0
        while j < len(word):
            if word[j] == "$":
                assert word[j + 1:j + 2] == "$", f"a variable would be substituted in {word!r}"
                j += 1
            out.append(word[j])
            j += 1
        return "".join(out)
    return [dollars(w) for w in words]


NASTY = ["nvarguscamerasrc ! video/x-raw(memory:NVMM), width=1280, framerate=30/1 ! nvvidconv ! "
         "video/x-raw, format=BGRx ! videoconvert ! appsink drop=true", 'say "hi"', "back\\slash\\n", "50% %n %%",
         "$HOME ${PATH} $$", ";", "\\;", "'single'", "rtsp://user:p@ss@cam/stream?x=1&y=2", "汉字 Ünï", ""]


@pytest.mark.parametrize("arg", NASTY)
def test_exec_start_words_read_back_as_given(arg):
    argv = ARGV[:-1] + ["--source", arg]
    line = " ".join(agent_service.exec_arg(a) for a in argv)
    assert systemd_split(line) == argv


def test_exec_start_refuses_control_characters():
    with pytest.raises(AgentError, match="control characters"):
        agent_service.exec_arg("a\nExecStartPre=/bin/rm -rf /")


def test_user_unit_text():
    assert agent_service.unit_text("user", "lpd", ROOT, ARGV) == (
        "# Written by taoflow (`taoflow fleet service install`); the next install replaces it.\n"
        "[Unit]\n"
        "Description=taoflow detector service: model lpd in /home/nvidia/taoflow\n"
        "StartLimitIntervalSec=0\n"
        "\n"
        "[Service]\n"
        "Type=simple\n"
        "WorkingDirectory=/home/nvidia/taoflow\n"
        'Environment="LC_ALL=C.UTF-8" "LANG=C.UTF-8" "PYTHONIOENCODING=utf-8" "PYTHONUNBUFFERED=1"\n'
        'ExecStart="/usr/bin/python3" "/home/nvidia/taoflow/service/agent-0123456789abcdef.pyz" "--root" '
        '"/home/nvidia/taoflow" "detect" "--serve" "--name" "lpd" "--source" "/dev/video0" "--threshold" "0.3" '
        '"--runtime" "auto" "--loop"\n'
        "Restart=on-failure\n"
        "RestartSec=5\n"
        "TimeoutStopSec=20\n"
        "\n"
        "[Install]\n"
        "WantedBy=default.target\n")


def test_system_unit_text_runs_as_the_user_after_the_network():
    text = agent_service.unit_text("system", "lpd", "/opt/50%", ARGV, user="nvidia")
    lines = text.splitlines()
    assert lines[2:5] == ["Description=taoflow detector service: model lpd in /opt/50%%",
                          "Wants=network-online.target", "After=network-online.target"]
    assert "User=nvidia" in lines and "WorkingDirectory=/opt/50%%" in lines
    assert lines[-1] == "WantedBy=multi-user.target"
    with pytest.raises(AgentError, match="User="):
        agent_service.unit_text("system", "lpd", ROOT, ARGV, user="evil\nExecStartPre=x")


@pytest.mark.parametrize("props, state", [
    ({"LoadState": "loaded", "ActiveState": "active", "SubState": "running"}, "running"),
    ({"LoadState": "loaded", "ActiveState": "activating", "SubState": "auto-restart"}, "restarting"),
    ({"LoadState": "loaded", "ActiveState": "activating", "SubState": "start"}, "starting"),
    ({"LoadState": "loaded", "ActiveState": "deactivating", "SubState": "stop-sigterm"}, "stopping"),
    ({"LoadState": "loaded", "ActiveState": "failed", "SubState": "failed"}, "failed"),
    ({"LoadState": "loaded", "ActiveState": "inactive", "SubState": "dead"}, "stopped"),
    ({"LoadState": "not-found", "ActiveState": "inactive", "SubState": "dead"}, "missing"),
    ({}, "unknown"),
])
def test_unit_states(props, state):
    assert agent_service.unit_state(props) == state


def test_command_lines_per_mode(monkeypatch):
    user, system = agent_service.Systemd("user"), agent_service.Systemd("system")
    assert user.systemctl("enable", "u.service") == ["systemctl", "--user", "enable", "u.service"]
    assert user.privileged(user.systemctl("restart", "u")) == ["systemctl", "--user", "restart", "u"]
    assert user.journalctl("u.service", 50) == ["journalctl", "--user-unit=u.service", "--lines=50", "--no-pager",
                                                 "--output=short-iso"]
    assert system.journalctl("u.service", 50)[1] == "--unit=u.service"
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    system = agent_service.Systemd("system")
    assert system.privileged(system.systemctl("disable", "--now", "u")) == [
        "sudo", "-n", "systemctl", "disable", "--now", "u"]
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    system = agent_service.Systemd("system")
    assert system.privileged(system.systemctl("daemon-reload")) == ["systemctl", "daemon-reload"]


# --- install / status / stop / logs against fake systemd tools --------------------------------------------------

FAKE_TOOL = """#!{python}
import json, os, sys
name = os.path.basename(sys.argv[0])
with open(os.environ["FAKE_LOG"], "a") as f:
    f.write(json.dumps([name] + sys.argv[1:]) + "\\n")
if name == "sudo":
    if os.environ.get("FAKE_SUDO_PASSWORD"):
        sys.stderr.write("sudo: a password is required\\n")
        sys.exit(1)
    assert sys.argv[1] == "-n"
    os.execvp(sys.argv[2], sys.argv[2:])
if name == "systemctl" and "show" in sys.argv:
    sys.stdout.write(open(os.environ["FAKE_SHOW"]).read())
if name == "journalctl":
    sys.stdout.write("2026-01-01T00:00:00+0000 nano python3[42]: line one\\n2026-01-01T00:00:01+0000 two\\n")
if name == "loginctl" and os.environ.get("FAKE_LINGER_DENIED"):
    sys.stderr.write("Could not enable linger: Access denied\\n")
    sys.exit(1)
"""


@pytest.fixture
def fake_systemd(tmp_path, monkeypatch):
    """A systemd device logged into as user nvidia: /run/systemd/system, fake systemctl / journalctl / loginctl /
    sudo recording their arguments, a home and a user runtime dir with a user manager's socket, model lpd with a
    current version; returns (device root, calls())."""
    bin_dir, home, run = tmp_path / "bin", tmp_path / "home", tmp_path / "run"
    for folder in (bin_dir, home, run / "systemd", tmp_path / "systemd-run", tmp_path / "linger",
                   tmp_path / "etc-systemd"):
        folder.mkdir(parents=True)
    (run / "systemd" / "private").write_text("")
    for tool in ("systemctl", "journalctl", "loginctl", "sudo"):
        (bin_dir / tool).write_text(FAKE_TOOL.format(python=sys.executable))
        (bin_dir / tool).chmod(0o755)
    show = tmp_path / "show.txt"
    show.write_text("LoadState=loaded\nActiveState=active\nSubState=running\nUnitFileState=enabled\nMainPID=4242\n"
                    "NRestarts=0\nExecMainStatus=0\nExecMainStartTimestampMonotonic=0\n")
    log = tmp_path / "calls.jsonl"
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(run))
    monkeypatch.setenv("FAKE_LOG", str(log))
    monkeypatch.setenv("FAKE_SHOW", str(show))
    monkeypatch.setattr(agent_service, "SYSTEMD_RUN_DIR", str(tmp_path / "systemd-run"))
    monkeypatch.setattr(agent_service, "LINGER_DIR", str(tmp_path / "linger"))
    monkeypatch.setattr(agent_service, "SYSTEM_UNIT_DIR", str(tmp_path / "etc-systemd"))
    monkeypatch.setattr(agent_service.pwd, "getpwuid", lambda uid: type("Entry", (), {
        "pw_name": "nvidia", "pw_dir": str(home)})())
    monkeypatch.setattr(os, "geteuid", lambda: 1000)  # a JetPack user, not root
    root = tmp_path / "root"
    models = root / "models" / "lpd"
    (models / "v1").mkdir(parents=True)
    (models / "current").symlink_to("v1")

    def calls():
        return [json.loads(line) for line in log.read_text().splitlines()] if log.is_file() else []
    return root, calls


SHOW = ["--property=LoadState,ActiveState,SubState,UnitFileState,MainPID,NRestarts,ExecMainStatus,"
        "ExecMainStartTimestampMonotonic", "taoflow-detect-lpd.service"]


def test_user_unit_install_enables_lingering_writes_the_unit_and_starts_it(fake_systemd):
    root, calls = fake_systemd
    result = agent_service.install(str(root), "lpd", "/dev/video0", threshold=0.4, mode="auto", wait_s=0)
    state = result["services"]["lpd"]
    assert state["mode"] == "user" and state["state"] == "running" and state["pid"] == 4242
    assert state["enabled"] is True and state["live"] is False  # no heartbeat from pid 4242 in this test
    assert state["log_tail"][0].endswith("line one")
    unit = "taoflow-detect-lpd.service"
    assert calls() == [
        ["loginctl", "enable-linger", "nvidia"],
        ["systemctl", "--user", "daemon-reload"],
        ["systemctl", "--user", "enable", unit],
        ["systemctl", "--user", "restart", unit],
        ["systemctl", "--user", "show", *SHOW],
        ["journalctl", "--user-unit=" + unit, "--lines=200", "--no-pager", "--output=short-iso"]]
    text = (root.parent / "home" / ".config" / "systemd" / "user" / unit).read_text()
    record = json.loads((root / "service" / "lpd" / "install.json").read_text())
    assert text == agent_service.unit_text("user", "lpd", str(root), record["argv"])
    assert record["argv"][:2] == [sys.executable, str(AGENT_DIR / "taoflow_agent.py")]  # run from a checkout
    assert systemd_split(text.split("ExecStart=", 1)[1].splitlines()[0])[4:] == [
        "detect", "--serve", "--name", "lpd", "--source", "/dev/video0", "--threshold", "0.4", "--runtime", "auto"]

    before = len(calls())
    assert agent_service.status(str(root))["services"]["lpd"]["state"] == "running"
    logs = agent_service.logs(str(root), "lpd", 1)["services"]["lpd"]
    assert logs["lines"] == ["2026-01-01T00:00:01+0000 two"] and logs["mode"] == "user"
    stopped = agent_service.stop(str(root), "lpd")
    assert calls()[before:] == [
        ["systemctl", "--user", "show", *SHOW],
        ["journalctl", "--user-unit=" + unit, "--lines=1", "--no-pager", "--output=short-iso"],
        ["systemctl", "--user", "show", *SHOW],
        ["systemctl", "--user", "disable", "--now", unit],
        ["systemctl", "--user", "show", *SHOW]]
    assert stopped["services"]["lpd"]["installed"] is True


def test_auto_falls_back_to_the_supervisor_when_lingering_is_refused(fake_systemd, monkeypatch):
    monkeypatch.setenv("FAKE_LINGER_DENIED", "1")
    mode, why = agent_service.choose_mode("auto")
    assert mode == "supervisor" and "sudo loginctl enable-linger nvidia" in why and "Access denied" in why
    with pytest.raises(AgentError, match="lingering could not be enabled"):
        agent_service.choose_mode("user")


def test_no_systemd_means_the_supervisor_and_a_clear_error_for_systemd_modes(fake_systemd, tmp_path, monkeypatch):
    monkeypatch.setattr(agent_service, "SYSTEMD_RUN_DIR", str(tmp_path / "absent"))
    mode, why = agent_service.choose_mode("auto")
    assert mode == "supervisor" and why.startswith(f"systemd is not running here (no {tmp_path / 'absent'})")
    for requested in ("user", "system"):
        with pytest.raises(AgentError, match=f'service_mode = "{requested}": systemd is not running here'):
            agent_service.choose_mode(requested)
    monkeypatch.setattr(agent_service, "SYSTEMD_RUN_DIR", str(tmp_path / "systemd-run"))
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert agent_service.choose_mode("auto")[1].startswith("no systemctl on PATH")
    with pytest.raises(AgentError, match="choose one of"):
        agent_service.choose_mode("docker")


def test_system_unit_through_sudo_and_its_password_error(fake_systemd, tmp_path, monkeypatch):
    root, calls = fake_systemd
    agent_service.install(str(root), "lpd", "/dev/video0", mode="system", wait_s=0)
    unit, etc = "taoflow-detect-lpd.service", tmp_path / "etc-systemd"
    staged = str(root / "service" / "lpd" / unit)
    assert [c for c in calls() if c[0] == "sudo"] == [
        ["sudo", "-n", "install", "-m", "0644", staged, f"{etc}/.{unit}.tmp"],
        ["sudo", "-n", "mv", "-f", f"{etc}/.{unit}.tmp", f"{etc}/{unit}"],
        ["sudo", "-n", "systemctl", "daemon-reload"],
        ["sudo", "-n", "systemctl", "enable", unit],
        ["sudo", "-n", "systemctl", "restart", unit]]
    assert "User=nvidia\n" in (etc / unit).read_text() and not (etc / f".{unit}.tmp").exists()
    monkeypatch.setenv("FAKE_SUDO_PASSWORD", "1")
    with pytest.raises(AgentError) as e:
        agent_service.stop(str(root), "lpd")
    assert 'needs sudo without a password for systemctl disable' in str(e.value)
    assert 'use service_mode = "user"' in str(e.value)


def test_root_gets_a_system_unit_and_a_mode_change_removes_the_old_unit(fake_systemd, tmp_path, monkeypatch):
    root, calls = fake_systemd
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    assert agent_service.choose_mode("auto")[0] == "system"
    agent_service.install(str(root), "lpd", "/dev/video0", mode="auto", wait_s=0)
    unit = tmp_path / "etc-systemd" / "taoflow-detect-lpd.service"
    assert unit.is_file() and not any(c[0] == "sudo" for c in calls())  # root needs no sudo
    before = len(calls())
    agent_service._stop(str(root), "lpd", agent_service.read_record(str(root), "lpd"), remove_unit=True)
    assert not unit.exists()
    assert calls()[before:] == [["systemctl", "show", *SHOW],
                                ["systemctl", "disable", "--now", "taoflow-detect-lpd.service"],
                                ["systemctl", "daemon-reload"]]


def test_install_refuses_a_model_without_current_and_names_the_choice(fake_systemd):
    root, _ = fake_systemd
    with pytest.raises(AgentError, match="no current version of other"):
        agent_service.install(str(root), "other", "/dev/video0", mode="supervisor", wait_s=0)
    (root / "models" / "second").mkdir()
    with pytest.raises(AgentError, match=r"the device has 2 models \(lpd, second\): choose one with --name"):
        agent_service.install(str(root), None, "/dev/video0", mode="supervisor", wait_s=0)


def test_logs_are_capped_newest_kept():
    lines = [f"{i:05d} " + "x" * 100 for i in range(5000)]
    kept, truncated = agent_service._cap(lines)
    assert truncated and kept[-1] == lines[-1] and sum(len(k) + 1 for k in kept) <= agent_service.LOG_REPLY_MAX_BYTES
    long, _ = agent_service._cap(["y" * 10000])
    assert long[0].endswith("[6000 more characters]")
    with pytest.raises(AgentError, match="--lines must be 1 to 2000"):
        agent_service.logs("/nonexistent", None, 0)


# --- the fallback supervisor, for real ------------------------------------------------------------------------------

def _pids_alive(*pids):
    return [p for p in pids if p and agent_service._alive(p)]


@pytest.mark.slow
def test_supervisor_restarts_a_failed_service_and_stops_it(device_python_for_agent, selftest_package, tmp_path):
    import cv2
    python = device_python_for_agent
    root = tmp_path / "root"
    shutil.copytree(selftest_package, root / "staging" / "lpd" / "v1")
    status, reply = run_agent(python, root, "smoke", "--name", "lpd", "--version", "v1", "--iterations", "2",
                              "--activate")
    assert status == 0, reply
    writer = cv2.VideoWriter(str(root / "clip.avi"), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (160, 120))
    for path in sorted((selftest_package / "samples").glob("*.png")):
        writer.write(cv2.resize(cv2.imread(str(path)), (160, 120)))
    writer.release()
    pids = []
    try:
        status, reply = run_agent(python, root, "service-install", "--name", "lpd", "--source", "clip.avi", "--loop",
                                  "--mode", "auto", "--wait", "60")
        first = reply["result"]["services"]["lpd"]
        pids += [first.get("supervisor_pid"), first.get("pid")]
        assert status == 0 and first["mode"] == "supervisor" and first["state"] == "running" and first["live"], reply
        assert first["heartbeat"]["pid"] == first["pid"] and first["heartbeat"]["version"] == "v1"

        os.kill(first["pid"], signal.SIGKILL)  # the detector dies: the supervisor starts it again after 1 s
        deadline = time.monotonic() + 30
        while True:
            again = run_agent(python, root, "service-status")[1]["result"]["services"]["lpd"]
            if again["live"] and again["pid"] != first["pid"]:
                break
            assert time.monotonic() < deadline, again
            time.sleep(0.3)
        pids.append(again["pid"])
        assert again["restarts"] == 1 and again["supervisor_pid"] == first["supervisor_pid"]
        lines = run_agent(python, root, "service-logs", "--lines", "50")[1]["result"]["services"]["lpd"]["lines"]
        assert any(f"the service failed (exit status -{int(signal.SIGKILL)}); restarting in 1 s" in line
                   for line in lines), lines

        status, reply = run_agent(python, root, "service-stop")
        stopped = reply["result"]["services"]["lpd"]
        assert status == 0 and stopped["state"] == "stopped" and stopped["heartbeat"]["status"] == "stopped"
        assert not _pids_alive(first["supervisor_pid"], again["pid"])

        # a source that does not open: the service fails at once, install says so with its log
        status, reply = run_agent(python, root, "service-install", "--name", "lpd", "--source", "missing.avi",
                                  "--mode", "supervisor", "--wait", "30")
        broken = reply["result"]["services"]["lpd"]
        pids.append(broken.get("supervisor_pid"))
        assert status == 0 and not broken["live"] and broken["state"] in ("restarting", "running")
        assert any("no such video file" in line for line in broken["log_tail"]), broken["log_tail"]
        assert not any("clip.avi" in line for line in broken["log_tail"])  # this supervisor's lines only
    finally:
        run_agent(python, root, "service-stop")
        for pid in _pids_alive(*pids):
            os.kill(pid, signal.SIGKILL)


@pytest.fixture
def device_python_for_agent(py36):
    """Python 3.6 (JetPack's) where it exists, else this interpreter: the supervisor's forks and signals."""
    return py36[0] or sys.executable


def test_spawn_detached_reports_an_exec_failure(tmp_path):
    with pytest.raises(AgentError, match="cannot start /nonexistent/python"):
        agent_service.spawn_detached(["/nonexistent/python", "x"], str(tmp_path), str(tmp_path / "log"))
    pid = agent_service.spawn_detached(["/bin/sh", "-c", "echo $$ > pid; sleep 1"], str(tmp_path),
                                       str(tmp_path / "log"))
    deadline = time.monotonic() + 10
    while not (tmp_path / "pid").is_file() or not (tmp_path / "pid").read_text().strip():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert int((tmp_path / "pid").read_text()) == pid
    # a session of its own (not the SSH session's), whose leader (the first child) is gone: no terminal ever
    assert os.getsid(pid) not in (os.getsid(0), pid)
