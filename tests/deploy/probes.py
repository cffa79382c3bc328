"""Probe reports of real device kinds, as data: the simulated devices have no GPU, so TensorRT-side decisions
(preflight, doctor) are tested on these. Field for field what tools/device/agent_probe.py reports."""

import copy
import json
import shutil

from onnx import TensorProto, helper

NANO_JP46 = {
    "l4t": {"release": "32.7.1", "board": "t210ref"},
    "tensorrt": "8.2.1",
    "cuda": "10.2.300",
    "cudnn": "8.2.1",
    # The library JetPack ships: NMS_TRT yes, BatchTilePlugin_TRT only in a TensorRT OSS rebuild.
    "nvinfer_plugin": {"path": "/usr/lib/aarch64-linux-gnu/libnvinfer_plugin.so.8.2.1", "sha256": "ab" * 32,
                       "plugins": ["BatchedNMSDynamic_TRT", "BatchedNMS_TRT", "NMS_TRT"]},
    "gpu": {"name": "NVIDIA Jetson Nano Developer Kit", "compute_capability": "5.3", "soc": "tegra210"},
    "power_mode": {"name": "5W", "id": 1},
    "memory": {"total_mb": 3964, "available_mb": 2400, "swap_total_mb": 1982, "swap_free_mb": 1900},
    "disk": {"path": "/home/nvidia/taoflow", "free_mb": 9000, "total_mb": 28000},
    "python": {"version": "3.6.9", "executable": "/usr/bin/python3"},
    "machine": "aarch64",
    "modules": {"numpy": "1.19.5", "cv2": "4.1.1", "tensorrt": "8.2.1.8", "pycuda": None, "onnxruntime": None},
    "tools": {"trtexec": None, "tao-converter": None},
    "tool_links": {},
    "runtimes": [],
    "models": {},
}


def nano(**changes):
    """A JetPack 4.6.1 Nano as it comes (no pycuda, trtexec or tao-converter), with `changes` applied."""
    probe = copy.deepcopy(NANO_JP46)
    probe.update(changes)
    return probe


def ready_nano(**changes):
    """A Nano set up for taoflow: pycuda, trtexec, tao-converter for TensorRT 8, OSS plugins, 4 GB swap."""
    probe = nano(runtimes=["tensorrt"], tools={"trtexec": "/usr/src/tensorrt/bin/trtexec",
                                               "tao-converter": "/home/nvidia/taoflow/bin/tao-converter"},
                 tool_links={"trtexec": {"nvinfer_major": "8", "missing": []},
                             "tao-converter": {"nvinfer_major": "8", "missing": []}},
                 power_mode={"name": "MAXN", "id": 0})
    probe["modules"]["pycuda"] = "2020.1"
    probe["memory"]["swap_total_mb"] = 4096
    probe["nvinfer_plugin"]["plugins"] = ["BatchTilePlugin_TRT", "BatchedNMS_TRT", "NMS_TRT"]
    probe.update(changes)
    return probe


def xavier(**changes):
    probe = ready_nano(gpu={"name": "Jetson AGX Xavier", "compute_capability": "7.2", "soc": "tegra194"})
    probe.update(changes)
    return probe


def cpu_device(ort="1.10.0", **changes):
    probe = nano(l4t=None, tensorrt=None, nvinfer_plugin=None, gpu=None, power_mode=None, runtimes=["onnxruntime"],
                 machine="x86_64")
    probe["modules"].update(tensorrt=None, onnxruntime={"version": ort, "providers": ["CPUExecutionProvider"]})
    probe.update(changes)
    return probe


def tiny_onnx(path, op="Relu", opset=13, ir=7, inputs=1):
    """A one-node ONNX file: enough for the preflight, which reads op types, opset and IR version only."""
    names = [f"x{i}" for i in range(inputs)]
    graph = helper.make_graph([helper.make_node(op, names, ["y"])], "g",
                              [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1]) for n in names],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = ir
    path.write_bytes(model.SerializeToString())


def package_variant(selftest_package, dest, meta=None, files=None):
    """A copy of the self-test package with model.json fields replaced and files added (name -> bytes or a
    callable writing the path)."""
    shutil.copytree(selftest_package, dest)
    for name, content in (files or {}).items():
        if callable(content):
            content(dest / name)
        else:
            (dest / name).write_bytes(content)
    if meta:
        data = json.loads((dest / "model.json").read_text())
        data.update(meta)
        (dest / "model.json").write_text(json.dumps(data, indent=2))
    return dest
