"""`taoflow watch`: start a deployment (e.g. train-ssd/crpd) when new data lands in a dataset folder.

Polls the folder's listing (relative path, size, mtime of every file; contents are hashed later, by the flow's
convert stage) and, once it has changed and then stayed unchanged for `--settle` seconds (a copy in progress must
finish first), creates a flow run of the deployment with `dataset_path` set to the folder. The flow re-converts only
the new or changed images and reuses everything else, so a spurious trigger costs seconds.

The listing that last triggered a run is kept in a state file (--state; default
~/.cache/taoflow/watch-<digest of folder and deployment>.json, never inside the user's dataset), so a restarted
watcher does not trigger again for data it has already handed over. For event-driven triggers on a shared server,
a Prefect automation can run the same deployment on a custom event instead (README).
"""

import hashlib
import json
import os
import sys
import time
from pathlib import Path

from .errors import TaoflowError
from .fsutil import write_text_atomic


def listing(folder):
    """{relative path: [size, mtime_ns]} of every file under `folder` (dot files skipped: editors' temp files)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise TaoflowError(f"dataset folder {folder} not found")
    found = {}
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in files:
            if name.startswith("."):
                continue
            path = Path(root, name)
            try:
                st = path.stat()
            except FileNotFoundError:  # removed while we walked: the next poll sees the settled state
                continue
            found[path.relative_to(folder).as_posix()] = [st.st_size, st.st_mtime_ns]
    return found


def fingerprint(entries):
    return hashlib.sha256(json.dumps(entries, sort_keys=True).encode()).hexdigest()


def changes(before, after):
    """(added, changed, removed) counts between two listings."""
    added = sum(1 for k in after if k not in before)
    removed = sum(1 for k in before if k not in after)
    changed = sum(1 for k in after if k in before and before[k] != after[k])
    return added, changed, removed


class Watcher:
    """Decides when to trigger: pure logic over successive listings, so it is testable without a clock."""

    def __init__(self, last_triggered, settle):
        self.last_triggered = last_triggered  # fingerprint handed to the last run (None: never)
        self.settle = settle
        self.pending = None  # (fingerprint, first seen at)

    def observe(self, fp, now):
        """True when `fp` differs from what last triggered and has been stable for `settle` seconds."""
        if fp == self.last_triggered:
            self.pending = None
            return False
        if self.pending is None or self.pending[0] != fp:
            self.pending = (fp, now)
        return now - self.pending[1] >= self.settle


def default_state_file(folder, deployment):
    key = hashlib.sha256(f"{Path(folder).resolve()}\0{deployment}".encode()).hexdigest()[:16]
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "taoflow" / f"watch-{key}.json"


def trigger(deployment, parameters):
    """Create a flow run of `deployment` (needs PREFECT_API_URL and something serving it); returns its id."""
    from prefect.deployments import run_deployment
    run = run_deployment(deployment, parameters=parameters, timeout=0, tags=["taoflow-watch"])
    return str(run.id)


def watch(folder, deployment, interval=60.0, settle=30.0, state_file=None, once=False, parameters=None,
          start=trigger, clock=time.monotonic, sleep=time.sleep, out=sys.stdout):
    folder = Path(folder).resolve()
    state_file = Path(state_file) if state_file else default_state_file(folder, deployment)
    state = json.loads(state_file.read_text()) if state_file.is_file() else {}
    watcher = Watcher(state.get("fingerprint"), 0.0 if once else settle)
    previous = state.get("listing", {})
    params = dict(parameters or {}, dataset_path=str(folder))
    print(f"watching {folder} for {deployment} (every {interval:g} s, settle {settle:g} s)", file=out, flush=True)
    while True:
        entries = listing(folder)
        fp = fingerprint(entries)
        if watcher.observe(fp, clock()):
            added, changed, removed = changes(previous, entries)
            run_id = start(deployment, params)
            print(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {added} added, {changed} changed, {removed} removed: "
                  f"started {deployment} flow run {run_id}", file=out, flush=True)
            state_file.parent.mkdir(parents=True, exist_ok=True)
            write_text_atomic(state_file, json.dumps({"fingerprint": fp, "listing": entries, "flow_run": run_id}))
            watcher.last_triggered, previous = fp, entries
        elif once:
            print("no new data since the last run", file=out, flush=True)
        if once:
            return 0
        sleep(interval)


def add_cli_arguments(parser):
    parser.add_argument("folder", help="the dataset folder the deployment reads (its dataset_path)")
    parser.add_argument("--deployment", required=True, help="e.g. train-ssd/crpd (served by `taoflow serve` or a "
                                                            "worker)")
    parser.add_argument("--interval", type=float, default=60.0, help="seconds between polls (60)")
    parser.add_argument("--settle", type=float, default=30.0,
                        help="seconds the folder must stay unchanged before a run starts (30)")
    parser.add_argument("--param", action="append", default=[], metavar="NAME=JSON",
                        help="another flow parameter, e.g. --param map_floor=0.9 (repeatable)")
    parser.add_argument("--state", help="where the last triggering listing is kept")
    parser.add_argument("--once", action="store_true", help="check once, start a run if the data changed, exit")


def run_cli(args):
    flow, sep, name = args.deployment.partition("/")
    if not (flow and sep and name) or "/" in name:
        raise TaoflowError(f"--deployment {args.deployment!r}: expected FLOW/DEPLOYMENT, e.g. train-ssd/crpd")
    if not (args.interval > 0 and args.settle >= 0):  # also refuses NaN
        raise TaoflowError(f"--interval must be > 0 and --settle >= 0, got {args.interval:g} and {args.settle:g}")
    if not os.environ.get("PREFECT_API_URL"):
        raise TaoflowError("PREFECT_API_URL is not set: point it at the Prefect server that serves "
                           f"{args.deployment} (`taoflow serve` prints it)")
    params = {}
    for item in args.param:
        name, sep, value = item.partition("=")
        if not sep:
            raise TaoflowError(f"--param {item!r}: expected NAME=VALUE")
        try:
            params[name] = json.loads(value)
        except ValueError:
            params[name] = value  # a plain string needs no JSON quotes
    return watch(args.folder, args.deployment, args.interval, args.settle, args.state, args.once, params)
