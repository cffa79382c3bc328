""".etlt exports as model packages: decoded on the host with NVIDIA's codec, their ONNX checked by preflight like a
plain export, smoke expectations computed on the host (TAO's graph up to its NMS plugin + the reference NMS), the
ONNX Runtime path shipping the host-decoded ONNX, and the tao-converter command the agent builds them with."""

import json

import cv2
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from taoflow.backends.tao.model_json import write_tao_model_json
from taoflow.deploy import DeployError, build_package, load_package
from taoflow.deploy.preflight import build_problems, device_problems
from taoflow.etlt import decode_bytes, encode_file
from tests.deploy.probes import cpu_device, ready_nano
from tests.deploy.test_tao_package import SPEC, inference_output, kitti
from tests.device.conftest import AGENT_DIR  # noqa: F401 (puts the agent's modules on sys.path)
from tests.etlt_support import KEY, codec_python  # noqa: F401 (fixture)

# 4 priors on a 2x2 grid (normalised corners) and TAO's variances
PRIORS = np.array([[0.05, 0.05, 0.45, 0.45], [0.55, 0.05, 0.95, 0.45], [0.05, 0.55, 0.45, 0.95],
                   [0.55, 0.55, 0.95, 0.95]], np.float32)
VARIANCES = [0.1, 0.1, 0.2, 0.2]
CONF_BIAS = [0.0, -1.0, -2.0, -30.0]  # anchor 3 never fires
GAIN = 0.02  # class-1 logit = GAIN * sum over channels of (pixel - mean) + bias
LOC_BIAS = [1.0, 0.0, 0.0, 0.0]  # every box shifted right by var0 * 1 * prior width


def tao5_onnx(path):
    """A graph shaped like TAO 5's SSD export: Input -> loc_data [N, A*4, 1, 1], conf_data (softmax)
    [N, A*2, 1, 1], anchor_data [1, 2, A*4, 1] -> NMSDynamic_TRT with TAO's attributes (onnx_exporter.py)."""
    a = len(PRIORS)
    w_conf = np.zeros((3, a * 2), np.float32)
    w_conf[:, 1::2] = GAIN
    b_conf = np.zeros(a * 2, np.float32)
    b_conf[1::2] = CONF_BIAS
    anchor = np.stack([PRIORS.reshape(-1), np.tile(VARIANCES, a).astype(np.float32)]).reshape(1, 2, a * 4, 1)
    init = [helper.make_tensor(n, TensorProto.FLOAT, v.shape, v.reshape(-1).tolist()) for n, v in [
        ("w_conf", w_conf), ("b_conf", b_conf), ("w_loc", np.zeros((3, a * 4), np.float32)),
        ("b_loc", np.tile(LOC_BIAS, a).astype(np.float32))]]
    init += [helper.make_tensor(n, TensorProto.INT64, [len(v)], v) for n, v in [
        ("shape_conf", [0, a, 2]), ("shape_col", [0, -1, 1, 1])]]
    nodes = [
        helper.make_node("ReduceMean", ["Input"], ["pooled"], axes=[2, 3], keepdims=0),
        helper.make_node("MatMul", ["pooled", "w_conf"], ["conf_mm"]),
        helper.make_node("Add", ["conf_mm", "b_conf"], ["conf_logits"]),
        helper.make_node("Reshape", ["conf_logits", "shape_conf"], ["conf_3d"]),
        helper.make_node("Softmax", ["conf_3d"], ["conf_soft"], axis=-1),
        helper.make_node("Reshape", ["conf_soft", "shape_col"], ["conf_data"], name="conf_data"),
        helper.make_node("MatMul", ["pooled", "w_loc"], ["loc_mm"]),
        helper.make_node("Add", ["loc_mm", "b_loc"], ["loc_flat"]),
        helper.make_node("Reshape", ["loc_flat", "shape_col"], ["loc_data"], name="loc_data"),
        helper.make_node("Constant", [], ["anchor_data"], name="anchor_data",
                         value=helper.make_tensor("anchors", TensorProto.FLOAT, anchor.shape, anchor.reshape(-1))),
        helper.make_node("NMSDynamic_TRT", ["anchor_data", "loc_data", "conf_data"], ["NMS", "NMS_1"], name="NMS",
                         shareLocation=1, varianceEncodedInTarget=0, backgroundLabelId=0, confidenceThreshold=0.01,
                         nmsThreshold=0.6, topK=400, codeType=1, keepTopK=200, numClasses=2, inputOrder=[1, 2, 0],
                         confSigmoid=0, isNormalized=1, scoreBits=16),
    ]
    graph = helper.make_graph(nodes, "ssd", [helper.make_tensor_value_info("Input", TensorProto.FLOAT,
                                                                           ["N", 3, 300, 300])],
                              [helper.make_tensor_value_info("NMS", TensorProto.FLOAT, None),
                               helper.make_tensor_value_info("NMS_1", TensorProto.FLOAT, None)], init)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 7
    onnx.save(model, str(path))
    return path


def tao_etlt_export(root):
    """TAO's export as an ONNX .etlt ending in the NMS plugin, with labels.txt and the model.json taoflow adds."""
    export = root / "export"
    export.mkdir(parents=True)
    plain = tao5_onnx(root / "tao5.onnx")
    encode_file(plain, export / "model.etlt", KEY)
    (export / "labels.txt").write_text("background\nlpd\n")
    write_tao_model_json(SPEC, export / "model.etlt", "fp16")
    return export, plain


def images(root, values):
    folder = root / "images"
    folder.mkdir()
    for name, value in values.items():
        cv2.imwrite(str(folder / f"{name}.png"), np.full((240, 320, 3), value, np.uint8))
    return folder


def expected_for(value, width=320, height=240):
    """What the plugin yields for a uniform image of `value`: per anchor a softmax over (0, logit), the box the
    prior shifted by var0 * loc0 * prior width, in pixels; >= 0.2 (the recorded floor)."""
    logit_base = GAIN * sum(value - m for m in (103.939, 116.779, 123.68))
    found = []
    for prior, bias in zip(PRIORS, CONF_BIAS):
        conf = 1 / (1 + np.exp(-(logit_base + bias)))
        if conf >= 0.2:
            shift = VARIANCES[0] * LOC_BIAS[0] * (prior[2] - prior[0])
            found.append((round(float(conf), 4), [(prior[0] + shift) * width, prior[1] * height,
                                                  (prior[2] + shift) * width, prior[3] * height]))
    return sorted(found, key=lambda d: -d[0])


@pytest.mark.usefixtures("codec_python")
def test_tao_etlt_is_packaged_with_host_computed_expectations(tmp_path):
    export, plain = tao_etlt_export(tmp_path)
    folder = images(tmp_path, {"bright": 220, "mid": 150, "dark": 20})
    package = build_package(export, tmp_path / "pkg", folder, etlt_key=KEY)
    expected = json.loads((package.path / "samples" / "expected.json").read_text())
    assert expected["host"]["runtime"] == "onnxruntime" and "NMSDynamic_TRT" in expected["host"]["graph"]
    assert expected["score_threshold"] == 0.3  # not raised: no TAO labels involved
    for name, value in (("bright", 220), ("mid", 150), ("dark", 20)):
        got = expected["images"][f"{name}.png"]
        want = expected_for(value)
        assert [d["confidence"] for d in got] == pytest.approx([c for c, _ in want], abs=2e-4), name
        for d, (_, box) in zip(got, want):
            assert d["label"] == "lpd" and d["box"] == pytest.approx(box, abs=0.02)
    assert expected["images"]["dark.png"] == []  # the image that proves the device adds nothing
    # the package ships the .etlt as it was, and model.json says what is inside (for preflight), never the key
    assert (package.path / "model.etlt").read_bytes() == (export / "model.etlt").read_bytes()
    inside = package.meta["etlt"]
    assert inside["payload"] == "onnx" and inside["plugins"] == ["NMSDynamic_TRT"] and inside["opset"] == 13
    assert "NMSDynamic_TRT" in inside["ops"] and "Softmax" in inside["ops"]
    assert inside["payload_sha256"] == decode_bytes(export / "model.etlt", KEY).sha256
    for path in package.path.rglob("*"):
        assert path.is_dir() or KEY.encode() not in path.read_bytes(), path


@pytest.mark.usefixtures("codec_python")
def test_preflight_names_the_plugin_inside_the_etlt(tmp_path):
    export, _ = tao_etlt_export(tmp_path)
    package = build_package(export, tmp_path / "pkg", images(tmp_path, {"a": 220, "b": 20}), etlt_key=KEY)
    # JetPack's stock plugin library: NMS_TRT, no NMSDynamic_TRT
    problems = device_problems(ready_nano(), package)
    assert any("libnvinfer_plugin lacks NMSDynamic_TRT" in p for p in problems), problems
    assert not any("BatchTilePlugin_TRT" in p for p in problems)  # an ONNX payload, not TAO 3/4's UFF
    with_plugin = ready_nano()
    with_plugin["nvinfer_plugin"]["plugins"].append("NMSDynamic_TRT")
    assert device_problems(with_plugin, package) == []
    # an operator the device's TensorRT parser lacks is found inside the .etlt as in a plain ONNX
    meta = json.loads((package.path / "model.json").read_text())
    meta["etlt"]["ops"].append("Einsum")
    (package.path / "model.json").write_text(json.dumps(meta))
    old = with_plugin.copy()
    old["tensorrt"] = "8.0.1"
    assert any("does not support Einsum" in p for p in device_problems(old, load_package(package.path)))
    assert build_problems(with_plugin, package, etlt_key=None) == [
        "a .etlt needs its model key: pass the key the model was exported with"]


@pytest.mark.usefixtures("codec_python")
def test_tao_etlt_wrong_key_and_no_key(tmp_path):
    export, _ = tao_etlt_export(tmp_path)
    folder, labels = inference_output(tmp_path / "inf", {"a": [kitti("lpd", (10, 20, 60, 40), 0.9)], "b": []})
    with pytest.raises(DeployError, match="wrong key") as e:
        build_package(export, tmp_path / "pkg", folder, etlt_key="not-the-key")
    assert "model.etlt" in str(e.value)
    # no key: TAO's inference labels, as before
    package = build_package(export, tmp_path / "pkg", folder, reference_labels=labels)
    expected = json.loads((package.path / "samples" / "expected.json").read_text())
    assert expected["host"]["runtime"] == "tao ssd inference" and "etlt" not in package.meta
    stock = ready_nano()
    stock["nvinfer_plugin"]["plugins"] = ["NMS_TRT", "NMSDynamic_TRT"]
    # what is inside is unknown without the key: TAO 3/4's UFF plugins are assumed
    assert any("lacks BatchTilePlugin_TRT" in p for p in device_problems(stock, package))
    with pytest.raises(DeployError, match="only TensorRT runs: give the labels .* or the .etlt's key"):
        build_package(export, tmp_path / "pkg2", folder)


def _native_etlt_export(root):
    from taoflow.backends.native.export import export_onnx
    from tests.test_etlt import _untrained_checkpoint

    spec, ckpt = _untrained_checkpoint(root)
    export_onnx(spec, ckpt, root / "plain" / "model.onnx", data_type="fp16", gen_ds_config=True)
    export_onnx(spec, ckpt, root / "enc" / "model.etlt", data_type="fp16", gen_ds_config=True, etlt_key=KEY)
    return root / "enc", root / "plain"


@pytest.mark.usefixtures("codec_python")
def test_native_etlt_for_tensorrt_and_for_onnxruntime_devices(tmp_path, monkeypatch):
    export, plain = _native_etlt_export(tmp_path)
    folder = images(tmp_path, {"a": 220, "b": 90, "c": 20})
    with pytest.raises(DeployError, match="is encrypted: give its key"):
        build_package(export, tmp_path / "none", folder)
    reference = build_package(plain, tmp_path / "ref", folder)
    monkeypatch.setenv("TAO_MODEL_KEY", KEY)  # the default source of the key, as in the flows
    trt = build_package(export, tmp_path / "trt", folder)
    assert trt.meta["model_file"] == "model.etlt" and trt.meta["etlt"]["plugins"] == []
    # the host ran the decoded ONNX: the same expectations as the plain export's
    strip = lambda p: {k: v for k, v in json.loads((p.path / "samples/expected.json").read_text()).items()  # noqa
                       if k != "host"}
    assert strip(trt) == strip(reference)
    assert device_problems(ready_nano(), trt) == []  # a native graph names no plugin
    [refused] = device_problems(cpu_device(), trt)
    assert "needs TensorRT" in refused and "etlt_devices='onnxruntime'" in refused
    ort = build_package(export, tmp_path / "ort", folder, etlt_devices="onnxruntime")
    assert ort.meta["model_file"] == "model.onnx" and not (ort.path / "model.etlt").exists()
    assert (ort.path / "model.onnx").read_bytes() == (plain / "model.onnx").read_bytes()
    assert ort.meta["etlt"]["decoded_on_host"] is True and device_problems(cpu_device(), ort) == []
    assert strip(ort) == strip(reference)


@pytest.mark.usefixtures("codec_python")
def test_agent_builds_a_native_etlt_with_tao_converter(tmp_path):
    """The TensorRT path's command for a .etlt package, as tools/device/agent_build.py builds it (pinned)."""
    import agent_build
    import agent_package

    export, _ = _native_etlt_export(tmp_path)
    package = build_package(export, tmp_path / "pkg", images(tmp_path, {"a": 220, "b": 20}), etlt_key=KEY)
    meta = agent_package.load_model_json(str(package.path))
    tools = {"tao-converter": "/home/nvidia/taoflow/bin/tao-converter", "trtexec": "/usr/src/tensorrt/bin/trtexec"}
    argv = agent_build.tensorrt_argv(meta, str(package.path), "/p/.engine.tmp", tools, "8.2.1", 1, 512, KEY)
    assert meta["etlt"]["payload"] == "onnx" and meta["input"]["dynamic_batch"]
    # an ONNX payload: no UFF output node (-o) and no implicit batch (-m); its dynamic batch gets a profile (-p)
    assert argv == ["/home/nvidia/taoflow/bin/tao-converter", "-k", KEY, "-d", "3,96,96",
                    "-p", f"{meta['input']['name']},1x3x96x96,1x3x96x96,1x3x96x96",
                    "-e", "/p/.engine.tmp", "-t", "fp16", "-w", str(512 << 20), "-i", "nchw",
                    str(package.path / "model.etlt")]
    uff = dict(meta, etlt=dict(meta["etlt"], payload="uff"))  # TAO 3/4's own .etlt
    assert agent_build.tensorrt_argv(uff, str(package.path), "/p/.engine.tmp", tools, "8.2.1", 4, 512, KEY)[5:9] == \
        ["-o", "NMS", "-m", "4"]
    # what the build record keeps of it: the key masked
    assert KEY not in agent_build.redact_argv(argv, KEY)
