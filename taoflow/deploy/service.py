"""`taoflow fleet service`: the detector service (agent `detect --serve`) installed, inspected, stopped and read on
each device over SSH: the agent's `service-*` commands (tools/device/agent_service.py) do the work there.

`install` writes and starts the service the way the device's `service_mode` says (a systemd user or system unit,
or the agent's own supervisor where systemd does not run) and waits up to the device's `live_timeout` for its
first heartbeat; the reply is the service's status either way. Each function returns {device name: result or
DeployError}, one device's failure never hiding the others' results.
"""

from .agent import call, ship_agent
from .errors import DeployError
from .fleet import for_each, run_sync
from .ssh import Session, with_retries

LOG_LINES_MAX = 2000  # the agent's limit too (agent_service.LOG_LINES_MAX)
INSTALL_MARGIN_S = 120  # beyond live_timeout: an old service stopped (20 s), lingering enabled, units reloaded
TROUBLE = ("restarting", "failed", "missing", "unknown")  # states `fleet service status` exits 1 for


async def _agent(device, command, args, timeout=None, retries=4):
    async with Session(device) as s:
        await with_retries(s, lambda: ship_agent(s), retries)
        return await with_retries(s, lambda: call(s, command, *args, timeout=timeout), retries)


def _name(name):
    return [] if name is None else ["--name", name]


async def ainstall(device, source, *, name=None, jsonl=None, loop=False, threshold=0.3, runtime="auto"):
    """Install and start `name`'s detector service on `source` (on the device); `name`: the device's only model
    when None. Not retried: a second attempt after a lost reply would restart the service once more."""
    args = [*_name(name), "--source", source, "--threshold", str(threshold), "--runtime", runtime,
            "--mode", device.service_mode, "--wait", str(device.live_timeout)]
    args += (["--jsonl", jsonl] if jsonl else []) + (["--loop"] if loop else [])
    return await _agent(device, "service-install", args, timeout=device.live_timeout + INSTALL_MARGIN_S, retries=1)


async def astatus(device, name=None):
    return await _agent(device, "service-status", _name(name))


async def astop(device, name=None):
    return await _agent(device, "service-stop", _name(name), timeout=device.command_timeout)


def _check_lines(lines):
    if not 1 <= lines <= LOG_LINES_MAX:
        raise DeployError(f"--lines must be 1 to {LOG_LINES_MAX}, not {lines}")


async def alogs(device, name=None, lines=100):
    _check_lines(lines)
    result = await _agent(device, "service-logs", [*_name(name), "--lines", str(lines)])
    for entry in result["services"].values():
        entry["lines"] = entry["lines"][-lines:]  # a device may send more than it was asked for
    return result


def install(devices, source, concurrency=8, **kwargs):
    return run_sync(for_each(devices, lambda d: ainstall(d, source, **kwargs), concurrency))


def status(devices, name=None, concurrency=8):
    return run_sync(for_each(devices, lambda d: astatus(d, name), concurrency))


def stop(devices, name=None, concurrency=8):
    return run_sync(for_each(devices, lambda d: astop(d, name), concurrency))


def logs(devices, name=None, lines=100, concurrency=8):
    _check_lines(lines)
    return run_sync(for_each(devices, lambda d: alogs(d, name, lines), concurrency))


def rows(results):
    """{device: agent result or DeployError} -> table rows, one per device and service."""
    out = []
    for device in sorted(results):
        result = results[device]
        if isinstance(result, Exception):
            out.append({"device": device, "model": "-", "state": "-", "error": getattr(result, "reason", str(result))})
            continue
        if not result["services"]:
            out.append({"device": device, "model": "-", "state": "-", "error": "no detector service installed"})
        for name, s in sorted(result["services"].items()):
            beat = s.get("heartbeat") or {}
            live = s.get("live")
            out.append({"device": device, "model": name, "mode": s.get("mode") or "-", "state": s["state"],
                        "pid": s.get("pid") or "-", "version": beat.get("version") if live else "-",
                        "fps": beat.get("fps") if live and beat.get("fps") is not None else "-",
                        "frames": beat.get("frames") if live else "-", "dropped": beat.get("dropped") if live else "-",
                        "restarts": s.get("restarts") if s.get("restarts") is not None else "-",
                        "error": beat.get("last_error") or ("" if live or s["state"] != "running" else
                                                            "no heartbeat from this process yet")})
    return out
