#!/usr/bin/env python3
"""taoflow device agent: shipped to <device root>/agent/ on every deploy and run over SSH, one command per call.

  probe                                   what the device has (L4T, TensorRT, CUDA, plugins, memory, ...)
  build    --name N --version V           build the engine (or verify the ONNX Runtime model) in staging
  smoke    --name N --version V           run samples/, compare with expected.json, measure FPS -> smoke.json
           [--activate [--keep K]]        ... and, when it passed, activate in the same call (saves a start-up)
  activate --name N --version V [--keep]  staging -> models/N/V, switch models/N/current atomically
           [--rollout T]                  ... unless the host has fenced rollout T (smoke --activate too)
  rollback --name N [--to V]              switch current back to the previous (or the given) version
  revert   --name N --version V           undo V's activation if V is current (aborted rollout)
           [--fence T]                    ... after fencing rollout T: no later activation of T switches
  status   [--name N]                     installed versions, passports and current
  detect   --name N --source S [...]      run the current model on a video, images, a camera or a stream
  discard  --name N --version V           remove a staged version that will not be activated
  service-install --source S [--name N]   install and start the detector service (detect --serve): a systemd
           [--mode M] [--wait SECONDS]    unit, or where systemd does not run, this agent's own supervisor
  service-status [--name N]               its state, pid, restarts and heartbeat
  service-stop   [--name N]               stop it (and disable its unit)
  service-logs   [--name N] [--lines K]   the last lines of its journal or log
  service-supervise --name N              the fallback supervisor itself (started by service-install)

Every command prints exactly one JSON object on stdout: {"ok": true, "result": ...} or {"ok": false, "error":
..., "details": ...}, both with "cpu_s" (the command's CPU seconds), exit status 0 or 1 (2 for an agent bug).
Python 3.6 compatible (JetPack 4.6); stdlib, numpy, OpenCV and tensorrt+pycuda or onnxruntime only; nothing from
the host's taoflow package.
"""

import argparse
import json
import os
import resource
import sys
import traceback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
# The agent's numpy/OpenCV work (small images, NMS) gains nothing from thread pools, while OpenBLAS and OpenMP
# start one spinning thread per core at import: measured ~2.3 CPU s per command on a 16-core host against 0.2 s
# with one thread, at the same wall time. That CPU belongs to the device's live application. Set before numpy and
# cv2 are imported; an operator's own setting wins. ONNX Runtime's and TensorRT's own threads are not affected.
for _name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ.setdefault(_name, "1")

import agent_common  # noqa: E402
from agent_common import AgentError  # noqa: E402

AGENT_PROTOCOL = 1


def _package(args):
    import agent_store
    if args.package:
        return os.path.abspath(args.package)
    if not (args.name and args.version):
        raise AgentError("give --package DIR or --name and --version of a staged package")
    path = agent_store.staging_dir(args.root, args.name, args.version)
    if not os.path.isdir(path):
        raise AgentError("{} {} is not staged (no {})".format(args.name, args.version, path))
    return path


def run(args):
    if args.command == "probe":
        import agent_probe
        return agent_probe.probe(args.root, args.imports)
    if args.command == "build":
        import agent_build
        return agent_build.build(args.root, _package(args), args.runtime, args.max_batch, args.workspace_mb,
                                 args.timeout, args.lock_wait)
    if args.command == "smoke":
        return _smoke(args)
    if args.command == "detect":
        import agent_detect
        if args.serve:
            return agent_detect.serve(args.root, args.name, args.source, args.jsonl, args.threshold, args.runtime,
                                      args.loop, args.max_frames, args.seconds)
        return agent_detect.detect(args.root, args.name, args.source, args.version, args.video_out, args.jsonl,
                                   args.kitti_dir, args.max_frames, args.seconds, args.threshold, args.runtime)
    if args.command.startswith("service-"):
        return _service(args)
    import agent_store
    if args.command == "activate":
        return agent_store.activate(args.root, args.name, args.version, args.keep, args.wave, args.rollout)
    if args.command == "rollback":
        return agent_store.rollback(args.root, args.name, args.to)
    if args.command == "discard":
        return agent_store.discard(args.root, args.name, args.version)
    if args.command == "revert":
        return agent_store.revert(args.root, args.name, args.version, args.fence)
    return agent_store.status(args.root, args.name)


def _service(args):
    import agent_service
    if args.command == "service-install":
        return agent_service.install(args.root, args.name, args.source, args.jsonl, args.threshold, args.runtime,
                                     args.loop, args.mode, args.wait)
    if args.command == "service-status":
        return agent_service.status(args.root, args.name)
    if args.command == "service-stop":
        return agent_service.stop(args.root, args.name)
    if args.command == "service-logs":
        return agent_service.logs(args.root, args.name, args.lines)
    return agent_service.supervise(args.root, args.name)


def _smoke(args):
    import agent_smoke
    import agent_store
    if not args.activate:
        return agent_smoke.smoke(args.root, _package(args), args.runtime, args.iterations)
    if not (args.name and args.version):
        raise AgentError("--activate needs --name and --version")
    if not os.path.isdir(agent_store.staging_dir(args.root, args.name, args.version)):
        # A retry whose first reply was lost: that call passed its smoke test and moved staging into models/.
        # activate() re-checks the installed copy's smoke.json and switches again (a no-op if it is current).
        record = agent_store.installed_smoke(args.root, args.name, args.version)
    else:
        record = agent_smoke.smoke(args.root, _package(args), args.runtime, args.iterations)
    record["activated"] = agent_store.activate(args.root, args.name, args.version, args.keep, args.wave,
                                               args.rollout)
    return record


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # usage errors are answered in JSON like everything else
        raise AgentError("usage: {}".format(message))


def build_parser():
    here = os.path.dirname(os.path.abspath(__file__))
    if os.path.isfile(here):  # run as <root>/agent/taoflow_agent.pyz (the zip application the host ships)
        here = os.path.dirname(here)
    default_root = os.path.dirname(here)
    parser = _Parser(prog="taoflow_agent", description="taoflow device agent")
    parser.add_argument("--root", default=default_root, help="device root (default: the agent's parent dir)")
    sub = parser.add_subparsers(dest="command")
    sub.required = True  # Python 3.6 has no required= on add_subparsers
    sub.add_parser("probe").add_argument("--imports", action="store_true",
                                         help="import each Python module (slower): report the ones that fail")
    for name in ("build", "smoke"):
        p = sub.add_parser(name)
        p.add_argument("--package", help="package directory (default: staging/<name>/<version>)")
        p.add_argument("--name")
        p.add_argument("--version")
        p.add_argument("--runtime", choices=("auto", "tensorrt", "onnxruntime"), default="auto")
    build, smoke = sub.choices["build"], sub.choices["smoke"]
    build.add_argument("--max-batch", type=int, default=1)
    build.add_argument("--workspace-mb", type=int, default=None)
    build.add_argument("--timeout", type=float, default=3600.0, help="seconds before the build tool is killed")
    build.add_argument("--lock-wait", type=float, default=0.0, help="seconds to wait for another build")
    smoke.add_argument("--iterations", type=int, default=20)
    smoke.add_argument("--activate", action="store_true", help="activate the version if its smoke test passed")
    smoke.add_argument("--keep", type=int, default=3, help="with --activate: versions kept (at least 2)")
    smoke.add_argument("--wave", type=int, default=None)
    smoke.add_argument("--rollout", default=None, help="with --activate: the host's rollout token")
    for name in ("activate", "discard", "revert"):
        p = sub.add_parser(name)
        p.add_argument("--name", required=True)
        p.add_argument("--version", required=True)
    sub.choices["activate"].add_argument("--keep", type=int, default=3, help="versions kept (at least 2)")
    sub.choices["activate"].add_argument("--wave", type=int, default=None)
    sub.choices["activate"].add_argument("--rollout", default=None, help="the host's rollout token")
    sub.choices["revert"].add_argument("--fence", default=None, help="rollout token no activation may use again")
    p = sub.add_parser("rollback")
    p.add_argument("--name", required=True)
    p.add_argument("--to", default=None, help="version to switch to (default: the previous one)")
    p = sub.add_parser("detect")
    p.add_argument("--name", required=True)
    p.add_argument("--version", default=None, help="an installed version (default: current)")
    p.add_argument("--source", required=True,
                   help="video file, image folder, /dev/videoN, a GStreamer pipeline (CSI camera) or rtsp:// URL")
    p.add_argument("--video-out", default=None, help="annotated video (.avi MJPG or .mp4)")
    p.add_argument("--jsonl", default=None, help="one JSON line per frame")
    p.add_argument("--kitti-dir", default=None, help="KITTI label files per frame")
    p.add_argument("--max-frames", type=int, default=None)
    p.add_argument("--seconds", type=float, default=None, help="stop after this long (cameras, streams)")
    p.add_argument("--threshold", type=float, default=0.3, help="minimum confidence kept")
    p.add_argument("--runtime", choices=("auto", "tensorrt", "onnxruntime"), default="auto")
    p.add_argument("--serve", action="store_true",
                   help="run as the detector service: follow `current` with hot swaps, write a heartbeat")
    p.add_argument("--loop", action="store_true", help="with --serve: start a video file again at its end")
    p = sub.add_parser("status")
    p.add_argument("--name", default=None)
    _service_parsers(sub)
    return parser


def _service_parsers(sub):
    p = sub.add_parser("service-install")
    p.add_argument("--name", default=None, help="model name (default: the device's only model)")
    p.add_argument("--source", required=True, help="what detect --serve reads (see detect)")
    p.add_argument("--jsonl", default=None, help="one JSON line per frame, appended")
    p.add_argument("--threshold", type=float, default=0.3, help="minimum confidence kept")
    p.add_argument("--runtime", choices=("auto", "tensorrt", "onnxruntime"), default="auto")
    p.add_argument("--loop", action="store_true", help="start a video file again at its end")
    p.add_argument("--mode", choices=("auto", "user", "system", "supervisor"), default="auto",
                   help="systemd user or system unit, or the agent's own supervisor (auto: see agent_service)")
    p.add_argument("--wait", type=float, default=60.0, help="seconds to wait for the service's first heartbeat")
    for name in ("service-status", "service-stop", "service-logs"):
        sub.add_parser(name).add_argument("--name", default=None, help="one model (default: every service)")
    sub.choices["service-logs"].add_argument("--lines", type=int, default=100)
    sub.add_parser("service-supervise").add_argument("--name", required=True)


def cpu_seconds():
    """CPU time of this agent run, build tools (trtexec, tao-converter) included: what the command cost the
    device, reported with every reply so a deploy log shows where a Nano's time went."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return round(own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime, 3)


def main(argv=None):
    # Native libraries (TensorRT's logger, CUDA) may print on fd 1; the JSON must be the only thing there.
    json_out = os.fdopen(os.dup(1), "w")
    agent_common.REPLY_FD = json_out.fileno()
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    code, args = 0, argparse.Namespace(command=None)
    try:
        args = build_parser().parse_args(argv)
        args.root = os.path.abspath(args.root)
        reply = {"ok": True, "command": args.command, "protocol": AGENT_PROTOCOL, "result": run(args)}
    except AgentError as e:
        reply = {"ok": False, "command": args.command, "protocol": AGENT_PROTOCOL, "error": str(e),
                 "details": e.details}
        code = 1
    except EnvironmentError as e:  # disk full, permissions, a vanished file: the device's state, not a bug
        where = " ({})".format(e.filename) if getattr(e, "filename", None) else ""
        reply = {"ok": False, "command": args.command, "protocol": AGENT_PROTOCOL,
                 "error": "{}{}".format(e.strerror or e, where), "details": {"errno": e.errno}}
        code = 1
    except Exception as e:  # an agent bug: still one JSON object, with the traceback for the report
        reply = {"ok": False, "command": args.command, "protocol": AGENT_PROTOCOL,
                 "error": "agent error: {}: {}".format(type(e).__name__, e), "traceback": traceback.format_exc()}
        code = 2
    reply["cpu_s"] = cpu_seconds()
    json_out.write(json.dumps(reply, sort_keys=True) + "\n")
    json_out.flush()
    return code


if __name__ == "__main__":
    sys.exit(main())
