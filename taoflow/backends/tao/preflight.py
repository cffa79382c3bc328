"""Checks before the first launcher call, each failing with one message that names the missing piece and the fix.

The launcher's own failures for these cases are tracebacks from deep inside the Docker SDK or an AssertionError
about ~/.docker/config.json; users should never have to decode those. The checks mirror what the launcher needs:
it reads ~/.docker/config.json for a login to the task's registry (skipped with $OVERRIDE_REGISTRY), talks to the
docker daemon, runs `docker exec` through the docker CLI, and asks for all GPUs (needs the NVIDIA Container
Toolkit). With TAO_DOCKER_DISABLE=1 none of that applies; the task executable must be on PATH instead.
"""

import json
import os
import shutil
import subprocess
from dataclasses import dataclass

from ...errors import TaoflowError
from .launcher import TAO5, check_supported, find_launcher, probe_launcher

DOCKER_INSTALL = "https://docs.docker.com/engine/install/"
TOOLKIT_INSTALL = "https://docs.nvidia.com/datacenter/cloud-native/container-toolkit/latest/install-guide.html"
_GPU_HOOKS = ("nvidia-container-runtime-hook", "nvidia-container-runtime", "nvidia-ctk")


class TaoPreflightError(TaoflowError):
    """The machine cannot run TAO through the launcher yet; the message says what to install or configure."""


@dataclass
class Preflight:
    launcher: object  # LauncherInfo
    docker_disabled: bool


def docker_disabled(environ):
    value = environ.get("TAO_DOCKER_DISABLE", "0")
    if value not in ("0", "1"):
        raise TaoPreflightError(f"TAO_DOCKER_DISABLE={value!r}: the launcher accepts only 0 or 1")
    return value == "1"


def run_preflight(environ=None, launcher=None, generation=None, group_task=None):
    """Find and inspect the launcher, then check docker (or the task executable); return what was found."""
    environ = dict(os.environ if environ is None else environ)
    disabled = docker_disabled(environ)
    try:
        path = find_launcher(launcher, environ)
        info = probe_launcher(path, environ, override=generation)
        check_supported(info, group_task)
    except TaoPreflightError:
        raise
    except TaoflowError as e:
        raise TaoPreflightError(e.message) from None
    if info.import_error:
        hint = ""
        if "Iterable" in info.import_error:
            hint = (" (nvidia-tao 3.x/4.x pins tabulate 0.8.7, which fails on Python 3.10+: build its venv with "
                    "Python 3.8, or `pip install 'tabulate>=0.8.10'` into it)")
        raise TaoPreflightError(f"TAO launcher {path} cannot start: {info.import_error}{hint}")
    group, task = group_task or (("model", "ssd") if info.generation == TAO5 else ("", "ssd"))
    if disabled and info.docker_disable is False:
        raise TaoPreflightError(f"TAO launcher {path} (nvidia-tao {info.version}) predates TAO_DOCKER_DISABLE and "
                                "would start docker anyway; use nvidia-tao 4.0 or later to run without docker")
    if disabled:
        _check_task_executable(task, environ)
    else:
        _check_docker(environ, info.registry(group, task))
    return Preflight(launcher=info, docker_disabled=disabled)


def _check_task_executable(task, environ):
    if not shutil.which(task, path=environ.get("PATH", os.defpath)):
        raise TaoPreflightError(
            f"TAO_DOCKER_DISABLE=1 makes the launcher run `{task}` directly, but `{task}` is not on PATH: install "
            "TAO's task wheels (e.g. nvidia-tao-tf1) where `tao` runs, or unset TAO_DOCKER_DISABLE to use the "
            "TAO containers")


def _check_docker(environ, registry):
    docker = shutil.which("docker", path=environ.get("PATH", os.defpath))
    if not docker:
        raise TaoPreflightError(
            f"docker CLI not found on PATH: the TAO launcher runs every task in a container through docker; "
            f"install Docker Engine ({DOCKER_INSTALL}), or set TAO_DOCKER_DISABLE=1 to run TAO's wheels directly")
    try:
        proc = subprocess.run([docker, "info", "--format", "{{json .Runtimes}}"], env=environ, capture_output=True,
                              text=True, timeout=30, stdin=subprocess.DEVNULL)
        reason = (proc.stderr.strip().splitlines() or [f"exit status {proc.returncode}"])[-1]
        ok = proc.returncode == 0
    except subprocess.TimeoutExpired:
        ok, reason = False, "`docker info` did not answer within 30 s"
    if not ok:
        raise TaoPreflightError(
            f"no docker daemon reachable ({reason}): start it (`sudo systemctl start docker`) and make sure your "
            "user may use it (`sudo usermod -aG docker $USER`, then log in again)")
    _check_login(environ, registry)
    try:
        runtimes = json.loads(proc.stdout.strip() or "{}")
    except json.JSONDecodeError:
        runtimes = {}
    if "nvidia" not in runtimes and not any(shutil.which(h, path=environ.get("PATH", os.defpath))
                                            for h in _GPU_HOOKS):
        raise TaoPreflightError(
            "docker has no NVIDIA GPU runtime, so TAO containers cannot see a GPU: install the NVIDIA Container "
            f"Toolkit ({TOOLKIT_INSTALL}), run `sudo nvidia-ctk runtime configure --runtime=docker` and restart "
            "docker")


def _check_login(environ, registry):
    if environ.get("OVERRIDE_REGISTRY"):
        return  # the launcher skips its login check too
    home = environ.get("HOME") or os.path.expanduser("~")
    config = os.path.join(home, ".docker", "config.json")
    fix = (f"run `docker login {registry}` with username `$oauthtoken` and your NGC API key as the password, e.g. "
           f"`echo \"$NGC_API_KEY\" | docker login {registry} -u '$oauthtoken' --password-stdin`")
    try:
        with open(config, encoding="utf-8") as f:
            auths = json.load(f).get("auths", {})
    except FileNotFoundError:
        raise TaoPreflightError(f"not logged in to {registry} ({config} does not exist): {fix}") from None
    except (OSError, ValueError, AttributeError) as e:
        raise TaoPreflightError(f"cannot read {config} ({e}): fix or remove it, then {fix}") from None
    if not isinstance(auths, dict) or registry not in auths:
        raise TaoPreflightError(f"not logged in to {registry} ({config} has no auths entry for it): {fix}")
