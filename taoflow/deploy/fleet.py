"""Fleet operations as plain functions a flow can call: probe, group, deploy one device, roll back, status.

Each operation has an async form (`a...`) and a blocking wrapper of the same name without the `a`. Results are
JSON-ready dicts; per-device failures come back as DeployError values in the result maps of the fleet-wide
functions (`aprobe_all`, `adeploy_all`, `fleet_status`) so one bad device never hides the others' results.

A deploy never touches `current` until the new version passed its smoke test on that device: upload to
staging/, build, smoke, then `activate` renames staging into models/ and switches `current` atomically. Any
failure before that leaves the previous model running and the staged copy deleted.
"""

import asyncio
import contextlib
import hashlib
import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from .agent import agent_items, call, ship_agent
from .errors import DeployError, UploadError
from .locks import device_lock
from .package import Package, load_package
from .replies import ReplyError, expect_current
from .ssh import Session, upload_paths, with_retries

UNKNOWN = object()  # an argument the caller did not know
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")  # the agent's rule for model names and versions
DISK_MARGIN_MB = 32  # smoke.json, build.json, passport and filesystem slack on top of the package itself


def run_sync(coro):
    """Run a coroutine from blocking code; inside a running event loop call the `a...` function instead."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    coro.close()
    raise RuntimeError("called from a running event loop: await the async variant (a...) instead")


async def for_each(devices, fn, concurrency=8):
    """{device name: fn(device) result or its DeployError}, at most `concurrency` devices at a time."""
    limit = asyncio.Semaphore(max(1, int(concurrency)))

    async def one(device):
        async with limit:
            try:
                return device.name, await fn(device)
            except DeployError as e:
                return device.name, e

    return dict(await asyncio.gather(*(one(d) for d in devices)))


# --- probe and engine-compatibility groups -------------------------------------------------------------------

async def aprobe(device, retries=4, imports=False, session=None, also=None):
    """The agent's probe report of one device, plus `transfer`: what shipping the agent cost. `imports` has the
    agent import each Python module (a doctor's question; a rollout's build and smoke import them anyway).
    `session`: an open Session to use and leave open (a rollout keeps it for the device's later steps);
    `also`: staging_plan(...) of a package this session will stage next (prepared in the same round trip)."""
    async with device_lock(device), session_for(device, session) as s:
        bytes_before, cpu_before = s.bytes_sent, s.agent_cpu_s
        sent = await with_retries(s, lambda: ship_agent(s, also=also), retries)
        report = await with_retries(s, lambda: call(s, "probe", *(["--imports"] if imports else [])), retries)
        report["transfer"] = {"agent_files_sent": sent, "bytes_uploaded": s.bytes_sent - bytes_before,
                              "agent_cpu_s": round(s.agent_cpu_s - cpu_before, 3)}
        return report


async def aprobe_all(devices, concurrency=8):
    return await for_each(devices, aprobe, concurrency)


def engine_key(probe, package):
    """What must be equal for two devices to share one built engine (or, without TensorRT, one verified model).

    TensorRT engines are tied to the TensorRT version, the GPU architecture and the plugin library build (NMS and
    BatchTile come from a TRT-OSS rebuild on JetPack 4); L4T pins the CUDA/cuDNN underneath. ONNX Runtime devices
    share a key per onnxruntime version and CPU architecture.
    """
    if "tensorrt" in (probe.get("runtimes") or []):
        key = {"runtime": "tensorrt", "runtime_version": probe.get("tensorrt"),
               "l4t": (probe.get("l4t") or {}).get("release"),
               "plugin_sha256": (probe.get("nvinfer_plugin") or {}).get("sha256"),
               "gpu_cc": (probe.get("gpu") or {}).get("compute_capability")}
    elif "onnxruntime" in (probe.get("runtimes") or []):
        ort = (probe.get("modules") or {}).get("onnxruntime") or {}
        key = {"runtime": "onnxruntime", "runtime_version": ort.get("version"), "machine": probe.get("machine")}
    else:
        key = {"runtime": None}
    key.update(precision=package.precision, input_shape=package.input_shape, model_sha256=package.model_sha256)
    return key


def engine_key_id(key):
    return "ek-" + hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]


@dataclass
class Group:
    id: str
    key: dict
    devices: list = field(default_factory=list)


def group_by_engine_key(probes, package):
    """{group id: Group} over the devices whose probe succeeded; failed probes (DeployError values) are skipped."""
    package = package if isinstance(package, Package) else load_package(package)
    groups = {}
    for name in sorted(probes):
        probe = probes[name]
        if isinstance(probe, Exception):
            continue
        key = engine_key(probe, package)
        gid = engine_key_id(key)
        groups.setdefault(gid, Group(gid, key)).devices.append(name)
    return groups


# --- deploy --------------------------------------------------------------------------------------------------

@contextlib.asynccontextmanager
async def session_for(device, session=None):
    """A connection for one operation: the caller's open Session (left open for its next step), or a new one."""
    if session is not None:
        yield session
        return
    async with Session(device) as s:
        yield s


def staging_path(device, name, version):
    return f"{device.device_root}/staging/{name}/{version}"


def _ship_items(device, package, staging, engine=None):
    items = agent_items(device) + [(f.path, f"{staging}/{f.rel}", f.sha256) for f in package.files]
    if engine is not None:
        items.append((engine[0], f"{staging}/model.engine", engine[1]))
    return items


def staging_plan(device, package, name, version):
    """(dirs, paths) to create and hash on the device before shipping `package` to its staging directory.

    The agent bundle is replaced by a rename (an agent may be running from it); staging files are written in
    place (nothing reads a staging directory before the host verified it), so only the agent has a `.part`."""
    return _plan(device, _ship_items(device, package, staging_path(device, name, version)))


def _plan(device, items):
    """(dirs, paths) that `prepare` creates and hashes before `items` are shipped (see staging_plan)."""
    agent = {remote for _, remote, _ in agent_items(device)}
    dirs = sorted({str(PurePosixPath(remote).parent) for _, remote, _ in items})
    return dirs, [p for _, remote, _ in items for p in upload_paths([remote], in_place=remote not in agent)]


async def ship(session, package, staging, engine=None, progress=None, prepared=None):
    """Send agent + package (+ a prebuilt engine: (path, sha256)) to the device, skipping files already there.

    Refuses up front when the device root lacks the space (a full disk mid-upload would fail anyway, later and
    with OpenSSH's bare "Failure"). `prepared`: (hashes, free MiB) of staging_plan's paths, read earlier in this
    session (the probe's round trip). Returns the number of files sent.
    """
    items = _ship_items(session.device, package, staging, engine)
    agent = {remote for _, remote, _ in agent_items(session.device)}
    if prepared is None:
        prepared = await session.prepare(*_plan(session.device, items))
    have, free = prepared
    need_mb = sum(Path(p).stat().st_size for p, r, d in items if have.get(r) != d) / (1 << 20) + DISK_MARGIN_MB
    if free is not None and free < need_mb:
        raise UploadError(f"device disk full: {free} MiB free under {session.device.device_root}, the upload needs "
                          f"{need_mb:.0f} MiB; remove old versions or lower `keep`", session.device.name)
    try:
        sent = await session.upload_files([i for i in items if i[1] in agent], have, progress)
        return sent + await session.upload_files([i for i in items if i[1] not in agent], have, progress,
                                                 in_place=True)
    except DeployError as e:
        if getattr(e, "retryable", False) or isinstance(e, UploadError):
            raise
        _, free = await session.prepare([], [])
        hint = f"; {free} MiB free on the device: disk full?" if free is not None and free < need_mb else ""
        raise UploadError(f"upload failed: {e.reason}{hint}", session.device.name) from None


async def adeploy_to_device(device, package, *, name, version=None, wave=None, keep=3, build=True, engine=None,
                            etlt_key=None, progress=None, on_step=None, retries=4, smoke_iterations=20,
                            verify=None, session=None, rollout=None, previous=UNKNOWN, staged=False):
    """Ship agent + package, build, smoke, activate. Returns a result dict.

    Fan-out to the rest of an engine-key group after its canary: `engine` = (local path, sha256) of the engine
    the canary built (fetched with afetch_engine) is uploaded as model.engine and the build is skipped; for
    ONNX Runtime groups, whose canary build only verified the model, pass build=False. Either way the smoke
    test then proves the model loads and is right on this device. `etlt_key` goes to the device
    on stdin only. On failure the staged copy is discarded and `current` is what it was.
    `on_step(device name, step)` is called as each step starts: ship, build, smoke, activate (flow logging);
    without `verify`, the agent's smoke call also activates (one agent start-up) and there is no activate step.
    `verify(device, smoke record)` runs on the host between a passed smoke test and the switch; raising a
    DeployError there refuses the version (a canary's detections checked against the host's, for example).
    `session`: an open Session to this device to use (and leave open), e.g. the one that staged the package.
    `rollout`: the rollout's token; the agent refuses to activate for a token the host has fenced (arevert_device).
    `previous`: the device's `current` as its probe just read it (else it is read here). `staged`: this
    session staged the package (astage) and no engine is to be added, so nothing needs shipping.
    """
    package = package if isinstance(package, Package) else load_package(package)
    version = version or package.version
    for kind, value in (("model name", name), ("version", version)):
        if not NAME_RE.match(value or ""):  # both become remote paths: nothing may climb out of the root
            raise DeployError(f"{kind} {value!r} must be 1-128 characters of A-Z a-z 0-9 . _ - (not starting with "
                              f"a . _ or -)", device.name)
    started = time.monotonic()
    ids = ["--name", name, "--version", version]
    async with device_lock(device), session_for(device, session) as s:
        bytes_before, cpu_before = s.bytes_sent, s.agent_cpu_s
        def again(op):
            return with_retries(s, op, retries)

        def step(name_of_step):
            if on_step is not None:
                on_step(device.name, name_of_step)

        models = f"{device.device_root}/models/{name}"
        if previous is UNKNOWN:
            previous = await again(lambda: s.readlink(f"{models}/current"))
        try:
            step("ship")
            uploaded = 0 if staged and engine is None else \
                await again(lambda: ship(s, package, staging_path(device, name, version), engine, progress))
            step("build")
            if engine is None and build:
                # --lock-wait: after a dropped connection the first build may still run; the retry waits for it.
                built = await again(lambda: call(
                    s, "build", *ids, "--timeout", str(int(device.build_timeout)), "--lock-wait",
                    str(int(device.build_timeout)), timeout=2 * device.build_timeout + 60, etlt_key=etlt_key))
            elif engine is not None:
                built = {"runtime": "prebuilt", "engine_sha256": engine[1]}
            else:
                built = {"runtime": "skipped"}
            step("smoke")
            smoke_args = ["--iterations", str(smoke_iterations)]
            activate_args = ["--keep", str(keep)] + ([] if wave is None else ["--wave", str(wave)]) + \
                ([] if rollout is None else ["--rollout", rollout])
            if verify is None:  # nothing to check on the host in between: one agent start-up instead of two
                smoke = await again(lambda: call(s, "smoke", *ids, *smoke_args, "--activate", *activate_args))
                after, command = smoke.pop("activated", None), "smoke --activate"
            else:
                smoke = await again(lambda: call(s, "smoke", *ids, *smoke_args))
                verify(device, smoke)
                step("activate")
                after, command = await again(lambda: call(s, "activate", *ids, *activate_args)), "activate"
            if after is None:
                raise ReplyError(f"agent {command} answered without the activated state", device.name)
            state = expect_current(after, name, version, command, device.name)
        except DeployError:
            with contextlib.suppress(DeployError):
                await call(s, "discard", *ids)
            raise
        bytes_sent, agent_cpu = s.bytes_sent - bytes_before, s.agent_cpu_s - cpu_before
    current = next(v for v in state["versions"] if v["version"] == state["current"])
    return {"device": device.name, "name": name, "version": version, "wave": wave, "previous": previous,
            "current": state["current"], "passport": current["passport"], "build": built,
            "smoke": {k: smoke.get(k) for k in ("passed", "runtime", "runtime_version", "fps", "latency_ms")},
            "files_uploaded": uploaded, "bytes_uploaded": bytes_sent, "agent_cpu_s": round(agent_cpu, 3),
            "seconds": round(time.monotonic() - started, 3)}


async def astage(device, package, *, name, version=None, retries=4, progress=None, session=None):
    """Upload agent + package to the device's staging area; nothing is built, run or switched.

    The rollout stages a group's other devices while its canary builds (minutes for a TensorRT engine on a Nano),
    so their waves only send the engine, if any, then smoke-test and switch: their deploy's `ship` skips every
    file already there with the right checksum. Returns {"files_uploaded", "bytes_uploaded"}. `session`: an
    open Session to use and leave open (the rollout keeps it for the device's wave).
    """
    package = package if isinstance(package, Package) else load_package(package)
    staging = staging_path(device, name, version or package.version)
    async with device_lock(device), session_for(device, session) as s:
        before = s.bytes_sent
        prepared, s.prepared = s.prepared, None  # read by this session's probe (aprobe `also`), used once

        def attempt():
            nonlocal prepared
            once, prepared = prepared, None  # a retry after a dropped connection reads the device again
            return ship(s, package, staging, None, progress, once)
        sent = await with_retries(s, attempt, retries)
        return {"files_uploaded": sent, "bytes_uploaded": s.bytes_sent - before}


async def adiscard(device, name, version, retries=2, session=None):
    """Remove a staged version that will not be activated (`current` and installed versions are untouched)."""
    async with device_lock(device), session_for(device, session) as s:
        return await with_retries(s, lambda: call(s, "discard", "--name", name, "--version", version), retries)


async def adeploy_all(devices, package, *, name, concurrency=8, **kwargs):
    package = package if isinstance(package, Package) else load_package(package)
    return await for_each(devices, lambda d: adeploy_to_device(d, package, name=name, **kwargs), concurrency)


# --- rollback, status, engine fetch --------------------------------------------------------------------------

async def arollback_device(device, name, to=None, retries=4):
    """Switch `current` back: to `to`, or to the version before it. Only the explicit form is retried, because
    repeating a plain rollback after a dropped reply would go back two versions."""
    async with device_lock(device), Session(device) as s:
        await with_retries(s, lambda: ship_agent(s), retries)
        args = ["--name", name] + ([] if to is None else ["--to", to])
        result = await with_retries(s, lambda: call(s, "rollback", *args), retries if to else 1)
    state = model_state(result, name, "rollback", device.name)
    return {"device": device.name, "name": name, "rolled_back_from": result["rolled_back_from"],
            "current": state["current"]}


def rollback_device(device, name, to=None):
    return run_sync(arollback_device(device, name, to))


async def arevert_device(device, name, version, retries=4, fence=None):
    """Undo this rollout's activation of `version` (agent `revert`): back to the version before it, or no
    `current` at all when `version` was the device's first. A no-op when `version` is not current, so it is
    retried freely and is safe on a device whose deploy failed before the switch. `fence`: the rollout's token,
    recorded on the device first, so that an agent of that rollout still running there cannot switch later."""
    args = ["--name", name, "--version", version] + ([] if fence is None else ["--fence", fence])
    async with device_lock(device), Session(device) as s:
        await with_retries(s, lambda: ship_agent(s), retries)
        result = await with_retries(s, lambda: call(s, "revert", *args), retries)
    state = model_state(result, name, "revert", device.name)
    passport = next((v["passport"] for v in state["versions"] if v["version"] == state["current"]), None)
    return {"device": device.name, "name": name, "reverted": result["reverted"], "current": state["current"],
            "passport": passport}


def model_state(result, name, command, device=None):
    """One model's entry of an agent state reply (activate, revert, rollback, status)."""
    state = result["models"].get(name)
    if state is None:
        raise ReplyError(f"agent {command} reported no state for model {name}", device)
    return state


async def astatus(device, name=None, retries=4):
    async with Session(device) as s:
        await with_retries(s, lambda: ship_agent(s), retries)
        args = [] if name is None else ["--name", name]
        return (await with_retries(s, lambda: call(s, "status", *args), retries))["models"]


async def adetect(device, name, source, *, version=None, video_out=None, jsonl=None, kitti_dir=None,
                  max_frames=None, seconds=None, threshold=0.3, timeout=None, serve=False, loop=False):
    """Run the device's installed model (`current` unless `version`) on `source` there (agent `detect`): a video
    file, image folder, /dev/videoN, GStreamer pipeline or rtsp:// URL; output paths are on the device. Returns
    the agent's result: frames, FPS and milliseconds per frame for pre-processing, inference and post-processing.
    `serve`: run as the detector service (follows `current` with hot swaps, heartbeat) until stopped or `seconds`
    (`loop` restarts a video file at its end)."""
    args = ["--name", name, "--source", source, "--threshold", str(threshold)]
    for flag, value in (("--version", version), ("--video-out", video_out), ("--jsonl", jsonl),
                        ("--kitti-dir", kitti_dir), ("--max-frames", max_frames), ("--seconds", seconds)):
        if value is not None:
            args += [flag, str(value)]
    args += (["--serve"] if serve else []) + (["--loop"] if loop else [])
    async with Session(device) as s:
        await with_retries(s, lambda: ship_agent(s))
        return await call(s, "detect", *args, timeout=timeout or device.command_timeout)


def detect(device, name, source, **kwargs):
    return run_sync(adetect(device, name, source, **kwargs))


async def afleet_status(devices, name=None, concurrency=8):
    return await for_each(devices, lambda d: astatus(d, name), concurrency)


def fleet_status(devices, name=None, concurrency=8):
    """{device: {model name: {current, versions: [{version, passport, ...}], history}} or DeployError}."""
    return run_sync(afleet_status(devices, name, concurrency))


async def afetch_engine(device, name, version, dest, sha256=None):
    """Download a built model.engine (from staging or models/) of `version`, e.g. from a group's canary."""
    async with Session(device) as s:
        for base in (f"{device.device_root}/models/{name}/{version}", staging_path(device, name, version)):
            remote = f"{base}/model.engine"
            found = await s.sha256([remote])
            if remote in found:
                if sha256 is not None and found[remote] != sha256:
                    raise DeployError(f"{remote} has sha256 {found[remote]}, expected {sha256}", device.name)
                return await s.download(remote, dest, found[remote]), found[remote]
    raise DeployError(f"no model.engine for {name} {version} on the device", device.name)
