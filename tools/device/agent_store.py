"""`activate` / `rollback` / `revert` / `status` / `discard`: versioned model directories and the atomic `current` link.

  <root>/staging/<name>/<version>/   uploads, build and smoke happen here; never read by the application
  <root>/models/<name>/<version>/    installed versions, each with passport.json (and smoke.json, build.json)
  <root>/models/<name>/current       symlink -> <version>; the application only ever opens current/
  <root>/models/<name>/history.json  activation order, newest last; rollback walks it backwards

A version reaches models/ only by a rename from staging/ after its smoke test passed for its exact bytes, and
`current` changes only by renaming a fresh symlink over the old one, so at any instant `current` names a complete,
smoke-tested version: a crash between any two steps leaves the previous model running.
"""

import os
import re
import shutil
import time

from agent_common import AgentError, device_lock, host_listening, load_json, write_json_atomic
from agent_package import package_digest

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
PASSPORT_FORMAT = "taoflow-device-passport/1"
MIN_KEEP = 2  # current + one rollback target
FENCE_FILE = "fenced.json"  # rollout tokens the host stopped: their activations are refused
MAX_FENCED = 64


def check_name(kind, value):
    if not NAME_RE.match(value or ""):
        raise AgentError("{} {!r} must be 1-128 characters of A-Z a-z 0-9 . _ - (not starting with . _ -)".format(
            kind, value))
    return value


def _models(root, name):
    return os.path.join(root, "models", check_name("model name", name))


def staging_dir(root, name, version):
    return os.path.join(root, "staging", check_name("model name", name), check_name("version", version))


def _read_json(path):
    if not os.path.isfile(path):
        return None
    return load_json(path)[0]


def current_version(models):
    link = os.path.join(models, "current")
    if not os.path.islink(link):
        return None
    return os.readlink(link)


def _history(models):
    data = _read_json(os.path.join(models, "history.json")) or {}
    return data.get("versions", [])


def _write_history(models, versions):
    write_json_atomic(os.path.join(models, "history.json"), {"versions": versions})


def _check_smoke(path, version):
    smoke = _read_json(os.path.join(path, "smoke.json"))
    if smoke is None:
        raise AgentError("version {} has no smoke.json: run smoke before activating".format(version), path)
    if not smoke.get("passed"):
        raise AgentError("version {} failed its smoke test; it cannot become current".format(version), path)
    if smoke.get("package_digest") != package_digest(path):
        raise AgentError("version {} changed after its smoke test: run smoke again".format(version), path)
    return smoke


def installed_smoke(root, name, version):
    """The passed smoke record of an installed version (what `smoke --activate` answers when retried)."""
    target = os.path.join(_models(root, name), check_name("version", version))
    if not os.path.isdir(target):
        raise AgentError("version {} of {} is neither staged nor installed".format(version, name))
    return _check_smoke(target, version)


def _remove_tree(path):
    """Rename first, then delete: an interrupted delete leaves a dot-named trash dir, never half a version."""
    if not os.path.lexists(path):
        return
    trash = os.path.join(os.path.dirname(path), ".trash-{}-{}".format(os.path.basename(path), os.getpid()))
    os.rename(path, trash)
    shutil.rmtree(trash, ignore_errors=True)


def _switch_current(models, version):
    tmp = os.path.join(models, ".current.tmp-{}".format(os.getpid()))
    if os.path.lexists(tmp):
        os.unlink(tmp)
    os.symlink(version, tmp)  # relative target: the device root can be moved or mounted elsewhere
    os.replace(tmp, os.path.join(models, "current"))


def _write_passport(path, name, version, smoke, wave, rollout=None):
    existing = _read_json(os.path.join(path, "passport.json"))
    lineage = existing.get("lineage") if existing and existing.get("format") == PASSPORT_FORMAT else existing
    build = _read_json(os.path.join(path, "build.json"))
    passport = {
        "format": PASSPORT_FORMAT, "name": name, "version": version, "lineage": lineage,
        "package_digest": smoke["package_digest"],
        "build": None if build is None else {k: build.get(k) for k in (
            "runtime", "runtime_version", "engine_sha256", "model_sha256", "precision", "seconds")},
        "smoke": {k: smoke.get(k) for k in ("passed", "runtime", "runtime_version", "fps", "latency_ms",
                                            "checked_at")},
        "activated_at": time.time(), "wave": wave, "rollout": rollout,
    }
    write_json_atomic(os.path.join(path, "passport.json"), passport)
    return passport


def activate(root, name, version, keep=3, wave=None, rollout=None):
    """Install `version` (staged and smoke-tested) and make it current. Refused, with nothing changed, when the
    host fenced `rollout` (it has since failed or reverted this device) or can no longer hear the reply."""
    models = _models(root, name)
    target = os.path.join(models, check_name("version", version))
    staging = staging_dir(root, name, version)
    if rollout is not None:
        check_name("rollout token", rollout)
    with device_lock(root, "models-" + name, wait_s=30):
        if rollout is not None and rollout in _fenced(models):
            raise AgentError("rollout {} was stopped for this device by the host; {} is not activated".format(
                rollout, version))
        if not host_listening():
            raise AgentError("the host's connection is gone; {} is not activated".format(version))
        os.makedirs(models, exist_ok=True)
        if os.path.isdir(staging):
            smoke = _check_smoke(staging, version)
            if os.path.isdir(target):
                if package_digest(target) != smoke["package_digest"]:
                    raise AgentError("version {} of {} is already installed with other content; deploy it under "
                                     "a new version".format(version, name), target)
                _remove_tree(staging)  # same bytes re-deployed: keep the installed copy
            else:
                os.rename(staging, target)
        elif os.path.isdir(target):
            smoke = _check_smoke(target, version)
        else:
            raise AgentError("version {} of {} is neither staged nor installed".format(version, name))
        _write_passport(target, name, version, smoke, wave, rollout)
        _switch_current(models, version)
        history = [v for v in _history(models) if v != version] + [version]
        _write_history(models, history)
        _prune(models, history, max(keep, MIN_KEEP))
    return status(root, name)


def rollback(root, name, to=None):
    models = _models(root, name)
    with device_lock(root, "models-" + name, wait_s=30):
        current = current_version(models)
        history = _history(models)
        if to is not None:
            target = check_name("version", to)
            if not os.path.isdir(os.path.join(models, target)):
                raise AgentError("version {} of {} is not installed (installed: {})".format(
                    target, name, ", ".join(_installed(models)) or "none"))
            history = [v for v in history if v != target] + [target]
        else:
            # The version being rolled back leaves the history, so a second rollback goes one further back.
            history = [v for v in history if v != current and os.path.isdir(os.path.join(models, v))]
            if not history:
                raise AgentError("no previous version of {} to roll back to; {} stays current".format(name, current))
            target = history[-1]
        _check_smoke(os.path.join(models, target), target)
        _switch_current(models, target)
        _write_history(models, history)
    result = status(root, name)
    result["rolled_back_from"] = current
    return result


def _fenced(models):
    data = _read_json(os.path.join(models, FENCE_FILE)) or {}
    return data.get("rollouts", []) if isinstance(data, dict) else []


def _fence(models, rollout):
    os.makedirs(models, exist_ok=True)
    fenced = [t for t in _fenced(models) if t != rollout][-(MAX_FENCED - 1):] + [rollout]
    write_json_atomic(os.path.join(models, FENCE_FILE), {"rollouts": fenced})


def revert(root, name, version, fence=None):
    """Undo the activation of `version`, for a rollout that aborted after switching this device.

    If `version` is current, `current` goes back to the version activated before it; when it was the first
    version of this model on the device, `current` is removed: the device ran no model of this name before the
    rollout, and reverting restores exactly that. `version` leaves the history but stays installed (smoke-tested,
    so `rollback --to` can bring it back) until keep-K prunes it. When `version` is not current nothing changes,
    so the host can repeat a revert whose reply it lost. With `fence`, that rollout token is recorded first (under
    the same lock as activation): an agent of that rollout still running on the device (its connection lost)
    can no longer switch `current` afterwards.
    """
    models = _models(root, name)
    check_name("version", version)
    if fence is not None:
        check_name("rollout token", fence)
    with device_lock(root, "models-" + name, wait_s=30):
        if fence is not None:
            _fence(models, fence)
        current = current_version(models)
        if current != version:
            result = status(root, name)
            result.update(reverted=False, reverted_from=None)
            return result
        history = [v for v in _history(models) if v != version and os.path.isdir(os.path.join(models, v))]
        if history:
            target = history[-1]
            _check_smoke(os.path.join(models, target), target)
            _switch_current(models, target)
        else:
            os.unlink(os.path.join(models, "current"))
        _write_history(models, history)
    result = status(root, name)
    result.update(reverted=True, reverted_from=version)
    return result


def discard(root, name, version):
    """Remove a staged (never activated) version, e.g. after its smoke test failed; models/ is not touched."""
    staging = staging_dir(root, name, version)
    existed = os.path.isdir(staging)
    _remove_tree(staging)
    return {"discarded": existed, "path": staging}


def _installed(models):
    if not os.path.isdir(models):
        return []
    return sorted(v for v in os.listdir(models) if NAME_RE.match(v) and v not in ("current", "history.json")
                  and os.path.isdir(os.path.join(models, v)) and not os.path.islink(os.path.join(models, v)))


def _prune(models, history, keep):
    protected = set(history[-keep:])
    protected.add(current_version(models))
    for version in _installed(models):
        if version not in protected:
            _remove_tree(os.path.join(models, version))


def status(root, name=None):
    base = os.path.join(root, "models")
    names = [check_name("model name", name)] if name else (sorted(os.listdir(base)) if os.path.isdir(base) else [])
    report = {}
    for model in names:
        models = os.path.join(base, model)
        if not os.path.isdir(models):
            report[model] = {"current": None, "versions": [], "history": []}
            continue
        versions = []
        for version in _installed(models):
            path = os.path.join(models, version)
            smoke = _read_json(os.path.join(path, "smoke.json")) or {}
            versions.append({"version": version, "passport": _read_json(os.path.join(path, "passport.json")),
                             "smoke_passed": smoke.get("passed"), "fps": smoke.get("fps")})
        report[model] = {"current": current_version(models), "versions": versions, "history": _history(models)}
        beat = service_heartbeat(root, model)
        if beat is not None:
            report[model]["service"] = beat
    return {"root": root, "models": report}


def service_heartbeat(root, name):
    """The detector service's heartbeat for this model (agent_detect.serve), if one runs or ran here."""
    path = os.path.join(root, "detect", name + ".json")
    if not os.path.isfile(path):
        return None
    try:
        beat = _read_json(path)
    except AgentError:  # written atomically, so only a foreign hand breaks it: report no service
        return None
    if isinstance(beat, dict) and isinstance(beat.get("time"), (int, float)):
        beat["age_s"] = round(time.time() - beat["time"], 3)
    return beat
