"""The device agent's reply protocol, checked on the host: the one place that says what each agent command answers.

A device is not trusted to answer well: its agent may be old, patched, broken or hostile, its disk may hand back a
half-written file. Every reply passes through `check_reply` before the host acts on it:
- size: stdout is read up to MAX_REPLY_BYTES (ssh.Session.run stops reading beyond it);
- shape and types of every field the host uses (a number is finite and not negative, a version is a name the
  agent's own rule accepts, so no path can climb out of the model root), per command;
- strings: every string the device sent has its control characters escaped (`\\x1b[31m` arrives as text, not as
  a colour), so nothing a device says can drive the user's terminal, a log or an artifact.
Fields the host does not use pass through (sanitised) for reports. What the reply must say about *this* call (the
version that became current is the version that was sent) is checked by the caller with `expect_current`.
A reply that fails is a `ReplyError`: that device's failure, with a readable reason naming the field.
"""

import math
import re

from .errors import DeployError

MAX_REPLY_BYTES = 4 << 20   # a probe is ~2 KiB, a smoke reply with detections for the samples ~100 KiB
MAX_STRING = 20000          # longer device strings are cut (a traceback is kept readable, a flood is not)
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")  # the agent's rule for model names and versions
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


class ReplyError(DeployError):
    """A device's agent answered, but not with a reply the protocol allows."""


def clean(text, limit=MAX_STRING):
    """Device-supplied text made safe to print: control characters (ANSI escapes among them) shown as \\xNN,
    newlines and tabs kept, cut to `limit` characters."""
    text = _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", str(text))
    return text if len(text) <= limit else text[:limit] + f"... [{len(text) - limit} more characters]"


def sanitize(value, depth=0):
    """A copy of a JSON value with every string (keys too) cleaned; nesting deeper than 32 levels is refused."""
    if depth > 32:
        raise ValueError("nested more than 32 levels deep")
    if isinstance(value, str):
        return clean(value)
    if isinstance(value, dict):
        return {clean(k, 200): sanitize(v, depth + 1) for k, v in value.items()}
    if isinstance(value, list):
        return [sanitize(v, depth + 1) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


# --- a small schema language ----------------------------------------------------------------------------------

class _Bad(Exception):
    def __init__(self, where, message):
        self.where, self.message = where, message


def _describe(value):
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


class Num:
    def __init__(self, minimum=0.0, integer=False):
        self.minimum, self.integer = minimum, integer

    def __call__(self, value, where):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or \
                (self.integer and not isinstance(value, int)):
            raise _Bad(where, f"expected {'an integer' if self.integer else 'a number'}, got {_describe(value)}")
        if self.minimum is not None and value < self.minimum:
            raise _Bad(where, f"expected at least {self.minimum:g}, got {value}")
        return value


def Str(value, where):
    if not isinstance(value, str):
        raise _Bad(where, f"expected text, got {_describe(value)}")
    return value


def Bool(value, where):
    if not isinstance(value, bool):
        raise _Bad(where, f"expected true or false, got {_describe(value)}")
    return value


def Name(value, where):
    if not isinstance(value, str) or not NAME_RE.match(value):
        raise _Bad(where, f"expected a model or version name (A-Z a-z 0-9 . _ -), got {_describe(value)}")
    return value


def Any(value, where):
    return value


class OneOf:
    def __init__(self, *specs):
        self.specs = specs

    def __call__(self, value, where):
        first = None
        for spec in self.specs:
            try:
                return spec(value, where)
            except _Bad as e:
                first = first or e
        raise first


class Choice:
    """One of a few words."""

    def __init__(self, *words):
        self.words = words

    def __call__(self, value, where):
        if value not in self.words:
            raise _Bad(where, f"expected one of {', '.join(self.words)}, got {_describe(value)}")
        return value


class Opt:
    def __init__(self, spec):
        self.spec = spec

    def __call__(self, value, where):
        return None if value is None else self.spec(value, where)


class List:
    def __init__(self, spec, length=None):
        self.spec, self.length = spec, length

    def __call__(self, value, where):
        if not isinstance(value, list):
            raise _Bad(where, f"expected a list, got {_describe(value)}")
        if self.length is not None and len(value) != self.length:
            raise _Bad(where, f"expected {self.length} items, got {len(value)}")
        return [self.spec(v, f"{where}[{i}]") for i, v in enumerate(value)]


class Map:
    """An object with free keys (model names, file names) and values of one kind."""

    def __init__(self, spec, key=Str):
        self.spec, self.key = spec, key

    def __call__(self, value, where):
        if not isinstance(value, dict):
            raise _Bad(where, f"expected an object, got {_describe(value)}")
        return {self.key(k, f"{where} key"): self.spec(v, f"{where}.{k}") for k, v in value.items()}


class Obj:
    """An object with known fields (checked when present, required ones always); other fields pass through."""

    def __init__(self, fields, required=()):
        self.fields, self.required = fields, tuple(required)

    def __call__(self, value, where):
        if not isinstance(value, dict):
            raise _Bad(where, f"expected an object, got {_describe(value)}")
        for key in self.required:
            if key not in value:
                raise _Bad(f"{where}.{key}", "missing")
        out = dict(value)
        for key, spec in self.fields.items():
            if key in value:
                out[key] = spec(value[key], f"{where}.{key}")
        return out

    def extend(self, fields, required=()):
        return Obj({**self.fields, **fields}, self.required + tuple(required))


# --- the protocol ----------------------------------------------------------------------------------------------

MB = Opt(Num())
PASSPORT = Obj({"version": Opt(Name), "name": Opt(Name), "activated_at": Opt(Num()), "wave": Opt(Num(integer=True)),
                "package_digest": Opt(Str), "rollout": Opt(Str),
                "smoke": Opt(Obj({"passed": Opt(Bool), "fps": Opt(Num()), "latency_ms": Opt(Num()),
                                  "runtime": Opt(Str), "runtime_version": Opt(Str)})),
                "build": Opt(Obj({"model_sha256": Opt(Str), "engine_sha256": Opt(Str), "runtime": Opt(Str),
                                  "runtime_version": Opt(Str), "precision": Opt(Str), "seconds": Opt(Num())}))})
SERVICE = Opt(Obj({"version": Opt(Name), "status": Opt(Str), "fps": Opt(Num()), "frames": Opt(Num(integer=True)),
                   "dropped": Opt(Num(integer=True)), "swaps": Opt(Num(integer=True)), "last_error": Opt(Str),
                   "pid": Opt(Num(integer=True)), "time": Opt(Num()), "age_s": Opt(Num(minimum=None))}))
MODEL_STATE = Obj({"current": Opt(Name),
                   "versions": List(Obj({"version": Name, "passport": Opt(PASSPORT), "smoke_passed": Opt(Bool),
                                         "fps": Opt(Num())}, required=("version",))),
                   "history": List(Name), "service": SERVICE}, required=("current", "versions"))
STATE = Obj({"root": Opt(Str), "models": Map(MODEL_STATE, key=Name)}, required=("models",))
DETECTION = Obj({"label": Str, "box": List(Num(minimum=None), length=4), "confidence": Num()},
                required=("label", "box", "confidence"))
SMOKE = Obj({"passed": Bool, "fps": Opt(Num()), "latency_ms": Opt(Num()), "runtime": Opt(Str),
             "runtime_version": Opt(Str),
             "images": Opt(Map(Obj({"detections": Opt(List(DETECTION))}))),
             "activated": Opt(STATE)}, required=("passed",))
PROBE = Obj({
    "runtimes": List(Str), "tensorrt": Opt(Str), "cuda": Opt(Str), "cudnn": Opt(Str), "machine": Opt(Str),
    "l4t": Opt(Obj({"release": Opt(Str), "board": Opt(Str)})),
    "gpu": Opt(Obj({"name": Opt(Str), "compute_capability": Opt(Str), "soc": Opt(Str)})),
    "nvinfer_plugin": Opt(Obj({"path": Opt(Str), "sha256": Opt(Str), "plugins": Opt(List(Str))})),
    "power_mode": Opt(Obj({"name": Opt(Str), "id": Opt(Num(integer=True))})),
    "memory": Opt(Obj({"total_mb": MB, "available_mb": MB, "swap_total_mb": MB, "swap_free_mb": MB})),
    "disk": Opt(Obj({"path": Opt(Str), "free_mb": MB, "total_mb": MB})),
    "python": Opt(Obj({"version": Opt(Str), "executable": Opt(Str)})),
    "modules": Map(Opt(OneOf(Str, Obj({"version": Opt(Str), "providers": Opt(List(Str))})))),
    "tools": Opt(Map(Opt(Str))), "tool_links": Opt(Map(Any)),
    "import_errors": Opt(Map(Str)), "imports_checked": Opt(Bool),
    "models": Map(Obj({"current": Opt(Name), "passport": Opt(PASSPORT), "service": SERVICE}), key=Name),
}, required=("runtimes", "models", "modules"))
# The detector service (agent service-*, tools/device/agent_service.py): its state per model, and its log lines.
SERVICE_STATES = ("running", "starting", "restarting", "stopping", "stopped", "exited", "failed", "missing", "unknown",
                  "not-installed")
SERVICE_STATE = Obj({"name": Name, "installed": Bool, "state": Choice(*SERVICE_STATES),
                     "mode": Opt(Choice("user", "system", "supervisor")), "unit": Opt(Str), "source": Opt(Str),
                     "enabled": Opt(Bool), "pid": Opt(Num(integer=True)), "supervisor_pid": Opt(Num(integer=True)),
                     "restarts": Opt(Num(integer=True)), "since": Opt(Num()),
                     "exit_status": Opt(Num(integer=True, minimum=None)), "live": Opt(Bool), "why": Opt(Str),
                     "heartbeat": SERVICE, "log_tail": Opt(List(Str))}, required=("name", "installed", "state"))
SERVICES = Obj({"services": Map(SERVICE_STATE, key=Name)}, required=("services",))
SERVICE_LOGS = Obj({"services": Map(Obj({"name": Name, "mode": Opt(Choice("user", "system", "supervisor")),
                                         "lines": List(Str), "truncated": Opt(Bool), "note": Opt(Str)},
                                        required=("name", "lines")), key=Name)}, required=("services",))
RESULTS = {
    "probe": PROBE,
    "build": Obj({"runtime": Opt(Str), "runtime_version": Opt(Str), "engine_sha256": Opt(Str),
                  "seconds": Opt(Num())}),
    "smoke": SMOKE,
    "activate": STATE,
    "status": STATE,
    "revert": STATE.extend({"reverted": Bool, "reverted_from": Opt(Name)}, required=("reverted",)),
    "rollback": STATE.extend({"rolled_back_from": Opt(Name)}),
    "discard": Obj({"discarded": Bool}),
    "detect": Obj({"version": Name, "frames": Num(integer=True), "fps": Opt(Num()), "runtime": Opt(Str),
                   "ms_per_frame": Obj({"pre": Num(), "infer": Num(), "post": Num(), "total": Num()},
                                       required=("pre", "infer", "post", "total")),
                   "outputs": Opt(Map(Opt(Str)))}, required=("version", "frames", "ms_per_frame")),
    "service-install": SERVICES,
    "service-status": SERVICES,
    "service-stop": SERVICES,
    "service-logs": SERVICE_LOGS,
}
ENVELOPE = Obj({"ok": Bool, "protocol": Num(integer=True), "cpu_s": Opt(Num()), "error": Opt(Str),
                "details": Opt(Any), "traceback": Opt(Str)}, required=("ok", "protocol"))


def check_reply(command, reply, device=None):
    """The agent's parsed reply to `command`, checked and sanitised; raises ReplyError naming the bad field."""
    try:
        reply = sanitize(reply)
        reply = ENVELOPE(reply, "reply")
        if reply["ok"]:
            if "result" not in reply:
                raise _Bad("reply.result", "missing")
            reply["result"] = RESULTS.get(command, Any)(reply["result"], "result")
        elif not isinstance(reply.get("error"), str):
            raise _Bad("reply.error", "missing (a failed command must say why)")
        if reply.get("details") is not None and not isinstance(reply["details"], dict):
            reply["details"] = {"value": reply["details"]}
    except _Bad as e:
        raise ReplyError(f"agent {command} sent a malformed reply: {e.where}: {e.message}", device) from None
    except (ValueError, RecursionError) as e:
        raise ReplyError(f"agent {command} sent a malformed reply: {e}", device) from None
    return reply


def expect_current(state, name, version, command, device=None):
    """After an activation: the device's own state must name `version` as current, and list it."""
    model = state["models"].get(name)
    if model is None:
        raise ReplyError(f"agent {command} reported no state for model {name}", device)
    if model["current"] != version:
        raise ReplyError(f"agent {command} answered ok but {name} current is {model['current']}, not {version}",
                         device)
    if not any(v["version"] == version for v in model["versions"]):
        raise ReplyError(f"agent {command} answered ok but does not list {name} {version} as installed", device)
    return model
