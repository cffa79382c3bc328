"""Fixtures for the TAO backend: real `nvidia-tao` launchers in their own venvs, the `ssd` stand-in, tiny data.

The launchers are installed with pip into venvs under pytest's cache directory (.pytest_cache/d/), once per
machine, and reused by later runs; never into taoflow's own environment (nvidia-tao pins old requests/urllib3).
"""

import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[2]
SPECS = REPO / "specs" / "crpd"

# One launcher per command surface: nvidia-tao 6.x (nvidia_tao_cli, config format 3.0, `tao model ssd`) and
# nvidia-tao 4.0.1 (module tlt, config format 2.0, `tao ssd`).
LAUNCHERS = {"tao5": "nvidia-tao==6.26.3", "tao4": "nvidia-tao==4.0.1"}
KEY = "tfk_PLANTED_8b1e2c9d"


def _install(venv, requirement):
    marker = venv / ".complete"
    if marker.is_file() and marker.read_text() == requirement and (venv / "bin" / "tao").is_file():
        return
    shutil.rmtree(venv, ignore_errors=True)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    proc = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check",
                           requirement], capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.fail(f"could not install {requirement} into {venv}:\n{proc.stdout}\n{proc.stderr}")
    marker.write_text(requirement)


@pytest.fixture(scope="session")
def tao_launchers(request, tmp_path_factory):
    """generation -> path of a real `tao` from its own venv."""
    cache = getattr(request.config, "cache", None)
    base = Path(cache.mkdir("taoflow-tao-launchers")) if cache is not None else tmp_path_factory.mktemp("launchers")
    found = {}
    for generation, requirement in LAUNCHERS.items():
        venv = base / requirement.replace("==", "-")
        _install(venv, requirement)
        found[generation] = str(venv / "bin" / "tao")
    return found


def write_executable(path, text):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path


@pytest.fixture
def standin_bin(tmp_path):
    """A test-only PATH directory holding `ssd` (the stand-in), run by this interpreter."""
    bin_dir = tmp_path / "standin-bin"
    source = (HERE / "standin_ssd.py").read_text()
    write_executable(bin_dir / "ssd", f"#!{sys.executable}\n{source}")
    return bin_dir


@pytest.fixture
def home(tmp_path, monkeypatch):
    """An empty HOME, so neither ~/.tao_mounts.json, ~/.tao/config.json nor ~/.docker/config.json leak in."""
    path = tmp_path / "home"
    path.mkdir()
    monkeypatch.setenv("HOME", str(path))
    for name in ("TAO_MODEL_KEY", "TAO_DOCKER_DISABLE", "TAOFLOW_TAO_LAUNCHER", "TAOFLOW_TAO_GENERATION",
                 "OVERRIDE_REGISTRY", "CI_PROJECT_DIR", "LAUNCHER_MOUNTS", "DATA_BASE_PATH"):
        monkeypatch.delenv(name, raising=False)
    return path


@pytest.fixture
def data_root(tmp_path):
    """The directories the shipped CRPD specs name, relative to a data root (contents do not matter here)."""
    root = tmp_path / "data"
    for sub in ("crpd/split/training/image", "crpd/split/training/label", "crpd/split/val/image",
                "crpd/split/val/label", "crpd/tfrecords", "crpd/test_images", "models"):
        (root / sub).mkdir(parents=True)
    for name in ("a.jpg", "b.jpg"):
        (root / "crpd/test_images" / name).write_bytes(b"\xff\xd8 not really a jpeg")
    (root / "models/resnet18.hdf5").write_bytes(b"pretrained")
    return root


def minimal_path():
    """The caller's PATH without directories holding what the tests simulate (tao, docker, ssd, GPU hooks)."""
    hidden = ("tao", "docker", "ssd", "nvidia-container-runtime-hook", "nvidia-container-runtime", "nvidia-ctk")
    keep = [d for d in os.environ.get("PATH", "").split(os.pathsep)
            if d and not any(Path(d, exe).exists() for exe in hidden)]
    return os.pathsep.join(keep) or "/nonexistent-taoflow-test-path"
