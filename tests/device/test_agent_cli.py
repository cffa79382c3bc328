"""The agent as the device runs it: a separate process under real Python 3.6, JSON on stdout, vermin-clean."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.device.conftest import AGENT_DIR


def test_agent_sources_are_python36_compatible():
    vermin = shutil.which("vermin", path=str(Path(sys.executable).parent)) or shutil.which("vermin")
    assert vermin, "vermin is a test dependency"
    proc = subprocess.run([vermin, "-t=3.6-", "--violations", "--no-tips", str(AGENT_DIR)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_agent_imports_nothing_from_taoflow():
    for path in AGENT_DIR.glob("*.py"):
        text = path.read_text()
        assert "import taoflow" not in text and "from taoflow" not in text, path


def test_probe_build_smoke_activate_under_python36(py36_python, agent, selftest_package, tmp_path):
    root = tmp_path / "root"
    shutil.copytree(selftest_package, root / "staging" / "lpd" / "v1")
    status, reply = agent(py36_python, root, "probe")
    assert status == 0 and reply["ok"] and reply["result"]["python"]["version"].startswith("3.6.")
    assert reply["result"]["modules"]["onnxruntime"]["version"] == "1.10.0"  # from its metadata, not imported
    status, reply = agent(py36_python, root, "probe", "--imports")
    assert status == 0 and reply["result"]["import_errors"] == {} and reply["result"]["runtimes"] == ["onnxruntime"]
    assert reply["result"]["modules"]["onnxruntime"] == {"version": "1.10.0", "providers": ["CPUExecutionProvider"]}
    status, reply = agent(py36_python, root, "build", "--runtime", "tensorrt", "--name", "lpd", "--version", "v1")
    assert status == 1 and reply["error"].startswith("no TensorRT on this device")
    status, reply = agent(py36_python, root, "build", "--name", "lpd", "--version", "v1")
    assert status == 0 and reply["result"]["runtime"] == "onnxruntime"
    status, reply = agent(py36_python, root, "smoke", "--name", "lpd", "--version", "v1", "--iterations", "3")
    assert status == 0 and reply["result"]["passed"] and reply["result"]["fps"] > 0
    two = reply["result"]["images"]["two_objects.png"]["detections"]
    assert [(d["label"], d["box"]) for d in two] == [("car", [64.0, 24.0, 96.0, 48.0]),
                                                     ("plate", [0.0, 72.0, 32.0, 96.0])]
    status, reply = agent(py36_python, root, "activate", "--name", "lpd", "--version", "v1")
    assert status == 0 and reply["result"]["models"]["lpd"]["current"] == "v1"
    assert json.loads((root / "models" / "lpd" / "v1" / "smoke.json").read_text())["passed"] is True


def test_smoke_activate_switches_only_after_a_pass_and_is_safe_to_retry(py36_python, agent, selftest_package,
                                                                      tmp_path):
    root = tmp_path / "root"
    ids = ("--name", "lpd", "--version")
    bad = shutil.copytree(selftest_package, root / "staging" / "lpd" / "v0")
    expected = json.loads((bad / "samples" / "expected.json").read_text())
    for dets in expected["images"].values():
        for d in dets:
            d["box"] = [v + 40 for v in d["box"]]
    (bad / "samples" / "expected.json").write_text(json.dumps(expected))
    status, reply = agent(py36_python, root, "smoke", *ids, "v0", "--iterations", "1", "--activate")
    assert status == 1 and reply["error"].startswith("smoke test failed")
    assert not (root / "models" / "lpd" / "current").exists()

    shutil.copytree(selftest_package, root / "staging" / "lpd" / "v1")
    args = ("smoke", *ids, "v1", "--iterations", "2", "--activate", "--keep", "2", "--wave", "3")
    status, reply = agent(py36_python, root, *args)
    assert status == 0 and reply["result"]["passed"] and reply["result"]["fps"] > 0
    assert reply["result"]["activated"]["models"]["lpd"]["current"] == "v1"
    assert not (root / "staging" / "lpd" / "v1").exists()
    # the same call again (its first reply lost): the installed copy's smoke record, still current
    status, again = agent(py36_python, root, *args)
    assert status == 0 and again["result"]["checked_at"] == reply["result"]["checked_at"]
    assert again["result"]["activated"]["models"]["lpd"]["current"] == "v1"
    passport = json.loads((root / "models" / "lpd" / "v1" / "passport.json").read_text())
    assert passport["wave"] == 3 and passport["smoke"]["passed"]


def test_errors_are_json_with_file_and_line(agent, selftest_package, tmp_path):
    root = tmp_path / "root"
    staged = shutil.copytree(selftest_package, root / "staging" / "lpd" / "v1")
    (staged / "model.json").write_text('{"format": "taoflow-ssd/1",\n "model_file": }\n')
    status, reply = agent(sys.executable, root, "smoke", "--name", "lpd", "--version", "v1")
    assert status == 1 and not reply["ok"] and reply["error"].startswith(f"{staged}/model.json:2: invalid JSON")
    status, reply = agent(sys.executable, root, "smoke", "--name", "lpd", "--version", "v9")
    assert status == 1 and "is not staged" in reply["error"]
    status, reply = agent(sys.executable, root, "frobnicate")
    assert status == 1 and reply["error"].startswith("usage:")


NOISY_IMPORT = """
import os, sys
class Noisy(object):
    def find_spec(self, name, path=None, target=None):
        if name == "agent_probe":
            os.write(1, b"noise from a native library\\n")
        return None
    find_module = None
sys.meta_path.insert(0, Noisy())
"""


@pytest.mark.parametrize("python", ["py36", "host"])
def test_stdout_stays_pure_json_when_native_code_prints(python, py36, agent, tmp_path):
    """Something writing to fd 1 during a command (as TensorRT's logger or CUDA can) must not corrupt the reply:
    here an import hook writes to fd 1 when the probe module loads."""
    interpreter = py36[0] if python == "py36" else sys.executable
    if interpreter is None:
        pytest.skip(py36[1])
    (tmp_path / "sitecustomize.py").write_text(NOISY_IMPORT)
    env = {"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"}
    proc = subprocess.run([str(interpreter), str(AGENT_DIR / "taoflow_agent.py"), "--root", str(tmp_path), "probe"],
                          capture_output=True, text=True, timeout=120, env=env)
    assert "noise from a native library" in proc.stderr  # the hook did fire, into stderr
    assert len(proc.stdout.strip().splitlines()) == 1 and json.loads(proc.stdout)["ok"] is True


def test_every_reply_reports_the_commands_cpu_seconds(agent, tmp_path):
    python = sys.executable
    status, reply = agent(python, tmp_path / "root", "probe")
    assert status == 0 and isinstance(reply["cpu_s"], float) and reply["cpu_s"] > 0
    status, reply = agent(python, tmp_path / "root", "rollback", "--name", "lpd")
    assert status == 1 and reply["cpu_s"] >= 0  # failures report it too
