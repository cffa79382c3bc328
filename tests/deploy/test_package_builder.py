"""build_package: export dir + images + passport -> a package whose expected.json is what a correct device computes."""

import json
import shutil
import subprocess

import numpy as np
import onnx
import pytest

from taoflow.deploy import DeployError, build_package, load_package
from taoflow.deploy.package_builder import evenly_spaced, pick_samples, preprocess
from taoflow.deploy.selftest import expected_detections
from taoflow.errors import OutputExistsError
from tests.deploy.plugin_export import untrained_export
from tests.device.conftest import run_agent


@pytest.fixture(scope="module")
def plugin_export(tmp_path_factory):
    return untrained_export(tmp_path_factory.mktemp("plugin-export"))


def test_expected_detections_match_the_closed_form_of_the_selftest_model(selftest_export, tmp_path):
    export, images = selftest_export
    passport = {"format": "taoflow-passport/1", "stages": {"export": "k1"}, "id": "pp-1"}
    package = build_package(export, tmp_path / "pkg", images, count=3, passport=passport)
    assert sorted(f.rel for f in package.files) == [
        "labels.txt", "model.json", "model.onnx", "passport.json", "samples/empty.png", "samples/expected.json",
        "samples/one_car.png", "samples/two_objects.png"]
    got = json.loads((package.path / "samples" / "expected.json").read_text())
    want = expected_detections()
    assert got["iou_threshold"] == want["iou_threshold"] and got["score_threshold"] == want["score_threshold"]
    assert got["host"]["runtime"] == "onnxruntime"
    for name, dets in want["images"].items():
        above = [d for d in got["images"][name] if d["confidence"] > 0.2]  # the 0.8-scaled anchors score ~0.02
        assert [d["label"] for d in above] == [d["label"] for d in dets], name
        for g, w in zip(above, dets):
            assert g["confidence"] == pytest.approx(w["confidence"], abs=1e-3)
            np.testing.assert_allclose(g["box"], w["box"], atol=0.01)
    assert json.loads((package.path / "passport.json").read_text()) == passport
    assert load_package(package.path).digest == package.digest


def test_the_device_agent_accepts_the_built_package(selftest_export, device_python, tmp_path):
    export, images = selftest_export
    package = build_package(export, tmp_path / "pkg", images)
    status, reply = run_agent(device_python, tmp_path / "root", "smoke", "--package", str(package.path),
                          "--iterations", "2")
    assert status == 0 and reply["result"]["passed"], reply


def test_package_is_written_atomically_and_never_overwritten(selftest_export, tmp_path):
    export, images = selftest_export
    dest = tmp_path / "pkg"
    broken = tmp_path / "broken-export"
    shutil.copytree(export, broken)
    (broken / "model.onnx").write_bytes(b"not a model")
    with pytest.raises(DeployError, match="onnxruntime cannot load the model"):
        build_package(broken, dest, images)
    assert not dest.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".pkg")]
    build_package(export, dest, images)
    with pytest.raises(OutputExistsError):
        build_package(export, dest, images)
    assert build_package(export, dest, images, count=1, replace=True).path == dest
    assert len(list((dest / "samples").glob("*.png"))) == 1


@pytest.mark.parametrize("mutate, message", [
    (lambda d: [(d / n).unlink() for n in ("model.json", "model.onnx")], "no model.json: export with"),
    (lambda d: (d / "model.json").unlink(), "looks like TAO's own export"),
    (lambda d: (d / "labels.txt").write_text("background\nplate\ncar\n"), "disagrees with model.json classes"),
    (lambda d: (d / "model.json").write_text(json.dumps({**json.loads((d / "model.json").read_text()),
                                                         "model_file": "model.etlt"})), "'model.etlt' is not .onnx"),
    (lambda d: (d / "model.json").write_text("{\n  oops"), "invalid JSON"),
])
def test_bad_exports_are_refused_with_the_file(selftest_export, tmp_path, mutate, message):
    export, images = selftest_export
    bad = tmp_path / "export"
    shutil.copytree(export, bad)
    mutate(bad)
    with pytest.raises(DeployError, match=message):
        build_package(bad, tmp_path / "pkg", images)


def test_sample_selection_prefers_detections_and_keeps_one_empty_image():
    dets = {f"{i:02d}.jpg": ([{"confidence": 0.9}] if i % 3 == 0 else [{"confidence": 0.1}]) for i in range(12)}
    chosen = pick_samples(dets, 4, 0.3)
    positives = [n for n in chosen if dets[n][0]["confidence"] > 0.3]
    assert chosen == ["00.jpg", "01.jpg", "06.jpg", "09.jpg"] and len(positives) == 3
    assert pick_samples({"a.jpg": []}, 4, 0.3) == ["a.jpg"]
    assert evenly_spaced(list(range(10)), 3) == [0, 4, 9] and evenly_spaced([1, 2], 5) == [1, 2]


def test_duplicate_or_missing_images_are_refused(selftest_export, tmp_path):
    export, images = selftest_export
    other = tmp_path / "other"
    other.mkdir()
    shutil.copy2(images / "empty.png", other / "empty.png")
    with pytest.raises(DeployError, match="two sample images are named empty.png"):
        build_package(export, tmp_path / "pkg", [images / "empty.png", other / "empty.png"])
    with pytest.raises(DeployError, match="no .jpg/.jpeg/.png sample images"):
        build_package(export, tmp_path / "pkg", tmp_path / "other" / "..", count=2)


def test_host_preprocessing_matches_the_agents():
    import agent_infer

    image = np.random.default_rng(1).integers(0, 255, (37, 53, 3), dtype=np.uint8)
    for inp in ({"width": 20, "height": 12, "channels": 3, "channel_order": "BGR", "mean": [1.0, 2.0, 3.0],
                 "scale": 1.0},
                {"width": 20, "height": 12, "channels": 3, "channel_order": "RGB", "mean": [1.0, 2.0, 3.0],
                 "scale": 0.5},
                {"width": 8, "height": 8, "channels": 1, "channel_order": "GRAY", "mean": [117.0], "scale": 1.0}):
        np.testing.assert_array_equal(preprocess(image, inp)[None], agent_infer.preprocess(image, inp))


@pytest.mark.slow
def test_native_export_is_ir7_opset13_and_loads_in_the_py36_onnxruntime(native_export, py36, tmp_path):
    export, images = native_export
    model = onnx.load(str(export / "model.onnx"))
    assert model.ir_version == 7 and [o.version for o in model.opset_import] == [13]
    if py36[0] is None:
        pytest.skip(py36[1])
    proc = subprocess.run([str(py36[0]), "-c", (
        "import sys, onnxruntime as o; s = o.InferenceSession(sys.argv[1], providers=['CPUExecutionProvider']); "
        "print(o.__version__, [i.name for i in s.get_inputs()], [x.name for x in s.get_outputs()])"),
        str(export / "model.onnx")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-800:]
    assert proc.stdout.strip() == "1.10.0 ['Input'] ['boxes', 'scores']"
    package = build_package(export, tmp_path / "pkg", images, count=3)
    expected = json.loads((package.path / "samples" / "expected.json").read_text())
    assert sum(d["confidence"] > 0.3 for dets in expected["images"].values() for d in dets) > 0
    status, reply = run_agent(py36[0], tmp_path / "root", "smoke", "--package", str(package.path),
                              "--iterations", "2")
    assert status == 0 and reply["result"]["passed"], reply


def test_a_plugin_export_is_packaged_with_both_graphs_checked_against_each_other(plugin_export, tmp_path):
    export, images = plugin_export
    package = build_package(export, tmp_path / "pkg", images, count=3)
    assert {"model.onnx", "model_nms.onnx", "model.json", "nvinfer_config.txt"} <= {f.rel for f in package.files}
    assert package.model_files == ["model.onnx", "model_nms.onnx"]
    assert (package.path / "model_nms.onnx").read_bytes() == (export / "model_nms.onnx").read_bytes()
    expected = json.loads((package.path / "samples" / "expected.json").read_text())
    assert list(expected["host"]["graphs"]) == ["model_nms.onnx"]
    assert "the same detections as model.onnx on 6 images" in expected["host"]["graphs"]["model_nms.onnx"]
    assert sum(d["confidence"] > expected["score_threshold"] for v in expected["images"].values() for d in v) > 0


def _variant(export, tmp_path, change):
    bad = tmp_path / "export"
    shutil.copytree(export, bad)
    change(bad)
    return bad


def _double_the_variances(export):
    model = onnx.load(str(export / "model_nms.onnx"))
    (prior,) = [t for t in model.graph.initializer if t.name == "prior"]
    values = onnx.numpy_helper.to_array(prior).copy()
    values[0, 1] *= 2
    prior.CopyFrom(onnx.numpy_helper.from_array(values, "prior"))
    onnx.save(model, str(export / "model_nms.onnx"))


def _edit_meta(export, fn):
    meta = json.loads((export / "model.json").read_text())
    fn(meta)
    (export / "model.json").write_text(json.dumps(meta, indent=2))


@pytest.mark.parametrize("change, message", [
    (_double_the_variances, "model_nms.onnx (NMSDynamic_TRT) and model.onnx disagree on the sample candidates: "),
    (lambda d: (d / "model_nms.onnx").unlink(), "graphs.tensorrt.model_file: model_nms.onnx is not there"),
    (lambda d: _edit_meta(d, lambda m: m["graphs"]["tensorrt"]["plugin"]["attributes"].update(keepTopK=10)),
     "graphs.tensorrt.plugin: keepTopK is 10, expected 50"),
    (lambda d: _edit_meta(d, lambda m: m["graphs"]["onnxruntime"].update(model_file="model_nms.onnx",
                                                                         output={"kind": "tao_nms"})),
     "graphs.onnxruntime.output: ONNX Runtime runs only 'decoded' graphs"),
])
def test_a_plugin_graph_that_is_not_the_models_is_refused(plugin_export, tmp_path, change, message):
    export, images = plugin_export
    bad = _variant(export, tmp_path, change)
    with pytest.raises(DeployError) as e:
        build_package(bad, tmp_path / "pkg", images, count=2)
    assert message in str(e.value)
    assert not (tmp_path / "pkg").exists()


def test_load_package_checks_the_graphs_it_ships(plugin_export, tmp_path):
    export, images = plugin_export
    package = build_package(export, tmp_path / "pkg", images, count=2)
    (package.path / "model_nms.onnx").unlink()
    with pytest.raises(DeployError, match="graphs.tensorrt.model_file: model_nms.onnx is not there") as e:
        load_package(package.path)
    lines = (package.path / "model.json").read_text().splitlines()
    assert str(e.value.path).endswith("model.json") and '"tensorrt"' in lines[e.value.line - 1]


@pytest.mark.slow
def test_the_trained_native_export_ships_both_graphs_and_a_py36_device_runs_its_own(native_export, device_python,
                                                                                    tmp_path):
    export, images = native_export
    meta = json.loads((export / "model.json").read_text())
    assert meta["graphs"]["tensorrt"]["model_file"] == "model_nms.onnx"
    package = build_package(export, tmp_path / "pkg", images, count=3)
    status, reply = run_agent(device_python, tmp_path / "root", "smoke", "--package", str(package.path),
                              "--iterations", "2")
    assert status == 0 and reply["result"]["passed"], reply
    smoke = json.loads((package.path / "smoke.json").read_text())
    assert smoke["runtime"] == "onnxruntime" and smoke["graph"] == "onnxruntime"
