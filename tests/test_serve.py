"""`taoflow serve` starts and stops cleanly: SIGINT and SIGTERM end it with exit 0 (schedules paused), and it exits 1
on its own, without hanging, when the Prefect server it started dies under it."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def start_serve(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env.update(PREFECT_HOME=str(tmp_path / "home"), DO_NOT_TRACK="1", PREFECT_SERVER_ANALYTICS_ENABLED="false")
    log = tmp_path / "serve.log"
    proc = subprocess.Popen([sys.executable, "-m", "taoflow.cli", "serve", "-w", str(tmp_path / "ws"), "--deployment",
                             "demo"], env=env, stdout=open(log, "w"), stderr=subprocess.STDOUT,
                            start_new_session=True)
    deadline = time.monotonic() + 180
    while "serving train-ssd/demo" not in log.read_text():
        assert proc.poll() is None, log.read_text()
        assert time.monotonic() < deadline, log.read_text()
        time.sleep(0.5)
    time.sleep(2)  # the runner registers its deployments and starts polling
    return proc, log


def server_pid(serve_pid):
    """The `prefect server start` child of the serve process."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            cmdline = (stat.parent / "cmdline").read_bytes()
        except (OSError, ValueError):
            continue
        if ppid == serve_pid and b"server\0start" in cmdline:
            return int(stat.parent.name)
    return None


def finish(proc, log, timeout=60):
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        pytest.fail(f"taoflow serve did not stop within {timeout} s:\n{log.read_text()[-3000:]}")


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_serve_stops_on_a_signal_and_takes_its_server_along(tmp_path, sig):
    proc, log = start_serve(tmp_path)
    server = server_pid(proc.pid)
    assert server is not None
    proc.send_signal(sig)
    assert finish(proc, log) == 0, log.read_text()[-3000:]
    text = log.read_text()
    assert "stopped" in text and "Traceback" not in text, text[-3000:]
    deadline = time.monotonic() + 15
    while Path(f"/proc/{server}").exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not Path(f"/proc/{server}").exists() or "Z" in Path(f"/proc/{server}/stat").read_text().split()[2]


def test_serve_exits_1_when_its_prefect_server_dies(tmp_path):
    proc, log = start_serve(tmp_path)
    os.kill(server_pid(proc.pid), signal.SIGKILL)
    assert finish(proc, log) == 1, log.read_text()[-3000:]
    assert "the Prefect server this command started stopped" in log.read_text()
