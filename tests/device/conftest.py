"""Fixtures for the device agent's tests: its modules on sys.path, the 3.6 venv, an agent runner, a package."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from taoflow.deploy.selftest import write_selftest_package
from tests.device.support import ensure_py36_venv, venv_cache_dir

AGENT_DIR = Path(__file__).resolve().parents[2] / "tools" / "device"
if str(AGENT_DIR) not in sys.path:
    sys.path.insert(0, str(AGENT_DIR))  # the agent's modules import each other as top-level siblings


@pytest.fixture(scope="session")
def py36(request):
    return ensure_py36_venv(venv_cache_dir(request.config))


@pytest.fixture(scope="session")
def py36_python(py36):
    python, reason = py36
    if python is None:
        pytest.skip(f"{reason}; the agent's other tests ran under the host Python {sys.version.split()[0]}")
    return python


def run_agent(python, root, *args, env=None):
    """Run the agent CLI; return (exit status, parsed JSON reply). Asserts stdout is exactly one JSON line."""
    proc = subprocess.run([str(python), str(AGENT_DIR / "taoflow_agent.py"), "--root", str(root), *args],
                          capture_output=True, text=True, timeout=120, env=env)
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1, f"stdout must be one JSON line, got {proc.stdout!r} (stderr {proc.stderr[-500:]!r})"
    return proc.returncode, json.loads(lines[0])


@pytest.fixture
def agent():
    """agent(python, root, *args) -> (status, reply)."""
    return run_agent


@pytest.fixture(scope="session")
def selftest_package(tmp_path_factory):
    return write_selftest_package(tmp_path_factory.mktemp("pkg") / "selftest")
