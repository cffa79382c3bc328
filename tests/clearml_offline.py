"""The real ClearML SDK, offline, for unit tests of taoflow.tracking and taoflow.runs: no server configured, secrets
planted in the environment (they must reach no file), and every variable taoflow.tracking.Tracker sets restored
afterwards. Import the `offline_clearml` fixture into a test module to use it."""

import json
import sys
import zipfile
from pathlib import Path

import pytest

PLANTED = {  # what a user's environment holds: keys that must never reach a ClearML session
    "CLEARML_API_ACCESS_KEY": "PLANTED-clearml-access-0a1b2c3d4e5f",
    "CLEARML_API_SECRET_KEY": "PLANTED-clearml-secret-fedcba9876543210",
    "NGC_API_KEY": "nvapi-PLANTED-ngc-key-0123456789abcdef",
    "TAO_MODEL_KEY": "PLANTED-tao-model-key-13579",
}


@pytest.fixture
def offline_clearml(tmp_path, monkeypatch):
    """No ClearML server (no CLEARML_API_HOST, no clearml.conf), planted secrets; returns the secrets."""
    monkeypatch.delenv("CLEARML_API_HOST", raising=False)
    monkeypatch.setenv("CLEARML_CONFIG_FILE", str(tmp_path / "no-clearml.conf"))  # absent: no server configured
    # Tracker sets these for its offline session; registering them restores the test process's values afterwards
    for name in ("CLEARML_CACHE_DIR", "CLEARML_OFFLINE_MODE"):
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)
    for name, value in PLANTED.items():
        monkeypatch.setenv(name, value)
    yield dict(PLANTED)
    # A test that failed before closing its task would leave it as the process's current task, and the next
    # Task.init would return it (writing into that test's workspace): close it here.
    if "clearml" in sys.modules:
        from clearml import Task
        task = Task.current_task()
        if task is not None:
            task.close()


def session_contents(zip_path):
    """(member names, task.json as a dict, reported events) of an offline session zip."""
    with zipfile.ZipFile(zip_path) as z:
        names = z.namelist()
        task = json.loads(z.read("task.json"))
        # each line of metrics.jsonl is a batch (a JSON list) of reported events
        events = [event for line in z.read("metrics.jsonl").decode().splitlines() if line.strip()
                  for event in json.loads(line)] if "metrics.jsonl" in names else []
    return names, task, events


def all_bytes(root):
    """(path, bytes) of every file under root, zip archives with their members' bytes appended."""
    for path in Path(root).rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            if path.suffix == ".zip":
                with zipfile.ZipFile(path) as z:
                    data += b"".join(z.read(n) for n in z.namelist())
            yield path, data
