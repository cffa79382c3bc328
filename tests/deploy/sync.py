"""Blocking forms of the deploy coroutines that tests drive one device or one step at a time. The library's own
callers await the coroutines (the rollout) or use its blocking entry points (`rollout`, `fleet_status`,
`rollback_device`); these exist for the tests only."""

from taoflow.deploy.fleet import adeploy_all, adeploy_to_device, aprobe_all, arevert_device, run_sync


def deploy_to_device(device, package, **kwargs):
    """Ship, build, smoke and activate on one device (no canary, no waves): the result dict, or raises."""
    return run_sync(adeploy_to_device(device, package, **kwargs))


def deploy_all(devices, package, *, name, concurrency=8, **kwargs):
    """Deploy to every device at once: {device: result dict or DeployError}."""
    return run_sync(adeploy_all(devices, package, name=name, concurrency=concurrency, **kwargs))


def probe_all(devices, concurrency=8):
    return run_sync(aprobe_all(devices, concurrency))


def revert_device(device, name, version, **kwargs):
    return run_sync(arevert_device(device, name, version, **kwargs))
