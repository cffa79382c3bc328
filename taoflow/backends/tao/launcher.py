"""Finding the `tao` launcher and telling which TAO generation it drives.

The command surface is decided by the launcher's config file, not by its package version: nvidia-tao reads
`~/.tao/config.json` (`~/.tlt/config.json` for the 3.x/4.x launcher, module `tlt`) or its packaged
`config/config.json`. Config format 3.0 maps task groups (`model`, `dataset`, `deploy`) to containers, so SSD runs
as `tao model ssd <task>` and `tao deploy ssd gen_trt_engine` (TAO 5+). Formats 1.0/2.0 map tasks directly, so SSD
runs as `tao ssd <task>` (TAO 3.x/4.x). We read that config with the launcher's own Python and its own
`get_config_file`, so user overrides are honoured exactly as the launcher will honour them.
"""

import json
import os
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from ...errors import TaoflowError

TAO4 = "tao4"  # TAO 3.x/4.x: `tao ssd <task>`, encrypted .tlt checkpoints, .etlt export
TAO5 = "tao5"  # TAO 5+: `tao model ssd <task>`, `tao deploy ssd gen_trt_engine`, .hdf5 checkpoints, .onnx export
GENERATION_ENV = "TAOFLOW_TAO_GENERATION"
LAUNCHER_ENV = "TAOFLOW_TAO_LAUNCHER"

# Keys DockerOptions may hold, per launcher package, when the launcher cannot be asked (its VALID_DOCKER_ARGS).
DOCKER_OPTIONS = {
    "nvidia_tao_cli": ("user", "ports", "shm_size", "ulimits", "privileged", "network", "tty"),
    "tlt": ("user", "ports", "shm_size", "ulimits", "privileged", "network"),
}

INSTALL_HINT = ("install it in its own environment (it pins old requests/urllib3, so keep it out of taoflow's): "
                "`pipx install nvidia-tao`, or `python3 -m venv ~/.venvs/tao && ~/.venvs/tao/bin/pip install "
                "nvidia-tao`, then put its `tao` on PATH or point taoflow at it (TaoConfig(launcher=...) or "
                f"${LAUNCHER_ENV})")

# Runs inside the launcher's interpreter. Prints one JSON line; the launcher prints notices on import, so stdout
# is swapped out while importing.
_PROBE = r"""
import contextlib, importlib, importlib.util, io, json, sys
out = {}
with contextlib.redirect_stdout(io.StringIO()):
    try:
        import nvidia_tao_cli as pkg
    except ImportError:
        import tlt as pkg
    name = pkg.__name__
    entry = sys.argv[1] if len(sys.argv) > 1 else None
    utils = importlib.import_module(name + ".components.instance_handler.utils")
    out["package"] = name
    out["version"] = getattr(importlib.import_module(name + ".version"), "__version__", None)
    out["config_path"] = utils.get_config_file()
    out["config"] = utils.load_config_file(out["config_path"])
    out["docker_disable"] = importlib.util.find_spec(name + ".components.instance_handler.whl_instance") is not None
    try:
        if entry:
            importlib.import_module(entry)
    except Exception as e:
        out["import_error"] = "%s: %s" % (type(e).__name__, e)
    try:
        dh = importlib.import_module(name + ".components.docker_handler.docker_handler")
        out["docker_options"] = list(dh.VALID_DOCKER_ARGS)
    except Exception:
        pass
print(json.dumps(out))
"""


@dataclass
class LauncherInfo:
    path: str  # the `tao` executable
    generation: str  # TAO4 or TAO5
    format_version: float = None
    toolkit_version: str = None
    package: str = None  # nvidia_tao_cli (5+) or tlt (3.x/4.x)
    version: str = None  # the launcher package's own version
    config_path: str = None
    tasks: dict = field(default_factory=dict)  # task group ("" for TAO 3/4) -> set of task names, when known
    registries: dict = field(default_factory=dict)  # (group, task) -> docker registry of its container
    docker_options: tuple = ()
    import_error: str = None  # the launcher cannot start (e.g. a pinned dependency broken on this Python)
    docker_disable: bool = None  # whether it honours TAO_DOCKER_DISABLE (nvidia-tao 0.1.x, TAO 3, does not)

    def registry(self, group, task):
        return self.registries.get((group, task), "nvcr.io")

    def has_task(self, group, task):
        """Whether the launcher maps `task` in `group`; True when the config could not be read in detail."""
        if not self.tasks:
            return True
        return task in self.tasks.get(group, ())


def find_launcher(configured=None, environ=None):
    """Path of the `tao` executable: the configured path, $TAOFLOW_TAO_LAUNCHER, else `tao` on PATH."""
    environ = os.environ if environ is None else environ
    configured = configured or environ.get(LAUNCHER_ENV)
    if configured:
        path = Path(os.path.expanduser(str(configured)))
        if path.is_file() and os.access(path, os.X_OK):
            return str(path)
        raise TaoflowError(f"TAO launcher not found at {path} (configured); {INSTALL_HINT}")
    found = shutil.which("tao", path=environ.get("PATH", os.defpath))
    if not found:
        raise TaoflowError(f"TAO launcher `tao` not found on PATH; {INSTALL_HINT}")
    return found


def _script_head(path):
    try:
        with open(path, "rb") as f:
            return f.read(2048).decode("utf-8", "replace").splitlines()
    except OSError:
        return []


def launcher_entry_module(path):
    """The module a console-script `tao` imports `main` from (it differs across launcher versions)."""
    for line in _script_head(path):
        m = re.match(r"from ([\w.]+) import main\b", line.strip())
        if m:
            return m.group(1)
    return None


def launcher_python(path):
    """The interpreter a console-script `tao` runs with, from its shebang (plain or pip's /bin/sh form)."""
    head = _script_head(path)
    if not head or not head[0].startswith("#!"):
        return None
    # pip writes `#!/bin/sh` + `'''exec' "/long path/python" "$0" "$@"` when the interpreter path is long or spaced.
    for line in head[1:3]:
        m = re.match(r"""'''exec' "?(.+?)"? "\$0" "\$@"$""", line.strip())
        if m:
            return m.group(1)
    words = head[0][2:].strip().split()
    if not words or "python" not in os.path.basename(words[-1] if words[0].endswith("/env") else words[0]):
        return None
    return shutil.which(words[-1]) if words[0].endswith("/env") else words[0]


def probe_launcher(path, environ=None, override=None, timeout=60):
    """Inspect the launcher at `path` and decide its generation (`override`, or $TAOFLOW_TAO_GENERATION, wins)."""
    environ = dict(os.environ if environ is None else environ)
    python = launcher_python(path)
    data = _probe_with_python(python, path, environ, timeout) if python else None
    if data is None:
        data = _probe_with_info(path, environ, timeout)
    info = _info_from_probe(path, data)
    override = override or environ.get(GENERATION_ENV)
    if override:
        info.generation = normalize_generation(override)
    return info


def normalize_generation(value):
    """Accept tao4/tao5 and the TAO major versions that use each command surface (3, 4 -> tao4; 5, 6 -> tao5)."""
    text = str(value).strip().lower().removeprefix("tao").lstrip("-_ ")
    major = text.split(".")[0]
    if major in ("3", "4"):
        return TAO4
    if major.isdigit() and int(major) >= 5:
        return TAO5
    raise TaoflowError(f"unsupported TAO generation {value!r}; use tao4 (TAO 3.x/4.x: `tao ssd`) or tao5 "
                       "(TAO 5+: `tao model ssd`)")


def _probe_with_python(python, path, environ, timeout):
    try:
        entry = launcher_entry_module(path)
        proc = subprocess.run([python, "-c", _PROBE, *([entry] if entry else [])], env=environ, capture_output=True,
                              text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired):
        return None
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        if "No module named" in last and ("nvidia_tao_cli" in last or "tlt" in last):
            return None  # not a Python nvidia-tao script after all (a wrapper); ask it instead
        raise TaoflowError(f"TAO launcher {path} cannot be inspected: {last}; reinstall it ({INSTALL_HINT})")
    return json.loads(lines[-1])


def _probe_with_info(path, environ, timeout):
    """`tao info` for launchers that are not a Python console script (e.g. a shell wrapper around one)."""
    env = dict(environ, TAO_DOCKER_DISABLE="0")  # `info` exists only in the docker-backed instance
    try:
        proc = subprocess.run([path, "info"], env=env, capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise TaoflowError(f"TAO launcher {path} cannot be run: {e}; {INSTALL_HINT}") from None
    fields = dict(re.findall(r"^(format_version|toolkit_version|task_group):\s*(.+?)\s*$", proc.stdout, re.M))
    if proc.returncode != 0 or "format_version" not in fields:
        last = ((proc.stderr + proc.stdout).strip().splitlines() or ["no output"])[-1]
        raise TaoflowError(f"TAO launcher {path} does not answer `tao info` ({last}); {INSTALL_HINT}")
    config = {"format_version": float(fields["format_version"]), "toolkit_version": fields.get("toolkit_version")}
    return {"config": config}


def _info_from_probe(path, data):
    config = data.get("config") or {}
    try:
        fmt = float(config.get("format_version"))
    except (TypeError, ValueError):
        fmt = None
    tasks, registries = {}, {}

    def add(group, tag):
        for task in tag.get("tasks", ()):
            tasks.setdefault(group, set()).add(task)
            registries.setdefault((group, task), tag.get("docker_registry") or "nvcr.io")
    if "task_group" in config:
        for group, gdata in config["task_group"].items():
            for image in gdata.get("dockers", {}).values():
                for tag in image.values():
                    add(group, tag)
    elif isinstance(config.get("dockers"), dict):
        for image in config["dockers"].values():
            tags = image.values() if all(isinstance(v, dict) for v in image.values()) else [image]  # 2.0 vs 1.0
            for tag in tags:
                add("", tag)
    package = data.get("package")
    info = LauncherInfo(
        path=path, generation=None, format_version=fmt, toolkit_version=config.get("toolkit_version"),
        package=package, version=data.get("version"), config_path=data.get("config_path"), tasks=tasks,
        registries=registries,
        docker_options=tuple(data.get("docker_options") or DOCKER_OPTIONS.get(package, DOCKER_OPTIONS["tlt"])),
        import_error=data.get("import_error"), docker_disable=data.get("docker_disable"))
    if fmt is not None and 3 <= fmt < 4:
        info.generation = TAO5
    elif fmt in (1.0, 2.0):
        info.generation = TAO4
    return info


def check_supported(info, group_task=None):
    """Raise a clear error unless the launcher can run SSD (and `group_task`, e.g. ("deploy", "ssd"))."""
    where = f"TAO launcher {info.path} (config {info.config_path or '?'}, toolkit {info.toolkit_version or '?'})"
    if info.generation is None:
        raise TaoflowError(f"{where} has config format {info.format_version}, which taoflow does not know; "
                           f"supported: 1.0/2.0 (TAO 3.x/4.x) and 3.0 (TAO 5+). Set ${GENERATION_ENV}=tao4|tao5 "
                           "to force a command surface")
    group, task = group_task or (("model", "ssd") if info.generation == TAO5 else ("", "ssd"))
    if info.generation == TAO4 and group:
        raise TaoflowError(f"{where} drives TAO 3.x/4.x, which has no `tao {group} {task}`; TAO 3/4 exports .etlt "
                           "for tao-converter on the device instead")
    if not info.has_task(group, task):
        shown = f"{group} {task}".strip()
        raise TaoflowError(f"{where} has no `tao {shown}` task; install a launcher whose config maps it "
                           "(e.g. `pipx install nvidia-tao`) or set ~/.tao/config.json accordingly")
