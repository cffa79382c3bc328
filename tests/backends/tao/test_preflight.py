"""Preflight diagnostics, one clear message per missing piece. The machine is simulated through PATH and HOME:
a `tao` wrapper script answering `tao info` and `docker` scripts answering like the real CLI does."""

import json
import os
import subprocess
import sys

import pytest

from taoflow.backends.tao import TAO4, TAO5, TaoPreflightError, run_preflight

from .conftest import REPO, minimal_path, write_executable

NO_DAEMON = ('echo "Cannot connect to the Docker daemon at unix:///var/run/docker.sock. '
             'Is the docker daemon running?" >&2; exit 1')
WITH_NVIDIA = """echo '{"io.containerd.runc.v2":{"path":"runc"},"nvidia":{"path":"nvidia-container-runtime"}}'"""
WITHOUT_NVIDIA = """echo '{"io.containerd.runc.v2":{"path":"runc"},"runc":{"path":"runc"}}'"""


def tao_wrapper(bin_dir, format_version="3.0", toolkit="5.0.0"):
    """A `tao` that is not a Python console script (like a shell wrapper around one): probed via `tao info`."""
    return write_executable(bin_dir / "tao", f"""#!/bin/sh
if [ "$1" = info ]; then
  echo "Configuration of the TAO Toolkit Instance"
  echo "task_group: ['model', 'dataset', 'deploy']"
  echo "format_version: {format_version}"
  echo "toolkit_version: {toolkit}"
  exit 0
fi
exit 1
""")


@pytest.fixture
def machine(tmp_path, home):
    """(environ, bin_dir): a PATH with a `tao` wrapper and nothing else TAO needs; HOME empty."""
    bin_dir = tmp_path / "bin"
    tao_wrapper(bin_dir)
    env = {"PATH": f"{bin_dir}{os.pathsep}{minimal_path()}", "HOME": str(home)}
    return env, bin_dir


def docker(bin_dir, body):
    write_executable(bin_dir / "docker", f"#!/bin/sh\n{body}\n")


def login(home, registry="nvcr.io"):
    (home / ".docker").mkdir(exist_ok=True)
    (home / ".docker/config.json").write_text(json.dumps({"auths": {registry: {}}}))


def expect(env, *fragments, **kwargs):
    with pytest.raises(TaoPreflightError) as err:
        run_preflight(env, **kwargs)
    for fragment in fragments:
        assert fragment in str(err.value)
    return str(err.value)


def test_launcher_not_found(home):
    env = {"PATH": minimal_path(), "HOME": str(home)}
    expect(env, "`tao` not found on PATH", "pipx install nvidia-tao", "TAOFLOW_TAO_LAUNCHER")
    expect(env, f"not found at {home}/nope", launcher=home / "nope")


def test_no_docker_cli(machine):
    env, _ = machine
    expect(env, "docker CLI not found on PATH", "install Docker Engine", "TAO_DOCKER_DISABLE=1")


def test_no_docker_daemon(machine):
    env, bin_dir = machine
    docker(bin_dir, NO_DAEMON)
    expect(env, "no docker daemon reachable (Cannot connect to the Docker daemon", "systemctl start docker")


def test_not_logged_in_to_nvcr(machine, home):
    env, bin_dir = machine
    docker(bin_dir, WITH_NVIDIA)
    expect(env, "not logged in to nvcr.io", ".docker/config.json does not exist", "docker login nvcr.io",
           "$oauthtoken", "NGC API key")
    login(home, "docker.io")
    expect(env, "not logged in to nvcr.io", "has no auths entry")
    (home / ".docker/config.json").write_text("{not json")
    expect(env, "cannot read", "docker login nvcr.io")
    assert run_preflight(dict(env, OVERRIDE_REGISTRY="my.registry")).launcher.generation == TAO5


def test_no_gpu_runtime(machine, home):
    env, bin_dir = machine
    docker(bin_dir, WITHOUT_NVIDIA)
    login(home)
    expect(env, "no NVIDIA GPU runtime", "NVIDIA Container Toolkit", "nvidia-ctk runtime configure")
    write_executable(bin_dir / "nvidia-container-runtime-hook", "#!/bin/sh\n")
    assert run_preflight(env).docker_disabled is False


def test_everything_present(machine, home):
    env, bin_dir = machine
    docker(bin_dir, WITH_NVIDIA)
    login(home)
    pre = run_preflight(env)
    assert pre.launcher.generation == TAO5 and pre.launcher.toolkit_version == "5.0.0"
    assert run_preflight(env, generation="4").launcher.generation == TAO4  # override by config


def test_unsupported_generation(machine):
    env, bin_dir = machine
    tao_wrapper(bin_dir, format_version="4.0", toolkit="7.0.0")
    expect(env, "config format 4.0, which taoflow does not know", "TAOFLOW_TAO_GENERATION")
    expect(env, "unsupported TAO generation 'tao2'", generation="tao2")


def test_docker_disabled_needs_the_task_executable(machine):
    env, bin_dir = machine
    expect(dict(env, TAO_DOCKER_DISABLE="1"), "`ssd` is not on PATH", "unset TAO_DOCKER_DISABLE")
    expect(dict(env, TAO_DOCKER_DISABLE="yes"), "TAO_DOCKER_DISABLE='yes'", "only 0 or 1")
    write_executable(bin_dir / "ssd", "#!/bin/sh\n")
    assert run_preflight(dict(env, TAO_DOCKER_DISABLE="1")).docker_disabled is True  # docker not needed


def test_cli_prints_one_line_without_traceback(machine, home):
    env, bin_dir = machine
    docker(bin_dir, NO_DAEMON)
    proc = subprocess.run([sys.executable, "-m", "taoflow.backends.tao.cli"], env=env, cwd=REPO,
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: no docker daemon reachable") and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    docker(bin_dir, WITH_NVIDIA)
    login(home)
    proc = subprocess.run([sys.executable, "-m", "taoflow.backends.tao.cli"], env=env, cwd=REPO,
                          capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout.startswith(f"ok: {bin_dir}/tao") and "tao5, docker" in proc.stdout


@pytest.mark.parametrize("missing", ["docker", "daemon", "login"])
def test_taoflow_tao_preflight_names_the_missing_piece(machine, home, missing):
    # `taoflow tao preflight`, the console script's entry, as a user runs it
    env, bin_dir = machine
    if missing != "docker":
        docker(bin_dir, NO_DAEMON if missing == "daemon" else WITH_NVIDIA)
    first = {"docker": "error: docker CLI not found on PATH", "daemon": "error: no docker daemon reachable",
             "login": "error: not logged in to nvcr.io"}[missing]
    proc = subprocess.run([sys.executable, "-c", "import sys; from taoflow.cli import main; sys.exit(main())",
                           "tao", "preflight"], env=env, cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.startswith(first) and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
