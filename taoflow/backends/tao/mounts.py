"""The per-run launcher mounts file (what `~/.tao_mounts.json` holds, but for one run, via $LAUNCHER_MOUNTS).

The launcher's rules (nvidia_tao_cli/tlt `docker_handler._get_mount_env_data`, `get_docker_option_args`):
`Mounts` is required, a list of {source, destination} whose sources must exist; `Envs` is a list of
{variable, value}; `DockerOptions` may hold only the launcher's VALID_DOCKER_ARGS (user, ports, shm_size, ulimits
(a dict), privileged, network, and tty from nvidia-tao 5 on); any other top-level key is a KeyError.
taoflow never reads or writes the user's ~/.tao_mounts.json.

Secrets never enter the store: the file the launcher reads (Envs with the ClearML credentials, which docker needs
as `-e NAME=value`) lives in a private temporary directory outside the run directory and is deleted when the step
ends (`private_mounts_file`); the step directory keeps a copy for the record with every Envs value masked.
"""

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path

from ...errors import TaoflowError

MOUNTS_ENV = "LAUNCHER_MOUNTS"
# TAO's own ClearML integration reads these in the container; they come from the user's environment.
CLEARML_PREFIX = "CLEARML_"

_OPTION_TYPES = {"user": str, "ports": dict, "shm_size": str, "ulimits": dict, "privileged": bool,
                 "network": str, "tty": bool}


def clearml_envs(environ=None):
    environ = os.environ if environ is None else environ
    return [{"variable": k, "value": v} for k, v in sorted(environ.items()) if k.startswith(CLEARML_PREFIX)]


def docker_options(requested, accepted):
    """DockerOptions for the launcher: the requested ones, checked against what this launcher accepts, plus
    `user` = the caller's uid:gid so that files TAO writes into the mounts stay the user's (the launcher runs the
    container as root otherwise)."""
    requested = dict(requested or {})
    unknown = sorted(set(requested) - set(accepted))
    if unknown:
        raise TaoflowError(f"DockerOptions {', '.join(unknown)} not accepted by this TAO launcher; it accepts "
                           f"{', '.join(accepted)}")
    for key, value in requested.items():
        if not isinstance(value, _OPTION_TYPES.get(key, object)):
            raise TaoflowError(f"DockerOptions {key} must be a {_OPTION_TYPES[key].__name__}, got {value!r}")
    if "user" in accepted and "user" not in requested and hasattr(os, "getuid"):
        requested["user"] = f"{os.getuid()}:{os.getgid()}"
    return requested


def mounts_document(pathmap, envs=(), options=None):
    return {
        "Mounts": [{"source": host, "destination": container} for host, container in pathmap.mounts],
        "Envs": list(envs),
        "DockerOptions": dict(options or {}),
    }


def recorded_document(document, mask="****"):
    """The mounts document as kept in the step directory: Envs values masked (names kept, to show what was sent)."""
    return dict(document, Envs=[dict(e, value=mask) for e in document.get("Envs", ())])


@contextlib.contextmanager
def private_mounts_file(document):
    """Yield the path of the launcher's mounts file in a private (0700) temporary directory outside any run or
    store directory; the directory is removed when the step ends, however it ends."""
    directory = tempfile.mkdtemp(prefix="taoflow-tao-mounts-")
    try:
        yield write_mounts_file(Path(directory) / "mounts.json", document)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def write_mounts_file(path, document):
    """Write the mounts file readable by the user only: Envs may carry ClearML credentials."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(document, f, indent=2)
        f.write("\n")
    return path
