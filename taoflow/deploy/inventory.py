"""The fleet inventory (`fleet.toml`): which devices exist, how to reach them and which host keys to trust.

Every error names the file and the line of the offending table or key: tomllib reports no positions for valid
TOML, so a small scan of the text maps `[[devices]]` tables and `key =` lines to line numbers. Whatever the file
holds (not UTF-8, a directory, `devices = [1, 2]`, `defaults = 5`, a value of the wrong type, NaN, a path that cannot
be expanded), loading it gives a Fleet or an InventoryError, never another exception.
"""

import math
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import asyncssh

from .errors import InventoryError

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
DEFAULTS = {
    "user": None, "port": 22, "key": None, "known_hosts": None, "device_root": None, "python": "/usr/bin/python3",
    "connect_timeout": 15.0, "command_timeout": 900.0, "build_timeout": 3600.0, "concurrency": 8, "keep": 3,
    "min_fps": 0.0, "live_timeout": 60.0, "service_mode": "auto",
}
DEVICE_KEYS = {"name", "host", "port", "user", "key", "host_key", "known_hosts", "tags", "device_root", "python",
               "connect_timeout", "command_timeout", "build_timeout", "min_fps", "live_timeout", "service_mode"}
FLEET_ONLY = {"concurrency", "keep"}
SERVICE_MODES = ("auto", "user", "system", "supervisor")  # the agent's (tools/device/agent_service.py MODES)


@dataclass(frozen=True)
class Device:
    name: str
    host: str
    port: int
    user: str
    key: Path                 # private key file: read by asyncssh, never copied or logged
    device_root: str          # absolute path on the device; agent/, staging/, models/ live under it
    python: str               # the device's Python 3.6+ with numpy, cv2 and tensorrt+pycuda or onnxruntime
    host_key: str | None = None      # "ssh-ed25519 AAAA..." trusted for this device
    known_hosts: Path | None = None  # OpenSSH known_hosts file consulted as well
    tags: tuple = ()
    connect_timeout: float = 15.0
    command_timeout: float = 900.0
    build_timeout: float = 3600.0
    # The live gate, for a device whose detector service runs (agent `detect --serve`): after the switch the
    # rollout waits up to live_timeout seconds for its heartbeat to report the new version at >= min_fps.
    min_fps: float = 0.0
    live_timeout: float = 60.0
    # How `taoflow fleet service install` runs the detector service there (tools/device/agent_service.py): "auto"
    # (a systemd user unit, a system unit for root, taoflow's supervisor where systemd does not run), "user",
    # "system" (through `sudo -n`) or "supervisor".
    service_mode: str = "auto"
    source: str = ""          # "fleet.toml:12", for messages

    @property
    def address(self):
        return f"{self.host}:{self.port}"


@dataclass(frozen=True)
class Fleet:
    path: Path
    devices: tuple
    concurrency: int = 8
    keep: int = 3
    by_name: dict = field(default_factory=dict, compare=False)

    def select(self, names=None, tags=None):
        """Devices by name and/or tag (all given tags must be present); unknown names are an error."""
        chosen = list(self.devices)
        if names:
            missing = sorted(set(names) - set(self.by_name))
            if missing:
                raise InventoryError(f"no device named {', '.join(missing)} in the inventory", path=self.path)
            chosen = [d for d in chosen if d.name in set(names)]
        if tags:
            chosen = [d for d in chosen if set(tags) <= set(d.tags)]
        return chosen


def _lines(text):
    """(section, index, key) -> 1-based line; section 'defaults' or 'devices', index of the [[devices]] table."""
    where, section, index = {}, None, -1
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if re.match(r"^\[\[\s*devices\s*\]\]", stripped):
            section, index = "devices", index + 1
            where[("devices", index, None)] = number
        elif re.match(r"^\[\s*defaults\s*\]", stripped):
            section = "defaults"
            where[("defaults", 0, None)] = number
        elif stripped.startswith("["):
            section = None
        else:
            m = re.match(r'^([A-Za-z0-9_-]+|"[^"]+")\s*=', stripped)
            if m and section:
                key = m.group(1).strip('"')
                where.setdefault((section, index if section == "devices" else 0, key), number)
    return where


CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")
MAX_TIMEOUT = 30 * 24 * 3600.0  # a month: larger values are typos (and 1e400 does not fit a float)


class _Checker:
    def __init__(self, path, text):
        self.path, self.where = path, _lines(text)
        self.device = None  # the device being checked: its name (or "[[devices]] #N"), for messages

    def fail(self, message, section, index=0, key=None):
        # A device's value may come from [defaults]: point there when the device table does not set it.
        line = (self.where.get((section, index, key)) or self.where.get(("defaults", 0, key))
                or self.where.get((section, index, None)))
        raise InventoryError(message, device=self.device if section == "devices" else None, path=self.path,
                             line=line)

    def value(self, table, key, kind, section, index, minimum=None, maximum=None):
        value = table[key]
        kinds = kind if isinstance(kind, tuple) else (kind,)
        ok = isinstance(value, kinds) and not (isinstance(value, bool) and bool not in kinds)
        if ok and isinstance(value, float) and not math.isfinite(value):
            ok = False
        if not ok or (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
            names = " or ".join(k.__name__ for k in kinds)
            bound = f" >= {minimum}" if minimum is not None else ""
            bound += f" and <= {maximum:g}" if maximum is not None else ""
            self.fail(f"{key} must be {'a finite ' if float in kinds else ''}{names}{bound}, not {value!r}",
                      section, index, key)
        if isinstance(value, str) and CONTROL_RE.search(value):
            self.fail(f"{key} must not contain control characters (newline, tab, NUL ...): {value!r}", section,
                      index, key)
        return value


def load_inventory(path, check_files=True):
    """Read and validate fleet.toml. `check_files` also requires each key (and known_hosts) file to exist."""
    path = Path(path)
    text = _read_text(path)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        m = re.search(r"\(at line (\d+), column \d+\)", str(e))
        raise InventoryError(f"invalid TOML: {e}", path=path, line=int(m.group(1)) if m else None) from None
    except RecursionError:  # thousands of nested arrays
        raise InventoryError("invalid TOML: nested too deeply", path=path) from None
    check = _Checker(path, text)
    unknown = sorted(set(data) - {"defaults", "devices"})
    if unknown:
        raise InventoryError(f"unknown top-level table {unknown[0]!r}; expected [defaults] and [[devices]]",
                             path=path, line=_first_line(text, unknown[0]))
    defaults = dict(DEFAULTS)
    given = data.get("defaults", {})
    if not isinstance(given, dict):
        raise InventoryError(f"defaults must be a table ([defaults] with key = value lines), not {given!r}",
                             path=path, line=_first_line(text, "defaults"))
    for key in given:
        if key not in DEFAULTS:
            check.fail(f"unknown field {key!r} in [defaults]; known: {', '.join(sorted(DEFAULTS))}", "defaults",
                       0, key)
    defaults.update(given)
    concurrency = check.value(defaults, "concurrency", int, "defaults", 0, 1)
    keep = check.value(defaults, "keep", int, "defaults", 0, 2)
    raw = data.get("devices")
    if raw is None or raw == []:
        raise InventoryError("no [[devices]] in the inventory", path=path)
    if not isinstance(raw, list):
        raise InventoryError(f"devices must be a list of [[devices]] tables, not {raw!r}", path=path,
                             line=_first_line(text, "devices"))
    devices, seen = [], {}
    for i, table in enumerate(raw):
        check.device = f"[[devices]] #{i + 1}"
        if not isinstance(table, dict):
            check.fail(f"each device must be a [[devices]] table, not {table!r}", "devices", i)
        if isinstance(table.get("name"), str) and NAME_RE.match(table["name"]):
            check.device = table["name"]
        device = _device(check, path, i, table, defaults)
        if device.name in seen:
            check.fail(f"device name {device.name!r} is used twice (first at line {seen[device.name]})",
                       "devices", i, "name")
        seen[device.name] = check.where.get(("devices", i, None))
        if check_files:
            _check_files(check, i, device)
        devices.append(device)
    return Fleet(path, tuple(devices), concurrency, keep, {d.name: d for d in devices})


def _read_text(path):
    """The inventory's text: UTF-8 (a BOM is tolerated), or an InventoryError saying what is wrong with the file."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise InventoryError("inventory file not found", path=path) from None
    except IsADirectoryError:
        raise InventoryError("is a directory; give the inventory file (e.g. fleet.toml) itself", path=path) from None
    except OSError as e:
        raise InventoryError(f"cannot read the inventory: {e.strerror or e}", path=path) from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        bad = data[e.start:e.start + 1].hex()
        line = data[:e.start].count(b"\n") + 1
        raise InventoryError(f"not UTF-8 text (byte 0x{bad}); TOML files must be UTF-8", path=path,
                             line=line) from None


def _first_line(text, key):
    for number, line in enumerate(text.splitlines(), 1):
        if key in line:
            return number
    return None


def _device(check, path, i, table, defaults):
    for key in table:
        if key not in DEVICE_KEYS:
            check.fail(f"unknown field {key!r} in [[devices]]; known: {', '.join(sorted(DEVICE_KEYS))}",
                       "devices", i, key)
    merged = {k: v for k, v in defaults.items() if k not in FLEET_ONLY}
    merged.update(table)
    for key in ("name", "host", "user", "key", "device_root"):
        if not merged.get(key):
            check.fail(f"device needs {key!r} (in the [[devices]] table or [defaults])", "devices", i,
                       key if key in table else None)
    for key in ("name", "host", "user", "key", "device_root", "python"):
        check.value(merged, key, str, "devices", i)
    if not NAME_RE.match(merged["name"]):
        check.fail(f"device name {merged['name']!r} must be 1-64 characters of A-Z a-z 0-9 . _ -", "devices", i,
                   "name")
    for key in ("host", "user"):
        if re.search(r"\s", merged[key]):
            check.fail(f"{key} must not contain spaces: {merged[key]!r}", "devices", i, key)
    port = check.value(merged, "port", int, "devices", i, 1)
    if port > 65535:
        check.fail(f"port {port} is out of range", "devices", i, "port")
    for key in ("connect_timeout", "command_timeout", "build_timeout", "live_timeout"):
        check.value(merged, key, (int, float), "devices", i, 1, MAX_TIMEOUT)
    check.value(merged, "min_fps", (int, float), "devices", i, 0, 10000)
    if check.value(merged, "service_mode", str, "devices", i) not in SERVICE_MODES:
        check.fail(f"service_mode must be one of {', '.join(SERVICE_MODES)}, not {merged['service_mode']!r}",
                   "devices", i, "service_mode")
    for key in ("device_root", "python"):
        if not merged[key].startswith("/"):
            check.fail(f"{key} must be an absolute path on the device, not {merged[key]!r}", "devices", i, key)
    tags = merged.get("tags", [])
    if not isinstance(tags, list) or not all(isinstance(t, str) and t for t in tags):
        check.fail("tags must be a list of non-empty strings", "devices", i, "tags")
    host_key = merged.get("host_key")
    if host_key is not None:
        check.value(merged, "host_key", str, "devices", i)
        try:
            asyncssh.import_public_key(host_key)
        except Exception as e:  # noqa: BLE001 - asyncssh raises KeyImportError, ValueError and others on garbage
            check.fail(f"host_key is not an OpenSSH public key line ({e})", "devices", i, "host_key")
    known_hosts = merged.get("known_hosts")
    if known_hosts is not None:
        check.value(merged, "known_hosts", str, "devices", i)
    base = path.parent
    return Device(
        name=merged["name"], host=merged["host"], port=port, user=merged["user"],
        key=_local_path(check, base, merged["key"], i, "key"), device_root=merged["device_root"].rstrip("/") or "/",
        python=merged["python"], host_key=host_key,
        known_hosts=None if known_hosts is None else _local_path(check, base, known_hosts, i, "known_hosts"),
        tags=tuple(tags),
        connect_timeout=float(merged["connect_timeout"]), command_timeout=float(merged["command_timeout"]),
        build_timeout=float(merged["build_timeout"]), min_fps=float(merged["min_fps"]),
        live_timeout=float(merged["live_timeout"]), service_mode=merged["service_mode"],
        source=f"{path}:{check.where.get(('devices', i, None), '?')}")


def _local_path(check, base, value, i, key):
    """~ expands; a relative path is relative to the inventory file, not to wherever taoflow was started."""
    try:
        p = Path(value).expanduser()
    except RuntimeError as e:  # ~someone who does not exist, or no home directory
        check.fail(f"{key} {value!r}: cannot expand ~ ({e})", "devices", i, key)
    return p if p.is_absolute() else (base / p)


def _is_file(path):
    try:
        return path.is_file()
    except (OSError, ValueError):  # name too long, embedded NUL, ...
        return False


def _check_files(check, i, device):
    if not _is_file(device.key):
        check.fail(f"SSH key file {device.key} not found", "devices", i, "key")
    if device.known_hosts is not None and not _is_file(device.known_hosts):
        check.fail(f"known_hosts file {device.known_hosts} not found", "devices", i, "known_hosts")
