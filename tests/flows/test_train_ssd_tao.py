"""The train-ssd flow with backend="tao": every model step goes through the REAL nvidia-tao launcher (TAO 5 command
surface, TAO_DOCKER_DISABLE=1) to an `ssd` on a test-only PATH that runs taoflow's native entrypoint; the model key
comes from a Prefect Secret block. The flow must give the same kind of summary as with the native backend, keep
TAO's launcher files beside each stage's outputs, and leak the key nowhere."""

import json
import os
import shlex
import sys
from pathlib import Path

import pytest

from tests.backends.tao.conftest import minimal_path, tao_launchers, write_executable  # noqa: F401 (fixture)

from .conftest import all_file_bytes, write_specs

pytestmark = pytest.mark.slow

KEY = "tlt-PLANTED-flow-key-7d3a90c1e4"


def test_train_ssd_runs_on_the_tao_backend_through_the_real_launcher(tmp_path, prefect_home, raw_crpd,
                                                                     tao_launchers, monkeypatch, capfd):  # noqa: F811
    from prefect.blocks.system import Secret

    from flows.train_ssd import train_ssd

    calls = tmp_path / "ssd-calls.txt"
    bin_dir = tmp_path / "bin"
    write_executable(bin_dir / "ssd", f"""#!/bin/sh
printf '%s\\n' "$1" >> {shlex.quote(str(calls))}
exec {shlex.quote(sys.executable)} -m taoflow.backends.native "$@"
""")
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))  # no ~/.tao_mounts.json or docker config of the machine leaks in
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{minimal_path()}")
    monkeypatch.setenv("TAOFLOW_TAO_LAUNCHER", tao_launchers["tao5"])
    monkeypatch.setenv("TAO_DOCKER_DISABLE", "1")
    monkeypatch.delenv("TAO_MODEL_KEY", raising=False)
    Secret(value=KEY).save("taoflow-test-model-key", overwrite=True)

    ws = tmp_path / "ws"
    train, retrain = write_specs(ws / "specs")
    summary = train_ssd(dataset_path=str(raw_crpd), workspace=str(ws), train_spec=str(train),
                        retrain_spec=str(retrain), backend="tao", tao_key_block="taoflow-test-model-key",
                        map_floor=0.0)

    # every model step ran through the launcher, in the flow's order (the data stage is taoflow's own)
    assert calls.read_text().split() == ["train", "evaluate", "prune", "train", "evaluate", "export", "inference"]
    stages = summary["stages"]
    assert not any(s["cached"] for s in stages.values())
    commands = sorted(p.read_text() for p in (ws / "store").rglob("tao/*/command.txt"))
    assert len(commands) == 7 and all(" model ssd " in c for c in commands), commands
    assert all(KEY not in c for c in commands) and any(" -k ****" in c for c in commands)
    assert Path(summary["model"]).suffix == ".onnx" and Path(summary["model"]).is_file()
    assert summary["gates_passed"], summary["gates"]
    assert 0.0 <= summary["map"] <= 1.0

    # an identical re-run reuses every stage, whichever executor produced it
    again = train_ssd(dataset_path=str(raw_crpd), workspace=str(ws), train_spec=str(train),
                      retrain_spec=str(retrain), backend="tao", tao_key_block="taoflow-test-model-key",
                      map_floor=0.0, clearml=False)
    assert all(s["cached"] for s in again["stages"].values())
    assert len(calls.read_text().split()) == 7

    # the key reached TAO (the launcher's argv) but nothing taoflow wrote, returned or tracked
    captured = capfd.readouterr()  # (Prefect's run logs also land in its database, grepped below with its home)
    blobs = [json.dumps(summary).encode(), json.dumps(again).encode(), (captured.out + captured.err).encode()]
    leaked = [str(p) for root in (ws, prefect_home) for p, data in all_file_bytes(root) if KEY.encode() in data] + \
             [str(i) for i, b in enumerate(blobs) if KEY.encode() in b]
    assert leaked == []
