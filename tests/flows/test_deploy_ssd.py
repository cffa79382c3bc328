"""The deploy-ssd flow with TAO's own export: packaged from TAO's inference labels through the flow's parameters,
then refused by the simulated Nano, which has ONNX Runtime but no TensorRT, with the reason in the fleet table."""

import json
from pathlib import Path

import pytest

from tests.deploy.test_tao_package import inference_output, kitti, tao_export

pytestmark = pytest.mark.slow


def test_a_tao_export_is_packaged_from_taos_labels_and_refused_where_tensorrt_is_missing(prefect_home, tmp_path):
    from flows.deploy_ssd import deploy_ssd
    from taoflow.deploy.simulator import SimulatedNano

    export = tao_export(tmp_path)
    images, labels = inference_output(tmp_path, {"a": [kitti("lpd", (10, 20, 60, 40), 0.9)], "b": []})
    ws = tmp_path / "ws"
    with SimulatedNano(ws) as nano:
        inventory = nano.start()
        result = deploy_ssd(export_dir=str(export), inventory=str(inventory), sample_images=str(images),
                            reference_labels=str(labels), model_name="lpd-tao", workspace=str(ws))
    assert not result["ok"]
    [device] = result["devices"]
    assert device["status"] == "refused" and device["current"] is None
    assert "a TAO NMS-plugin model needs TensorRT with pycuda; the device has onnxruntime" in device["error"]
    expected = json.loads((Path(result["package"]) / "samples" / "expected.json").read_text())
    assert expected["host"]["runtime"] == "tao ssd inference" and sorted(expected["images"]) == ["a.jpg", "b.jpg"]
    assert not list((nano.root / "staging").rglob("model.onnx"))  # refused before anything was sent


def test_the_etlt_key_reaches_the_rollout_from_the_same_sources_as_training(tmp_path, monkeypatch):
    """deploy-ssd resolves the .etlt key inside its rollout task ($TAO_MODEL_KEY here, or the Secret block named
    by tao_key_block), never as a flow or task parameter; other models get no key."""
    import json

    from flows.deploy_ssd import etlt_key
    from taoflow.deploy.selftest import write_selftest_package
    onnx = write_selftest_package(tmp_path / "onnx")
    etlt = write_selftest_package(tmp_path / "etlt")
    (etlt / "model.onnx").rename(etlt / "model.etlt")
    meta = json.loads((etlt / "model.json").read_text())
    (etlt / "model.json").write_text(json.dumps(dict(meta, model_file="model.etlt")))
    monkeypatch.setenv("TAO_MODEL_KEY", "planted-etlt-key-123")
    assert etlt_key(str(etlt)) == "planted-etlt-key-123"
    assert etlt_key(str(onnx)) is None
    monkeypatch.delenv("TAO_MODEL_KEY")
    assert etlt_key(str(etlt)) is None  # the rollout's preflight then refuses the devices: "needs a key"
