"""Preflight decisions from probe data: runtimes, TensorRT ops and opsets per version, INT8 on Maxwell, .etlt needs."""

import shutil

import pytest

from taoflow.deploy import build_package, build_problems, choose_canary, device_problems, load_package
from taoflow.contract.trt_ops import trt_max_opset, trt_supported_ops
from taoflow.deploy.preflight import device_graph, ort_limits
from tests.deploy.plugin_export import untrained_export
from tests.deploy.probes import cpu_device, nano, package_variant, ready_nano, tiny_onnx, xavier


@pytest.fixture
def variant(selftest_package, tmp_path):
    count = iter(range(100))

    def make(meta=None, files=None):
        return load_package(package_variant(selftest_package, tmp_path / f"pkg{next(count)}", meta, files))
    return make


def test_the_selftest_package_fits_cpu_devices_and_ready_nanos(selftest_package):
    package = load_package(selftest_package)
    assert device_problems(cpu_device(), package) == []
    assert device_problems(ready_nano(), package) == [] and build_problems(ready_nano(), package) == []


def test_int8_is_refused_on_a_nano_with_the_reason(variant):
    int8 = variant({"precision": "int8"}, {"cal.bin": b"calibration"})
    (problem,) = device_problems(ready_nano(), int8)
    assert problem.startswith("INT8 refused: NVIDIA Jetson Nano Developer Kit has compute capability 5.3")
    assert "sm_53" in problem and "deploy an fp16 export" in problem
    assert device_problems(xavier(), int8) == []
    no_cache = variant({"precision": "int8"})
    assert device_problems(xavier(), no_cache) == ["an INT8 package needs its calibration cache cal.bin"]
    assert device_problems(cpu_device(), int8) == []  # onnxruntime runs the float model; precision is TensorRT's


def test_tensorrt_operator_support_follows_the_release():
    assert "Celu" not in trt_supported_ops("7.1.3") and "Celu" in trt_supported_ops("8.0.1")
    assert "ScatterND" not in trt_supported_ops("8.0.1") and "ScatterND" in trt_supported_ops("8.2.1")
    assert "Xor" not in trt_supported_ops("8.2.1") and "Xor" in trt_supported_ops("8.4.3")
    assert "NonMaxSuppression" not in trt_supported_ops("8.6.1")  # experimental in the parser: never exported
    assert [trt_max_opset(v) for v in ("7.1.3", "8.0.1", "8.2.1", "8.5.2", "10.3.0")] == [11, 13, 13, 17, 17]


def test_an_op_or_opset_the_devices_tensorrt_lacks_is_refused(variant):
    scatter = variant(files={"model.onnx": lambda p: tiny_onnx(p, "ScatterND", inputs=3)})
    assert device_problems(ready_nano(tensorrt="8.0.1"), scatter) == [
        "TensorRT 8.0.1's ONNX parser does not support ScatterND"]
    assert device_problems(ready_nano(tensorrt="8.2.1"), scatter) == []
    opset15 = variant(files={"model.onnx": lambda p: tiny_onnx(p, opset=15, ir=8)})
    assert device_problems(ready_nano(), opset15) == [
        "ONNX opset 15 is newer than TensorRT 8.2.1 parses (13); export with --target_opset 13"]


def test_onnxruntime_limits_follow_the_release(variant):
    assert ort_limits("1.10.0") == (15, 8) and ort_limits("1.8.1") == (14, 7) and ort_limits("1.17.0") is None
    opset16 = variant(files={"model.onnx": lambda p: tiny_onnx(p, opset=16, ir=8)})
    assert device_problems(cpu_device("1.10.0"), opset16) == [
        "ONNX opset 16 is newer than onnxruntime 1.10.0 loads (15); export with --target_opset 13"]
    ir9 = variant(files={"model.onnx": lambda p: tiny_onnx(p, opset=13, ir=9)})
    assert device_problems(cpu_device("1.10.0"), ir9) == [
        "ONNX IR version 9 is newer than onnxruntime 1.10.0 loads (8)"]
    assert device_problems(cpu_device("1.17.0"), ir9) == []


def test_etlt_needs_tensorrt_plugins_a_matching_tao_converter_and_the_key(variant):
    etlt = variant({"model_file": "model.etlt", "output": {"kind": "tao_nms"}}, {"model.etlt": b"encrypted"})
    assert device_problems(cpu_device(), etlt) == [
        "a .etlt model needs TensorRT with pycuda; the device has onnxruntime"]
    stock = ready_nano(nvinfer_plugin=nano()["nvinfer_plugin"])
    assert device_problems(stock, etlt) == [
        "libnvinfer_plugin lacks BatchTilePlugin_TRT: build the TensorRT OSS plugins for TensorRT 8.2.1 and "
        "replace the library"]
    assert device_problems(ready_nano(), etlt) == []
    assert build_problems(ready_nano(), etlt, etlt_key="k") == []
    assert build_problems(ready_nano(), etlt) == ["a .etlt needs its model key: pass the key the model was "
                                                  "exported with"]
    no_converter = ready_nano(tools={"trtexec": "/usr/bin/trtexec", "tao-converter": None})
    assert build_problems(no_converter, etlt, "k")[0].startswith("tao-converter not found")
    trt7 = ready_nano(tool_links={"tao-converter": {"nvinfer_major": "7", "missing": ["libnvinfer.so.7"]}})
    assert build_problems(trt7, etlt, "k") == [
        "tao-converter was built for TensorRT 7, the device has TensorRT 8.2.1: install the tao-converter build "
        "for TensorRT 8.2.1"]


def test_missing_runtime_modules_memory_and_disk(selftest_package):
    package = load_package(selftest_package)
    as_shipped = nano()  # JetPack 4.6 without pycuda: TensorRT is there but the agent cannot drive it
    assert device_problems(as_shipped, package) == [
        "neither TensorRT with pycuda nor onnxruntime in the device Python: install pycuda (JetPack has TensorRT) "
        "or onnxruntime"]
    no_numpy = cpu_device()
    no_numpy["modules"]["numpy"] = None
    assert device_problems(no_numpy, package) == ["no numpy in the device Python: install python3-numpy"]
    full = cpu_device(disk={"path": "/", "free_mb": 10, "total_mb": 100})
    assert device_problems(full, package)[0].startswith("device disk full: 10 MiB free")
    starved = ready_nano(memory={"available_mb": 300, "swap_free_mb": 100})
    assert build_problems(starved, package) == [
        "only 400 MiB of RAM + swap free; an engine build needs 600 MiB"]
    assert build_problems(ready_nano(tools={"trtexec": None}), package) == [
        "trtexec not found: build it in /usr/src/tensorrt/samples/trtexec with make"]


def test_canary_is_tagged_then_roomiest_among_those_that_can_build(selftest_package):
    package = load_package(selftest_package)
    probes = {"a": ready_nano(memory={"available_mb": 1000, "swap_free_mb": 0}),
              "b": ready_nano(memory={"available_mb": 3000, "swap_free_mb": 0}),
              "c": ready_nano(memory={"available_mb": 3500, "swap_free_mb": 0}, tools={"trtexec": None})}
    assert choose_canary(["a", "b", "c"], probes, package)[0] == "b"
    assert choose_canary(["a", "b", "c"], probes, package, tags={"a": ("canary",)})[0] == "a"
    canary, problems = choose_canary(["c"], probes, package)
    assert canary is None and problems["c"][0].startswith("trtexec not found")


def test_tao5_onnx_needs_the_nms_plugin_it_names_not_parser_support(variant):
    """TAO 5's ONNX ends in an NMSDynamic_TRT node: the parser hands it to that plugin, so the device's plugin
    library must have that creator; the node is not an op the parser lacks, and no BatchTile is needed."""
    tao = variant({"output": {"kind": "tao_nms"}}, {"model.onnx": lambda p: tiny_onnx(p, op="NMSDynamic_TRT")})
    assert device_problems(cpu_device(), tao) == [
        "a TAO NMS-plugin model needs TensorRT with pycuda; the device has onnxruntime"]
    assert device_problems(ready_nano(), tao) == [  # a library without the creator (as the probe read it)
        "libnvinfer_plugin lacks NMSDynamic_TRT: build the TensorRT OSS plugins for TensorRT 8.2.1 and replace "
        "the library"]
    oss = ready_nano()
    oss["nvinfer_plugin"]["plugins"] = ["NMSDynamic_TRT", "NMS_TRT"]
    assert device_problems(oss, tao) == [] and build_problems(oss, tao) == []
    # in a native (decoded) export the same node would be an op the parser does not know
    odd = variant(None, {"model.onnx": lambda p: tiny_onnx(p, op="NMSDynamic_TRT")})
    assert device_problems(oss, odd) == ["TensorRT 8.2.1's ONNX parser does not support NMSDynamic_TRT"]


@pytest.fixture(scope="module")
def two_graph_package(tmp_path_factory):
    """A packaged native export offering model_nms.onnx (NMSDynamic_TRT) to TensorRT devices."""
    root = tmp_path_factory.mktemp("two-graphs")
    export, images = untrained_export(root)
    return build_package(export, root / "pkg", images, count=2)


def _with_plugins(probe, plugins):
    probe["nvinfer_plugin"]["plugins"] = plugins
    return probe


@pytest.mark.parametrize("tensorrt", ["8.0.1", "8.2.1", "10.3.0"])
def test_the_plugin_graph_passes_preflight_on_tensorrt(two_graph_package, tensorrt):
    """JetPack 4.6 (8.0.1), 4.6.1+ (8.2.1) and TensorRT 10: a device whose plugin library has NMSDynamic_TRT runs the
    plugin graph, and every op of it parses there."""
    device = _with_plugins(ready_nano(tensorrt=tensorrt), ["BatchTilePlugin_TRT", "NMSDynamic_TRT", "NMS_TRT"])
    assert device_graph(device, two_graph_package)["model_file"] == "model_nms.onnx"
    assert device_problems(device, two_graph_package) == []
    assert build_problems(device, two_graph_package) == []


def test_without_the_plugin_a_device_takes_the_decoded_graph_and_is_not_refused(two_graph_package):
    for device in (ready_nano(), _with_plugins(ready_nano(tensorrt="11.0.0"), ["EfficientNMS_TRT"]),
                   ready_nano(nvinfer_plugin=None)):
        assert device_graph(device, two_graph_package)["model_file"] == "model.onnx"
        assert device_problems(device, two_graph_package) == []
    cpu = cpu_device()
    assert device_graph(cpu, two_graph_package) == two_graph_package.meta["graphs"]["onnxruntime"]
    assert device_problems(cpu, two_graph_package) == []


def test_the_plugin_graphs_ops_are_checked_for_the_device_that_runs_it(two_graph_package, tmp_path):
    """An op of the plugin graph that TensorRT 8.0 lacks refuses a device that runs the plugin graph, not one that
    runs the decoded graph."""
    import onnx
    from onnx import helper

    pkg = tmp_path / "pkg"
    shutil.copytree(two_graph_package.path, pkg)
    model = onnx.load(str(pkg / "model_nms.onnx"))
    node = next(n for n in model.graph.node if n.op_type == "Softmax")
    model.graph.node.insert(list(model.graph.node).index(node) + 1, helper.make_node(
        "Round", [node.output[0]], ["rounded"]))  # an extra op (dead end): what matters is the op list
    onnx.save(model, str(pkg / "model_nms.onnx"))
    package = load_package(pkg)
    with_plugin = _with_plugins(ready_nano(tensorrt="8.0.1"), ["NMSDynamic_TRT", "NMS_TRT"])
    assert device_problems(with_plugin, package) == ["TensorRT 8.0.1's ONNX parser does not support Round"]
    assert device_problems(ready_nano(tensorrt="8.0.1"), package) == []
