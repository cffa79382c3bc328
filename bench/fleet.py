#!/usr/bin/env python3
"""Fleet deploy over SSH: the deploy-ssd rollout to 20 simulated devices on loopback against one device.

Each simulated device is a real OpenSSH sshd on 127.0.0.1 with its own device root; the agent runs under the
Python 3.6 device venv (JetPack 4.6's Python) for half of the devices and under this Python for the other half,
which makes two engine-key groups. The rollout is taoflow.deploy.rollout: probe all -> groups -> preflight ->
per group a canary that builds (here: onnxruntime verifies the model) and smoke-tests, checked against the host's
detections, then waves of the rest without building -> smoke -> activate.

Timed: the same rollout to 1 device and to N devices (fresh device roots each). Where the time goes is measured,
not estimated:
- host CPU: this process (asyncssh, hashing, orchestration);
- agent CPU: what each agent command reported for itself (Python start-up, imports, probe, smoke inference);
- device CPU: every process of a simulated device (sshd, SFTP, shell, agent), from the kernel's accounting of
  its sshd listener (/proc/PID/stat utime+stime+cutime+cstime, read after its sessions ended).
All simulated devices share this machine's CPUs, so the N-device wall time cannot drop below (host CPU + all
devices' CPU) / CPUs here; on a real fleet each Nano computes on its own. The last line is the measured ratio:
devices=20 wall_ratio=... builds=... groups=...
"""

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from taoflow.deploy import load_inventory, load_package, rollout  # noqa: E402
from taoflow.deploy.selftest import write_selftest_package  # noqa: E402
from taoflow.deploy.simulator import SimFleet, keygen  # noqa: E402
from tests.device.support import ensure_py36_venv  # noqa: E402

def run(base, client_key, pythons, package, concurrency):
    sims = SimFleet(base, client_key, kind="openssh")  # per-device CPU comes from each sshd's accounting
    try:
        for i in range(len(pythons)):
            sims.add(f"sim-{i:02d}")
        devices = load_inventory(sims.write_inventory(pythons)).devices
        idle = {s.name: s.cpu_seconds() for s in sims.devices}
        started, cpu = time.perf_counter(), time.process_time()
        report = rollout(devices, package, name="bench", wave_size=concurrency, concurrency=concurrency,
                         smoke_iterations=5)
        wall, cpu = time.perf_counter() - started, time.process_time() - cpu
        time.sleep(0.5)  # closed sessions' sshd processes exit and are reaped by their listener
        device_cpu = {s.name: s.cpu_seconds() - idle[s.name] for s in sims.devices}
    finally:
        sims.stop()
    if not report.ok:
        raise SystemExit(f"rollout incomplete: {report.summary()}\n{report.table()}")
    return {"wall_s": wall, "host_cpu_s": cpu, "report": report, "device_cpu": device_cpu}


def describe(label, result):
    report = result["report"]
    rows = report.devices.values()
    agent = sum(d.agent_cpu_s or 0 for d in rows)
    device = sum(result["device_cpu"].values())
    uploaded = sum(d.bytes_uploaded or 0 for d in rows)
    print(f"{label}: {result['wall_s']:.2f} s wall, {uploaded} bytes uploaded ({uploaded // len(rows)} per device: "
          f"agent + package), builds={report.builds} groups={len(report.groups)}", flush=True)
    print(f"  CPU: host {result['host_cpu_s']:.2f} s; devices {device:.2f} s in all, of which the agents reported "
          f"{agent:.2f} s (the rest: sshd, SFTP, shells)", flush=True)
    return agent, device


def host_only(args, work):
    """--host-only: the host's own cost of a rollout to N devices that do no device work.

    The devices are taoflow's embedded SSH server in host-only mode, N of them in one separate process
    (python -m taoflow.deploy.simulator): each answers with the agent's real reply protocol and runs the agent's
    own store code (install, switch `current`, passports) on real files, but probes, builds and smoke-tests
    nothing. This process is the host alone, so its CPU time, peak RSS and the bytes it sends are the host's
    cost of probing, packaging checks, uploads, canary checks and switches for N devices.
    """
    server = subprocess.Popen([sys.executable, "-m", "taoflow.deploy.simulator", "--devices", str(args.devices),
                               "--base", str(work / "fleet"), "--kind", "host-only", "--concurrency",
                               str(args.concurrency)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        line = server.stdout.readline()
        if not line.startswith("ready "):
            raise SystemExit(f"the simulated fleet did not start: {line}")
        package = load_package(write_selftest_package(work / "package"))
        fleet = load_inventory(line.split(" ", 1)[1].strip())
        rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        started, cpu = time.perf_counter(), time.process_time()
        report = rollout(fleet.devices, package, name="bench", wave_size=args.concurrency,
                         concurrency=args.concurrency)
        wall, cpu = time.perf_counter() - started, time.process_time() - cpu
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    finally:
        server.stdin.close()
        server.wait(120)
    rows = report.devices.values()
    deployed = sum(d.status == "deployed" for d in rows)
    sent = sum(d.bytes_uploaded or 0 for d in rows)
    print(f"{args.devices} host-only devices, concurrency {args.concurrency}: {wall:.1f} s wall, host CPU "
          f"{cpu:.1f} s, peak RSS {peak:.0f} MB (before the rollout {rss_before:.0f} MB), {sent // len(rows)} bytes "
          f"sent per device, {deployed} deployed; {report.summary()}", flush=True)
    if deployed != args.devices:
        bad = [f"{d.device}: {d.status} {d.error}" for d in rows if d.status != "deployed"][:5]
        print("not deployed: " + "; ".join(bad), flush=True)
    print(f"devices={args.devices} host_cpu_ms_per_device={1000 * cpu / args.devices:.2f} peak_rss_mb={peak:.0f} "
          f"wall_s={wall:.1f} bytes_per_device={sent // len(rows)} deployed={deployed}")
    return 0 if deployed == args.devices else 1


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--devices", type=int, default=20)
    p.add_argument("--concurrency", type=int, default=20)
    p.add_argument("--work", type=Path, default=None, help="scratch directory (default: a temp dir)")
    p.add_argument("--per-device", action="store_true", help="print one line per device")
    p.add_argument("--host-only", action="store_true",
                   help="measure the host alone: devices that answer the agent protocol but do no work")
    args = p.parse_args()
    if args.host_only:
        work = Path(tempfile.mkdtemp(prefix="fleet-bench-", dir=args.work))
        os.environ["TAOFLOW_LOCK_DIR"] = str(work / "locks")
        try:
            return host_only(args, work)
        finally:
            shutil.rmtree(work, ignore_errors=True)

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
        describe("1 device", one)
        many = run(work / "many", work / "client_key", [alternating[i % 2] for i in range(args.devices)], package,
                   args.concurrency)
        agent, device = describe(f"{args.devices} devices", many)
        report = many["report"]
        seconds = [d.seconds for d in report.devices.values()]
        print(f"  per-device deploy wall: median {statistics.median(seconds):.2f} s, max {max(seconds):.2f} s; "
              f"device CPU per device: median {statistics.median(many['device_cpu'].values()):.2f} s, "
              f"max {max(many['device_cpu'].values()):.2f} s", flush=True)
        if args.per_device:
            for name, d in sorted(report.devices.items()):
                print(f"    {name} {d.role:6} wave {d.wave} deploy {d.seconds:5.2f} s, agent CPU "
                      f"{d.agent_cpu_s:5.2f} s, device CPU {many['device_cpu'][name]:5.2f} s, smoke {d.fps:.0f} FPS",
                      flush=True)
        cpus = os.cpu_count()
        floor = (many["host_cpu_s"] + device) / cpus
        print(f"  this machine has {cpus} CPUs for the host and all {args.devices} simulated devices: their "
              f"{many['host_cpu_s'] + device:.1f} CPU s need at least {floor:.2f} s of wall here "
              f"(measured {many['wall_s']:.2f} s; 1 device: {one['wall_s']:.2f} s)", flush=True)
        ratio = many["wall_s"] / one["wall_s"]
        print(f"devices={args.devices} wall_ratio={ratio:.2f} builds={report.builds} groups={len(report.groups)}")
        return 0 if report.builds == len(report.groups) else 1
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
