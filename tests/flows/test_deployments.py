"""Integration (slow): a real `prefect server start` on loopback, `taoflow serve` as the runner, and
`prefect deployment run 'train-ssd/demo' --watch` exactly as a user types it, with a tiny configuration."""

import contextlib
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from taoflow.serve import start_local_server

from .conftest import write_specs

pytestmark = pytest.mark.slow


def prefect(env, *args, timeout=120):
    return subprocess.run([sys.executable, "-m", "prefect", *args], env=env, capture_output=True, text=True,
                          timeout=timeout)


def test_deployment_run_watch_completes_with_artifacts(tmp_path, raw_crpd):
    server, api = start_local_server(tmp_path / "server")
    env = dict(os.environ, PREFECT_API_URL=api, PREFECT_HOME=str(tmp_path / "client"), DO_NOT_TRACK="1",
               PREFECT_SERVER_ANALYTICS_ENABLED="false", COLUMNS="400")  # wide enough that tables don't truncate
    runner = subprocess.Popen([sys.executable, "-m", "taoflow.cli", "serve", "-w", str(tmp_path / "ws"),
                               "--deployment", "demo"], env=env, start_new_session=True,
                              stdout=open(tmp_path / "serve.log", "w"), stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 120
        while "train-ssd/demo" not in prefect(env, "deployment", "ls").stdout:
            assert runner.poll() is None, (tmp_path / "serve.log").read_text()
            assert time.time() < deadline, "deployment never registered"
            time.sleep(1)
        train, retrain = write_specs(tmp_path / "specs")
        params = {"dataset_path": str(raw_crpd), "train_spec": str(train), "retrain_spec": str(retrain),
                  "map_floor": 0.0, "clearml": False}
        run = prefect(env, "deployment", "run", "train-ssd/demo", "--watch", "--params", json.dumps(params),
                      timeout=600)
        assert run.returncode == 0, run.stdout + run.stderr + (tmp_path / "serve.log").read_text()[-3000:]
        assert "Completed" in run.stdout
        artifacts = prefect(env, "artifact", "ls").stdout
        assert "train-ssd-report" in artifacts and "model-comparison" in artifacts
        assert list((tmp_path / "ws" / "store" / "export").glob("*/model.onnx"))

        # new data landing in the folder starts the deployment (taoflow watch), and only for new data
        watch = [sys.executable, "-m", "taoflow.cli", "watch", str(raw_crpd), "--deployment", "train-ssd/demo",
                 "--once", "--state", str(tmp_path / "watch.json"), *(f"--param={k}={json.dumps(v)}"
                                                                        for k, v in params.items())]
        first = subprocess.run(watch, env=env, capture_output=True, text=True, timeout=120)
        assert first.returncode == 0 and "started train-ssd/demo flow run" in first.stdout, first.stdout + first.stderr
        run_id = first.stdout.split()[-1]
        deadline = time.time() + 300
        while "COMPLETED" not in (state := prefect(env, "flow-run", "inspect", run_id).stdout.upper()):
            assert "FAILED" not in state and "CRASHED" not in state, state
            assert time.time() < deadline, state
            time.sleep(2)
        again = subprocess.run(watch, env=env, capture_output=True, text=True, timeout=120)
        assert again.returncode == 0 and "no new data" in again.stdout, again.stdout + again.stderr
    finally:
        for proc in (runner, server):
            with contextlib.suppress(ProcessLookupError):  # a runner that failed to start has exited already
                os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=30)
