"""Shipping the device agent (tools/device/) and calling its commands over a Session.

The agent is re-sent on every deploy, file by file, only where the device's copy has another sha256: a device
always runs the agent of the host that deploys to it, and an unchanged agent costs one `sha256sum` round trip.
"""

import json
import os
import shlex
from functools import lru_cache
from pathlib import Path

from ..fsutil import sha256_file
from .errors import AgentError, DeployError
from .replies import ReplyError, check_reply, clean

ETLT_KEY_ENV = "TAOFLOW_ETLT_KEY"
PROTOCOL = 1


def agent_dir():
    """tools/device of this checkout, or $TAOFLOW_AGENT_DIR."""
    override = os.environ.get("TAOFLOW_AGENT_DIR")
    path = Path(override) if override else Path(__file__).resolve().parents[2] / "tools" / "device"
    if not (path / "taoflow_agent.py").is_file():
        raise DeployError(f"device agent not found in {path}: run taoflow from a source checkout or set "
                          f"TAOFLOW_AGENT_DIR to its tools/device directory")
    return path


@lru_cache(maxsize=4)
def _agent_files(path):
    return tuple((p.name, p, sha256_file(p)) for p in sorted(Path(path).glob("*.py")))


def agent_files():
    """[(file name, local path, sha256)] of the agent's modules."""
    return _agent_files(str(agent_dir()))


def remote_agent_dir(device):
    return f"{device.device_root}/agent"


def agent_items(device):
    """[(local path, remote path, sha256)] of the agent's modules for this device."""
    remote_dir = remote_agent_dir(device)
    return [(path, f"{remote_dir}/{name}", digest) for name, path, digest in agent_files()]


async def ship_agent(session, progress=None):
    """Make <root>/agent/ hold this host's agent modules; return the number of files sent."""
    items = agent_items(session.device)
    have, _ = await session.prepare([remote_agent_dir(session.device)], [remote for _, remote, _ in items])
    return await session.upload_files(items, have, progress)


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
            f"{remote_agent_dir(device)}/taoflow_agent.py", "--root", root, command, *args]
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
