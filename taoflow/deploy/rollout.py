"""The `deploy-ssd` rollout as plain functions a Prefect flow calls: probe -> groups -> preflight -> per group a
canary, the engine, waves -> a RolloutReport.

Per engine-key group (devices that can share one built engine, fleet.engine_key):
1. preflight (preflight.py): devices that cannot run the package are refused with the reason; the canary is the
   device best able to build (tagged `canary`, then the most free memory);
2. canary (wave 0): ship, build, smoke; then the host compares the canary's detections with its own
   (compare_detections: same label, IoU, and confidence within a tolerance) before the switch. A failed canary
   stops its group only: the package is wrong for that engine key, not necessarily for the others. Meanwhile
   the package is staged on the group's other devices (an engine build on a Nano takes minutes; uploads to
   dozens of devices need not wait for it); copies staged on devices that end up not deployed are discarded;
3. TensorRT groups: the canary's engine is fetched and shipped to the rest, which never build (builds =
   groups); ONNX Runtime groups skip the build on the rest (the canary's build only proved the model loads);
4. waves of `wave_size` devices: ship (+ engine), smoke (proves the engine loads and is right on that device),
   activate. A device that fails keeps its previous `current`: the switch is a deploy's last step, and a revert
   afterwards confirms it (a connection lost during `activate` could have switched without a reply).
   When more than `abort_threshold` of a wave's devices fail, the rollout stops: no group starts another wave,
   and every device this rollout switched, in every group, is reverted to its previous version.

Each device is connected to once: the connection its probe opened serves its staging, build, smoke test and
switch (an SSH handshake and login cost CPU on both ends, the host's in its one event-loop thread).

A device without any model of this name before the rollout (`previous` None) has nothing to fall back to. If the
rollout aborts after switching it, the revert removes its `current` (agent `revert`): it is returned to exactly the
state it was in, running no model, and the new version stays installed and smoke-tested there, so an operator can
activate it deliberately (`taoflow fleet rollback --device D --to VERSION`). Nothing is ever taken from a device
that had a working model: it either keeps it or runs the new version after that version passed its smoke test.
A device that cannot be reached for the revert keeps the new, smoke-tested version (status rollback_failed).
"""

import asyncio
import json
import tempfile
import time
import uuid
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path

from .errors import DeployError
from .fleet import (NAME_RE, adeploy_to_device, adiscard, afetch_engine, aprobe, arevert_device, astage, astatus,
                    for_each, group_by_engine_key, run_sync, staging_plan)
from .package import Package, load_package
from .preflight import choose_canary, device_problems
from .report import DeviceOutcome, GroupOutcome, RolloutReport
from .ssh import Session, raise_open_file_limit


def compare_detections(expected, device_images, confidence_tolerance=0.1):
    """The canary check, on the host: the device's smoke detections against expected.json.

    Stricter than the device's own pass rule: each expected detection above score_threshold needs a device
    detection of the same label with IoU >= iou_threshold whose confidence is within `confidence_tolerance`
    (fp16 engines drift by ~0.01; a wrong mean or channel order moves confidences far more than boxes), and no
    unmatched device detection may score above score_threshold + confidence_tolerance.
    """
    iou_min, threshold = expected["iou_threshold"], expected["score_threshold"]
    checked = matched = 0
    max_delta, min_iou, problems = 0.0, 1.0, []
    for name in sorted(expected["images"]):
        found = (device_images.get(name) or {}).get("detections") or []
        used = set()
        for exp in sorted(expected["images"][name], key=lambda d: -d["confidence"]):
            best, best_iou = None, iou_min
            for i, det in enumerate(found):
                iou = _iou(exp["box"], det["box"])
                if i not in used and det["label"] == exp["label"] and iou >= best_iou:
                    best, best_iou = i, iou
            if best is not None:
                used.add(best)
            if exp["confidence"] <= threshold:
                continue  # recorded only so that a device detection scoring a little higher finds its partner
            checked += 1
            if best is None:
                problems.append(f"{name}: no device detection for {exp['label']} {exp['box']} ({exp['confidence']})")
                continue
            delta = abs(found[best]["confidence"] - exp["confidence"])
            max_delta, min_iou = max(max_delta, delta), min(min_iou, best_iou)
            if delta > confidence_tolerance:
                problems.append(f"{name}: {exp['label']} {exp['box']} confidence {found[best]['confidence']} on the "
                                f"device, {exp['confidence']} on the host")
            else:
                matched += 1
        for i, det in enumerate(found):
            if i not in used and det["confidence"] > threshold + confidence_tolerance:
                problems.append(f"{name}: unexpected {det['label']} {det['box']} ({det['confidence']}) on the device")
    return {"passed": not problems, "checked": checked, "matched": matched, "max_confidence_delta": round(max_delta, 4),
            "min_iou": round(min_iou, 4) if checked else None, "problems": problems[:10],
            "more_problems": max(0, len(problems) - 10)}


def _iou(a, b):
    inter = max(0.0, min(a[2], b[2]) - max(a[0], b[0])) * max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def waves_of(names, size):
    return [names[i:i + size] for i in range(0, len(names), size)]


@dataclass(frozen=True)
class RolloutOptions:
    """How one rollout runs (arollout's keyword arguments, checked)."""
    concurrency: int  # devices worked on at once
    wave_size: int  # devices per fan-out wave and group
    abort_threshold: float  # fraction of a wave that may fail without stopping the rollout
    keep: int  # versions kept on each device
    smoke_iterations: int
    tolerance: float  # confidence tolerance of the smoke test's detections against the host's
    engine_dir: str  # where fetched engines are kept
    etlt_key: object = field(repr=False)  # the .etlt key (sent on stdin only; never in a repr), or None


class _Rollout:
    def __init__(self, devices, package, name, version, options: RolloutOptions, on_event):
        self.by_name = {d.name: d for d in devices}
        self.package, self.name, self.version = package, name, version
        self.o = options
        self.on_event = on_event
        self.limit = asyncio.Semaphore(max(1, int(options.concurrency)))
        self.abort = asyncio.Event()
        self.switched = []  # devices this rollout made run `version`, in switch order
        # Carried by every activation of this rollout; fenced on a device before the host reverts it or reports it
        # failed, so that an agent of this rollout still running there (a lost connection) cannot switch it later.
        self.token = f"r{uuid.uuid4().hex[:16]}"
        # device -> its open connection, from the probe (or its staging) to the end of its group: a device is
        # connected to once per rollout (an SSH handshake and login cost both ends CPU, the host's in one thread)
        self.sessions = {}
        self.staged = set()  # devices whose package was staged during their group's canary
        self.live = set()  # devices whose detector service was running at the probe (the live gate applies)
        self.expected = json.loads((package.path / "samples" / "expected.json").read_text(encoding="utf-8"))
        passport = package.path / "passport.json"
        self.package_passport = json.loads(passport.read_text(encoding="utf-8")) if passport.is_file() else None
        self.report = RolloutReport(name, version, package.digest,
                                    {d.name: DeviceOutcome(d.name, version) for d in devices})

    def event(self, event, **fields):
        if self.on_event is not None:
            self.on_event({"event": event, **fields})

    def settle(self, names, status, error):
        for n in names:
            out = self.report.devices[n]
            out.status, out.error, out.current = status, error, out.previous

    async def probe_all(self, devices):
        """Probe every device, keeping each connection that worked for the device's later steps."""
        async def probe(device):
            session = self.sessions[device.name] = Session(device)
            try:  # the package's staging is prepared in the probe's round trip (used if the device stages)
                return await aprobe(device, session=session,
                                    also=staging_plan(device, self.package, self.name, self.version))
            except DeployError:
                await self.release(device.name, abort=True)
                raise
        return await for_each(devices, probe, self.o.concurrency)

    async def release(self, n, abort=False):
        session = self.sessions.pop(n, None)
        if session is not None:
            await session.close(abort=abort)

    async def run(self, probes):
        for n, out in self.report.devices.items():
            probe = probes.get(n)
            if probe is None or isinstance(probe, Exception):
                out.status = "unreachable"
                out.error = getattr(probe, "reason", None) or str(probe or "not probed")
                self.event("unreachable", device=n, error=out.error)
                continue
            transfer = probe.get("transfer") or {}  # shipping the agent for the probe is part of the rollout
            out.bytes_uploaded, out.agent_cpu_s = transfer.get("bytes_uploaded"), transfer.get("agent_cpu_s")
            model = (probe.get("models") or {}).get(self.name) or {}
            out.previous = out.current = model.get("current")
            out.passport = model.get("passport")
            service = model.get("service") or {}
            if service.get("status") == "serving" and (service.get("age_s") or 0) < 10:
                self.live.add(n)  # its detector service runs: the live gate applies after its switch
            if self.already_current(out):
                out.status = "already_current"
                out.fps = ((out.passport or {}).get("smoke") or {}).get("fps")
                self.event("already_current", device=n, version=self.version)
                await self.release(n)
        ok = {n: p for n, p in probes.items() if n in self.by_name and not isinstance(p, Exception)
              and self.report.devices[n].status != "already_current"}
        groups = group_by_engine_key(ok, self.package)
        await asyncio.gather(*(self.run_group(g, ok) for g in groups.values()))
        if self.abort.is_set():
            await self.revert_switched()
            for g in self.report.groups.values():
                if g.status in ("deployed", "partial"):
                    g.status = "aborted"
        await self.reconcile()

    async def reconcile(self):
        """Re-read what the devices whose last word was not a checked activation reply actually run.

        A failed device may have switched without its reply reaching the host, a revert may have been lost: the
        report says what each reachable device runs now, and a device still running this version of a failed or
        aborted deploy is fenced and reverted once more. A device that cannot be reached keeps the host's view,
        marked as unconfirmed.
        """
        async def one(n):
            out = self.report.devices[n]
            try:
                models = await astatus(self.by_name[n], self.name, retries=2)
                state = models.get(self.name) or {"current": None, "versions": []}
                if state["current"] == self.version and out.previous != self.version:
                    result = await arevert_device(self.by_name[n], self.name, self.version, retries=2,
                                                  fence=self.token)
                    state = {"current": result["current"], "versions": [{"version": result["current"],
                                                                         "passport": result["passport"]}]}
                    out.error = f"{out.error}; it had switched anyway and was reverted"
            except DeployError as e:
                if "could not be confirmed" not in (out.error or ""):
                    out.error = f"{out.error}; not reachable after the rollout ({e.reason}): what it runs could not " \
                                f"be confirmed, check `taoflow fleet status`"
                return
            out.current = state["current"]
            out.passport = next((v.get("passport") for v in state["versions"] if v["version"] == out.current), None)
        await asyncio.gather(*(one(n) for n, out in self.report.devices.items()
                               if out.status in ("failed", "rolled_back", "rollback_failed")))

    def already_current(self, out):
        """The device runs this version of this package, smoke-tested: a re-deploy would change nothing.

        What the agent read on the device: `current` names this version, whose passport records a passed smoke
        test, this package's pipeline passport (its lineage) and, where the device built it, this model's sha256.
        (The device's own package digest also covers a TensorRT engine the host never sees, so it is not compared.)
        """
        passport = out.passport if isinstance(out.passport, dict) else {}
        smoke = passport.get("smoke") if isinstance(passport.get("smoke"), dict) else {}
        build = passport.get("build") if isinstance(passport.get("build"), dict) else {}
        return (out.current == self.version and passport.get("version") == self.version
                and passport.get("lineage") == self.package_passport and smoke.get("passed") is True
                and build.get("model_sha256") in (None, self.package.model_sha256))

    async def run_group(self, group, probes):
        g = self.report.groups[group.id] = GroupOutcome(group.id, group.key, list(group.devices))
        for n in group.devices:
            self.report.devices[n].group = group.id
        able = []
        for n in group.devices:
            problems = device_problems(probes[n], self.package)
            if problems:
                self.settle([n], "refused", "; ".join(problems))
                self.event("refused", device=n, group=g.id, error=self.report.devices[n].error)
                await self.release(n)
            else:
                able.append(n)
        tags = {n: self.by_name[n].tags for n in able}
        canary, build_problems = choose_canary(able, probes, self.package, self.o.etlt_key, tags)
        try:
            if canary is None:
                g.status = "refused"
                if able:
                    g.error = f"no device of this group can build the engine: {'; '.join(build_problems[able[0]])}"
                    self.settle(able, "refused", g.error)
                return
            g.canary = canary
            if self.abort.is_set():
                return self.stop(g, able, "aborted", f"not deployed: rollout aborted ({self.report.aborted})")
            await self.canary_then_waves(group, g, canary, [n for n in able if n != canary])
        finally:
            await asyncio.gather(*(self.release(n) for n in able))

    async def canary_then_waves(self, group, g, canary, rest):
        # Stage the rest once the canary's own upload is done (it gets the host's uplink to itself) and while it
        # builds and smoke-tests; on a Nano an engine build takes minutes.
        shipped = asyncio.Event()

        def on_step(_device, step):
            if step != "ship":
                shipped.set()

        staging = asyncio.gather(*(self.stage(n, g, after=shipped) for n in rest))
        try:
            canary_ok = await self.deploy(canary, g, 0, build=True, verify=self.canary_check(g), on_step=on_step)
        finally:
            shipped.set()
            await staging
        try:
            if canary_ok:
                await self.fan_out(group, g, canary, rest)
            else:
                self.stop(g, rest, "stopped", f"not deployed: canary {canary} failed "
                                              f"({self.report.devices[canary].error})")
        finally:
            skipped = [n for n in rest if n in self.staged and self.report.devices[n].status == "skipped"]
            await asyncio.gather(*(self.discard(n) for n in skipped))

    async def fan_out(self, group, g, canary, pending):
        """After a passed canary: fetch its engine (TensorRT), then deploy the rest in waves."""
        everyone = [canary, *pending]
        self.report.builds += 1
        engine = None
        if group.key.get("runtime") == "tensorrt":
            try:
                dest = Path(self.o.engine_dir) / f"{g.id}-{self.version}.engine"
                engine = await afetch_engine(self.by_name[canary], self.name, self.version, dest)
            except DeployError as e:
                return self.stop(g, pending, "stopped", f"not deployed: the canary's engine could not be fetched "
                                                        f"({e.reason})")
            g.engine_sha256 = engine[1]
        for k, wave in enumerate(waves_of(pending, self.o.wave_size), 1):
            if self.abort.is_set():
                return self.stop(g, pending, "aborted", f"not deployed: rollout aborted ({self.report.aborted})")
            pending = pending[len(wave):]
            ok = await asyncio.gather(*(self.deploy(n, g, k, build=False, engine=engine) for n in wave))
            failed = ok.count(False)
            if failed / len(wave) > self.o.abort_threshold and not self.abort.is_set():
                self.report.aborted = (f"wave {k} of group {g.id} ({g.label}): {failed} of {len(wave)} devices "
                                       f"failed, above the abort threshold {self.o.abort_threshold:g}")
                self.abort.set()
                self.event("abort", group=g.id, wave=k, error=self.report.aborted)
        states = {self.report.devices[n].status for n in everyone}
        g.status = "deployed" if states == {"deployed"} else "partial"

    async def stage(self, n, g, after):
        """Upload the package to a device that waits for its wave; on failure its deploy uploads it again."""
        out = self.report.devices[n]
        await after.wait()
        session = self.sessions.setdefault(n, Session(self.by_name[n]))
        try:
            async with self.limit:
                result = await astage(self.by_name[n], self.package, name=self.name, version=self.version,
                                      session=session)
        except DeployError as e:
            await self.release(n, abort=True)
            self.event("stage_failed", device=n, group=g.id, error=e.reason)
            return
        self.staged.add(n)
        out.bytes_uploaded = (out.bytes_uploaded or 0) + result["bytes_uploaded"]
        self.event("staged", device=n, group=g.id, files=result["files_uploaded"])

    async def discard(self, n):
        with suppress(DeployError):  # best effort: a stale staged copy costs disk space, never a wrong model
            async with self.limit:
                await adiscard(self.by_name[n], self.name, self.version, session=self.sessions.get(n))

    def stop(self, g, names, status, error):
        g.status, g.error = status, g.error or error
        self.settle(names, "skipped", error)

    def canary_check(self, g):
        def check(device, smoke):
            g.agreement = compare_detections(self.expected, smoke.get("images") or {}, self.o.tolerance)
            if not g.agreement["passed"]:
                raise DeployError(f"canary detections disagree with the host's beyond the tolerance "
                                  f"{self.o.tolerance:g}: {g.agreement['problems'][0]}", device.name)
        return check

    async def deploy(self, n, g, wave, build, engine=None, verify=None, on_step=None):
        out = self.report.devices[n]
        out.role, out.wave = ("canary" if wave == 0 else "wave"), wave
        self.event("deploy", device=n, group=g.id, wave=wave)
        started = time.monotonic()
        try:
            async with self.limit:
                result = await adeploy_to_device(
                    self.by_name[n], self.package, name=self.name, version=self.version, wave=wave,
                    keep=self.o.keep, build=build, engine=engine, etlt_key=self.o.etlt_key,
                    smoke_iterations=self.o.smoke_iterations, verify=verify, on_step=on_step,
                    session=self.sessions.get(n), rollout=self.token, previous=out.previous,
                    staged=n in self.staged)
        except DeployError as e:
            out.status, out.error = "failed", e.reason
            out.seconds = round(time.monotonic() - started, 3)
            self.event("failed", device=n, group=g.id, wave=wave, error=e.reason)
            await self.confirm_previous(n)
            return False
        if n in self.live:
            problem = await self.live_gate(n)
            if problem:
                out.status, out.error, out.current = "failed", problem, result["current"]
                out.seconds = round(time.monotonic() - started, 3)
                self.event("failed", device=n, group=g.id, wave=wave, error=problem)
                await self.confirm_previous(n)
                return False
        out.status, out.current, out.passport = "deployed", result["current"], result["passport"]
        out.fps, out.seconds = result["smoke"]["fps"], result["seconds"]
        out.bytes_uploaded = (out.bytes_uploaded or 0) + result["bytes_uploaded"]
        out.agent_cpu_s = round((out.agent_cpu_s or 0) + result["agent_cpu_s"], 3)
        if out.previous != self.version:
            self.switched.append(n)
        self.event("deployed", device=n, group=g.id, wave=wave, fps=out.fps)
        return True

    async def live_gate(self, n):
        """For a device whose detector service runs: wait (up to the device's live_timeout) for its heartbeat to
        report the new version at >= min_fps; the reason it did not, or None."""
        device = self.by_name[n]
        deadline = time.monotonic() + device.live_timeout
        seen = None
        while True:
            try:
                models = await astatus(device, self.name, retries=1)
                seen = (models.get(self.name) or {}).get("service") or {}
            except DeployError as e:
                seen = {"last_error": f"status unreadable: {e.reason}"}
            fps = seen.get("fps")
            if seen.get("version") == self.version and seen.get("status") == "serving" and fps is not None \
                    and fps >= device.min_fps and (seen.get("age_s") or 0) < 10:
                self.report.devices[n].fps = fps
                return None
            if time.monotonic() >= deadline:
                break
            await asyncio.sleep(1.0)
        return (f"live gate: the detector service did not report {self.version} at >= {device.min_fps:g} FPS within "
                f"{device.live_timeout:g} s (it reports {seen.get('version')} at {seen.get('fps')} FPS"
                f"{', last error: ' + seen['last_error'] if seen.get('last_error') else ''})")

    async def confirm_previous(self, n):
        """After a failed deploy: make sure `current` is what it was (revert is a no-op when it never switched)."""
        out = self.report.devices[n]
        if out.previous == self.version:
            return  # it ran this version before the rollout; nothing to undo
        try:
            result = await arevert_device(self.by_name[n], self.name, self.version, retries=2, fence=self.token)
            out.current, out.passport = result["current"], result["passport"] or out.passport
        except DeployError as e:
            out.error += f"; its current model could not be confirmed ({e.reason}): check `taoflow fleet status`"

    async def revert_switched(self):
        async def one(n):
            out = self.report.devices[n]
            try:
                async with self.limit:
                    result = await arevert_device(self.by_name[n], self.name, self.version, fence=self.token)
            except DeployError as e:
                out.status = "rollback_failed"
                out.error = f"rollout aborted, and switching back failed ({e.reason}): it runs {self.version}"
                return
            out.status, out.current, out.passport = "rolled_back", result["current"], result["passport"]
            out.error = f"rolled back: {self.report.aborted}"
            self.event("rolled_back", device=n, current=out.current)
        await asyncio.gather(*(one(n) for n in self.switched))


async def arollout(devices, package, *, name, version=None, probes=None, wave_size=None, abort_threshold=0.25,
                   concurrency=8, keep=3, etlt_key=None, smoke_iterations=20, confidence_tolerance=0.1,
                   engine_dir=None, on_event=None):
    """Roll `package` out to `devices` as model `name`; returns a RolloutReport (never raises for one device).

    probes: {device: probe or DeployError} from aprobe_all, if the caller probed already (a separate flow task);
    wave_size: devices per fan-out wave and group (default: `concurrency`); abort_threshold: the fraction of a
    wave that may fail without stopping the rollout; etlt_key: the .etlt key (sent on stdin only); engine_dir:
    where fetched engines are kept (default: a temp dir removed afterwards); on_event(dict): progress events
    (deploy, deployed, already_current, failed, refused, unreachable, abort, rolled_back) for a flow's log.
    """
    package = package if isinstance(package, Package) else load_package(package)
    version = version or package.version
    for kind, value in (("model name", name), ("version", version)):
        if not NAME_RE.match(value or ""):
            raise DeployError(f"{kind} {value!r} must be 1-128 characters of A-Z a-z 0-9 . _ - (not starting "
                              f"with . _ or -)")
    if not 0 <= abort_threshold < 1:
        raise DeployError(f"abort_threshold {abort_threshold} must be a fraction in [0, 1)")
    names = [d.name for d in devices]
    if len(set(names)) != len(names):
        raise DeployError("a device is listed twice")
    raise_open_file_limit(2 * len(devices) + 256)  # a connection per device, plus files and the event loop
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="taoflow-engines-") as tmp:
        options = RolloutOptions(concurrency=concurrency, wave_size=max(1, int(wave_size or concurrency)),
                                 abort_threshold=abort_threshold, keep=keep, etlt_key=etlt_key,
                                 smoke_iterations=smoke_iterations, tolerance=confidence_tolerance,
                                 engine_dir=str(engine_dir or tmp))
        Path(options.engine_dir).mkdir(parents=True, exist_ok=True)
        run = _Rollout(devices, package, name, version, options, on_event)
        try:
            if probes is None:
                probes = await run.probe_all(devices)
            await run.run(probes)
        finally:  # groups release their devices' sessions; anything still open here was cut short
            await asyncio.gather(*(run.release(n, abort=True) for n in list(run.sessions)))
    run.report.seconds = round(time.monotonic() - started, 3)
    return run.report


def rollout(devices, package, **kwargs):
    """Blocking form of arollout (from a flow task or a script; inside an event loop await arollout)."""
    return run_sync(arollout(devices, package, **kwargs))
