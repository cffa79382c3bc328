"""Nothing secret in the store, ever: a pipeline stage run through the TAO backend (the real `tao` launcher,
TAO_DOCKER_DISABLE=1) with ClearML credentials in the environment hands them to the launcher in a private mounts file
outside the workspace, deleted after the step, and writes them nowhere in the store."""

import json
import os
import shlex
import sys
from pathlib import Path

import pytest

from taoflow import pipeline as P
from taoflow.backends.tao import MASK, TAO5, TaoConfig
from taoflow.backends.tao.flow_executor import TaoFlowExecutor
from taoflow.spec import load_experiment, render, rewrite_paths
from taoflow.store import Store

from .conftest import HERE, SPECS, minimal_path, write_executable

pytestmark = pytest.mark.slow
ACCESS = "CLEARMLACCESS0123456789XYZ"
SECRET = "clearml-secret-Zq81vB2x0LmN44"


@pytest.fixture
def bin_dir(tmp_path):
    """`ssd` = the stand-in, behind a wrapper that copies the mounts file the launcher was given (outside the
    workspace, for the test to inspect) before running it."""
    d = tmp_path / "bin"
    write_executable(d / "ssd-standin", f"#!{sys.executable}\n{(HERE / 'standin_ssd.py').read_text()}")
    seen = tmp_path / "seen-mounts"
    write_executable(d / "ssd", f"""#!/bin/sh
cp "$LAUNCHER_MOUNTS" {shlex.quote(str(seen))}.json
printf '%s\\n' "$LAUNCHER_MOUNTS" > {shlex.quote(str(seen))}.path
exec {shlex.quote(str(d / 'ssd-standin'))} "$@"
""")
    return d, seen


def test_clearml_credentials_never_reach_the_store(tao_launchers, bin_dir, tmp_path, home, monkeypatch):
    bindir, seen = bin_dir
    private_tmp = tmp_path / "tmpdir"
    private_tmp.mkdir()
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{minimal_path()}")
    monkeypatch.setenv("TMPDIR", str(private_tmp))
    monkeypatch.setattr("tempfile.tempdir", None)  # re-read TMPDIR
    monkeypatch.setenv("CLEARML_API_ACCESS_KEY", ACCESS)
    monkeypatch.setenv("CLEARML_API_SECRET_KEY", SECRET)
    monkeypatch.setenv("CLEARML_API_HOST", "https://clearml.example")
    monkeypatch.setenv("STANDIN_GENERATION", TAO5)

    # a trained model as the train stage leaves it: its rendered spec (absolute paths) and a checkpoint
    data_root = tmp_path / "data"
    for sub in ("crpd/split/training/image", "crpd/split/val/image", "crpd/split/val/label", "crpd/tfrecords"):
        (data_root / sub).mkdir(parents=True)
    trained_dir = tmp_path / "trained"
    (trained_dir / "results/weights").mkdir(parents=True)
    (trained_dir / "results/weights/ssd_resnet18_epoch_002.hdf5").write_bytes(b"weights")
    raw = load_experiment(SPECS / "ssd_retrain_resnet18_crpd.txt", task="any").raw
    (trained_dir / "experiment_spec.txt").write_text(render(rewrite_paths(raw, lambda _f, v: str(data_root / v))))
    trained = P.StageResult("retrain", "0" * 24, str(trained_dir), True, 0.0,
                            {"checkpoint": "results/weights/ssd_resnet18_epoch_002.hdf5"})

    workspace = tmp_path / "ws"
    store = Store(workspace)
    cfg = P.RunConfig(workspace=str(workspace), export_precision="fp16")
    executor = TaoFlowExecutor(TaoConfig(launcher=tao_launchers[TAO5], docker_disabled=True, preflight=False))
    export = P.stage_export(store, cfg, trained, executor)
    assert Path(export.path, "model.onnx").is_file() and not export.cached

    # the launcher got the credentials (docker would pass Envs as -e NAME=value) in a file outside the workspace ...
    given = json.loads(seen.with_suffix(".json").read_text())
    assert {"variable": "CLEARML_API_SECRET_KEY", "value": SECRET} in given["Envs"]
    assert {"variable": "CLEARML_API_ACCESS_KEY", "value": ACCESS} in given["Envs"]
    private = Path(seen.with_suffix(".path").read_text().strip())
    assert private_tmp in private.parents and workspace not in private.parents
    # ... which is gone after the step, with its directory
    assert not private.exists() and list(private_tmp.iterdir()) == []
    # the task saw them (the stand-in prints CLEARML_* as TAO's ClearML setup might; the log masks secrets)
    logs = list(Path(export.path).rglob("launcher.log"))
    assert logs and f"clearml: CLEARML_API_SECRET_KEY={MASK}" in logs[0].read_text()
    assert "clearml: CLEARML_API_HOST=https://clearml.example" in logs[0].read_text()

    # and nothing in the whole workspace holds either value; the step's mounts.json keeps the names only
    leaked = [str(p) for p in workspace.rglob("*") if p.is_file() and not p.is_symlink()
              and any(s.encode() in p.read_bytes() for s in (ACCESS, SECRET))]
    assert leaked == []
    kept = json.loads(next(Path(export.path).rglob("mounts.json")).read_text())
    assert {"variable": "CLEARML_API_SECRET_KEY", "value": MASK} in kept["Envs"]
    assert {"variable": "CLEARML_API_HOST", "value": MASK} in kept["Envs"]
