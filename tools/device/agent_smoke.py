"""`smoke`: run the shipped sample images on this device, compare with the host's detections, measure FPS.

The result is written to <package>/smoke.json (atomically) together with the digest of the package content it
tested; `activate` refuses a version whose smoke.json is missing, failed, or was made for other bytes.
"""

import os
import time

import cv2

import agent_probe
from agent_build import device_plugins
from agent_common import AgentError, load_json, write_json_atomic
from agent_infer import OnnxRuntimeModel, compare, parse_nms, preprocess
from agent_package import load_expected, load_labels, load_model_json, package_digest, select_graph


def open_model(package, meta, runtime="auto"):
    """The package's model in the runtime that runs it here: its TensorRT engine (when built), else ONNX Runtime.

    Each runtime runs its own graph of model.json (`graphs`): the engine the graph it was built from (build.json's
    `graph_file`; an engine fanned out from the group's canary comes without build.json, and is the graph this
    device's plugin library selects, the same library the canary had: it is part of the engine key), ONNX Runtime
    its decoded graph."""
    engine = os.path.join(package, "model.engine")
    has_trt = agent_probe.tensorrt_version() is not None and agent_probe.module_version("pycuda") is not None
    if runtime == "tensorrt" or (runtime == "auto" and os.path.isfile(engine)):
        if not has_trt:
            raise AgentError("no TensorRT with pycuda on this device to run model.engine", engine)
        if not os.path.isfile(engine):
            raise AgentError("no model.engine in the package: run build first", engine)
        from agent_trt import TensorRTModel
        view = engine_graph(package, meta)
        model = TensorRTModel(engine, view)
    else:
        view = select_graph(meta, "onnxruntime")
        path = os.path.join(package, view["model_file"])
        if not path.endswith(".onnx"):
            raise AgentError("{} needs a TensorRT engine: run build first".format(view["model_file"]), path)
        if agent_probe.onnxruntime_info() is None:
            raise AgentError("no TensorRT engine and no onnxruntime on this device")
        model = OnnxRuntimeModel(path, view)
    model.graph = view["graph"]  # which of model.json's graphs runs (recorded by smoke)
    return model


def engine_graph(package, meta):
    """model.json as the package's model.engine sees it (select_graph): the graph build.json says it was built
    from, else the one this device's plugin library selects."""
    build = os.path.join(package, "build.json")
    record = load_json(build, "build.json")[0] if os.path.isfile(build) else {}
    if record.get("runtime") == "tensorrt" and isinstance(record.get("graph_file"), str):
        return select_graph(meta, "tensorrt", model_file=record["graph_file"])
    return select_graph(meta, "tensorrt", device_plugins(meta))


def smoke(root, package, runtime="auto", iterations=20, warmup=2):
    meta = load_model_json(package)
    labels = load_labels(package, meta["classes"])
    expected = load_expected(package, labels)
    digest = package_digest(package)
    model = open_model(package, meta, runtime)
    try:
        images, failures, first_batch = {}, 0, None
        for name in sorted(expected["images"]):
            path = os.path.join(package, "samples", name)
            image = cv2.imread(path, cv2.IMREAD_COLOR)
            if image is None:
                raise AgentError("cannot decode the sample image", path)
            height, width = image.shape[:2]
            batch = preprocess(image, meta["input"])
            first_batch = batch if first_batch is None else first_batch
            nms_out, keep = model.infer(batch)
            found = parse_nms(nms_out, keep, 0, labels, width, height)
            result = compare(expected["images"][name], found, expected["iou_threshold"],
                             expected["score_threshold"])
            failures += bool(result["missing"] or result["extra"])
            # Recorded: what the rule can look at (a model's confidence floor emits many near-zero rows).
            floor = expected["score_threshold"] - 0.1
            images[name] = {"detections": [d for d in found if d["confidence"] > floor],
                            "missing": result["missing"], "extra": result["extra"]}
        fps, latency_ms = _speed(model, first_batch, iterations, warmup)
    finally:
        model.close()
    record = {"passed": failures == 0, "runtime": model.name, "runtime_version": model.version, "graph": model.graph,
              "package_digest": digest, "fps": fps, "latency_ms": latency_ms, "iterations": iterations,
              "images": images, "checked_at": time.time()}
    write_json_atomic(os.path.join(package, "smoke.json"), record)
    if failures:
        missing = sum(len(r["missing"]) for r in images.values())
        extra = sum(len(r["extra"]) for r in images.values())
        raise AgentError("smoke test failed on {} of {} sample images: {} expected detections not found, {} "
                         "unexpected".format(failures, len(images), missing, extra), details=record)
    return record


def _speed(model, batch, iterations, warmup):
    """Inference + NMS throughput on one preprocessed sample, batch 1 (how the device runs the camera)."""
    for _ in range(warmup):
        model.infer(batch)
    start = time.perf_counter()
    for _ in range(iterations):
        model.infer(batch)
    elapsed = time.perf_counter() - start
    return round(iterations / elapsed, 2), round(1000.0 * elapsed / iterations, 3)
