"""`taoflow serve`: serve the train-ssd deployments so `prefect deployment run train-ssd/...` has a runner.

Without PREFECT_API_URL it first starts a local Prefect server on 127.0.0.1 (its database under the workspace) and
prints the URL to export in other shells. Deployments served here never sit "Late": this process is their runner.
For a shared server with GPU workers use `prefect deploy` with prefect.yaml and a process work pool (README).
Both offer the same deployments: the table is prefect.yaml (taoflow.deployments), its workspace moved to `-w`.
"""

import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

from .errors import TaoflowError

REPO = Path(__file__).resolve().parent.parent

ALWAYS = ("fleet",)  # served even when --deployment picks others: redeploying needs no retraining


def build_deployments(workspace="workspace", names=None):
    """The deployments `taoflow serve` offers: prefect.yaml's (taoflow.deployments.table), on `workspace`."""
    from . import deployments as D
    sys.path.insert(0, str(REPO))
    table = D.table(workspace)
    chosen = list(names) if names else list(table)
    unknown = set(chosen) - set(table)
    if unknown:
        raise TaoflowError(f"unknown deployment(s) {', '.join(sorted(unknown))}; choose from {', '.join(table)}")
    chosen += [n for n in ALWAYS if n in table and n not in chosen]
    return [D.load_flow(table[n]["entrypoint"]).to_deployment(
        name=n, parameters=table[n]["parameters"], tags=table[n]["tags"], description=table[n]["description"])
        for n in chosen]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def api_healthy(api_url, timeout=2.0):
    try:
        with urllib.request.urlopen(f"{api_url}/health", timeout=timeout) as r:
            return r.status == 200
    except OSError:
        return False


def wait_healthy(api_url, timeout=90):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if api_healthy(api_url):
            return
        time.sleep(0.5)
    raise TaoflowError(f"the Prefect server at {api_url} did not become healthy within {timeout} s")


def start_local_server(workspace, port=None):
    """A Prefect server on loopback with its own PREFECT_HOME; returns (process, api_url)."""
    port = port or free_port()
    home = Path(workspace).resolve() / "prefect"
    home.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, PREFECT_HOME=str(home), DO_NOT_TRACK="1", PREFECT_SERVER_ANALYTICS_ENABLED="false")
    env.pop("PREFECT_API_URL", None)
    log = open(home / "server.log", "ab")
    proc = subprocess.Popen([sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port",
                             str(port)], env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    api = f"http://127.0.0.1:{port}/api"
    try:
        wait_healthy(api)
    except TaoflowError:
        proc.terminate()
        raise
    return proc, api


def serve(workspace="workspace", names=None, port=None):
    """Serve the deployments until SIGINT or SIGTERM (exit 0), or until the Prefect server this command started
    dies (exit 1). On the way out, deployment schedules are paused (Prefect's default, so runs do not pile up
    Late while nobody serves them) only when the server still answers: a dead server would be asked forever."""
    server = None
    if not os.environ.get("PREFECT_API_URL"):
        server, api = start_local_server(workspace, port)
        os.environ["PREFECT_API_URL"] = api
        print(f"started a local Prefect server: export PREFECT_API_URL={api}  (UI: {api[:-4]})", flush=True)
    api = os.environ["PREFECT_API_URL"].rstrip("/")
    sys.path.insert(0, str(REPO))
    import asyncio

    deployments = build_deployments(workspace, names)
    runner = _runner(api)
    for deployment in deployments:
        runner.add_deployment(deployment)
    server_died = threading.Event()
    if server is not None:
        threading.Thread(target=_watch_server, args=(server, runner, server_died), name="prefect-server-watch",
                         daemon=True).start()
    previous_sigint = signal.signal(signal.SIGINT, runner.handle_sigint)
    try:
        print("serving " + ", ".join(f"{d.flow_name}/{d.name}" for d in deployments) + "; run one with "
              "`prefect deployment run 'train-ssd/demo' --watch`; stop with Ctrl-C", flush=True)
        asyncio.run(runner.start())
    except (KeyboardInterrupt, SystemExit):
        pass
    finally:
        signal.signal(signal.SIGINT, previous_sigint)
        if server is not None and server.poll() is None:
            server.terminate()
            try:
                server.wait(10)
            except subprocess.TimeoutExpired:
                server.kill()
    if server_died.is_set():
        print(f"error: the Prefect server this command started stopped (exit status {server.returncode}); see "
              f"{Path(workspace).resolve() / 'prefect' / 'server.log'}", file=sys.stderr, flush=True)
        return 1
    print("stopped", flush=True)
    return 0


def _runner(api):
    """Prefect's Runner, which first asks whether its server still answers before it pauses schedules on shutdown."""
    from prefect.runner import Runner

    class CheckedRunner(Runner):
        def check_server(self):
            if self.pause_on_shutdown and not api_healthy(api):
                self.pause_on_shutdown = False
                print(f"the Prefect server at {api} does not answer: deployment schedules are left as they are",
                      file=sys.stderr, flush=True)

        def handle_sigterm(self, *args, **kwargs):  # Prefect's own calls an async stop() it never awaits
            self.check_server()
            raise KeyboardInterrupt

        handle_sigint = handle_sigterm

    return CheckedRunner(pause_on_shutdown=True)


def _watch_server(server, runner, died):
    """Stop serving when the local Prefect server exits under us (killed, out of memory, its port taken)."""
    while server.poll() is None:
        time.sleep(1)
    died.set()
    runner.pause_on_shutdown = False
    os.kill(os.getpid(), signal.SIGTERM)


def add_cli_arguments(parser):
    parser.add_argument("-w", "--workspace", default="workspace")
    parser.add_argument("--deployment", action="append", dest="names", help="serve only these (repeatable)")
    parser.add_argument("--port", type=int, default=None, help="port of the local Prefect server it starts")


def run_cli(args):
    return serve(args.workspace, args.names, args.port)
