"""train-ssd with export_format="etlt": the native export is encoded with NVIDIA's codec, packaged for the simulated
Nano (ONNX Runtime, no TensorRT) with the ONNX decoded on the host, and deployed; the key appears in no file."""

import json
from pathlib import Path

import pytest

from tests.etlt_support import KEY, codec_python  # noqa: F401 (fixture)

from .conftest import all_file_bytes, write_specs

pytestmark = pytest.mark.slow


@pytest.mark.usefixtures("codec_python")
def test_etlt_export_deploys_to_a_simulated_nano(tmp_path, prefect_home, raw_crpd, monkeypatch):
    from flows.train_ssd import train_ssd
    from taoflow.deploy.simulator import SimulatedNano
    from taoflow.etlt import decode_bytes

    ws = tmp_path / "ws"
    train, retrain = write_specs(ws / "specs")
    monkeypatch.setenv("TAO_MODEL_KEY", KEY)
    with SimulatedNano(ws) as nano:
        inventory = nano.start()
        summary = train_ssd(dataset_path=str(raw_crpd), workspace=str(ws), train_spec=str(train),
                            retrain_spec=str(retrain), map_floor=0.0, export_format="etlt",
                            etlt_devices="onnxruntime", deploy_inventory=str(inventory), model_name="lpd-etlt",
                            clearml=False)
        assert summary["gates_passed"] and summary["deployed"]["ok"], summary["deployed"]
        [device] = summary["deployed"]["devices"]
        assert device["status"] == "deployed"
    export = ws / "store" / "export" / summary["stages"]["export"]["key"]
    meta = json.loads((export / "model.json").read_text())
    assert meta["model_file"] == "model.etlt"
    decoded = decode_bytes(export / "model.etlt", KEY, expect_sha256=meta["etlt"]["payload_sha256"])
    assert decoded.data == (export / "model.onnx").read_bytes()  # the ONNX the parity gate checked
    package = Path(summary["deployed"]["package"])
    shipped = json.loads((package / "model.json").read_text())
    assert shipped["model_file"] == "model.onnx" and shipped["etlt"]["decoded_on_host"] is True
    assert (package / "model.onnx").read_bytes() == decoded.data
    for path, data in all_file_bytes(ws):
        assert KEY.encode() not in data, path
