"""Fleet deployment over plain SSH: inventory, device agent shipping, probe, engine-key groups, deploy, rollback,
the model package builder and the canary-and-waves rollout of the `deploy-ssd` flow.

The functions here are the building blocks of the `deploy-ssd` flow; each works on one device or a list of
devices and returns JSON-ready dicts (per-device failures as DeployError values in fleet-wide maps), except
`rollout`, which returns a typed RolloutReport (`.table()` gives the rows of a Prefect table artifact).
"""

from .errors import (AgentError, DeployError, HostKeyError, InventoryError, RemoteTimeout, UnreachableError,
                     UploadError)
from .fleet import (Group, adeploy_all, adeploy_to_device, afetch_engine, afleet_status, aprobe, aprobe_all,
                    arevert_device, arollback_device, astatus, engine_key, engine_key_id, fleet_status,
                    group_by_engine_key, rollback_device)
from .inventory import Device, Fleet, load_inventory
from .package import Package, load_package
from .package_builder import build_package
from .preflight import build_problems, choose_canary, device_problems
from .report import DeviceOutcome, GroupOutcome, RolloutReport, passport_id
from .rollout import arollout, compare_detections, rollout
from .ssh import Session, fingerprint, scan_host_key, trust_host_key

__all__ = [
    "AgentError", "DeployError", "HostKeyError", "InventoryError", "RemoteTimeout", "UnreachableError",
    "UploadError", "Group", "adeploy_all", "adeploy_to_device", "afetch_engine", "afleet_status", "aprobe",
    "aprobe_all", "arevert_device", "arollback_device", "astatus", "engine_key", "engine_key_id", "fleet_status",
    "group_by_engine_key", "rollback_device",
    "Device", "Fleet", "load_inventory", "Package", "load_package", "build_package", "build_problems",
    "choose_canary", "device_problems", "DeviceOutcome", "GroupOutcome", "RolloutReport", "passport_id",
    "arollout", "compare_detections", "rollout", "Session", "fingerprint", "scan_host_key", "trust_host_key",
]
