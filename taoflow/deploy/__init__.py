"""Fleet deployment over plain SSH: inventory, device agent shipping, probe, engine-key groups, deploy, rollback.

The functions here are the building blocks of the `deploy-ssd` flow; each works on one device or a list of
devices and returns JSON-ready dicts (per-device failures as DeployError values in fleet-wide maps).
"""

from .errors import (AgentError, DeployError, HostKeyError, InventoryError, RemoteTimeout, UnreachableError,
                     UploadError)
from .fleet import (Group, adeploy_all, adeploy_to_device, afetch_engine, afleet_status, aprobe, aprobe_all,
                    arollback_device, astatus, deploy_all, deploy_to_device, engine_key, engine_key_id,
                    fleet_status, group_by_engine_key, probe_all, rollback_device)
from .inventory import Device, Fleet, load_inventory
from .package import Package, load_package
from .ssh import Session, fingerprint, scan_host_key, trust_host_key

__all__ = [
    "AgentError", "DeployError", "HostKeyError", "InventoryError", "RemoteTimeout", "UnreachableError",
    "UploadError", "Group", "adeploy_all", "adeploy_to_device", "afetch_engine", "afleet_status", "aprobe",
    "aprobe_all", "arollback_device", "astatus", "deploy_all", "deploy_to_device", "engine_key", "engine_key_id",
    "fleet_status", "group_by_engine_key", "probe_all", "rollback_device", "Device", "Fleet", "load_inventory",
    "Package", "load_package", "Session", "fingerprint", "scan_host_key", "trust_host_key",
]
