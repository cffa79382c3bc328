"""Shipping the device agent (tools/device/) and calling its commands over a Session.

The agent is re-sent on every deploy when the device's copy has another sha256: a device always runs the agent of
the host that deploys to it, and an unchanged agent costs one `sha256sum` round trip. It travels as one file, a
zip application of its modules (`python taoflow_agent.pyz ...`, as Python has run since 2.6): one upload instead of
one per module, which is most of the host's SFTP work per device in a large fleet.
"""

import hashlib
import io
import json
import os
import shlex
import tempfile
import time
import zipfile
from functools import lru_cache
from pathlib import Path

from .errors import AgentError, DeployError
from .replies import ReplyError, check_reply, clean
from .ssh import upload_paths

ETLT_KEY_ENV = "TAOFLOW_ETLT_KEY"
PROTOCOL = 1
AGENT_BUNDLE = "taoflow_agent.pyz"
_BUNDLE_MAIN = b"import sys\nimport taoflow_agent\nsys.exit(taoflow_agent.main())\n"


def agent_dir():
    """tools/device of this checkout, or $TAOFLOW_AGENT_DIR."""
    override = os.environ.get("TAOFLOW_AGENT_DIR")
    path = Path(override) if override else Path(__file__).resolve().parents[2] / "tools" / "device"
    if not (path / "taoflow_agent.py").is_file():
        raise DeployError(f"device agent not found in {path}: run taoflow from a source checkout or set "
                          f"TAOFLOW_AGENT_DIR to its tools/device directory")
    return path


def bundle_bytes(path):
    """The agent's modules as a zip application: the same bytes for the same sources (fixed order and times)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in [*((p.name, p.read_bytes()) for p in sorted(Path(path).glob("*.py"))),
                           ("__main__.py", _BUNDLE_MAIN)]:
            info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
            info.external_attr, info.compress_type = 0o644 << 16, zipfile.ZIP_DEFLATED
            z.writestr(info, data)
    return buf.getvalue()


@lru_cache(maxsize=4)
def _agent_bundle(path, mtimes):
    data = bundle_bytes(path)
    digest = hashlib.sha256(data).hexdigest()
    local = Path(tempfile.gettempdir()) / f"taoflow-agent-{digest[:16]}.pyz"  # content-addressed: shared safely
    if not local.is_file():
        tmp = local.with_name(f".{local.name}.{os.getpid()}.tmp")
        tmp.write_bytes(data)
        tmp.replace(local)
    return local, digest


_checked = {"at": -1.0, "bundle": None, "source": None}
RECHECK_SECONDS = 2.0  # a rollout asks several times per device; the sources are looked at again after this


def agent_bundle():
    """(local path, sha256) of this checkout's agent as one zip application. The sources' times are read again
    when RECHECK_SECONDS have passed, not on every call (five per device in a rollout, about 5% of its host CPU)."""
    now, source = time.monotonic(), os.environ.get("TAOFLOW_AGENT_DIR")
    if _checked["bundle"] is None or _checked["source"] != source or now - _checked["at"] > RECHECK_SECONDS:
        path = agent_dir()
        _checked["bundle"] = _agent_bundle(str(path), tuple(p.stat().st_mtime_ns for p in sorted(path.glob("*.py"))))
        _checked["at"], _checked["source"] = now, source
    return _checked["bundle"]


def remote_agent_dir(device):
    return f"{device.device_root}/agent"


def agent_items(device):
    """[(local path, remote path, sha256)] of what ships the agent to this device."""
    local, digest = agent_bundle()
    return [(local, f"{remote_agent_dir(device)}/{AGENT_BUNDLE}", digest)]


async def ship_agent(session, progress=None, also=None):
    """Make <root>/agent/ hold this host's agent; return the number of files sent.

    `also`: (dirs, paths) a later step of this session will need created and hashed (the package's staging,
    fleet.staging_plan): asked in the same round trip, the answer is kept as `session.prepared`."""
    items = agent_items(session.device)
    agent_paths = upload_paths(r for _, r, _ in items)
    session.prepared = None
    if also:
        try:
            have, free = await session.prepare([remote_agent_dir(session.device), *also[0]], [*agent_paths, *also[1]])
            session.prepared = (have, free)
        except DeployError as e:
            if getattr(e, "retryable", False):
                raise
            also = None  # e.g. the staging folder cannot be created: the staging step itself will say so
    if not also:
        have, _ = await session.prepare([remote_agent_dir(session.device)], agent_paths)
    sent = await session.upload_files(items, have, progress)
    if session.prepared is not None:  # what is on the device now: the agent, verified by upload_files
        session.prepared[0].update({remote: digest for _, remote, digest in items})
    return sent


def agent_command(device, command, args=(), key_on_stdin=False):
    """The shell line that runs one agent command. The .etlt key, if any, is read from stdin into the agent's
    environment, so it is not part of this command line (which sshd, `ps` and the host's logs can show).

    One place does see it: tao-converter takes the key only as `-k KEY`, so while an engine builds, the key is in
    that process's argument list, readable by users of the device through `ps` / /proc/PID/cmdline (a Jetson
    usually has one login). The agent masks it in everything it records or returns (build.json, errors)."""
    root = device.device_root
    # A non-interactive SSH session may have no LANG; Python 3.6 then treats file names as ASCII and a sample
    # named in Chinese (CCPD/CRPD plates) would not open. C.UTF-8 exists on every Ubuntu/L4T.
    argv = ["env", "LC_ALL=C.UTF-8", "LANG=C.UTF-8", "PYTHONIOENCODING=utf-8", device.python,
            f"{remote_agent_dir(device)}/{AGENT_BUNDLE}", "--root", root, command, *args]
    line = " ".join(shlex.quote(str(a)) for a in argv)
    if key_on_stdin:
        line = f"IFS= read -r {ETLT_KEY_ENV}; export {ETLT_KEY_ENV}; exec {line}"
    return f"cd {shlex.quote(root)} && {line}"


async def call(session, command, *args, timeout=None, etlt_key=None):
    """Run an agent command; return its `result`, or raise AgentError with the agent's message and details."""
    device = session.device
    line = agent_command(device, command, args, key_on_stdin=etlt_key is not None)
    status, out, err = await session.run(line, timeout=timeout, what=f"agent {command}",
                                         input=None if etlt_key is None else etlt_key + "\n")
    reply = parse_reply(out)
    if reply is None:
        tail = clean((err or out).strip()[-600:])
        raise DeployError(f"agent {command} gave no JSON reply (exit status {status}): {tail}", device.name)
    if reply.get("protocol") != PROTOCOL:
        raise ReplyError(f"agent protocol {clean(repr(reply.get('protocol')), 40)} != {PROTOCOL}: agent files out "
                         f"of date", device.name)
    reply = check_reply(command, reply, device.name)
    session.agent_cpu_s += reply.get("cpu_s") or 0
    if not reply["ok"]:
        raise AgentError(reply["error"], device.name, command,
                         reply.get("details") or {"traceback": reply.get("traceback")})
    return reply["result"]


def parse_reply(stdout):
    """The agent's one JSON object: the last stdout line that parses as one (banners of a login shell aside)."""
    for line in reversed(stdout.strip().splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                value = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(value, dict):
                return value
    return None
