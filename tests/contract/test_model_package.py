"""model.json's `graphs` and the NMS plugin's attributes, as the host-side readers check them."""

import numpy as np
import pytest

from taoflow.contract.model_package import (graph_files, graph_for, graphs_problems, nms_settings,
                                            plugin_graph_name)
from taoflow.contract.nms import attribute_problems, plugin_attributes

NMS = {"confidence_threshold": 0.01, "iou_threshold": 0.6, "top_k": 400, "keep_top_k": 200}


def meta(**graphs):
    return {"model_file": "model.onnx", "output": {"kind": "decoded", "boxes": "boxes", "scores": "scores"},
            "classes": ["car", "plate"], "nms": dict(NMS), "graphs": graphs}


def trt_graph(**attrs):
    return {"model_file": "model_nms.onnx", "output": {"kind": "tao_nms", "nms": "NMS", "keep_count": "NMS_1"},
            "plugin": {"op": "NMSDynamic_TRT", "attributes": dict(plugin_attributes(NMS, 2), **attrs)}}


def test_nms_settings_are_taos_engine_settings():
    # the spec's float32 0.01 reads back as 0.0099999998; TAO's exporter gives the plugin 2 x top_k candidates
    assert nms_settings(np.float32(0.01), np.float32(0.6), 200) == NMS


def test_plugin_attributes_are_taos_ssd_layout():
    assert plugin_attributes(NMS, 2, score_bits=10) == {
        "shareLocation": 1, "varianceEncodedInTarget": 0, "backgroundLabelId": 0, "codeType": 1, "confSigmoid": 0,
        "isNormalized": 1, "inputOrder": [1, 2, 0], "numClasses": 3, "confidenceThreshold": 0.01,
        "nmsThreshold": 0.6, "topK": 400, "keepTopK": 200, "scoreBits": 10}
    assert attribute_problems(plugin_attributes(NMS, 2), NMS, 2) == []
    # float32 as TensorRT reads them: 0.0099999998 is the spec's 0.01
    assert attribute_problems(dict(plugin_attributes(NMS, 2), confidenceThreshold=float(np.float32(0.01))),
                              NMS, 2) == []


@pytest.mark.parametrize("change, problem", [
    ({"numClasses": 2}, "numClasses is 2, expected 3"),
    ({"topK": 200.0}, "topK: must be an integer"),
    ({"nmsThreshold": 1}, "nmsThreshold: must be a float"),
    ({"inputOrder": [0, 1, 2]}, "inputOrder is [0, 1, 2], expected [1, 2, 0]"),
    ({"keepTopK": 500}, "keepTopK 500 > topK 400: the plugin writes no output then"),
    ({"clipBoxes": 1}, "clipBoxes: not a field of NMSDynamic_TRT"),
    ({"confSigmoid": 1}, "confSigmoid is 1, expected 0"),
])
def test_attribute_problems_name_the_field(change, problem):
    problems = attribute_problems(dict(plugin_attributes(NMS, 2), **change), NMS, 2)
    assert any(p.startswith(problem) for p in problems), problems


def test_a_runtime_takes_its_graph_or_the_top_level_one():
    m = meta(tensorrt=trt_graph())
    assert graph_for(m, "tensorrt")["model_file"] == "model_nms.onnx"
    assert graph_for(m, "onnxruntime") == {"model_file": "model.onnx", "output": m["output"]}
    assert graph_files(m) == ["model.onnx", "model_nms.onnx"]
    assert plugin_graph_name("export/model.onnx") == "model_nms.onnx"
    old = {"model_file": "model.onnx", "output": m["output"]}  # a package from before `graphs`
    assert graph_for(old, "tensorrt") == old and graph_files(old) == ["model.onnx"] and graphs_problems(old) == []


@pytest.mark.parametrize("graphs, field, message", [
    ({"tensorrt": dict(trt_graph(), model_file="../x.onnx")}, "graphs.tensorrt.model_file", "must name an .onnx"),
    ({"onnxruntime": trt_graph()}, "graphs.onnxruntime.output", "ONNX Runtime runs only 'decoded'"),
    ({"tpu": trt_graph()}, "graphs.tpu", "unknown runtime"),
    ({"tensorrt": dict(trt_graph(), output={"kind": "tao_nms", "nms": "detections"})}, "graphs.tensorrt.output",
     "outputs are NMS and NMS_1"),
    ({"tensorrt": trt_graph(topK=100)}, "graphs.tensorrt.plugin", "topK is 100, expected 400"),
    ({"tensorrt": dict(trt_graph(), plugin={"op": "EfficientNMS_TRT"})}, "graphs.tensorrt.plugin", "must be"),
    ({"onnxruntime": {"model_file": "model.onnx", "output": {"kind": "decoded"}}}, "graphs.onnxruntime.output",
     "names its boxes and scores"),
])
def test_graphs_problems_name_the_field(graphs, field, message):
    problems = graphs_problems(meta(**graphs))
    assert any(f == field and message in m for f, m in problems), problems


def test_graph_files_must_exist_when_asked():
    assert graphs_problems(meta(tensorrt=trt_graph()), exists=lambda name: name == "model.onnx") == [
        ("graphs.tensorrt.model_file", "model_nms.onnx is not there")]
