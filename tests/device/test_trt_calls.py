"""The TensorRT / pycuda calls of the detect path, pinned for TensorRT 8.0, 8.2 (JetPack 4.6) and 10.

agent_detect runs agent_trt.TensorRTModel (through agent_smoke.open_model, as on a device) on a video with
recording stand-ins of `tensorrt` and `pycuda` (tests/device/trt_standins.py, whose docstring says where each call
and rule comes from: NVIDIA/TensorRT python/src/infer/pyCore.cpp at 8.0.1 / 8.2.1 / v10.0.1 and the TensorRT
Python API docs for those releases, the 8.x -> 10.x migration guide's removed APIs, samples/python/common.py and
common_runtime.py for the call order, plugin/nmsPlugin for the NMS outputs, inducer/pycuda src/cpp/cuda.hpp and
src/wrapper/wrap_cudadrv.cpp for contexts, memory and copies). The engine the stand-in deserializes computes the
self-test package's network (its ONNX graph in ONNX Runtime) and, for the NMS-plugin layout, the plugin's NMS
(the one-by-one oracle of test_infer.py) with the keep count written as int32 into the FLOAT NMS_1 binding, as the
plugin does. So the detections must equal ONNX Runtime's on the same frames, and the calls must be exactly:

  load      init, make_context, init_libnvinfer_plugins, deserialize_cuda_engine, create_execution_context,
            Stream, pop                                        (the context is current only while the model works)
  1st frame push, [set_binding_shape | set_input_shape when the batch is dynamic], per tensor pagelocked_empty +
            mem_alloc [+ set_tensor_address on 10], memcpy_htod_async(Input), execute_async (8.x implicit batch) |
            execute_async_v2 (8.x) | execute_async_v3 (10), memcpy_dtoh_async per output, synchronize, pop
  frames    push, memcpy_htod_async, execute..., memcpy_dtoh_async per output, synchronize, pop
  close     push, free per tensor, (stream, engine and context released while current), detach

and the service's swap: models made and destroyed in its model thread, pushed and popped in the serving thread
around each inference, the old context destroyed after the swap. Nothing may touch a destroyed or foreign context,
leak one, read an output before the stream is synchronized, or import pycuda.autoinit.
"""

import gc
import json
import os
import shutil
import signal
import sys

import cv2
import numpy as np
import pytest
from agent_common import AgentError
from agent_trt import keep_counts

import agent_detect
import agent_probe
from tests.device import trt_standins
from tests.device.test_infer import reference_decoded_to_nms

RELEASES = ["8.0", "8.2", "10"]
KEEP_TOP_K = 200  # the self-test package's nms.keep_top_k
COPIES = ("memcpy_htod_async", "memcpy_dtoh_async")
CALLS = ("init", "make_context", "init_libnvinfer_plugins", "deserialize_cuda_engine", "create_execution_context",
         "Stream", "push", "pop", "set_binding_shape", "set_input_shape", "pagelocked_empty", "mem_alloc",
         "set_tensor_address", "execute_async", "execute_async_v2", "execute_async_v3", "synchronize", "free",
         "detach") + COPIES


class SelftestNetwork(object):
    """The self-test package's graph, run by ONNX Runtime: what the stand-in engine computes."""

    def __init__(self, package):
        import onnxruntime
        self.session = onnxruntime.InferenceSession(str(package / "model.onnx"), providers=["CPUExecutionProvider"])
        self.nms = json.loads((package / "model.json").read_text())["nms"]
        self.executions = 0
        self.hook = None

    def decoded(self, inputs):
        self.executions += 1
        if self.hook:
            self.hook(self.executions)
        boxes, scores = self.session.run(["boxes", "scores"], {"Input": inputs["Input"]})
        return {"boxes": boxes, "scores": scores}

    def plugin(self, inputs, implicit=False):
        decoded = self.decoded(inputs)
        rows, counts = reference_decoded_to_nms(decoded["boxes"], decoded["scores"], self.nms)
        if implicit:  # tao-converter engines: no batch axis in the binding shapes, [1, K, 7] and [1, 1, 1]
            rows, counts = rows.reshape(-1, 1, KEEP_TOP_K, 7), counts.reshape(-1, 1, 1)
        return {"NMS": rows, "NMS_1": counts}  # counts int32 into a FLOAT binding, as the plugin writes them

    def networks(self):
        return {"decoded": self.decoded, "plugin": self.plugin,
                "plugin-implicit": lambda inputs: self.plugin(inputs, implicit=True)}


# engine kinds: how the engine was built, which fixes its I/O as TensorRT reports it
def engine_tensors(kind, output):
    batch = {"dynamic": -1, "static": 1, "implicit": None}[kind]

    def shape(*dims):
        return dims if batch is None else (batch,) + dims
    tensors = [("Input", True, shape(3, 64, 64), "FLOAT")]
    if output == "tao_nms":
        nms = [("NMS", False, shape(1, KEEP_TOP_K, 7) if batch is not None else (1, KEEP_TOP_K, 7), "FLOAT"),
               ("NMS_1", False, shape(1, 1, 1) if batch is not None else (1, 1, 1), "FLOAT")]
        tensors += nms
    else:
        tensors += [("boxes", False, shape(32, 4), "FLOAT"), ("scores", False, shape(32, 3), "FLOAT")]
    if kind == "static":  # binding order is the engine's: outputs may come first
        tensors = tensors[1:] + tensors[:1]
    return tensors


def write_engine(package, release, kind, output):
    network = "decoded" if output == "decoded" else ("plugin-implicit" if kind == "implicit" else "plugin")
    plugins = () if output == "decoded" else (("NMS_TRT",) if kind == "implicit" else ("NMSDynamic_TRT",))
    blob = trt_standins.engine_blob(release, network, engine_tensors(kind, output), implicit=kind == "implicit",
                                    max_batch_size=4 if kind == "implicit" else 1, plugins=plugins)
    (package / "model.engine").write_bytes(blob)


def install_version(root, selftest_package, version, release, kind, output):
    package = root / "models" / "lpd" / version
    shutil.copytree(selftest_package, package)
    if output == "tao_nms":
        meta = json.loads((package / "model.json").read_text())
        meta["output"] = {"kind": "tao_nms"}
        (package / "model.json").write_text(json.dumps(meta))
    write_engine(package, release, kind, output)
    (package / "smoke.json").write_text(json.dumps({"passed": True}))
    return package


def switch(root, version):
    models = root / "models" / "lpd"
    tmp = models / ".current.tmp"
    if tmp.is_symlink():
        tmp.unlink()
    tmp.symlink_to(version)
    tmp.replace(models / "current")


def write_video(path, package, frames):
    images = [cv2.resize(cv2.imread(str(p)), (128, 96)) for p in sorted((package / "samples").glob("*.png"))]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (128, 96))
    for i in range(frames):
        writer.write(images[i % len(images)])
    writer.release()
    return path


@pytest.fixture
def device(monkeypatch, tmp_path, selftest_package):
    """(install(release) -> World, root): a device whose probe finds TensorRT and pycuda, and a model root."""
    real_module_version = agent_probe.module_version
    network = SelftestNetwork(selftest_package)

    def install(release):
        world = trt_standins.install(monkeypatch, release, network.networks())
        monkeypatch.setattr(agent_probe, "tensorrt_version", lambda *args, **kwargs: world.version)
        monkeypatch.setattr(agent_probe, "module_version", lambda name, errors=None: "2021.1" if name == "pycuda"
                            else real_module_version(name, errors))
        world.network = network
        return world
    return install, tmp_path / "root"


def detections(jsonl):
    return [(line["frame"], line["detections"]) for line in map(json.loads, jsonl.read_text().splitlines())]


def onnxruntime_detections(tmp_path, selftest_package, video):
    root = tmp_path / "ort-root"
    shutil.copytree(selftest_package, root / "models" / "lpd" / "v1")
    agent_detect.detect(str(root), "lpd", str(video), version="v1", jsonl=str(tmp_path / "ort.jsonl"),
                        runtime="onnxruntime", threshold=0.2)
    return detections(tmp_path / "ort.jsonl")


def named(world, thread="MainThread"):
    """The calls of one thread, copies and bindings named by the tensor they moved."""
    out = []
    for call, detail in world.sequence(thread, CALLS):
        if call in COPIES:
            out.append("{} {}".format(call, world.label(detail)))
        elif call == "set_tensor_address":
            out.append("{} {}".format(call, detail))
        else:
            out.append(call)
    return out


def expected_calls(release, kind, output, frames):
    outputs = ["NMS", "NMS_1"] if output == "tao_nms" else ["boxes", "scores"]
    order = [name for name, _, _, _ in engine_tensors(kind, output)]
    execute = "execute_async" if kind == "implicit" else ("execute_async_v3" if release == "10" else
                                                          "execute_async_v2")
    load = ["init", "make_context", "init_libnvinfer_plugins", "deserialize_cuda_engine",
            "create_execution_context", "Stream", "pop"]
    first = ["push"]
    if kind == "dynamic":
        first.append("set_input_shape" if release == "10" else "set_binding_shape")
    for name in order:
        first += ["pagelocked_empty", "mem_alloc"] + (["set_tensor_address " + name] if release == "10" else [])
    run = ["memcpy_htod_async Input", execute] + ["memcpy_dtoh_async " + name for name in outputs] + [
        "synchronize", "pop"]
    frame = ["push"] + run
    close = ["push"] + ["free"] * len(order) + ["detach"]
    return load + first + run + frame * (frames - 1) + close


CASES = [(release, kind, output) for release in RELEASES for kind in ("dynamic", "static", "implicit")
         for output in ("tao_nms", "decoded")
         if kind != "implicit" or (release != "10" and output == "tao_nms")]  # implicit: tao-converter on 8.x


@pytest.mark.parametrize("release, kind, output", CASES)
def test_detect_makes_exactly_the_calls_of_its_tensorrt_and_finds_what_onnxruntime_finds(
        device, tmp_path, selftest_package, release, kind, output):
    install, root = device
    world = install(release)
    install_version(root, selftest_package, "v1", release, kind, output)
    video = write_video(tmp_path / "clip.avi", selftest_package, 5)
    result = agent_detect.detect(str(root), "lpd", str(video), version="v1", jsonl=str(tmp_path / "trt.jsonl"),
                                 runtime="tensorrt", threshold=0.2)
    assert result["runtime"] == "tensorrt" and result["runtime_version"] == world.version and result["frames"] == 5

    found = detections(tmp_path / "trt.jsonl")
    assert found == onnxruntime_detections(tmp_path, selftest_package, video)
    assert sum(len(d) for _, d in found) > 0  # the clip has objects: a keep count read as 0 would show here

    assert named(world) == expected_calls(release, kind, output, 5)
    gc.collect()  # whatever the loop's closures kept is collected: a stream or buffer outliving its context shows
    assert world.problems == []
    assert not [t for t, _, _ in world.calls if t != "MainThread"]  # detect: one thread owns the model
    assert sorted(world.released) == world.allocated and all(not c.alive for c in world.contexts)
    assert world.stack() == [] and world.deprecated == [] and "pycuda.autoinit" not in sys.modules


def test_each_stand_in_has_the_api_of_its_release_only(monkeypatch):
    for release in RELEASES:
        world = trt_standins.install(monkeypatch, release, {})
        trt = sys.modules["tensorrt"]
        world.driver.init()
        world.driver.Device(0).make_context()
        engine = trt.Runtime(trt.Logger(trt.Logger.WARNING)).deserialize_cuda_engine(trt_standins.engine_blob(
            release, "decoded", engine_tensors("dynamic", "decoded")))
        context = engine.create_execution_context()
        bindings = ("num_bindings", "get_binding_name", "binding_is_input", "get_binding_shape",
                    "get_binding_dtype", "max_batch_size")
        named_api = ("num_io_tensors", "get_tensor_name", "get_tensor_mode", "get_tensor_shape", "get_tensor_dtype")
        if release == "10":
            assert not any(hasattr(engine, a) for a in bindings) and all(hasattr(engine, a) for a in named_api)
            assert not any(hasattr(context, a) for a in ("execute_async", "execute_async_v2", "set_binding_shape"))
            assert hasattr(trt, "TensorIOMode")
            with pytest.warns(DeprecationWarning):
                assert engine.has_implicit_batch_dimension is False
        else:
            assert all(hasattr(engine, a) for a in bindings) and not any(hasattr(engine, a) for a in named_api)
            assert not any(hasattr(context, a) for a in ("execute_async_v3", "set_input_shape",
                                                         "set_tensor_address"))
            assert not hasattr(trt, "TensorIOMode")
        del context, engine
        world.driver.Context.pop()


def test_the_nms_keep_count_is_read_as_the_plugin_writes_it():
    ints = np.array([3, 0, 200], np.int32).reshape(3, 1, 1, 1)
    np.testing.assert_array_equal(keep_counts(ints.view(np.float32), 200), ints)  # FLOAT binding, int32 bits
    np.testing.assert_array_equal(keep_counts(np.float32([[5.0]]), 200), [[[[5]]]])  # a cast to real floats
    np.testing.assert_array_equal(keep_counts(ints, 200), ints)
    assert keep_counts(ints.view(np.float32), 200).dtype == np.int32
    with pytest.raises(AgentError, match="NMS_1"):
        keep_counts(np.float32([np.nan]), 200)


@pytest.mark.parametrize("release", RELEASES)
def test_an_engine_that_does_not_deserialize_leaves_no_context_behind(device, tmp_path, selftest_package, release):
    install, root = device
    world = install(release)
    package = install_version(root, selftest_package, "v1", release, "dynamic", "decoded")
    other = "10" if release != "10" else "8.2"
    (package / "model.engine").write_bytes(trt_standins.engine_blob(other, "decoded",
                                                                    engine_tensors("dynamic", "decoded")))
    video = write_video(tmp_path / "clip.avi", selftest_package, 2)
    with pytest.raises(AgentError, match="cannot deserialize"):
        agent_detect.detect(str(root), "lpd", str(video), version="v1", runtime="tensorrt")
    assert [c.alive for c in world.contexts] == [False] and world.stack() == [] and world.problems == []
    assert named(world)[-2:] == ["deserialize_cuda_engine", "detach"]  # detached while current: destroyed


def test_an_autoinit_context_of_the_calling_thread_is_left_current(device, tmp_path, selftest_package):
    install, root = device
    world = install("8.2")
    import pycuda.autoinit  # some other library of the application made one
    install_version(root, selftest_package, "v1", "8.2", "dynamic", "tao_nms")
    video = write_video(tmp_path / "clip.avi", selftest_package, 3)
    agent_detect.detect(str(root), "lpd", str(video), version="v1", runtime="tensorrt")
    assert world.stack() == [pycuda.autoinit.context] and pycuda.autoinit.context.alive
    assert world.problems == [] and [c.alive for c in world.contexts] == [True, False]


@pytest.mark.parametrize("release", ["8.2", "10"])
def test_the_service_swaps_engines_made_in_its_model_thread_and_run_in_the_serving_thread(
        device, tmp_path, selftest_package, release):
    install, root = device
    world = install(release)
    for version in ("v1", "v2"):
        install_version(root, selftest_package, version, release, "dynamic", "tao_nms")
    switch(root, "v1")
    video = write_video(tmp_path / "loop.avi", selftest_package, 4)

    def hook(executions):  # deterministic: switch `current` at the 10th inference, stop 25 inferences later
        if executions == 10:
            switch(root, "v2")
        if executions == 35:
            os.kill(os.getpid(), signal.SIGTERM)
    world.network.hook = hook
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        result = agent_detect.serve(str(root), "lpd", str(video), jsonl=str(tmp_path / "live.jsonl"),
                                    runtime="tensorrt", loop=True, threshold=0.2)
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
    assert result["swaps"] == 1 and result["dropped"] == 0 and result["version"] == "v2"
    lines = [json.loads(line) for line in (tmp_path / "live.jsonl").read_text().splitlines()]
    assert [line["frame"] for line in lines] == list(range(len(lines)))
    versions = [line["version"] for line in lines]
    first_v2 = versions.index("v2")
    assert set(versions[:first_v2]) == {"v1"} and set(versions[first_v2:]) == {"v2"}
    assert lines[first_v2]["source_frame"] == (lines[first_v2 - 1]["source_frame"] + 1) % 4  # no frame skipped

    gc.collect()
    assert world.problems == [] and world.deprecated == [] and "pycuda.autoinit" not in sys.modules
    models = named(world, "detect-models")
    assert models.count("make_context") == 2 and models.count("detach") == 2  # both made and destroyed there
    assert not {"execute_async_v2", "execute_async_v3", "memcpy_htod_async Input"} & set(models)
    serving = named(world, "MainThread")
    assert "make_context" not in serving and "detach" not in serving
    # every inference in the serving thread: push, copy in, execute, copies out, synchronize, pop
    execute = "execute_async_v3" if release == "10" else "execute_async_v2"
    for i, call in enumerate(serving):
        if call == execute:
            window = serving[:i]
            assert window[len(window) - 1 - window[::-1].index("push"):].count("pop") == 0
            assert serving[i - 1] == "memcpy_htod_async Input"
            assert serving[i + 1:i + 5] == ["memcpy_dtoh_async NMS", "memcpy_dtoh_async NMS_1", "synchronize",
                                            "pop"]
    assert serving.count(execute) == 35
    # v1's context destroyed at the swap, while v2 served on; v2's at the end
    detaches = [(who, detail) for who, call, detail in world.calls if call == "detach"]
    assert detaches == [("detect-models", 0), ("detect-models", 1)]
    v1_gone = next(i for i, (who, call, detail) in enumerate(world.calls) if call == "detach" and detail == 0)
    assert any(call == execute for _, call, _ in world.calls[v1_gone:])
    assert all(not c.alive for c in world.contexts) and sorted(world.released) == world.allocated


def test_a_model_loaded_in_one_thread_runs_and_closes_in_others_without_leaking_its_context(
        device, selftest_package):
    import threading

    from agent_infer import parse_nms, preprocess
    from agent_package import load_model_json
    from agent_trt import TensorRTModel
    install, root = device
    world = install("8.2")
    package = install_version(root, selftest_package, "v1", "8.2", "dynamic", "tao_nms")
    meta = load_model_json(str(package))
    made = {}
    loader = threading.Thread(target=lambda: made.update(model=TensorRTModel(str(package / "model.engine"), meta)),
                              name="loader")
    loader.start()
    loader.join()
    image = cv2.imread(str(selftest_package / "samples" / "two_objects.png"))
    model = made.pop("model")
    found = parse_nms(*model.infer(preprocess(image, meta["input"])), 0, ["background", "car", "plate"], 128, 96)
    assert {d["label"] for d in found if d["confidence"] > 0.5} == {"car", "plate"}
    model.close()  # in this thread, not the context's: pycuda would leak it unless it is current when detached
    gc.collect()
    assert world.problems == [] and [c.alive for c in world.contexts] == [False] and world.stack() == []
    assert sorted(world.released) == world.allocated
