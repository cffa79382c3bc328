"""The simulated devices' Python: a real CPython 3.6 venv with JetPack-era numpy/OpenCV/onnxruntime.

JetPack 4.6 ships Python 3.6.9, so the agent is exercised under 3.6 wherever a 3.6 interpreter exists (the CI
image has pyenv 3.6.15). The venv is built once into a cache directory keyed by the requirement pins and reused;
building takes ~10 s with a package index at hand. Without Python 3.6 the agent runs under the host Python and the
tests that need 3.6 say so in their skip reason.
"""

import fcntl
import glob
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

# The last releases with cp36 wheels: onnxruntime 1.10.0, numpy 1.19.5, opencv-python-headless 4.5.5.64.
# pip < 22 is the last pip that runs on 3.6; protobuf < 4 is what onnxruntime 1.10 was built against.
PY36_REQUIREMENTS = ["numpy==1.19.5", "opencv-python-headless==4.5.5.64", "onnxruntime==1.10.0",
                     "protobuf<4"]


def venv_cache_dir(config):
    """pytest's cache dir (kept between runs, like CI's .pytest_cache), or /tmp without the cache plugin."""
    cache = getattr(config, "cache", None)
    if cache is not None:
        return cache.mkdir("taoflow-device-venv")
    return Path(tempfile.gettempdir()) / "taoflow-device-venv"


def find_python36():
    roots = [os.environ.get("PYENV_ROOT"), os.path.expanduser("~/.pyenv")]
    try:
        roots.append(subprocess.run(["pyenv", "root"], capture_output=True, text=True, timeout=10).stdout.strip())
    except (OSError, subprocess.SubprocessError):
        pass
    for root in filter(None, roots):
        for candidate in sorted(glob.glob(os.path.join(root, "versions", "3.6*", "bin", "python3.6"))):
            return candidate
    return shutil.which("python3.6")


def ensure_py36_venv(cache_dir):
    """Path of the cached 3.6 venv's python, building it if needed; (None, reason) when it cannot exist."""
    base = find_python36()
    if base is None:
        return None, "no Python 3.6 on this machine (pyenv versions/3.6*/bin/python3.6 or python3.6 on PATH)"
    key = hashlib.sha256((base + "\n" + "\n".join(PY36_REQUIREMENTS)).encode()).hexdigest()[:10]
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    venv = cache_dir / f"py36-{key}"
    python = venv / "bin" / "python"
    with open(cache_dir / "build.lock", "a+") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)  # parallel test sessions share one build
        if (venv / ".complete").is_file():
            return python, None
        tmp = cache_dir / f".py36-{key}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            _run([base, "-m", "venv", str(tmp)])
            _run([str(tmp / "bin" / "python"), "-m", "pip", "install", "-q", "--upgrade", "pip<22"])
            _run([str(tmp / "bin" / "python"), "-m", "pip", "install", "-q", *PY36_REQUIREMENTS])
            _run([str(tmp / "bin" / "python"), "-c", "import numpy, cv2, onnxruntime"])
        except subprocess.CalledProcessError as e:
            shutil.rmtree(tmp, ignore_errors=True)
            return None, f"cannot build the Python 3.6 venv: {' '.join(e.cmd[-3:])}: {e.stderr.strip()[-300:]}"
        shutil.rmtree(venv, ignore_errors=True)
        # venvs hard-code their own path in scripts; only bin/python (a symlink to the base) is used here.
        tmp.rename(venv)
        (venv / ".complete").write_text(" ".join(PY36_REQUIREMENTS) + "\n")
        return python, None


def _run(argv):
    subprocess.run(argv, check=True, capture_output=True, text=True, timeout=900,
                   env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"})


def host_device_python():
    """The fallback / second-group device Python: the test runner's own interpreter (has numpy, cv2, onnxruntime)."""
    return Path(sys.executable)
