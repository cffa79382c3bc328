"""TAO's own export as a model package: model.json from the export's spec (taoflow's TAO backend writes it on
export), the smoke expectations from TAO's `ssd inference` labels, and the device agent reading the result. Only
TensorRT runs such a model, so no simulated device here can smoke-test it (see test_preflight for where it goes)."""

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from taoflow.backends.tao.model_json import main as model_json_main
from taoflow.backends.tao.model_json import write_tao_model_json
from taoflow.deploy import DeployError, build_package
from tests.deploy.probes import tiny_onnx
from tests.device.conftest import AGENT_DIR  # noqa: F401 (puts the agent's modules on sys.path)

SPEC = Path(__file__).resolve().parents[2] / "specs" / "crpd" / "ssd_retrain_resnet18_crpd.txt"


def tao_export(root, suffix=".onnx"):
    """What TAO's export writes with --gen_ds_config (the model: a graph ending in TAO 5's NMS plugin node, or
    .etlt bytes), plus the model.json taoflow adds."""
    export = root / "export"
    export.mkdir(parents=True)
    model = export / f"model{suffix}"
    if suffix == ".onnx":
        tiny_onnx(model, op="NMSDynamic_TRT", inputs=3)
    else:
        model.write_bytes(b"\x00\x00\x00\x00encrypted payload")
    (export / "labels.txt").write_text("background\nlpd\n")
    (export / "nvinfer_config.txt").write_text("net-scale-factor=1.0\n")
    write_tao_model_json(SPEC, model, "fp16")
    return export


def inference_output(root, labels):
    """Images and the KITTI label files TAO's `ssd inference` writes for them ({stem: [lines] or None})."""
    images, label_dir = root / "images", root / "inference" / "labels"
    images.mkdir(parents=True)
    label_dir.mkdir(parents=True)
    for stem, lines in labels.items():
        cv2.imwrite(str(images / f"{stem}.jpg"), np.full((240, 320, 3), 90, np.uint8))
        if lines is not None:
            (label_dir / f"{stem}.txt").write_text("".join(line + "\n" for line in lines))
    return images, label_dir


def kitti(label, box, confidence):
    return f"{label} 0.00 0 0.00 {' '.join(f'{v:.2f}' for v in box)} 0.00 0.00 0.00 0.00 0.00 0.00 0.00 " \
           f"{confidence:.4f}"


def test_model_json_of_a_tao_export_follows_the_spec_and_taos_exporter(tmp_path):
    meta = json.loads((tao_export(tmp_path) / "model.json").read_text())
    assert meta["model_file"] == "model.onnx" and meta["output"] == {"kind": "tao_nms"}
    assert meta["input"] == {"name": "Input", "layout": "NCHW", "channels": 3, "height": 300, "width": 300,
                             "channel_order": "BGR", "mean": [103.939, 116.779, 123.68], "scale": 1.0,
                             "resize": "stretch", "dtype": "float32", "dynamic_batch": True}
    # the spec's nms_config: top_k 200 -> the plugin's topK 400, keepTopK 200
    assert meta["nms"] == {"confidence_threshold": 0.01, "iou_threshold": 0.6, "top_k": 400, "keep_top_k": 200}
    assert meta["classes"] == ["lpd"] and meta["source"]["exporter"] == "tao"
    etlt = json.loads((tao_export(tmp_path / "etlt", ".etlt") / "model.json").read_text())
    assert etlt["model_file"] == "model.etlt" and etlt["input"]["dynamic_batch"] is False


def test_tao_inference_labels_become_the_smoke_expectations(tmp_path):
    import agent_package

    export = tao_export(tmp_path)
    images, labels = inference_output(tmp_path, {
        "a": [kitti("lpd", (10, 20, 60, 40), 0.93), kitti("lpd", (100, 120, 150, 140), 0.35)],
        "b": [],  # TAO ran it and found nothing: the image that proves the device adds nothing
        "c": None,  # no label file: TAO did not run it, so it proves nothing and is not a sample
        "d": [kitti("lpd", (200, 50, 260, 80), 0.71)]})
    package = build_package(export, tmp_path / "pkg", images, reference_labels=labels, reference_threshold=0.3)
    expected = json.loads((package.path / "samples" / "expected.json").read_text())
    assert sorted(expected["images"]) == ["a.jpg", "b.jpg", "d.jpg"]
    # TAO wrote nothing below its -t 0.3, and expected.json must reach 0.1 under the pass threshold
    assert expected["score_threshold"] == 0.4
    assert expected["images"]["a.jpg"] == [{"label": "lpd", "confidence": 0.93, "box": [10.0, 20.0, 60.0, 40.0]},
                                           {"label": "lpd", "confidence": 0.35, "box": [100.0, 120.0, 150.0, 140.0]}]
    assert expected["host"]["runtime"] == "tao ssd inference" and expected["host"]["model_sha256"] == \
        package.model_sha256
    assert {f.rel for f in package.files} >= {"model.onnx", "model.json", "labels.txt", "nvinfer_config.txt"}
    # the agent reads the package as it would on a Jetson
    meta = agent_package.load_model_json(str(package.path))
    assert meta["output"]["kind"] == "tao_nms"
    labels_ok = agent_package.load_labels(str(package.path), meta["classes"])
    assert len(agent_package.load_expected(str(package.path), labels_ok)["images"]) == 3


def test_a_tao_export_needs_its_inference_labels_and_they_must_be_well_formed(tmp_path):
    export = tao_export(tmp_path)
    images, labels = inference_output(tmp_path, {"a": [kitti("lpd", (1, 2, 3, 4), 0.9)]})
    with pytest.raises(DeployError, match="only TensorRT runs: give the labels TAO's `ssd inference` wrote"):
        build_package(export, tmp_path / "pkg", images)
    (labels / "a.txt").write_text(kitti("lpd", (1, 2, 3, 4), 0.9) + "\n" + kitti("car", (1, 2, 3, 4), 0.8) + "\n")
    with pytest.raises(DeployError, match=r"a\.txt:2: class 'car' is not one of the model's classes"):
        build_package(export, tmp_path / "pkg", images, reference_labels=labels)
    (labels / "a.txt").write_text("lpd 0 0 0 1 2 3 4 0 0 0 0 0 0 0\n")  # ground-truth layout, no confidence
    with pytest.raises(DeployError, match=r"a\.txt:1: a TAO inference label line has 16 fields"):
        build_package(export, tmp_path / "pkg", images, reference_labels=labels)
    (labels / "a.txt").unlink()
    with pytest.raises(DeployError, match="no label file in .* matches a sample image"):
        build_package(export, tmp_path / "pkg", images, reference_labels=labels)
    assert not (tmp_path / "pkg").exists()


def test_model_json_command_for_a_tao_export_made_outside_taoflow(tmp_path, capsys):
    model = tmp_path / "export" / "ssd.etlt"
    model.parent.mkdir()
    model.write_bytes(b"etlt")
    assert model_json_main(["-e", str(SPEC), "-m", str(model)]) == 0
    assert json.loads((model.parent / "model.json").read_text())["model_file"] == "ssd.etlt"
    with pytest.raises(SystemExit) as e:
        model_json_main(["-e", str(SPEC), "-m", str(tmp_path / "missing.onnx")])
    assert e.value.code == 2 and "no such file" in capsys.readouterr().err
    bad = tmp_path / "bad.txt"
    bad.write_text(SPEC.read_text().replace("nms_config {", "nms_config {\n  top_kk: 3", 1))
    with pytest.raises(SystemExit) as e:
        model_json_main(["-e", str(bad), "-m", str(model)])
    assert e.value.code == 2 and "bad.txt:" in capsys.readouterr().err
