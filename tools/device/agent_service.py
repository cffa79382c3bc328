"""The detector service (`detect --serve`) run by the device on its own, installed over SSH: `service-install`,
`service-status`, `service-stop`, `service-logs`, and `service-supervise` (the fallback supervisor's own process).

How it runs (the inventory's `service_mode`, `auto` by default):
- `user`: a systemd user unit, ~/.config/systemd/user/taoflow-detect-<model>.service, with lingering enabled
  (`loginctl enable-linger USER`, which logind's polkit rules let a user do for itself without a password) so it runs
  without a login and starts at boot. auto's choice for a user other than root: a stock JetPack user needs a
  password for sudo.
- `system`: a system unit, /etc/systemd/system/taoflow-detect-<model>.service with User= the SSH user, written and
  controlled through `sudo -n` (a sudo that wants a password fails at once, with advice; never a prompt).
  auto's choice when the agent runs as root.
- `supervisor`: where systemd is not PID 1 (containers, the simulated devices), there is no systemctl, or the user
  gets no systemd user manager (auto falls back to it and says why): a detached process of this agent (double
  fork, setsid) runs `detect --serve`, restarts it when it fails (after 1 s, doubling up to 60 s, back to 1 s once
  it ran a minute) and writes its output, time-stamped, to <root>/service/<model>/service.log (rotated at 2 MiB).
  Nothing starts it again after a reboot.
Either way the service is `detect --serve` under the device's Python (this agent's), restarted on failure only (a
clean exit, e.g. a video without --loop at its end, is not restarted), from its own copy of the agent,
<root>/service/agent-<sha256>.pyz: a deploy replaces agent/taoflow_agent.pyz while the service runs, and Python's
zipimport would read the service's later imports from the new archive at the old one's offsets.

<root>/service/<model>/install.json records the mode and the service's command line: status, stop and logs read it.
"""

import errno
import fcntl
import os
import pwd
import select
import shlex
import shutil
import signal
import subprocess
import sys
import time

import agent_store
from agent_common import AgentError, device_lock, load_json, sha256_file, write_json_atomic

MODES = ("auto", "user", "system", "supervisor")
UNIT_PREFIX = "taoflow-detect-"
SYSTEMD_RUN_DIR = "/run/systemd/system"  # exists exactly when systemd is PID 1 (sd_booted(3))
LINGER_DIR = "/var/lib/systemd/linger"  # one file per user logind keeps a user manager for without a login
SYSTEM_UNIT_DIR = "/etc/systemd/system"
USER_RUNTIME_BASE = "/run/user"
SHOW_PROPERTIES = ("LoadState", "ActiveState", "SubState", "UnitFileState", "MainPID", "NRestarts", "ExecMainStatus",
                   "ExecMainStartTimestampMonotonic")
RESTART_SEC = 5
STOP_TIMEOUT_S = 20  # SIGTERM, then SIGKILL after this long (the unit's TimeoutStopSec too)
BACKOFF_FIRST_S, BACKOFF_MAX_S, HEALTHY_AFTER_S = 1.0, 60.0, 60.0
LOG_MAX_BYTES = 2 << 20
LOG_LINES_MAX = 2000
LOG_REPLY_MAX_BYTES = 256 << 10  # what `service-logs` sends back at most
LOG_LINE_MAX = 4000
LIVE_AGE_S = 10  # a heartbeat older than this is silent (the host's status and live gate use the same limit)
# The agent's own environment over SSH (taoflow.deploy.agent.agent_command), plus unbuffered output for the log.
SERVICE_ENV = (("LC_ALL", "C.UTF-8"), ("LANG", "C.UTF-8"), ("PYTHONIOENCODING", "utf-8"), ("PYTHONUNBUFFERED", "1"))
FAILED_STATES = ("restarting", "failed", "exited", "stopped", "missing")
SUPERVISOR_START = "supervisor: starts"  # the first line each supervisor logs


# --- where things are --------------------------------------------------------------------------------------------

def unit_name(name):
    return UNIT_PREFIX + agent_store.check_name("model name", name) + ".service"


def service_root(root):
    return os.path.join(root, "service")


def model_dir(root, name):
    return os.path.join(service_root(root), agent_store.check_name("model name", name))


def _record_path(root, name):
    return os.path.join(model_dir(root, name), "install.json")


def _log_path(root, name):
    return os.path.join(model_dir(root, name), "service.log")


def installed_names(root):
    base = service_root(root)
    if not os.path.isdir(base):
        return []
    return sorted(n for n in os.listdir(base) if agent_store.NAME_RE.match(n)
                  and os.path.isfile(os.path.join(base, n, "install.json")))


def read_record(root, name):
    """The install record of `name`'s service, or None; one that is not what install wrote names its file."""
    path = _record_path(root, name)
    if not os.path.isfile(path):
        return None
    record, text = load_json(path, "service record")
    argv = record.get("argv")
    if record.get("mode") not in MODES[1:] or not isinstance(argv, list) or len(argv) < 2 or \
            not all(isinstance(a, str) for a in argv):
        raise AgentError("not a service record this agent wrote (mode, argv): install the service again", path)
    return record


# --- the service's command line and its systemd unit ---------------------------------------------------------------

def serve_argv(python, agent, root, name, source, jsonl=None, threshold=0.3, runtime="auto", loop=False):
    """The service's command: this agent's `detect --serve` under the device's Python."""
    argv = [python, agent, "--root", root, "detect", "--serve", "--name", agent_store.check_name("model name", name),
            "--source", source, "--threshold", repr(float(threshold)), "--runtime", runtime]
    if loop:
        argv.append("--loop")
    if jsonl:
        argv += ["--jsonl", jsonl]
    return argv


def _no_control(text, what):
    if any(ord(c) < 32 or ord(c) == 127 for c in text):
        raise AgentError("{} must not contain control characters (newline, tab, ...): {!r}".format(what, text))
    return text


def exec_arg(arg):
    """One word of an ExecStart= line (systemd.service(5), "Command lines"): double-quoted, with \\ and " escaped by
    a backslash (C escapes are decoded inside quotes), % doubled (specifiers are expanded before the line is split,
    quoted or not) and $ doubled (variables are substituted in every word)."""
    _no_control(arg, "a word of the service's command line")
    return '"' + arg.replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%").replace("$", "$$") + '"'


def unit_text(mode, name, root, argv, user=None):
    """The unit file for `mode` ("user" or "system"; `user`: the account a system unit runs as)."""
    _no_control(root, "the device root")
    if root != root.strip():
        raise AgentError("the device root must not start or end with spaces: {!r}".format(root))
    lines = ["# Written by taoflow (`taoflow fleet service install`); the next install replaces it.",
             "[Unit]",
             "Description=taoflow detector service: model {} in {}".format(name, root.replace("%", "%%"))]
    if mode == "system":  # RTSP cameras need the network; a user manager has no network-online.target to wait for
        lines += ["Wants=network-online.target", "After=network-online.target"]
    lines += ["StartLimitIntervalSec=0",  # keep restarting a camera that is unplugged for a while
              "",
              "[Service]",
              "Type=simple"]
    if mode == "system":
        if not agent_store.NAME_RE.match(user or ""):
            raise AgentError("cannot write User={!r} into a unit".format(user))
        lines.append("User=" + user)
    lines += ["WorkingDirectory=" + root.replace("%", "%%"),
              "Environment=" + " ".join('"{}={}"'.format(k, v) for k, v in SERVICE_ENV),
              "ExecStart=" + " ".join(exec_arg(a) for a in argv),
              "Restart=on-failure",
              "RestartSec={}".format(RESTART_SEC),
              "TimeoutStopSec={}".format(STOP_TIMEOUT_S),
              "",
              "[Install]",
              "WantedBy=" + ("multi-user.target" if mode == "system" else "default.target"),
              ""]
    return "\n".join(lines)


def _run(argv, env=None, timeout=120):
    """(exit status, stdout, stderr) of a tool; AgentError when it cannot start or hangs."""
    try:
        proc = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              env=env, timeout=timeout, universal_newlines=True, errors="replace")
    except OSError as e:
        raise AgentError("cannot run {}: {}".format(argv[0], e.strerror)) from None
    except subprocess.TimeoutExpired:
        raise AgentError("{} did not finish within {} s".format(" ".join(argv), timeout)) from None
    return proc.returncode, proc.stdout, proc.stderr


def _tail(text, limit=600):
    text = " ".join(text.strip().split())
    return text if len(text) <= limit else "..." + text[-limit:]


class Systemd(object):
    """systemctl, journalctl and loginctl for one kind of unit ("user" or "system"): every argv is built here."""

    def __init__(self, mode, environ=None):
        self.mode = mode
        self.euid = os.geteuid()
        entry = pwd.getpwuid(os.getuid())
        self.user, self.home = entry.pw_name, entry.pw_dir
        self.env = dict(os.environ if environ is None else environ)
        self.runtime_dir = self.env.get("XDG_RUNTIME_DIR") or os.path.join(USER_RUNTIME_BASE, str(os.getuid()))
        if mode == "user":  # what pam_systemd sets for a login; a plain SSH command may lack it
            self.env["XDG_RUNTIME_DIR"] = self.runtime_dir
            bus = os.path.join(self.runtime_dir, "bus")
            if "DBUS_SESSION_BUS_ADDRESS" not in self.env and os.path.exists(bus):
                self.env["DBUS_SESSION_BUS_ADDRESS"] = "unix:path=" + bus

    def privileged(self, argv):
        """A command that changes the system's units: through `sudo -n` unless this agent is root."""
        return argv if self.mode == "user" or self.euid == 0 else ["sudo", "-n"] + argv

    def systemctl(self, *args):
        return ["systemctl", "--user"] + list(args) if self.mode == "user" else ["systemctl"] + list(args)

    def journalctl(self, unit, lines):
        match = "--user-unit=" + unit if self.mode == "user" else "--unit=" + unit
        return ["journalctl", match, "--lines={}".format(int(lines)), "--no-pager", "--output=short-iso"]

    def unit_dir(self):
        return os.path.join(self.home, ".config", "systemd", "user") if self.mode == "user" else SYSTEM_UNIT_DIR

    def check(self, argv, timeout=120):
        """Run a command that must work; AgentError with its output (and sudo advice) when it does not."""
        code, out, err = _run(argv, self.env, timeout)
        if code != 0:
            text = (err or out).strip()
            if argv[:2] == ["sudo", "-n"] and "password" in text:
                raise AgentError("service_mode \"system\" needs sudo without a password for {} ({}); use "
                                 "service_mode = \"user\" (a systemd user unit: auto's choice for a user other than "
                                 "root) or allow it in sudoers".format(" ".join(argv[2:4]), _tail(text, 200)))
            raise AgentError("{} failed (exit status {}): {}".format(" ".join(argv), code, _tail(text)))
        return out

    def show(self, unit):
        """{property: value} of `systemctl show` for the unit, or an error text."""
        code, out, err = _run(self.systemctl("show", "--property=" + ",".join(SHOW_PROPERTIES), unit), self.env, 60)
        if code != 0:
            return None, _tail(err or out or "exit status {}".format(code))
        props = {}
        for line in out.splitlines():
            key, sep, value = line.partition("=")
            if sep:
                props[key] = value
        return props, None

    def write_unit(self, unit, text, staging):
        """The unit file, replaced atomically: a temp file (a name systemd ignores) renamed over it. `staging`: a
        folder of the agent's where the text waits for `sudo install` (a system unit written by a user)."""
        folder, final = self.unit_dir(), os.path.join(self.unit_dir(), unit)
        if self.mode == "user" or self.euid == 0:
            os.makedirs(folder, exist_ok=True)
            tmp = os.path.join(folder, ".{}.tmp-{}".format(unit, os.getpid()))
            with open(tmp, "w", encoding="utf-8") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, 0o644)
            os.replace(tmp, final)
            return final
        source = os.path.join(staging, unit)
        with open(source, "w", encoding="utf-8") as f:
            f.write(text)
        tmp = os.path.join(folder, ".{}.tmp".format(unit))
        self.check(self.privileged(["install", "-m", "0644", source, tmp]))
        self.check(self.privileged(["mv", "-f", tmp, final]))
        return final

    def remove_unit(self, unit):
        path = os.path.join(self.unit_dir(), unit)
        if self.mode == "user" or self.euid == 0:
            if os.path.lexists(path):
                os.unlink(path)
        else:
            self.check(self.privileged(["rm", "-f", path]))
        self.check(self.privileged(self.systemctl("daemon-reload")))

    def user_manager(self):
        """None when a user unit can run here for good (lingering on, the user manager up), else why not."""
        if not os.path.exists(os.path.join(LINGER_DIR, self.user)):
            try:
                code, out, err = _run(["loginctl", "enable-linger", self.user], self.env, 60)
            except AgentError as e:
                code, err = 1, str(e)
            if code != 0:
                return ("lingering could not be enabled for {} ({}); without it a user unit stops when the last login "
                        "ends: run `sudo loginctl enable-linger {}` once on the device".format(
                            self.user, _tail(err or out, 200), self.user))
        private = os.path.join(self.runtime_dir, "systemd", "private")
        deadline = time.monotonic() + 10  # logind starts user@UID.service when lingering is turned on
        while not os.path.exists(private):
            if time.monotonic() > deadline:
                return "no systemd user manager for {} ({} is missing)".format(self.user, private)
            time.sleep(0.2)
        return None


def no_systemd():
    """Why systemd cannot run the service here, or None."""
    if not os.path.isdir(SYSTEMD_RUN_DIR):
        return "systemd is not running here (no {})".format(SYSTEMD_RUN_DIR)
    if shutil.which("systemctl") is None:
        return "no systemctl on PATH"
    return None


def choose_mode(requested):
    """(mode, why) of a service installed with `service_mode` = `requested`."""
    if requested not in MODES:
        raise AgentError("service mode {!r}: choose one of {}".format(requested, ", ".join(MODES)))
    if requested == "supervisor":
        return "supervisor", "service_mode = \"supervisor\": taoflow's supervisor process runs it"
    fallback = ": taoflow's supervisor process runs it instead (nothing starts it again after a reboot)"
    missing = no_systemd()
    if missing:
        if requested == "auto":
            return "supervisor", missing + fallback
        raise AgentError("service_mode = \"{}\": {}; use \"auto\" or \"supervisor\"".format(requested, missing))
    if requested == "system" or (requested == "auto" and os.geteuid() == 0):
        return "system", "systemd system unit"
    problem = Systemd("user").user_manager()
    if problem is None:
        return "user", "systemd user unit (lingering on: it runs without a login and starts at boot)"
    if requested == "auto":
        return "supervisor", problem + fallback
    raise AgentError(problem)


# --- install ------------------------------------------------------------------------------------------------------

def running_agent():
    """The agent file this process runs: the zip application the host ships, or taoflow_agent.py of a checkout."""
    here = os.path.dirname(os.path.abspath(__file__))
    return here if os.path.isfile(here) else os.path.join(here, "taoflow_agent.py")


def _service_agent(root):
    """The agent file the service runs: a content-addressed copy of the shipped bundle (see the module docstring);
    an agent run from a checkout (tools/device) runs from there."""
    agent = running_agent()
    if not agent.endswith(".pyz"):
        return agent
    os.makedirs(service_root(root), exist_ok=True)
    copy = os.path.join(service_root(root), "agent-{}.pyz".format(sha256_file(agent)[:16]))
    if not os.path.isfile(copy):
        tmp = "{}.tmp-{}".format(copy, os.getpid())
        shutil.copyfile(agent, tmp)
        os.replace(tmp, copy)
    return copy


def _prune_agents(root):
    """Agent copies no installed service runs any more."""
    used = set()
    for name in installed_names(root):
        try:
            used.add(read_record(root, name)["argv"][1])
        except AgentError:
            return  # a record it cannot read may name any of them: keep all
    base = service_root(root)
    for entry in os.listdir(base):
        path = os.path.join(base, entry)
        if entry.startswith("agent-") and entry.endswith(".pyz") and path not in used:
            os.unlink(path)


def _only_model(root):
    base = os.path.join(root, "models")
    names = sorted(n for n in os.listdir(base) if agent_store.NAME_RE.match(n)) if os.path.isdir(base) else []
    if len(names) != 1:
        raise AgentError("the device has {} models ({}): choose one with --name".format(
            len(names), ", ".join(names) or "none"))
    return names[0]


def install(root, name, source, jsonl=None, threshold=0.3, runtime="auto", loop=False, mode="auto", wait_s=60.0):
    """Write and start the detector service for model `name` (the device's only model when None); replace one
    installed before. Waits up to `wait_s` for its heartbeat, and answers with its status either way."""
    name = agent_store.check_name("model name", name) if name else _only_model(root)
    models = os.path.join(root, "models", name)
    if agent_store.current_version(models) is None:
        raise AgentError("no current version of {} on this device: deploy one first".format(name), models)
    _no_control(source, "--source")
    if not 0 <= threshold <= 1:
        raise AgentError("--threshold must be in [0, 1], not {}".format(threshold))
    started = time.time()
    with device_lock(root, "service-" + name, wait_s=60):
        previous = read_record(root, name)
        chosen, why = choose_mode(mode)
        _refuse_foreign_detector(root, name, previous)
        if previous is not None:
            _stop(root, name, previous, remove_unit=previous["mode"] != chosen)
        os.makedirs(model_dir(root, name), exist_ok=True)
        argv = serve_argv(sys.executable, _service_agent(root), root, name, source, jsonl, threshold, runtime, loop)
        record = {"name": name, "mode": chosen, "why": why, "argv": argv, "source": source, "installed_at": started}
        if chosen != "supervisor":
            record["unit"] = unit_name(name)
        write_json_atomic(_record_path(root, name), record)
        if chosen == "supervisor":
            _start_supervisor(root, name, argv)
        else:
            systemd = Systemd(chosen)
            unit = record["unit"]
            systemd.write_unit(unit, unit_text(chosen, name, root, argv, systemd.user), model_dir(root, name))
            for args in (("daemon-reload",), ("enable", unit), ("restart", unit)):
                systemd.check(systemd.privileged(systemd.systemctl(*args)))
        _prune_agents(root)
    status = _wait_live(root, name, record, started, wait_s)
    status["why"] = why
    return {"services": {name: status}}


def _refuse_foreign_detector(root, name, previous):
    """Two detectors of one model would both write its heartbeat and JSON lines: refuse while one this service
    did not start serves (a `detect --serve` run by hand, say)."""
    beat = agent_store.service_heartbeat(root, name)
    if not beat or beat.get("status") != "serving" or (beat.get("age_s") or 0) >= LIVE_AGE_S:
        return
    pid = beat.get("pid")
    own = _status(root, name, previous).get("pid") if previous is not None else None
    if isinstance(pid, int) and pid != own and _alive(pid):
        raise AgentError("a detector this service did not start already serves {} here (pid {}): stop it "
                         "first".format(name, pid))


def _wait_live(root, name, record, started, wait_s):
    """The service's status once its heartbeat comes from the process just started, once it failed, or after
    `wait_s`; with the last lines of its log when it is not live."""
    deadline = time.monotonic() + max(0.0, wait_s)
    restarts = None  # as first seen: systemd counts a unit's restarts across starts until it is reset
    while True:
        status = _status(root, name, record)
        beat = status.get("heartbeat") or {}
        if status.get("live") and (beat.get("time") or 0) >= started - 1:
            return status
        restarts = (status.get("restarts") or 0) if restarts is None else restarts
        if status["state"] in FAILED_STATES or (status.get("restarts") or 0) > restarts or \
                time.monotonic() >= deadline:
            break
        time.sleep(0.25)
    lines = _log_lines(root, name, record, 200)[0]
    starts = [i for i, line in enumerate(lines) if SUPERVISOR_START in line]  # this supervisor's lines only
    status["log_tail"] = lines[starts[-1] if starts else 0:][-20:]
    return status


# --- status --------------------------------------------------------------------------------------------------------

def status(root, name=None):
    names = [agent_store.check_name("model name", name)] if name else installed_names(root)
    return {"services": {n: _status(root, n, read_record(root, n)) for n in names}}


def _status(root, name, record):
    beat = agent_store.service_heartbeat(root, name)
    if record is None:
        return {"name": name, "installed": False, "state": "not-installed", "heartbeat": beat, "live": False}
    info = _supervisor_status(root, name) if record["mode"] == "supervisor" else _systemd_status(record)
    info.update(name=name, installed=True, mode=record["mode"], source=record.get("source"), heartbeat=beat)
    if record.get("unit"):
        info["unit"] = record["unit"]
    pid = info.get("pid")
    info["live"] = bool(beat and pid and beat.get("pid") == pid and beat.get("status") == "serving"
                        and (beat.get("age_s") or 0) < LIVE_AGE_S)
    return info


def unit_state(props):
    """A unit's `systemctl show` properties as one word of this protocol's service states."""
    if props.get("LoadState") == "not-found":
        return "missing"
    active, sub = props.get("ActiveState"), props.get("SubState")
    if active in ("active", "reloading"):
        return "running"
    if active == "activating":
        return "restarting" if sub == "auto-restart" else "starting"
    return {"deactivating": "stopping", "failed": "failed", "inactive": "stopped"}.get(active, "unknown")


def _int(value):
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _systemd_status(record):
    props, error = Systemd(record["mode"]).show(record["unit"])
    if props is None:
        return {"state": "unknown", "why": "systemctl show: " + error}
    pid = _int(props.get("MainPID")) or None
    started = _int(props.get("ExecMainStartTimestampMonotonic"))  # microseconds of CLOCK_MONOTONIC, as time.monotonic
    return {"state": unit_state(props), "pid": pid, "restarts": _int(props.get("NRestarts")),
            "exit_status": _int(props.get("ExecMainStatus")), "enabled": props.get("UnitFileState") == "enabled",
            "since": round(time.time() - (time.monotonic() - started / 1e6), 3) if started else None}


def _supervisor_status(root, name):
    state = _read_state(root, name)
    if _lock_held(_lock_path(root, name)):
        word = state.get("state") if state.get("state") in ("starting", "running", "restarting") else "starting"
        return {"state": word, "pid": state.get("child_pid") if word == "running" else None,
                "supervisor_pid": state.get("supervisor_pid"), "restarts": state.get("restarts"),
                "since": state.get("since"), "exit_status": state.get("last_exit")}
    last = state.get("state")
    word = "stopped" if last in (None, "stopped") else "exited" if last == "exited" else "failed"
    info = {"state": word, "restarts": state.get("restarts"), "exit_status": state.get("last_exit")}
    if word == "failed":
        info["why"] = "its supervisor is gone (killed?) while the service was {}".format(last)
    return info


# --- stop ----------------------------------------------------------------------------------------------------------

def stop(root, name=None):
    """Stop the service (a unit is disabled too: it does not come back at boot until installed again)."""
    names = [agent_store.check_name("model name", name)] if name else installed_names(root)
    out = {}
    for n in names:
        with device_lock(root, "service-" + n, wait_s=60):
            record = read_record(root, n)
            if record is not None:
                _stop(root, n, record)
            out[n] = _status(root, n, record)
    return {"services": out}


def _stop(root, name, record, remove_unit=False):
    if record["mode"] == "supervisor":
        _stop_supervisor(root, name)
        return
    systemd = Systemd(record["mode"])
    props, error = systemd.show(record["unit"])
    if props is None:
        raise AgentError("cannot ask systemd about {}: {}".format(record["unit"], error))
    if props.get("LoadState") != "not-found":
        systemd.check(systemd.privileged(systemd.systemctl("disable", "--now", record["unit"])))
    if remove_unit:
        systemd.remove_unit(record["unit"])


# --- logs ----------------------------------------------------------------------------------------------------------

def logs(root, name=None, lines=100):
    if not 1 <= lines <= LOG_LINES_MAX:
        raise AgentError("--lines must be 1 to {}, not {}".format(LOG_LINES_MAX, lines))
    names = [agent_store.check_name("model name", name)] if name else installed_names(root)
    out = {}
    for n in names:
        record = read_record(root, n)
        if record is None:
            out[n] = {"name": n, "lines": [], "note": "no detector service is installed for {}".format(n)}
            continue
        got, note = _log_lines(root, n, record, lines)
        got, truncated = _cap(got)
        out[n] = {"name": n, "mode": record["mode"], "lines": got, "truncated": truncated, "note": note}
    return {"services": out}


def _log_lines(root, name, record, lines):
    """(last `lines` lines of the service's log, a note or None): the journal of its unit, or the supervisor's
    log file."""
    if record["mode"] == "supervisor":
        path = _log_path(root, name)
        found = []
        for part in (path, path + ".1"):
            if len(found) >= lines or not os.path.isfile(part):
                continue
            with open(part, "rb") as f:
                f.seek(max(0, os.fstat(f.fileno()).st_size - LOG_REPLY_MAX_BYTES))
                found = f.read().decode("utf-8", "replace").splitlines()[-(lines - len(found)):] + found
        return found[-lines:], None
    systemd = Systemd(record["mode"])
    code, out, err = _run(systemd.journalctl(record["unit"], lines), systemd.env, 60)
    note = _tail(err, 300) if err.strip() else None  # "insufficient permissions": not in the systemd-journal group
    if code != 0:
        note = "journalctl failed (exit status {}): {}".format(code, note or _tail(out, 300))
    return out.splitlines()[-lines:], note


def _cap(lines):
    """Lines cut to LOG_LINE_MAX characters each and, keeping the newest, to LOG_REPLY_MAX_BYTES in all."""
    kept, size = [], 0
    for line in reversed(lines):
        if len(line) > LOG_LINE_MAX:
            line = line[:LOG_LINE_MAX] + "... [{} more characters]".format(len(line) - LOG_LINE_MAX)
        size += len(line.encode("utf-8", "replace")) + 1
        if size > LOG_REPLY_MAX_BYTES:
            return kept[::-1], True
        kept.append(line)
    return kept[::-1], False


# --- the supervisor (no systemd) ------------------------------------------------------------------------------------

def _lock_path(root, name):
    return os.path.join(model_dir(root, name), "supervisor.lock")


def _state_path(root, name):
    return os.path.join(model_dir(root, name), "state.json")


def _read_state(root, name):
    try:
        state, _ = load_json(_state_path(root, name), "supervisor state")
    except AgentError:  # none yet, or a foreign hand broke it (it is written atomically)
        return {}
    return state


def _lock_held(path):
    """Whether a supervisor holds its lock (flock: the kernel drops it when the holder dies, zombie or not)."""
    try:
        f = open(path, "r")
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(f.fileno(), fcntl.LOCK_SH | fcntl.LOCK_NB)
        fcntl.flock(f.fileno(), fcntl.LOCK_UN)
        return False
    except OSError as e:
        if e.errno in (errno.EAGAIN, errno.EACCES):
            return True
        raise
    finally:
        f.close()


def _alive(pid):
    """A process that exists and is not a zombie."""
    try:
        with open("/proc/{}/stat".format(pid)) as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except (OSError, IndexError):
        return False


def _cmdline(pid):
    try:
        with open("/proc/{}/cmdline".format(pid), "rb") as f:
            return [a.decode("utf-8", "replace") for a in f.read().split(b"\0")]
    except OSError:
        return []


def _start_supervisor(root, name, argv):
    command = [argv[0], argv[1], "--root", root, "service-supervise", "--name", name]
    pid = spawn_detached(command, root, _log_path(root, name))
    deadline = time.monotonic() + 15
    while _read_state(root, name).get("supervisor_pid") != pid or not _lock_held(_lock_path(root, name)):
        if not _alive(pid) or time.monotonic() > deadline:
            tail = _log_lines(root, name, {"mode": "supervisor"}, 10)[0]
            raise AgentError("the service's supervisor did not start: {}".format(_tail(" | ".join(tail)) or
                                                                                   "no output"))
        time.sleep(0.05)
    return pid


def spawn_detached(argv, cwd, log_path):
    """Start `argv` as a daemon: double fork and setsid (no parent to wait for it, no terminal, its own session,
    so neither the SSH session's end nor `timeout`'s signal to its process group reaches it), stdin from
    /dev/null, stdout and stderr appended to `log_path`, no other file descriptor (the reply channel and this
    agent's locks stay behind). Returns its pid; raises AgentError when it could not be executed."""
    reader, writer = os.pipe()  # close-on-exec: EOF once the exec worked; the error text when it did not
    pid = os.fork()
    if pid == 0:  # the first child: leaves the session, forks the daemon, and exits
        code = 127
        try:
            os.close(reader)
            os.setsid()
            if os.fork() == 0:
                _become_daemon(argv, cwd, log_path, writer)
            code = 0
        finally:
            os._exit(code)
    os.close(writer)
    os.waitpid(pid, 0)
    chunks = []
    while True:
        chunk = os.read(reader, 4096)
        if not chunk:
            break
        chunks.append(chunk)
    os.close(reader)
    head, _, error = b"".join(chunks).decode("utf-8", "replace").partition("\n")
    if error or not head.isdigit():
        raise AgentError("cannot start {}: {}".format(argv[0], error or "the daemon did not report"))
    return int(head)


def _become_daemon(argv, cwd, log_path, report):
    try:
        os.chdir(cwd)
        os.umask(0o022)
        null = os.open(os.devnull, os.O_RDONLY)
        log = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        os.dup2(null, 0)
        os.dup2(log, 1)
        os.dup2(log, 2)
        os.write(report, "{}\n".format(os.getpid()).encode())
        try:
            fds = [int(fd) for fd in os.listdir("/proc/self/fd")]
        except OSError:
            fds = range(3, 1024)
        for fd in fds:
            if fd > 2 and fd != report:
                try:
                    os.close(fd)
                except OSError:
                    pass
        os.execv(argv[0], argv)
    except BaseException as e:  # the exec failed: say why through the pipe, never run the agent's code on
        try:
            os.write(report, "{}: {}".format(type(e).__name__, e).encode("utf-8", "replace"))
        finally:
            os._exit(127)


class _Log(object):
    """The service's log: time-stamped lines, rotated to .1 at LOG_MAX_BYTES (at most twice that on disk)."""

    def __init__(self, path):
        self.path, self.partial = path, b""
        self._open()

    def _open(self):
        self.f = open(self.path, "ab")
        os.dup2(self.f.fileno(), 2)  # the supervisor's own errors (a traceback) land in the current file too

    def line(self, text):
        self.write((text + "\n").encode("utf-8", "replace"))

    def write(self, data):
        lines = (self.partial + data).split(b"\n")
        self.partial = lines.pop()
        if len(self.partial) > LOG_LINE_MAX:
            lines.append(self.partial)
            self.partial = b""
        if lines:
            stamp = time.strftime("%Y-%m-%dT%H:%M:%S%z ").encode()
            self.f.write(b"".join(stamp + line + b"\n" for line in lines))
            self.f.flush()
            if self.f.tell() >= LOG_MAX_BYTES:
                self.f.close()
                os.replace(self.path, self.path + ".1")
                self._open()

    def close(self):
        if self.partial:
            self.write(b"\n")
        self.f.close()


def _prctl_deathsig():
    """A preexec function that has the kernel send SIGTERM to the child when the supervisor dies (Linux
    PR_SET_PDEATHSIG), so that a killed supervisor leaves no detector serving on its own; None without libc."""
    try:
        import ctypes
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (ImportError, OSError, AttributeError):
        return None
    return lambda: prctl(1, int(signal.SIGTERM), 0, 0, 0)


def supervise(root, name):
    """The fallback supervisor's own process (started detached by install): runs the service's command, restarts
    it when it fails, stops it on SIGTERM/SIGINT/SIGHUP, and records its state for `service-status`."""
    record = read_record(root, name)
    if record is None or record["mode"] != "supervisor":
        raise AgentError("{} has no service installed for the supervisor".format(name))
    lock = open(_lock_path(root, name), "a+")
    deadline = time.monotonic() + 5  # a status probe holds the lock shared for an instant
    while True:
        try:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except OSError as e:
            if e.errno not in (errno.EAGAIN, errno.EACCES) or time.monotonic() > deadline:
                raise AgentError("another supervisor runs the {} service".format(name)) from None
            time.sleep(0.05)
    try:
        return _Supervisor(root, name, record["argv"]).run()
    finally:
        lock.close()


class _Supervisor(object):
    def __init__(self, root, name, argv):
        self.root, self.name, self.argv = root, name, argv
        self.log = _Log(_log_path(root, name))
        self.stopping, self.child, self.kill_at, self.announced = None, None, None, False
        self.state = {"supervisor_pid": os.getpid(), "restarts": 0, "state": "starting", "child_pid": None,
                      "since": None, "last_exit": None}
        self.preexec = _prctl_deathsig()
        self.env = dict(os.environ)
        self.env.update(SERVICE_ENV)

    def record(self, **changes):
        self.state.update(changes)
        write_json_atomic(_state_path(self.root, self.name), self.state)

    def on_signal(self, signum, frame):
        """Nothing is written here: a handler that wrote to the log could run inside the main loop's own write."""
        if not self.stopping:
            self.stopping = signal.Signals(signum).name
            self.kill_at = time.monotonic() + STOP_TIMEOUT_S
        if self.child is not None and self.child.poll() is None:
            self.child.send_signal(signal.SIGTERM)

    def announce_stop(self):
        if self.stopping and not self.announced:
            self.announced = True
            self.log.line("supervisor: {} received, stopping the service".format(self.stopping))

    def run(self):
        wake_r, wake_w = os.pipe()  # signals wake the select() below (PEP 475 would otherwise resume it)
        os.set_blocking(wake_w, False)
        signal.set_wakeup_fd(wake_w)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, self.on_signal)
        self.record()
        self.log.line("{} (pid {}) {}".format(SUPERVISOR_START, os.getpid(), " ".join(map(shlex.quote, self.argv))))
        delay = BACKOFF_FIRST_S
        try:
            while not self.stopping:
                began = time.monotonic()
                code = self.run_once(wake_r)
                if self.stopping:
                    self.announce_stop()
                    self.log.line("supervisor: the service stopped (exit status {})".format(code))
                    break
                if code == 0:  # Restart=on-failure: a clean end (a video without --loop) is not restarted
                    self.log.line("supervisor: the service ended (exit status 0); not restarted")
                    self.record(state="exited", child_pid=None, last_exit=0)
                    return {"name": self.name, "state": "exited", "restarts": self.state["restarts"]}
                if time.monotonic() - began >= HEALTHY_AFTER_S:
                    delay = BACKOFF_FIRST_S
                self.log.line("supervisor: the service failed (exit status {}); restarting in {:g} s".format(
                    code, delay))
                self.record(state="restarting", child_pid=None, last_exit=code)
                select.select([wake_r], [], [], delay)
                delay = min(2 * delay, BACKOFF_MAX_S)
                if not self.stopping:
                    self.record(restarts=self.state["restarts"] + 1)
            self.announce_stop()
            self.record(state="stopped", child_pid=None)
            return {"name": self.name, "state": "stopped", "restarts": self.state["restarts"]}
        finally:
            self.log.close()

    def run_once(self, wake_r):
        """Start the service, copy its output into the log until it exits; its exit status (-N: signal N)."""
        try:
            self.child = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                          stderr=subprocess.STDOUT, cwd=self.root, env=self.env,
                                          preexec_fn=self.preexec)
        except OSError as e:
            self.log.line("supervisor: cannot start {}: {}".format(self.argv[0], e.strerror))
            return 127
        self.record(state="running", child_pid=self.child.pid, since=time.time())
        self.log.line("supervisor: started the service, pid {}".format(self.child.pid))
        if self.stopping:  # a signal that came while it was starting
            self.child.send_signal(signal.SIGTERM)
        out = self.child.stdout.fileno()
        while True:
            timeout = None if not self.stopping else max(0.0, self.kill_at - time.monotonic())
            ready, _, _ = select.select([out, wake_r], [], [], timeout)
            if wake_r in ready:
                os.read(wake_r, 512)
            self.announce_stop()
            if self.stopping and time.monotonic() >= self.kill_at and self.child.poll() is None:
                self.log.line("supervisor: no exit {} s after SIGTERM: SIGKILL".format(STOP_TIMEOUT_S))
                self.child.kill()
                self.kill_at = time.monotonic() + 3600
            if out in ready:
                data = os.read(out, 1 << 16)
                if not data:
                    break
                self.log.write(data)
        code = self.child.wait()
        self.child.stdout.close()
        self.child = None
        return code


def _stop_supervisor(root, name):
    lock = _lock_path(root, name)
    if not _lock_held(lock):
        return
    state = _read_state(root, name)
    pid = state.get("supervisor_pid")
    command = _cmdline(pid) if isinstance(pid, int) else []
    if "service-supervise" not in command or name not in command:
        raise AgentError("the {} service's lock {} is held by a process that is not its supervisor (state says "
                         "pid {}); stop it by hand".format(name, lock, pid))
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT_S + 5
    while _lock_held(lock):
        if time.monotonic() > deadline:
            for victim in (state.get("child_pid"), pid):
                if isinstance(victim, int) and _alive(victim):
                    os.kill(victim, signal.SIGKILL)
            deadline = time.monotonic() + 5
            while _lock_held(lock) and time.monotonic() < deadline:
                time.sleep(0.1)
            if _lock_held(lock):
                raise AgentError("the {} service's supervisor (pid {}) did not stop".format(name, pid))
            return
        time.sleep(0.1)
