"""Integration (slow): a real `prefect server start` on loopback, `taoflow serve` as the runner, and
`prefect deployment run 'train-ssd/demo' --watch` exactly as a user types it, with a tiny configuration."""

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
    finally:
        os.killpg(runner.pid, signal.SIGTERM)
        runner.wait(timeout=30)
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
