"""`taoflow fleet deploy|status|rollback` and `taoflow device doctor`: thin wrappers over taoflow.deploy's functions.

Exit codes: 0 all well; 1 a device was unreachable or lacks something (the output says which); 2 bad input (the
inventory, an unknown device or version: one `error:` line from taoflow.cli). The deploy package is imported only
when a command runs, so `taoflow --help` stays fast.
"""

import json
import sys
import time


def _inventory_argument(parser):
    parser.add_argument("-i", "--inventory", required=True, metavar="FLEET_TOML",
                        help="fleet inventory (see specs/fleet.example.toml)")


def _table(rows, columns):
    widths = [max(len(c), *(len(str(r.get(c, ""))) for r in rows)) for c in columns]
    lines = ["  ".join(c.upper().ljust(w) for c, w in zip(columns, widths)).rstrip()]
    for row in rows:
        lines.append("  ".join(str(row.get(c, "")).ljust(w) for c, w in zip(columns, widths)).rstrip())
    return "\n".join(lines)


# --- fleet status ----------------------------------------------------------------------------------------------

def add_status_arguments(parser):
    _inventory_argument(parser)
    parser.add_argument("--model", help="only this model name")
    parser.add_argument("--device", action="append", help="only this device (repeatable)")
    parser.add_argument("--tag", action="append", help="only devices with this tag (repeatable: all must match)")
    parser.add_argument("--json", action="store_true", help="print the full status, passports included, as JSON")


def _live(service):
    """The detector service's heartbeat in a table cell: its version and live FPS, or why it is not live."""
    if not service:
        return "-"
    if service.get("status") == "stopped":
        return "stopped"
    age = service.get("age_s")
    stale = age is not None and age > 10
    text = f"{service.get('version')} {service.get('fps') or 0:.1f} FPS" + (f" (silent {age:.0f} s)" if stale else "")
    return text + (f", {service['dropped']} dropped" if service.get("dropped") else "")


def status_rows(status):
    """fleet_status() result -> table rows: one per device and model; unreachable devices get one error row."""
    from .report import passport_id

    rows = []
    for device in sorted(status):
        models = status[device]
        if isinstance(models, Exception):
            rows.append({"device": device, "model": "-", "current": "-", "error": f"unreachable: {models.reason}"})
            continue
        if not models:
            rows.append({"device": device, "model": "-", "current": "-", "error": "no models installed"})
        for name in sorted(models):
            state = models[name]
            current = next((v for v in state["versions"] if v["version"] == state["current"]), None)
            passport = (current or {}).get("passport") or {}
            activated = passport.get("activated_at")
            rows.append({
                "device": device, "model": name, "current": state["current"] or "(none)",
                "passport": passport_id(passport) or "-",
                "fps": (current or {}).get("fps") or "-",
                "activated": time.strftime("%Y-%m-%d %H:%M", time.localtime(activated)) if activated else "-",
                "versions": len(state["versions"]), "live": _live(state.get("service")),
                "error": "" if state["current"] else "no current version"})
    return rows


def run_status(args):
    from . import fleet_status, load_inventory

    fleet = load_inventory(args.inventory)
    devices = fleet.select(args.device, args.tag)
    status = fleet_status(devices, args.model, fleet.concurrency)
    failed = sum(isinstance(v, Exception) for v in status.values())
    if args.json:
        print(json.dumps({d: ({"error": str(v)} if isinstance(v, Exception) else v) for d, v in status.items()},
                         indent=2, sort_keys=True))
    else:
        print(_table(status_rows(status), ("device", "model", "current", "passport", "fps", "activated", "versions",
                                           "live", "error")))
    if failed:
        print(f"{failed} of {len(status)} devices unreachable", file=sys.stderr)
    return 1 if failed else 0


# --- fleet deploy ----------------------------------------------------------------------------------------------

def add_deploy_arguments(parser):
    _inventory_argument(parser)
    parser.add_argument("--export", required=True, metavar="DIR",
                        help="export directory (model.onnx or model.etlt + model.json): workspace/store/export/<key>")
    parser.add_argument("--samples", required=True, metavar="DIR",
                        help="images to smoke-test on (e.g. the validation images); the host's detections on them "
                             "become the expected results")
    parser.add_argument("--package", metavar="DIR", help="where to write the model package (default: a temp dir)")
    parser.add_argument("--passport", metavar="JSON", help="the pipeline's passport.json to ship with the model")
    parser.add_argument("--name", default="ssd", help="model name on the devices (default: ssd)")
    parser.add_argument("--device", action="append", help="only this device (repeatable)")
    parser.add_argument("--tag", action="append", help="only devices with this tag (repeatable: all must match)")
    parser.add_argument("--wave-size", type=int, default=None, help="devices per wave (default: the concurrency)")
    parser.add_argument("--abort-threshold", type=float, default=0.25,
                        help="fraction of a wave that may fail before the rollout stops and rolls back (0.25)")
    parser.add_argument("--json", action="store_true", help="print the rollout report as JSON")
    parser.epilog = ("A .etlt model is built on each group's canary with tao-converter; its key is read from "
                     "$TAO_MODEL_KEY and sent to the device on stdin, never on a command line.")


def _progress(event):
    fields = " ".join(f"{k}={v}" for k, v in event.items() if k not in ("event", "passport") and v is not None)
    print(f"[{time.strftime('%H:%M:%S')}] {event['event']:<12} {fields}", file=sys.stderr, flush=True)


def run_deploy(args):
    import os
    import tempfile
    from pathlib import Path

    from . import DeployError, load_inventory
    from .package_builder import build_package
    from .rollout import rollout

    fleet = load_inventory(args.inventory)
    devices = fleet.select(args.device, args.tag)
    if not devices:
        raise DeployError(f"no device in {args.inventory} matches --device {args.device} --tag {args.tag}")
    passport = None
    if args.passport:
        try:
            passport = json.loads(Path(args.passport).read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise DeployError(f"cannot read the passport {args.passport}: {e}") from None
    with tempfile.TemporaryDirectory(prefix="taoflow-package-") as tmp:
        dest = Path(args.package) if args.package else Path(tmp) / "package"
        print(f"packaging {args.export} with samples from {args.samples} -> {dest}", file=sys.stderr, flush=True)
        package = build_package(args.export, dest, args.samples, passport=passport)
        report = rollout(devices, package, name=args.name, wave_size=args.wave_size,
                         abort_threshold=args.abort_threshold, concurrency=fleet.concurrency, keep=fleet.keep,
                         etlt_key=os.environ.get("TAO_MODEL_KEY") or None, on_event=_progress)
    if args.json:
        print(json.dumps(report.to_dict(), indent=2, sort_keys=True, default=str))
    else:
        print(_table(report.table(), ("device", "group", "role", "wave", "previous", "current", "fps", "status",
                                      "error")))
        print(report.summary())
    return 0 if report.ok else 1


# --- fleet rollback --------------------------------------------------------------------------------------------

def add_rollback_arguments(parser):
    _inventory_argument(parser)
    parser.add_argument("--device", required=True, help="device name in the inventory")
    parser.add_argument("--model", help="model name (default: the device's only model)")
    parser.add_argument("--to", metavar="VERSION", help="version to switch to (default: the one before current)")


def run_rollback(args):
    from . import DeployError, astatus, load_inventory, rollback_device
    from .fleet import run_sync

    device = load_inventory(args.inventory).select([args.device])[0]
    name = args.model
    if name is None:
        models = sorted(run_sync(astatus(device)))
        if len(models) != 1:
            raise DeployError(f"the device has {len(models)} models ({', '.join(models) or 'none'}): "
                              f"choose one with --model", device.name)
        name = models[0]
    result = rollback_device(device, name, args.to)
    print(f"{device.name} {name}: current {result['rolled_back_from']} -> {result['current']}")
    return 0


# --- device doctor ---------------------------------------------------------------------------------------------

def add_doctor_arguments(parser):
    parser.add_argument("target", metavar="HOST_OR_DEVICE", help="a device name or host of the inventory")
    _inventory_argument(parser)
    parser.add_argument("--json", action="store_true", help="print the raw probe report as JSON")


def find_device(fleet, target):
    """The inventory device named `target`, or the one at host `target` (host:port when several share a host)."""
    from .errors import InventoryError

    if target in fleet.by_name:
        return fleet.by_name[target]
    matches = [d for d in fleet.devices if target in (d.host, d.address)]
    if len(matches) == 1:
        return matches[0]
    if matches:
        raise InventoryError(f"{len(matches)} devices at {target} ({', '.join(d.name for d in matches)}): give the "
                             f"device name or host:port", path=fleet.path)
    raise InventoryError(f"no device named or at {target!r} in the inventory (a host must be listed there with its "
                         f"trusted host key before taoflow connects to it)", path=fleet.path)


def run_doctor(args):
    from . import aprobe, load_inventory
    from .doctor import diagnose, verdict
    from .fleet import run_sync

    fleet = load_inventory(args.inventory)
    device = find_device(fleet, args.target)
    probe = run_sync(aprobe(device, imports=True))
    if args.json:
        print(json.dumps(probe, indent=2, sort_keys=True))
    checks = diagnose(probe)
    code, lines = verdict(probe, checks)
    print(f"{device.name} ({device.user}@{device.address}, root {device.device_root})")
    rows = [{"state": c.state, "item": c.item, "found": c.found, "advice": c.advice} for c in checks]
    print(_table(rows, ("state", "item", "found", "advice")))
    for line in lines:
        print(line)
    return code


# --- device detect ---------------------------------------------------------------------------------------------

def add_detect_arguments(parser):
    parser.add_argument("target", metavar="HOST_OR_DEVICE", help="a device name or host of the inventory")
    _inventory_argument(parser)
    parser.add_argument("--model", required=True, help="model name (its `current` version runs)")
    parser.add_argument("--version", help="an installed version instead of `current`")
    parser.add_argument("--source", required=True, help="on the device: a video file, an image folder, /dev/videoN, "
                                                        "a GStreamer pipeline (CSI camera) or an rtsp:// URL")
    parser.add_argument("--video-out", help="annotated video on the device (.avi or .mp4)")
    parser.add_argument("--jsonl", help="one JSON line per frame, on the device")
    parser.add_argument("--kitti-dir", help="KITTI label files per frame, on the device")
    parser.add_argument("--max-frames", type=int)
    parser.add_argument("--seconds", type=float, help="stop after this long (cameras and streams run until then)")
    parser.add_argument("--threshold", type=float, default=0.3, help="minimum confidence kept (default 0.3)")
    parser.add_argument("--json", action="store_true", help="print the agent's result as JSON")
    parser.epilog = ("Cameras and streams never end by themselves: give --seconds or --max-frames (the inventory's "
                     "command_timeout is the hard limit).")


def run_detect(args):
    from . import load_inventory
    from .fleet import detect

    fleet = load_inventory(args.inventory)
    device = find_device(fleet, args.target)
    result = detect(device, args.model, args.source, version=args.version, video_out=args.video_out,
                    jsonl=args.jsonl, kitti_dir=args.kitti_dir, max_frames=args.max_frames, seconds=args.seconds,
                    threshold=args.threshold)
    if args.json:
        print(json.dumps(result, indent=2, sort_keys=True))
        return 0
    ms = result["ms_per_frame"]
    print(f"{device.name} {args.model} {result['version']} ({result.get('runtime')}): {result['frames']} frames at "
          f"{result['fps']} FPS; per frame {ms['pre']} ms pre-processing, {ms['infer']} ms inference, "
          f"{ms['post']} ms post-processing, {ms['total']} ms wall"
          + (" (the stages overlap, so they can add up to more than the wall time)" if result.get("stages_overlap")
             else ""))
    for kind, path in sorted((result.get("outputs") or {}).items()):
        if path:
            print(f"  {kind}: {device.name}:{path}")
    return 0


# --- fleet service ---------------------------------------------------------------------------------------------

SERVICE_COLUMNS = ("device", "model", "mode", "state", "pid", "version", "fps", "frames", "dropped", "restarts",
                   "error")


def add_service_arguments(parser):
    sub = parser.add_subparsers(dest="service_command", metavar="COMMAND", required=True)
    helps = {"install": "write and start the detector service (detect --serve) on each device",
             "status": "its state, pid, restarts and heartbeat (version, live FPS, frames, dropped, last error)",
             "stop": "stop it (a systemd unit is disabled too: it does not start at boot until installed again)",
             "logs": "the last lines of its journal (systemd) or log file (taoflow's supervisor)"}
    for command, help_text in helps.items():
        p = sub.add_parser(command, help=help_text, description=help_text)
        _inventory_argument(p)
        p.add_argument("--model", help="model name (install: default the device's only model; others: every "
                                       "service on the device)")
        p.add_argument("--device", action="append", help="only this device (repeatable)")
        p.add_argument("--tag", action="append", help="only devices with this tag (repeatable: all must match)")
        if command != "logs":
            p.add_argument("--json", action="store_true", help="print the agents' results as JSON")
    install = sub.choices["install"]
    install.add_argument("--source", required=True, help="on the device: a video file, an image folder, /dev/videoN, "
                                                         "a GStreamer pipeline (CSI camera) or an rtsp:// URL")
    install.add_argument("--jsonl", help="one JSON line per frame, appended to this file on the device")
    install.add_argument("--loop", action="store_true", help="start a video file again at its end")
    install.add_argument("--threshold", type=float, default=0.3, help="minimum confidence kept (default 0.3)")
    install.add_argument("--runtime", choices=("auto", "tensorrt", "onnxruntime"), default="auto",
                         help="auto: the TensorRT engine where there is one, else ONNX Runtime")
    install.epilog = ("The inventory's service_mode says how it runs: auto (a systemd user unit with lingering; a "
                      "system unit for root; taoflow's own supervisor process where systemd does not run), user, "
                      "system (sudo -n) or supervisor. It follows the model's `current` version: deploys swap the "
                      "model in the running service.")
    sub.choices["logs"].add_argument("--lines", type=int, default=100, help="last lines per service (default 100)")


def run_service(args):
    from . import DeployError, load_inventory
    from . import service

    fleet = load_inventory(args.inventory)
    devices = fleet.select(args.device, args.tag)
    if not devices:
        raise DeployError(f"no device in {args.inventory} matches --device {args.device} --tag {args.tag}")
    if args.service_command == "logs":
        return _print_logs(service.logs(devices, args.model, args.lines, fleet.concurrency))
    if args.service_command == "install":
        if not 0 <= args.threshold <= 1:
            raise DeployError(f"--threshold must be in [0, 1], not {args.threshold}")
        results = service.install(devices, args.source, fleet.concurrency, name=args.model, jsonl=args.jsonl,
                                  loop=args.loop, threshold=args.threshold, runtime=args.runtime)
    else:
        results = getattr(service, args.service_command)(devices, args.model, fleet.concurrency)
    if args.json:
        print(json.dumps({d: ({"error": str(r)} if isinstance(r, Exception) else r) for d, r in results.items()},
                         indent=2, sort_keys=True))
    else:
        print(_table(service.rows(results), SERVICE_COLUMNS))
    failed = [d for d, r in results.items() if isinstance(r, Exception)]
    states = [s for r in results.values() if not isinstance(r, Exception) for s in r["services"].values()]
    if args.service_command == "install":
        for device, result in sorted(results.items()):
            for name, s in sorted(({} if isinstance(result, Exception) else result["services"]).items()):
                print(f"{device} {name}: {s.get('mode')}: {s.get('why')}", file=sys.stderr)
                if not s.get("live"):
                    for line in s.get("log_tail") or []:
                        print(f"  {device} {name} log: {line}", file=sys.stderr)
        trouble = [s for s in states if not s.get("live")]
    elif args.service_command == "status":
        trouble = [s for s in states if s["state"] in service.TROUBLE]
    else:  # stop: whatever state a service ends in, it must not be running any more
        trouble = [s for s in states if s["state"] in ("running", "starting", "restarting", "stopping", "unknown")]
    if failed:
        print(f"{len(failed)} of {len(results)} devices failed: {', '.join(sorted(failed))}", file=sys.stderr)
    return 1 if failed or trouble else 0


def _print_logs(results):
    failed = 0
    for device in sorted(results):
        result = results[device]
        if isinstance(result, Exception):
            failed += 1
            print(f"==> {device}: {getattr(result, 'reason', result)}", file=sys.stderr)
            continue
        if not result["services"]:
            print(f"==> {device}: no detector service installed", file=sys.stderr)
        for name, entry in sorted(result["services"].items()):
            kind = {"supervisor": "supervisor log", None: "no service"}.get(entry.get("mode"), "journal")
            print(f"==> {device} {name} ({kind}) <==")
            if entry.get("note"):
                print(f"note: {entry['note']}")
            if entry.get("truncated"):
                print("(older lines cut: the reply's size limit)")
            for line in entry["lines"]:
                print(line)
    return 1 if failed else 0
