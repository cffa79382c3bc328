"""Preflight: can this device take this package, and can it build the engine for its group? From probe data only.

Run on the host before anything is sent, so a rollout refuses a device with a reason a person can act on instead
of failing half an hour into a Nano's engine build. Two kinds of problems:
- device problems: the device cannot run the package at all (no runtime, an op its TensorRT parser lacks, an
  opset its onnxruntime refuses, INT8 on a Maxwell GPU, no NMS plugin for an engine that needs one, no disk);
- build problems: the device could run a prebuilt engine but cannot build one (no trtexec / tao-converter, a
  tao-converter built for another TensorRT, no .etlt key, too little memory). Only the canary builds, so a group
  is refused for build problems only when none of its devices can build.
"""

from functools import lru_cache

from ..contract.model_package import graph_for
from ..contract.trt_ops import (PLUGIN_RELEASES, PLUGIN_SUFFIX, parser_problems, plugin_in_release,
                                plugin_releases_text, version_tuple)

MIN_BUILD_MEMORY_MB = 600  # the agent's own floor (tools/device/agent_build.py): RAM + swap free for a build
DISK_MARGIN_MB = 32
INT8_MIN_CC = (6, 1)  # TensorRT INT8 needs Pascal (6.1) or newer; the Nano's Maxwell GPU is 5.3
ETLT_PLUGINS = ("NMS_TRT", "BatchTilePlugin_TRT")  # a TAO SSD .etlt graph uses both (TRT-OSS on JetPack 4)
# onnxruntime release -> newest opset and IR version it loads (onnxruntime docs/Versioning.md; 1.10, the last
# with Python 3.6 wheels, checked by loading models in the device venv). Newer releases than the table: no limit
# known here, and every one of them loads what taoflow exports (opset 13, IR 7).
ORT_LIMITS = (((1, 9), 15, 8), ((1, 8), 14, 7), ((1, 6), 13, 7), ((1, 3), 12, 6), ((1, 0), 11, 6))
ORT_TABLE_END = (1, 10)


def ort_limits(ort_version):
    """(newest opset, newest IR version) this onnxruntime loads, or None when the table does not say."""
    version = version_tuple(ort_version)
    if version is None or version > ORT_TABLE_END:
        return None
    return next(((opset, ir) for first, opset, ir in ORT_LIMITS if version >= first), (10, 5))


@lru_cache(maxsize=8)
def _onnx_facts(path, sha256):
    import onnx

    from ..etlt import onnx_facts
    facts = onnx_facts(onnx.load(str(path), load_external_data=False))
    return frozenset(facts["ops"]), facts["opset"], facts["ir_version"]


def model_facts(package, model_file=None):
    """(operators, opset, IR version) of one of the package's ONNX graphs (default: model.json's top-level
    model_file); for a .etlt, of the ONNX inside it as the package builder recorded it after decoding it on the
    host (model.json `etlt`); None when that is unknown (a .etlt packaged without its key, or a TAO 3/4 UFF
    payload)."""
    meta = package.meta
    model_file = model_file or meta["model_file"]
    if model_file.endswith(".etlt"):
        inside = meta.get("etlt") if isinstance(meta.get("etlt"), dict) else {}
        if inside.get("payload") != "onnx" or not isinstance(inside.get("ops"), list):
            return None
        return frozenset(inside["ops"]), inside.get("opset"), inside.get("ir_version") or 0
    if not model_file.endswith(".onnx"):
        return None
    sha256 = next(f.sha256 for f in package.files if f.rel == model_file)
    return _onnx_facts(str(package.path / model_file), sha256)


def device_graph(probe, package):
    """The graph of the package this device runs (model.json's `graphs`, docs/model-package.md), as the agent
    picks it: a TensorRT device takes `graphs.tensorrt` when its plugin library has that graph's plugin (the probe
    read the library), an ONNX Runtime device `graphs.onnxruntime`; otherwise the top-level graph."""
    meta = package.meta
    runtimes = probe.get("runtimes") or []
    if "tensorrt" in runtimes:
        graph = graph_for(meta, "tensorrt")
        plugin = (graph.get("plugin") or {}).get("op")
        found = (probe.get("nvinfer_plugin") or {}).get("plugins") or []
        if plugin is None or plugin in found:
            return graph
    elif "onnxruntime" in runtimes:
        return graph_for(meta, "onnxruntime")
    return graph_for(meta, None)


def gpu_cc(probe):
    return version_tuple(((probe.get("gpu") or {}).get("compute_capability")))


def device_problems(probe, package):
    """Why this device cannot run this package at all ([] when it can)."""
    problems = []
    meta, runtimes = package.meta, probe.get("runtimes") or []
    python = version_tuple((probe.get("python") or {}).get("version"))
    if python is not None and python < (3, 6):
        problems.append(f"Python {probe['python']['version']}: the device agent needs Python 3.6 or newer")
    modules = probe.get("modules") or {}
    for module, package_name in (("numpy", "python3-numpy"), ("cv2", "python3-opencv")):
        if not modules.get(module):
            problems.append(f"no {module} in the device Python: install {package_name}")
    graph = device_graph(probe, package)
    etlt = graph["model_file"].endswith(".etlt")
    needs_plugins = etlt or (graph.get("output") or {}).get("kind") == "tao_nms"
    if "tensorrt" in runtimes:
        problems += _tensorrt_problems(probe, package, graph, needs_plugins)
    elif "onnxruntime" in runtimes and not needs_plugins:
        problems += _onnxruntime_problems(probe, package, graph)
    elif needs_plugins:
        have = " and ".join(runtimes) or "no runtime"
        hint = ""
        if etlt and (meta.get("output") or {}).get("kind") == "decoded" and "onnxruntime" in runtimes:
            hint = (" (package a native .etlt export for ONNX Runtime devices with etlt_devices='onnxruntime': the "
                    "host decodes it and ships the ONNX)")
        problems.append(f"a {'.etlt' if etlt else 'TAO NMS-plugin'} model needs TensorRT with pycuda; the device "
                        f"has {have}{hint}")
    else:
        problems.append("neither TensorRT with pycuda nor onnxruntime in the device Python: install pycuda "
                        "(JetPack has TensorRT) or onnxruntime")
    free = (probe.get("disk") or {}).get("free_mb")
    need = package.size / (1 << 20) + DISK_MARGIN_MB
    if free is not None and free < need:
        problems.append(f"device disk full: {free} MiB free, the package needs {need:.0f} MiB")
    return problems


def _tensorrt_problems(probe, package, graph, needs_plugins):
    problems = []
    trt = probe.get("tensorrt")
    cc = gpu_cc(probe)
    if package.precision == "int8":
        if cc is not None and cc < INT8_MIN_CC:
            gpu = (probe.get("gpu") or {}).get("name") or "this GPU"
            problems.append(f"INT8 refused: {gpu} has compute capability {cc[0]}.{cc[1]} (a Jetson Nano's Maxwell "
                            f"GPU, sm_53, has no INT8 in TensorRT); deploy an fp16 export")
        elif not (package.path / "cal.bin").is_file():
            problems.append("an INT8 package needs its calibration cache cal.bin")
    facts = model_facts(package, graph["model_file"])
    # TAO 5's ONNX and taoflow's plugin graph end in an NMSDynamic_TRT node, which the parser hands to the plugin
    # of that name; a .etlt whose graph the host could not read is assumed to be TAO 3/4's UFF (NMS_TRT and
    # BatchTilePlugin_TRT); a native .etlt (read on the host when packaged) names no plugin
    plugin_ops = sorted(op for op in facts[0] if op.endswith(PLUGIN_SUFFIX)) if facts is not None else []
    wanted = plugin_ops if facts is not None else list(ETLT_PLUGINS)
    if needs_plugins and wanted:
        found = (probe.get("nvinfer_plugin") or {}).get("plugins")
        missing = [p for p in wanted if found is not None and p not in found]
        if probe.get("nvinfer_plugin") is None or missing:
            names = missing or wanted
            # a release that never registers the creator: no library rebuild of that release gives it either
            known = [f"{p} is in {plugin_releases_text(p)}" for p in names
                     if p in PLUGIN_RELEASES and not plugin_in_release(p, trt)]
            problems.append(f"libnvinfer_plugin lacks {', '.join(names)}: build the TensorRT OSS plugins for "
                            f"TensorRT {trt} and replace the library" + (f" ({'; '.join(known)})" if known else ""))
    if facts is not None:
        ops, opset, _ = facts
        # the device's plugin library was read by the probe and checked above: it decides, not the release table
        problems += parser_problems(ops, opset, trt, plugins=plugin_ops if needs_plugins else (), check_release=False)
    return problems


def _onnxruntime_problems(probe, package, graph):
    facts = model_facts(package, graph["model_file"])
    ort = ((probe.get("modules") or {}).get("onnxruntime") or {}).get("version")
    limits = ort_limits(ort)
    if facts is None or limits is None:
        return []
    _, opset, ir = facts
    problems = []
    if opset is not None and opset > limits[0]:
        problems.append(f"ONNX opset {opset} is newer than onnxruntime {ort} loads ({limits[0]}); export with "
                        f"--target_opset {min(limits[0], 13)}")
    if ir > limits[1]:
        problems.append(f"ONNX IR version {ir} is newer than onnxruntime {ort} loads ({limits[1]})")
    return problems


def build_problems(probe, package, etlt_key=None):
    """Why this device cannot build the group's engine ([] when it can; an onnxruntime device builds nothing)."""
    if "tensorrt" not in (probe.get("runtimes") or []):
        return []
    problems = []
    trt = probe.get("tensorrt")
    tools = probe.get("tools") or {}
    if package.meta["model_file"].endswith(".etlt"):
        if not tools.get("tao-converter"):
            problems.append(f"tao-converter not found (PATH or <device root>/bin): install the aarch64 build for "
                            f"TensorRT {trt}")
        else:
            problems += _link_problems("tao-converter", (probe.get("tool_links") or {}).get("tao-converter"), trt)
        if not etlt_key:
            problems.append("a .etlt needs its model key: pass the key the model was exported with")
    elif not tools.get("trtexec"):
        problems.append("trtexec not found: build it in /usr/src/tensorrt/samples/trtexec with make")
    memory = probe.get("memory") or {}
    free = (memory.get("available_mb") or 0) + (memory.get("swap_free_mb") or 0)
    if memory and free < MIN_BUILD_MEMORY_MB:
        problems.append(f"only {free} MiB of RAM + swap free; an engine build needs {MIN_BUILD_MEMORY_MB} MiB")
    return problems


def _link_problems(tool, links, trt):
    if not links:
        return []
    major = str(version_tuple(trt, 1)[0]) if version_tuple(trt, 1) else None
    if links.get("nvinfer_major") and major and links["nvinfer_major"] != major:
        return [f"{tool} was built for TensorRT {links['nvinfer_major']}, the device has TensorRT {trt}: install "
                f"the {tool} build for TensorRT {trt}"]
    if links.get("missing"):
        return [f"{tool} cannot load {', '.join(links['missing'])}: install the {tool} build for TensorRT {trt}"]
    return []


def choose_canary(names, probes, package, etlt_key=None, tags=None):
    """(canary name or None, {device: build problems}): a device tagged `canary` in the inventory first, then the
    most free RAM + swap (an engine build is what runs a Nano out of memory), then by name, among the devices
    that can build."""
    tags = tags or {}
    problems = {n: build_problems(probes[n], package, etlt_key) for n in names}
    able = [n for n in names if not problems[n]]
    if not able:
        return None, problems

    def rank(name):
        memory = probes[name].get("memory") or {}
        free = (memory.get("available_mb") or 0) + (memory.get("swap_free_mb") or 0)
        return ("canary" not in tags.get(name, ()), -free, name)
    return min(able, key=rank), problems
