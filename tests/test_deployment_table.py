"""prefect.yaml is the one deployment table: `taoflow serve` offers exactly its deployments (names, flows,
parameters with the workspace moved, tags), `demo` included, and every deployment is on the GPU work pool."""

from pathlib import Path

import pytest
import yaml

from taoflow import deployments as D
from taoflow.errors import TaoflowError
from taoflow.serve import build_deployments

REPO = Path(__file__).resolve().parents[1]


def moved(value, old, new):
    if isinstance(value, dict):
        return {k: moved(v, old, new) for k, v in value.items()}
    if isinstance(value, list):
        return [moved(v, old, new) for v in value]
    return new + value[len(old):] if isinstance(value, str) and value.startswith(old) else value


def test_serve_offers_exactly_the_deployments_of_prefect_yaml(tmp_path):
    raw = yaml.safe_load((REPO / "prefect.yaml").read_text())["deployments"]
    served = {d.name: d for d in build_deployments(tmp_path / "ws")}
    assert set(served) == {d["name"] for d in raw} and {"demo", "crpd", "kitti", "traffic", "fleet"} <= set(served)
    ws = str((tmp_path / "ws").resolve())
    for d in raw:
        s = served[d["name"]]
        func = d["entrypoint"].split(":")[1]
        assert s.flow_name == {"train_ssd": "train-ssd", "deploy_ssd": "deploy-ssd"}[func]
        assert d["work_pool"]["name"] == "taoflow-gpu"
        assert s.tags == d["tags"] and s.description == d["description"]
        assert s.parameters == moved(d["parameters"], d["parameters"]["workspace"], ws), d["name"]
        assert s.parameters["workspace"] == ws
    demo = served["demo"].parameters
    assert (demo["spec_set"], demo["dataset_path"]) == ("demo_cpu", f"{ws}/raw/crpd_demo")
    # the demo deployment trains where `taoflow demo` puts its data
    assert "raw\" / \"crpd_demo" in (REPO / "taoflow" / "demo.py").read_text()


def test_serve_picks_deployments_by_name_and_always_adds_fleet(tmp_path):
    assert [d.name for d in build_deployments(tmp_path, ["demo"])] == ["demo", "fleet"]
    with pytest.raises(TaoflowError, match="unknown deployment"):
        build_deployments(tmp_path, ["nope"])


def test_a_dataset_outside_its_workspace_is_refused(tmp_path):
    table = tmp_path / "prefect.yaml"
    table.write_text("deployments:\n  - name: x\n    entrypoint: flows/train_ssd.py:train_ssd\n    parameters:\n"
                     "      workspace: /data/ws\n      dataset_path: /elsewhere/crpd\n")
    with pytest.raises(TaoflowError, match="outside its workspace"):
        D.load(table)
    table.write_text("deployments:\n  - name: x\n    entrypoint: flows/train_ssd.py:train_ssd\n    parameters:\n"
                     "      workspace: /data/ws\n      dataset_path: /data/ws/raw/crpd\n")
    assert D.table("/tmp/other", table)["x"]["parameters"]["dataset_path"] == "/tmp/other/raw/crpd"
