"""Rollout orchestration with the per-device operations replaced by recording fakes: TensorRT engine fan-out (no
simulated device has TensorRT) and the exact wave/abort/revert order, deterministically."""

import asyncio
import importlib
from dataclasses import dataclass

import pytest

from taoflow.deploy import DeployError, load_package, rollout
from tests.deploy.probes import cpu_device, ready_nano

# The package exports the function `rollout` under the module's name; patch the module itself.
rollout_module = importlib.import_module("taoflow.deploy.rollout")


@dataclass(frozen=True)
class FakeDevice:
    name: str
    tags: tuple = ()


class FakeFleet:
    """Records every device operation; `fail` names devices whose deploy raises."""

    def __init__(self, monkeypatch, fail=(), previous=None):
        self.calls, self.fail, self.previous = [], set(fail), previous or {}
        self.current = dict(self.previous)
        self.fenced, self.status_read = set(), []
        monkeypatch.setattr(rollout_module, "adeploy_to_device", self.deploy)
        monkeypatch.setattr(rollout_module, "afetch_engine", self.fetch)
        monkeypatch.setattr(rollout_module, "arevert_device", self.revert)
        monkeypatch.setattr(rollout_module, "astage", self.stage)
        monkeypatch.setattr(rollout_module, "adiscard", self.discard)
        monkeypatch.setattr(rollout_module, "astatus", self.status)

    async def stage(self, device, package, *, name, version, **_):
        self.calls.append(("stage", device.name))
        return {"files_uploaded": 3, "bytes_uploaded": 100}

    async def discard(self, device, name, version, **_):
        self.calls.append(("discard", device.name))

    async def deploy(self, device, package, *, name, version, wave, build, engine, verify, **_):
        self.calls.append(("deploy", device.name, wave, build, engine))
        await asyncio.sleep(0.01 * (wave + 1))
        if device.name in self.fail:
            raise DeployError("smoke test failed", device.name)
        previous, self.current[device.name] = self.current.get(device.name), version
        return {"current": version, "previous": previous, "passport": {"lineage": {"id": "pp"}},
                "smoke": {"fps": 10.0}, "seconds": 0.1, "bytes_uploaded": 100, "agent_cpu_s": 0.5}

    async def fetch(self, device, name, version, dest):
        self.calls.append(("fetch", device.name))
        return dest, "e" * 64

    async def revert(self, device, name, version, retries=4, fence=None):
        self.calls.append(("revert", device.name))
        self.fenced.add(device.name)
        if self.current.get(device.name) == version:
            self.current[device.name] = self.previous.get(device.name)
        return {"current": self.current.get(device.name), "passport": None, "reverted": True}


    async def status(self, device, name, retries=4):  # the end-of-rollout re-read (not an operation: not in calls)
        self.status_read.append(device.name)
        current = self.current.get(device.name)
        return {name: {"current": current, "versions": [{"version": current, "passport": None}] if current else []}}


def probes_of(kinds, models=None):
    probes = {}
    for name, kind in kinds.items():
        probe = kind()
        probe["models"] = {"lpd": {"current": (models or {}).get(name), "passport": None}}
        probes[name] = probe
    return probes


def test_tensorrt_groups_build_once_and_ship_the_canarys_engine(monkeypatch, selftest_package):
    fake = FakeFleet(monkeypatch)
    devices = [FakeDevice(f"nano-{i}") for i in range(4)] + [FakeDevice("cpu-0"), FakeDevice("cpu-1")]
    kinds = {**{f"nano-{i}": ready_nano for i in range(4)}, "cpu-0": cpu_device, "cpu-1": cpu_device}
    report = rollout(devices, load_package(selftest_package), name="lpd", probes=probes_of(kinds),
                     wave_size=2, engine_dir=None)
    assert report.ok and report.builds == 2 and len(report.groups) == 2
    nano_deploys = [c for c in fake.calls if c[0] == "deploy" and c[1].startswith("nano")]
    canary = nano_deploys[0]
    assert canary[2:4] == (0, True) and canary[4] is None  # the canary builds
    assert [c[2] for c in nano_deploys[1:]] == [1, 1, 2]  # then waves of two
    assert all(c[3] is False and c[4][1] == "e" * 64 and c[4][0].name.endswith(".engine") for c in nano_deploys[1:])
    assert ("fetch", canary[1]) in fake.calls and sum(c[0] == "fetch" for c in fake.calls) == 1
    cpu = [c for c in fake.calls if c[0] == "deploy" and c[1].startswith("cpu")]
    assert [(c[2], c[3], c[4]) for c in cpu] == [(0, True, None), (1, False, None)]  # onnxruntime: no engine
    trt = next(g for g in report.groups.values() if g.key["runtime"] == "tensorrt")
    assert trt.engine_sha256 == "e" * 64 and trt.label == "TensorRT 8.2.1 L4T 32.7.1 sm_53 fp16"
    # the rest of each group is staged while its canary builds, before the canary's engine is fetched
    nano = [c[:2] for c in fake.calls if c[1].startswith("nano")]
    staged = [n for kind, n in nano if kind == "stage"]
    assert sorted(staged) == sorted(c[1] for c in nano_deploys[1:])
    assert max(nano.index(("stage", n)) for n in staged) < nano.index(("fetch", canary[1]))
    assert not any(c[0] == "discard" for c in fake.calls)


def test_abort_stops_later_waves_everywhere_and_reverts_only_what_this_rollout_switched(monkeypatch,
                                                                                       selftest_package):
    package = load_package(selftest_package)
    names = [f"d{i}" for i in range(7)]
    # d6 already runs this very version: the rollout redeploys it but must not revert it off that version.
    previous = {n: "old" for n in names[:6]} | {"d6": package.version}
    fake = FakeFleet(monkeypatch, fail={"d3", "d4"}, previous=previous)
    devices = [FakeDevice(n, ("canary",) if n == "d0" else ()) for n in names]
    report = rollout(devices, package, name="lpd", probes=probes_of({n: cpu_device for n in names}, previous),
                     wave_size=2, abort_threshold=0.4)
    rows = {r["device"]: r for r in report.table()}
    # canary d0; wave 1 = d1, d2 (ok); wave 2 = d3, d4 (both fail: 1.0 > 0.4); wave 3 = d5, d6 never starts
    assert report.aborted.startswith("wave 2 of group ") and "2 of 2 devices failed" in report.aborted
    assert [rows[n]["status"] for n in names] == ["rolled_back"] * 3 + ["failed"] * 2 + ["skipped"] * 2
    assert [rows[n]["current"] for n in names] == ["old"] * 6 + [package.version]
    reverts = sorted(c[1] for c in fake.calls if c[0] == "revert")
    assert reverts == ["d0", "d1", "d2", "d3", "d4"]  # switched ones, and the failed ones to confirm theirs
    assert not any(c[1] in ("d5", "d6") and c[0] not in ("stage", "discard") for c in fake.calls)
    # d5 and d6 were staged while the canary ran and never deployed: their staged copies are discarded
    assert sorted(c[1] for c in fake.calls if c[0] == "discard") == ["d5", "d6"]


@pytest.mark.parametrize("threshold, aborted", [(0.5, False), (0.49, True)])
def test_the_threshold_is_a_fraction_of_the_wave_and_failures_must_exceed_it(monkeypatch, selftest_package,
                                                                           threshold, aborted):
    FakeFleet(monkeypatch, fail={"d1"})
    devices = [FakeDevice("d0", ("canary",)), FakeDevice("d1"), FakeDevice("d2")]
    report = rollout(devices, load_package(selftest_package), name="lpd",
                     probes=probes_of({d.name: cpu_device for d in devices}), wave_size=2, abort_threshold=threshold)
    assert (report.aborted is not None) is aborted


def test_bad_arguments_are_refused_before_any_device_is_touched(monkeypatch, selftest_package):
    fake = FakeFleet(monkeypatch)
    devices = [FakeDevice("d0")]
    with pytest.raises(DeployError, match="abort_threshold 1.5 must be a fraction"):
        rollout(devices, selftest_package, name="lpd", probes={}, abort_threshold=1.5)
    with pytest.raises(DeployError, match="model name '../x' must be"):
        rollout(devices, selftest_package, name="../x", probes={})
    with pytest.raises(DeployError, match="a device is listed twice"):
        rollout(devices * 2, selftest_package, name="lpd", probes={})
    assert fake.calls == []
