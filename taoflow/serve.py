"""`taoflow serve`: serve the train-ssd deployments so `prefect deployment run train-ssd/...` has a runner.

Without PREFECT_API_URL it first starts a local Prefect server on 127.0.0.1 (its database under the workspace) and
prints the URL to export in other shells. Deployments served here never sit "Late": this process is their runner.
For a shared server with GPU workers use `prefect deploy` with prefect.yaml and a process work pool (README).
"""

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from .errors import TaoflowError

REPO = Path(__file__).resolve().parent.parent

# deployment name -> parameters (the flow's defaults fill the rest)
DEPLOYMENTS = {
    "crpd": {"dataset_kind": "crpd", "spec_set": "crpd", "dataset_path": "workspace/raw/crpd"},
    "traffic": {"dataset_kind": "kitti", "spec_set": "traffic", "dataset_path": "workspace/raw/kitti"},
    "demo": {"dataset_kind": "crpd", "spec_set": "demo_cpu", "dataset_path": "workspace/raw/crpd_demo"},
}


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(api_url, timeout=90):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(f"{api_url}/health", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
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
    server = None
    if not os.environ.get("PREFECT_API_URL"):
        server, api = start_local_server(workspace, port)
        os.environ["PREFECT_API_URL"] = api
        print(f"started a local Prefect server: export PREFECT_API_URL={api}  (UI: {api[:-4]})", flush=True)
    sys.path.insert(0, str(REPO))
    from prefect import serve as prefect_serve

    from flows.deploy_ssd import deploy_ssd
    from flows.train_ssd import train_ssd
    chosen = names or list(DEPLOYMENTS)
    unknown = set(chosen) - set(DEPLOYMENTS)
    if unknown:
        raise TaoflowError(f"unknown deployment(s) {', '.join(sorted(unknown))}; choose from {', '.join(DEPLOYMENTS)}")
    ws = str(Path(workspace).resolve())
    deployments = []
    for name in chosen:
        params = dict(DEPLOYMENTS[name], workspace=ws)
        # default datasets live in the workspace: workspace/raw/<name>
        params["dataset_path"] = str(Path(ws) / Path(params["dataset_path"]).relative_to("workspace"))
        deployments.append(train_ssd.to_deployment(name=name, parameters=params, tags=["taoflow"]))
    # redeploying an existing export (or rolling a fleet forward after a failed rollout) needs no retraining;
    # export_dir, inventory and sample_images are given per run
    deployments.append(deploy_ssd.to_deployment(name="fleet", parameters={"workspace": ws}, tags=["taoflow"]))
    try:
        print("serving " + ", ".join(f"train-ssd/{n}" for n in chosen) + ", deploy-ssd/fleet; run one with "
              "`prefect deployment run 'train-ssd/demo' --watch`", flush=True)
        prefect_serve(*deployments)
    finally:
        if server is not None:
            server.terminate()
    return 0


def add_cli_arguments(parser):
    parser.add_argument("-w", "--workspace", default="workspace")
    parser.add_argument("--deployment", action="append", dest="names", help="serve only these (repeatable)")
    parser.add_argument("--port", type=int, default=None, help="port of the local Prefect server it starts")


def run_cli(args):
    return serve(args.workspace, args.names, args.port)
