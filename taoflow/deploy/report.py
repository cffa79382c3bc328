"""The rollout report: one typed record per device and per engine-key group, flat rows for a Prefect table.

Device statuses:
  deployed         the new version passed its smoke test on the device and is `current`
  already_current  the device already ran this version of this package (its agent read `current` and the
                   installed version's passport: same package digest, smoke test passed); nothing was sent
  rolled_back      it was switched, then the rollout aborted and `current` went back to `previous`
                   (or to no model, when the device had none of this name before)
  failed           the deploy failed on this device; `current` is still `previous`
  rollback_failed  the rollout aborted but the device could not be reached to switch back: it runs the new,
                   smoke-tested version
  skipped          not attempted: its group's canary failed, or the rollout aborted first
  refused          preflight: the device cannot run this package (the error says why and what to do)
  unreachable      the probe failed (SSH, host key, agent)
"""

import hashlib
import json
from dataclasses import asdict, dataclass, field

STATUSES = ("deployed", "already_current", "rolled_back", "failed", "rollback_failed", "skipped", "refused",
            "unreachable")
TABLE_ERROR_CHARS = 240


def passport_id(passport):
    """A short identity of a device passport's lineage: the pipeline passport's `id` when it has one, else a
    digest of the lineage, else of the package. Equal ids = the same model from the same data and code."""
    if not isinstance(passport, dict):
        return None
    lineage = passport.get("lineage")
    if isinstance(lineage, dict) and isinstance(lineage.get("id"), str):
        return lineage["id"]
    if lineage:
        return hashlib.sha256(json.dumps(lineage, sort_keys=True).encode()).hexdigest()[:16]
    digest = passport.get("package_digest")
    return digest[:16] if isinstance(digest, str) else None


@dataclass
class DeviceOutcome:
    device: str
    version: str                    # the version this rollout deploys
    group: str | None = None
    status: str = "skipped"
    role: str | None = None         # "canary" or "wave"
    wave: int | None = None         # 0 = canary, 1.. = fan-out waves of its group
    previous: str | None = None     # `current` before the rollout (None: no model of this name)
    current: str | None = None      # `current` after it
    passport: dict | None = None    # passport of the version that is current after the rollout
    fps: float | None = None        # smoke-test throughput of the new version on this device
    seconds: float | None = None
    bytes_uploaded: int | None = None  # agent + package (+ engine), probe included
    agent_cpu_s: float | None = None   # CPU seconds the agent reported on the device, probe included
    error: str | None = None


@dataclass
class GroupOutcome:
    id: str
    key: dict
    devices: list
    status: str = "pending"         # deployed | partial | stopped | refused | aborted
    canary: str | None = None
    engine_sha256: str | None = None
    agreement: dict | None = None   # the canary's detections against the host's (rollout.compare_detections)
    error: str | None = None

    @property
    def label(self):
        k = self.key
        if k.get("runtime") == "tensorrt":
            sm = str(k.get("gpu_cc")).replace(".", "")
            return f"TensorRT {k.get('runtime_version')} L4T {k.get('l4t')} sm_{sm} {k.get('precision')}"
        if k.get("runtime") == "onnxruntime":
            return f"onnxruntime {k.get('runtime_version')} {k.get('machine')}"
        return "no runtime"


@dataclass
class RolloutReport:
    name: str
    version: str
    package_digest: str
    devices: dict = field(default_factory=dict)   # device name -> DeviceOutcome
    groups: dict = field(default_factory=dict)    # group id -> GroupOutcome
    aborted: str | None = None                    # why the rollout stopped and rolled back, if it did
    builds: int = 0                               # engine builds (or ONNX Runtime verifications) run
    seconds: float = 0.0

    @property
    def ok(self):
        return self.aborted is None and all(d.status in ("deployed", "already_current")
                                            for d in self.devices.values())

    def counts(self):
        found = {}
        for d in self.devices.values():
            found[d.status] = found.get(d.status, 0) + 1
        return found

    def table(self):
        """One flat row per device (Prefect's create_table_artifact takes this list as is)."""
        rows = []
        for name in sorted(self.devices):
            d = self.devices[name]
            group = self.groups.get(d.group)
            error = d.error if d.error is None or len(d.error) <= TABLE_ERROR_CHARS else \
                d.error[:TABLE_ERROR_CHARS - 3] + "..."
            rows.append({"device": d.device, "group": d.group, "engine": group.label if group else None,
                         "role": d.role, "wave": d.wave, "version": d.version, "previous": d.previous,
                         "current": d.current, "passport": passport_id(d.passport), "fps": d.fps,
                         "status": d.status, "error": error})
        return rows

    def summary(self):
        counts = ", ".join(f"{n} {s}" for s, n in sorted(self.counts().items()))
        head = f"{self.name} {self.version}: {counts}; {len(self.groups)} groups, {self.builds} builds"
        return head + (f"; ABORTED: {self.aborted}" if self.aborted else "")

    def to_dict(self):
        data = asdict(self)
        data["ok"] = self.ok
        return data
