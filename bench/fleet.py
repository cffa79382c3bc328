#!/usr/bin/env python3
"""Fleet deploy over SSH: 20 simulated devices on loopback against one, with one build per engine-key group.

Each simulated device is a real OpenSSH sshd on 127.0.0.1 with its own device root; the agent runs under the
Python 3.6 device venv (JetPack 4.6's Python) for half of the devices and under this Python for the other half,
which makes two engine-key groups. A rollout is: probe all -> group by engine key -> per group, build + smoke +
activate on a canary, then ship to the rest of the group without building (the canary's verified result;
a TensorRT group would get the canary's engine) -> smoke -> activate, at most `--concurrency` devices at a time.

Timed: the same rollout to 1 device and to N devices (fresh device roots each). The simulated devices share
this machine's CPUs, so the ratio includes every device's smoke inference running here; on a real fleet each
Nano computes on its own. Prints wall times, the ratio (target <= 2), bytes uploaded, builds and groups, and
ends with one line:
devices=20 wall_ratio=... builds=... groups=...
"""

import argparse
import asyncio
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from taoflow.deploy import adeploy_to_device, aprobe_all, group_by_engine_key, load_inventory, load_package  # noqa
from taoflow.deploy.selftest import write_selftest_package  # noqa: E402
from tests.deploy.sshd import SimFleet, keygen  # noqa: E402
from tests.device.support import ensure_py36_venv  # noqa: E402


async def rollout(devices, package, concurrency):
    """probe -> groups -> canary build per group -> fan-out; returns (results, groups)."""
    probes = await aprobe_all(devices, concurrency)
    agent_bytes = sum(p["transfer"]["bytes_uploaded"] for p in probes.values() if not isinstance(p, Exception))
    failed = {n: p for n, p in probes.items() if isinstance(p, Exception)}
    if failed:
        raise SystemExit(f"probe failed: {failed}")
    groups = group_by_engine_key(probes, package)
    by_name = {d.name: d for d in devices}
    limit = asyncio.Semaphore(concurrency)

    async def deploy(name, build):
        async with limit:
            return await adeploy_to_device(by_name[name], package, name="bench", build=build, smoke_iterations=5)

    async def one_group(group):
        canary, *rest = group.devices
        first = await deploy(canary, True)
        return [first] + list(await asyncio.gather(*(deploy(n, False) for n in rest)))

    per_group = await asyncio.gather(*(one_group(g) for g in groups.values()))
    return [r for results in per_group for r in results], groups, agent_bytes


def run(base, client_key, pythons, package, concurrency):
    sims = SimFleet(base, client_key)
    try:
        for i in range(len(pythons)):
            sims.add(f"sim-{i:02d}")
        devices = load_inventory(sims.write_inventory(pythons)).devices
        started, cpu = time.perf_counter(), time.process_time()
        results, groups, agent_bytes = asyncio.run(rollout(devices, package, concurrency))
        wall, cpu = time.perf_counter() - started, time.process_time() - cpu
    finally:
        sims.stop()
    bad = [r for r in results if not r["smoke"]["passed"]]
    if bad or len(results) != len(devices):
        raise SystemExit(f"rollout incomplete: {len(results)} of {len(devices)}, failed smoke: {bad}")
    builds = sum(1 for r in results if r["build"]["runtime"] not in ("skipped", "prebuilt"))
    return {"wall_s": wall, "host_cpu_s": cpu, "builds": builds,
            "bytes": agent_bytes + sum(r["bytes_uploaded"] for r in results),
            "groups": len(groups), "fps": [r["smoke"]["fps"] for r in results]}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--devices", type=int, default=20)
    p.add_argument("--concurrency", type=int, default=20)
    p.add_argument("--work", type=Path, default=None, help="scratch directory (default: a temp dir)")
    args = p.parse_args()

    work = Path(tempfile.mkdtemp(prefix="fleet-bench-", dir=args.work))
    os.environ["TAOFLOW_LOCK_DIR"] = str(work / "locks")
    try:
        py36, reason = ensure_py36_venv(Path(tempfile.gettempdir()) / "taoflow-device-venv")
        if py36 is None:
            print(f"note: {reason}; every simulated device uses {sys.executable} (one group)", flush=True)
        alternating = [py36 or sys.executable, sys.executable]
        keygen(work / "client_key")
        package = load_package(write_selftest_package(work / "package"))
        one = run(work / "one", work / "client_key", [alternating[0]], package, args.concurrency)
        print(f"1 device: {one['wall_s']:.2f} s, {one['bytes']} bytes uploaded, builds={one['builds']}, "
              f"host CPU {one['host_cpu_s']:.2f} s", flush=True)
        many = run(work / "many", work / "client_key", [alternating[i % 2] for i in range(args.devices)], package,
                   args.concurrency)
        ratio = many["wall_s"] / one["wall_s"]
        print(f"{args.devices} devices: {many['wall_s']:.2f} s, {many['bytes']} bytes uploaded "
              f"({many['bytes'] / args.devices:.0f} per device: agent + package), builds={many['builds']} "
              f"groups={many['groups']}, smoke FPS {min(many['fps']):.0f}-{max(many['fps']):.0f}", flush=True)
        print(f"host side (SSH, hashing, orchestration): {many['host_cpu_s']:.2f} CPU s of {many['wall_s']:.2f} s; "
              f"the simulated devices' agents share this machine's {os.cpu_count()} CPUs", flush=True)
        print(f"devices={args.devices} wall_ratio={ratio:.2f} builds={many['builds']} groups={many['groups']}")
        return 0 if many["builds"] == many["groups"] else 1
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
