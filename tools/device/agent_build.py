"""`build`: turn a package's model into what this device runs, one build per device at a time.

  .etlt + TensorRT  tao-converter -k $KEY -d C,H,W -o NMS -m MAXB -e model.engine -t fp16 -w BYTES -i nchw (UFF)
                    tao-converter -k $KEY -d C,H,W [-p Input,1xCxHxW,BxCxHxW,BxCxHxW] -e ... (ONNX payload)
  .onnx + TensorRT  trtexec --onnx=model.onnx --saveEngine=model.engine --fp16 <workspace> [--min/opt/maxShapes]
  .onnx, no TensorRT, onnxruntime installed: nothing to build; the model is loaded once to prove it runs and the
                    runtime is recorded in build.json.

Which graph: model.json may offer one per runtime (`graphs`, docs/model-package.md). TensorRT builds the plugin graph
(NMS on the GPU, NMSDynamic_TRT) when this device's libnvinfer_plugin has that creator (read from the library by the
probe), else the top-level graph; ONNX Runtime loads its own graph. build.json records the package's model
(`model_file`, `model_sha256`: what the host compares) and the graph built (`graph`, `graph_file`, `graph_sha256`),
so smoke and detect open the engine with the outputs it has.

The engine is written to a temp name and renamed only when the tool succeeded, so a build killed by the OOM
killer or a dropped SSH session never leaves a truncated model.engine that a later smoke would try to load.
The .etlt key comes from an environment variable (the host sends it on stdin, never on the SSH command line) and
is masked in every output, command record and error. tao-converter accepts it only as `-k KEY`, so during the
build it is visible in that process's argument list to users of the device (`ps`); nowhere else.
"""

import os
import time

import agent_probe
from agent_common import (AgentError, device_lock, load_json, redact_argv, run_tool, sha256_file,
                          write_json_atomic)
from agent_package import load_model_json, select_graph

KEY_ENV = "TAOFLOW_ETLT_KEY"
MIN_BUILD_MEMORY_MB = 600  # below this (RAM + swap) a Nano build of an SSD gets "Killed"; refuse up front
INT8_MIN_CC = (6, 1)  # Maxwell (Nano, 5.3) has no INT8 in TensorRT


def workspace_mb(memory, requested=None):
    """Builder workspace: a quarter of available RAM, 64..2048 MiB; the rest is for weights and tactics."""
    if requested:
        return int(requested)
    available = (memory or {}).get("available_mb") or 1024
    return max(64, min(2048, available // 4))


def trtexec_workspace_flag(trt_version, mb):
    """TRT <= 8.3 trtexec takes --workspace=MiB; 8.4 deprecated it for --memPoolSize and 10.0 removed it."""
    major, minor = [int(p) for p in (trt_version.split(".") + ["0"])[:2]]
    if (major, minor) < (8, 4):
        return "--workspace={}".format(mb)
    return "--memPoolSize=workspace:{}".format(mb)  # MiB is the default unit in 8.4 .. 10.x


def choose_runtime(requested, model_file, trt_version, ort):
    if requested == "tensorrt" or (requested == "auto" and trt_version):
        if not trt_version:
            raise AgentError("no TensorRT on this device (no tensorrt module, NvInferVersion.h or libnvinfer)")
        return "tensorrt"
    if model_file.endswith(".etlt"):
        raise AgentError("no TensorRT on this device: a .etlt model needs TensorRT and tao-converter")
    if not ort:
        raise AgentError("no TensorRT on this device and no onnxruntime to run the ONNX model")
    return "onnxruntime"


def _check_precision(precision, gpu):
    cc = (gpu or {}).get("compute_capability")
    if precision == "int8" and cc and tuple(int(p) for p in cc.split(".")) < INT8_MIN_CC:
        raise AgentError("INT8 needs compute capability >= 6.1; this GPU is {} ({}): deploy an fp16 package".format(
            cc, gpu.get("name")))


def tensorrt_argv(meta, package, tmp_engine, tools, trt_version, max_batch, ws_mb, key):
    inp = meta["input"]
    model = os.path.join(package, meta["model_file"])
    precision = meta.get("precision", "fp16")
    if model.endswith(".etlt"):
        if not tools.get("tao-converter"):
            raise AgentError("tao-converter not found (PATH or <device root>/bin): install the aarch64 build for "
                             "TensorRT {}".format(trt_version))
        if not key:
            raise AgentError("the .etlt key is not set: export {} on the device side of the deploy".format(KEY_ENV))
        argv = [tools["tao-converter"], "-k", key, "-d", "{},{},{}".format(inp["channels"], inp["height"],
                                                                          inp["width"])]
        etlt = meta.get("etlt") if isinstance(meta.get("etlt"), dict) else {}
        if etlt.get("payload") == "onnx":
            # An ONNX payload names its own outputs (-o is for UFF) and has an explicit batch dimension: a
            # dynamic one needs an optimization profile (-p), and -m applies to implicit-batch (UFF) models only.
            if inp.get("dynamic_batch", False):
                chw = "{}x{}x{}".format(inp["channels"], inp["height"], inp["width"])
                argv += ["-p", "{},1x{},{}x{},{}x{}".format(inp["name"], chw, max_batch, chw, max_batch, chw)]
        else:  # TAO 3/4 UFF: the graph ends in the NMS plugin node, the batch is implicit
            argv += ["-o", "NMS", "-m", str(max_batch)]
        argv += ["-e", tmp_engine, "-t", precision, "-w", str(ws_mb << 20), "-i", "nchw"]
        if precision == "int8":
            argv += ["-c", os.path.join(package, "cal.bin")]
        return argv + [model]
    if not tools.get("trtexec"):
        raise AgentError("trtexec not found (PATH or /usr/src/tensorrt/bin): build it in "
                         "/usr/src/tensorrt/samples/trtexec with make")
    argv = [tools["trtexec"], "--onnx=" + model, "--saveEngine=" + tmp_engine,
            trtexec_workspace_flag(trt_version, ws_mb)]
    if precision == "fp16":
        argv.append("--fp16")
    elif precision == "int8":
        argv += ["--int8", "--calib=" + os.path.join(package, "cal.bin")]
    if inp.get("dynamic_batch", False):
        chw = "{}x{}x{}".format(inp["channels"], inp["height"], inp["width"])
        argv += ["--minShapes={}:1x{}".format(inp["name"], chw),
                 "--optShapes={}:{}x{}".format(inp["name"], max_batch, chw),
                 "--maxShapes={}:{}x{}".format(inp["name"], max_batch, chw)]
    return argv


def build(root, package, runtime="auto", max_batch=1, workspace=None, timeout_s=3600, lock_wait_s=0.0):
    meta = load_model_json(package)
    trt_version = agent_probe.tensorrt_version()
    ort = agent_probe.onnxruntime_info()
    chosen = choose_runtime(runtime, meta["model_file"], trt_version, ort)
    view = select_graph(meta, chosen, device_plugins(meta) if chosen == "tensorrt" else None)
    started = time.time()
    record = {"runtime": chosen, "model_file": meta["model_file"],
              "model_sha256": sha256_file(os.path.join(package, meta["model_file"])),
              "graph": view["graph"], "graph_file": view["model_file"],
              "graph_sha256": sha256_file(os.path.join(package, view["model_file"])),
              "precision": meta.get("precision", "fp16"), "built_at": started}
    with device_lock(root, "build", lock_wait_s):
        previous = _reusable(package, record)
        if previous is not None:
            return previous
        if chosen == "onnxruntime":
            from agent_infer import OnnxRuntimeModel
            OnnxRuntimeModel(os.path.join(package, view["model_file"]), view).close()
            record.update(runtime_version=ort["version"], engine=None, engine_sha256=None, command=None)
        else:
            record.update(_build_engine(root, package, view, trt_version, max_batch, workspace, timeout_s))
    record["seconds"] = round(time.time() - started, 3)
    write_json_atomic(os.path.join(package, "build.json"), record)
    return record


def device_plugins(meta):
    """The plugin creators this device's libnvinfer_plugin has, when model.json offers a graph that needs one
    (reading the library costs a Nano a second or two, so only then); None otherwise or without the library."""
    if "tensorrt" not in (meta.get("graphs") or {}):
        return None
    return (agent_probe.plugin_library() or {}).get("plugins")


def _reusable(package, record):
    """A finished build of these exact model bytes: a retried `build` after a dropped SSH connection (the first
    one ran on as an orphan and finished) returns it instead of spending another half hour on a Nano."""
    path = os.path.join(package, "build.json")
    if not os.path.isfile(path):
        return None
    previous = load_json(path)[0]
    # a build.json from before `graphs` built the top-level model
    previous.setdefault("graph_file", previous.get("model_file"))
    previous.setdefault("graph_sha256", previous.get("model_sha256"))
    keys = ("runtime", "model_file", "model_sha256", "graph_file", "graph_sha256", "precision")
    if any(previous.get(k) != record[k] for k in keys):
        return None
    engine = previous.get("engine")
    if engine and (not os.path.isfile(os.path.join(package, engine))
                   or sha256_file(os.path.join(package, engine)) != previous.get("engine_sha256")):
        return None
    previous["reused"] = True
    return previous


def _build_engine(root, package, meta, trt_version, max_batch, workspace, timeout_s):
    memory = agent_probe.memory()
    _check_precision(meta.get("precision", "fp16"), agent_probe.gpu())
    free = ((memory or {}).get("available_mb") or 0) + ((memory or {}).get("swap_free_mb") or 0)
    if memory and free < MIN_BUILD_MEMORY_MB:
        raise AgentError("only {} MiB of RAM + swap free; an engine build needs {} MiB (add swap or stop "
                         "services)".format(free, MIN_BUILD_MEMORY_MB))
    ws_mb = workspace_mb(memory, workspace)
    tools = {"trtexec": agent_probe.tool_path("trtexec", agent_probe.TRTEXEC_PATHS, root),
             "tao-converter": agent_probe.tool_path("tao-converter", [], root)}
    key = os.environ.get(KEY_ENV)
    engine = os.path.join(package, "model.engine")
    tmp_engine = os.path.join(package, ".model.engine.tmp-{}".format(os.getpid()))
    argv = tensorrt_argv(meta, package, tmp_engine, tools, trt_version, max_batch, ws_mb, key)
    try:
        rc, tail = run_tool(argv, timeout_s, secret=key)
        if rc != 0 or not os.path.isfile(tmp_engine) or os.path.getsize(tmp_engine) == 0:
            why = "timed out after {} s".format(timeout_s) if rc is None else "exited with {}".format(rc)
            raise AgentError("{} {}".format(os.path.basename(argv[0]), why), details={"output_tail": tail})
        os.replace(tmp_engine, engine)
    finally:
        if os.path.exists(tmp_engine):
            os.unlink(tmp_engine)
    return {"runtime_version": trt_version, "engine": "model.engine", "engine_sha256": sha256_file(engine),
            "workspace_mb": ws_mb, "max_batch": max_batch, "command": redact_argv(argv, key)}
