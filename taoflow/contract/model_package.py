"""The model package's model.json (docs/model-package.md): its format, field names and the checks every host-side
reader shares (the exporters write it, the package builder and taoflow.deploy.package read it). The device agent
(tools/device/agent_package.py, Python 3.6, imports nothing of taoflow) validates the same fields its own way.

A model.json names one graph at its top level (`model_file`, `output`): what an older agent runs, and what any
runtime runs when nothing better is offered. `graphs` may offer one graph per runtime instead:

    "graphs": {"tensorrt":    {"model_file": "model_nms.onnx",
                               "output": {"kind": "tao_nms", "nms": "NMS", "keep_count": "NMS_1"},
                               "plugin": {"op": "NMSDynamic_TRT", "attributes": {...}}},
               "onnxruntime": {"model_file": "model.onnx",
                               "output": {"kind": "decoded", "boxes": "boxes", "scores": "scores"}}}

A TensorRT device takes `graphs.tensorrt` when its plugin library has the plugin the graph names, else the top-level
graph; an ONNX Runtime device takes `graphs.onnxruntime` or the top-level graph. Every graph takes the same input and
gives the same detections (the export checks the plugin's inputs against the network, the package builder checks
both graphs against each other on the candidate images).
"""

from pathlib import PurePosixPath

from .nms import NMS_OUTPUTS, NMS_PLUGIN, attribute_problems

FORMAT = "taoflow-ssd/1"
OUTPUT_KINDS = ("decoded", "tao_nms")
RUNTIMES = ("tensorrt", "onnxruntime")
DECODED_OUTPUT = {"kind": "decoded", "boxes": "boxes", "scores": "scores"}
TAO_NMS_OUTPUT = {"kind": "tao_nms", "nms": NMS_OUTPUTS[0], "keep_count": NMS_OUTPUTS[1]}
PLUGIN_GRAPH_SUFFIX = "_nms"  # model.onnx -> model_nms.onnx


def nms_settings(confidence_threshold, clustering_iou_threshold, top_k):
    """model.json `nms` from a spec's nms_config: TAO's engines run the plugin with topK = 2 x top_k candidates per
    class and keepTopK = top_k (onnx_exporter.py). The proto's floats are float32: rounded to 6 digits they read as
    written in the spec and are the same float32."""
    return {"confidence_threshold": round(float(confidence_threshold), 6),
            "iou_threshold": round(float(clustering_iou_threshold), 6), "top_k": 2 * int(top_k),
            "keep_top_k": int(top_k)}


def plugin_graph_name(model_file):
    """File name of the plugin graph exported beside `model_file` (model.onnx -> model_nms.onnx)."""
    path = PurePosixPath(model_file)
    return f"{path.stem}{PLUGIN_GRAPH_SUFFIX}.onnx"


def graph_for(meta, runtime):
    """The graph a `runtime` device runs when it can: {"model_file", "output"[, "plugin"]}, the top-level graph
    when `graphs` offers none for it."""
    graphs = meta.get("graphs") if isinstance(meta.get("graphs"), dict) else {}
    chosen = graphs.get(runtime)
    if isinstance(chosen, dict):
        return chosen
    return {"model_file": meta.get("model_file"), "output": meta.get("output")}


def graph_files(meta):
    """Every model file model.json names (top level first), without repeats."""
    files = [meta.get("model_file")]
    for graph in (meta.get("graphs") or {}).values():
        if isinstance(graph, dict):
            files.append(graph.get("model_file"))
    return [f for i, f in enumerate(files) if isinstance(f, str) and f not in files[:i]]


def graphs_problems(meta, exists=None):
    """[(field, message)] of what is wrong with model.json's `graphs` ([] when absent or right).

    `exists(name)`: whether a file of that name is beside model.json (not checked when None)."""
    if "graphs" not in meta:
        return []
    graphs = meta["graphs"]
    if not isinstance(graphs, dict) or not graphs:
        return [("graphs", "must map runtimes (tensorrt, onnxruntime) to graphs")]
    problems = []
    for runtime, graph in graphs.items():
        where = f"graphs.{runtime}"
        if runtime not in RUNTIMES:
            problems.append((where, f"unknown runtime {runtime!r} (one of {', '.join(RUNTIMES)})"))
            continue
        if not isinstance(graph, dict):
            problems.append((where, "must be an object with model_file and output"))
            continue
        model_file, output = graph.get("model_file"), graph.get("output")
        if not isinstance(model_file, str) or not model_file.endswith(".onnx") or "/" in model_file:
            problems.append((f"{where}.model_file", f"must name an .onnx file beside model.json, got {model_file!r}"))
        elif exists is not None and not exists(model_file):
            problems.append((f"{where}.model_file", f"{model_file} is not there"))
        kind = output.get("kind") if isinstance(output, dict) else None
        if kind not in OUTPUT_KINDS:
            problems.append((f"{where}.output", f"kind must be one of {', '.join(OUTPUT_KINDS)}"))
        elif runtime == "onnxruntime" and kind != "decoded":
            problems.append((f"{where}.output", "ONNX Runtime runs only 'decoded' graphs (the NMS plugin is "
                                                "TensorRT's)"))
        elif kind == "decoded" and not all(isinstance(output.get(k), str) for k in ("boxes", "scores")):
            problems.append((f"{where}.output", "a 'decoded' graph names its boxes and scores outputs"))
        elif kind == "tao_nms" and [output.get("nms", NMS_OUTPUTS[0]), output.get("keep_count", NMS_OUTPUTS[1])] \
                != list(NMS_OUTPUTS):
            problems.append((f"{where}.output", f"a 'tao_nms' graph's outputs are {' and '.join(NMS_OUTPUTS)}"))
        plugin = graph.get("plugin")
        if kind == "tao_nms":
            problems += [(f"{where}.plugin", p) for p in plugin_problems(plugin, meta)]
    return problems


def plugin_problems(plugin, meta):
    """What is wrong with a graph's `plugin` description against model.json's classes and nms settings."""
    if not isinstance(plugin, dict) or plugin.get("op") != NMS_PLUGIN or not isinstance(plugin.get("attributes"),
                                                                                           dict):
        return [f"must be {{\"op\": \"{NMS_PLUGIN}\", \"attributes\": {{...}}}}"]
    nms, classes = meta.get("nms"), meta.get("classes")
    if not isinstance(nms, dict) or not isinstance(classes, list):
        return ["needs model.json's nms and classes to compare its attributes with"]
    return attribute_problems(plugin["attributes"], nms, len(classes))
