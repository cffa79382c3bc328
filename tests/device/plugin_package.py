"""A package with both graphs (model.json `graphs`), made from the self-test package for the agent's tests: the
plugin graph's bytes are a stand-in (the agent only checks names, attributes and digests; TensorRT builds it)."""

import json
import shutil

PLUGIN_ATTRIBUTES = {"shareLocation": 1, "varianceEncodedInTarget": 0, "backgroundLabelId": 0, "codeType": 1,
                     "confSigmoid": 0, "isNormalized": 1, "inputOrder": [1, 2, 0], "confidenceThreshold": 0.01,
                     "nmsThreshold": 0.6, "topK": 200, "keepTopK": 200, "scoreBits": 0}


def plugin_package(selftest_package, dest):
    """A copy of the self-test package offering model_nms.onnx (NMSDynamic_TRT) to TensorRT devices."""
    shutil.copytree(selftest_package, dest)
    (dest / "model_nms.onnx").write_bytes(b"an ONNX graph ending in NMSDynamic_TRT")
    meta = json.loads((dest / "model.json").read_text())
    meta["graphs"] = {
        "tensorrt": {"model_file": "model_nms.onnx",
                     "output": {"kind": "tao_nms", "nms": "NMS", "keep_count": "NMS_1"},
                     "plugin": {"op": "NMSDynamic_TRT",
                                "attributes": dict(PLUGIN_ATTRIBUTES, numClasses=len(meta["classes"]) + 1)}},
        "onnxruntime": {"model_file": "model.onnx", "output": meta["output"]}}
    (dest / "model.json").write_text(json.dumps(meta, indent=2))
    return dest
