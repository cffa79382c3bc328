"""TensorRT + pycuda runtime for serialized engines (TrtSSD-style), for JetPack 4.6 (TRT 8.0/8.2) and TRT 10.

This cannot run without a Jetson or an NVIDIA GPU; it is imported only when `tensorrt` imports. The calls used and
the TensorRT versions that have them (the Python bindings, NVIDIA/TensorRT python/src/infer/pyCore.cpp at 8.0.1,
8.2.1 and v10.0.1; "removed" per NVIDIA's 8.x -> 10.x migration guide, "Removed Python APIs and Replacements";
the named-tensor API came with 8.5). tests/device/test_trt_calls.py pins these calls with stand-ins of exactly
these API surfaces:

  call                                                  8.0  8.2  10.x  notes
  trt.Logger, trt.Runtime, trt.init_libnvinfer_plugins   y    y    y    plugins: NMS_TRT, NMSDynamic_TRT, ...
  Runtime.deserialize_cuda_engine(bytes)                 y    y    y
  ICudaEngine.create_execution_context()                 y    y    y
  trt.nptype(DataType)                                   y    y    y
  ICudaEngine.has_implicit_batch_dimension, max_batch_size  y  y   -    10: the first warns (deprecated), the
                                                                        second is gone; neither is read there
  ICudaEngine.num_bindings, get_binding_name,            y    y    -    removed in 10.0
    binding_is_input, get_binding_shape, get_binding_dtype
  IExecutionContext.execute_async(batch_size, bindings, stream_handle)  y  y  -  implicit-batch engines (UFF
                                                                                .etlt via tao-converter)
  IExecutionContext.set_binding_shape, get_binding_shape,  y  y    -    explicit batch (ONNX via trtexec)
    execute_async_v2(bindings, stream_handle)
  ICudaEngine.num_io_tensors, get_tensor_name,           -    -    y    added 8.5
    get_tensor_mode, get_tensor_dtype; trt.TensorIOMode
  IExecutionContext.set_input_shape, get_tensor_shape,   -    -    y    added 8.5
    set_tensor_address, execute_async_v3(stream_handle)
  `with trt.Runtime(...)` context managers               y    y    -    not used: removed in 10.0

  pycuda.driver (JetPack 4.6 is pip-built; TensorRT OSS 8.2 samples pin pycuda<2021.1): init, Device(0)
  .make_context, Context.push/pop/detach, Stream, Stream.synchronize, mem_alloc, pagelocked_empty,
  memcpy_htod_async, memcpy_dtoh_async, DeviceAllocation.free

Three execution paths, chosen by feature, not by version string: implicit-batch engines (TAO 3/4 .etlt built by
tao-converter on JetPack 4: binding shapes have no batch axis) run with execute_async(batch_size); explicit-batch
engines run with the bindings API on 8.0-8.4 and with the named-tensor API where it exists (8.5+, only one in 10).

CUDA context (pycuda's rules, src/cpp/cuda.hpp): the context is made explicitly (not `import pycuda.autoinit`,
which would tie one to whichever thread imported it first and keep it to the end of the process) and is current
only while the model works: infer() pushes it in the calling thread and pops it after, so the detector service
can load a model in one thread and run it in another. Everything allocated in it (stream, buffers, TensorRT's
objects) is released while it is current, then it is detached while current, which destroys it whatever thread
closes the model (pycuda silently leaks a context detached from another thread while not current).

The NMS plugins (NMS_TRT, NMSDynamic_TRT) declare their keep-count output FLOAT but write int32 into it
(plugin/nmsPlugin/nmsPlugin.cpp getOutputDataType: "use kFLOAT instead as they have same sizeof";
gatherTopDetections.cu writes through int*; DeepStream's NvDsInferParseCustomNMSTLT reads it as int*): the
buffer is read as int32 bits (keep_counts below).
"""

import numpy as np

from agent_common import AgentError
from agent_infer import decoded_to_nms


def keep_counts(raw, rows):
    """NMS_1 as int32 [N, 1, 1, 1]: int32 bits in a buffer TensorRT calls float32 (the plugins, see above); a
    buffer of actual float counts (an engine with a cast after the plugin) is read by value. `rows`: keep_top_k."""
    raw = np.ascontiguousarray(raw)
    if raw.dtype == np.int32:
        counts = raw
    elif raw.dtype == np.float32:
        bits = raw.view(np.int32)
        if ((bits >= 0) & (bits <= rows)).all():
            counts = bits
        elif np.isfinite(raw).all() and (raw == np.round(raw)).all():
            counts = raw.astype(np.int32)
        else:
            raise AgentError("NMS_1 holds neither int32 counts nor whole numbers: {}".format(raw.reshape(-1)[:4]))
    else:
        counts = raw.astype(np.int32)
    return counts.reshape(-1, 1, 1, 1)


class TensorRTModel(object):
    name = "tensorrt"

    def __init__(self, engine_path, meta):
        import pycuda.driver as cuda
        import tensorrt as trt
        self.cuda, self.trt = cuda, trt
        self.version = trt.__version__
        self.meta = meta
        self.engine_path = engine_path
        self.runtime = self.engine = self.context = self.stream = None
        self.buffers = {}  # name -> (host pagelocked array, device allocation) for the current batch shape
        self.batch = None
        cuda.init()
        self.ctx = cuda.Device(0).make_context()  # made current in this thread
        try:
            self._load(engine_path)
        except BaseException:
            try:
                self._release()
            finally:
                self.ctx.detach()  # current here: destroyed (and popped)
                self.ctx = None
            raise
        self.ctx.pop()  # infer() and close() push it again around every use

    def _load(self, engine_path):
        trt, cuda = self.trt, self.cuda
        logger = trt.Logger(trt.Logger.WARNING)
        trt.init_libnvinfer_plugins(logger, "")  # registers the NMS plugins before deserializing
        with open(engine_path, "rb") as f:
            blob = f.read()
        self.runtime = trt.Runtime(logger)
        self.engine = self.runtime.deserialize_cuda_engine(blob)
        if self.engine is None:
            # "Version tag does not match" and missing plugins both end here; TRT logged the reason on stderr.
            raise AgentError("TensorRT {} cannot deserialize this engine (built by another TensorRT, GPU or "
                             "plugin library?)".format(self.version), engine_path)
        self.context = self.engine.create_execution_context()
        self.stream = cuda.Stream()
        self.named = hasattr(self.engine, "num_io_tensors")  # 8.5+; the only API in 10
        # Implicit batch needs the bindings API (gone in 10, where the flag is deprecated and always false).
        self.implicit = hasattr(self.engine, "num_bindings") and bool(self.engine.has_implicit_batch_dimension)
        if self.implicit:
            self.named = False
        self.tensors = self._io_tensors()
        input_name = self.meta["input"]["name"]
        if input_name not in self.tensors or not self.tensors[input_name]["input"]:
            raise AgentError("engine has no input tensor {!r}".format(input_name), engine_path)
        out = self.meta["output"]
        self.output_names = ["NMS", "NMS_1"] if out["kind"] == "tao_nms" else [out["boxes"], out["scores"]]
        for name in self.output_names:
            if name not in self.tensors or self.tensors[name]["input"]:
                raise AgentError("engine has no output tensor {!r} (has {})".format(
                    name, sorted(self.tensors)), engine_path)

    def _io_tensors(self):
        engine, trt = self.engine, self.trt
        tensors = {}
        if self.named:  # TRT >= 8.5
            for i in range(engine.num_io_tensors):
                name = engine.get_tensor_name(i)
                tensors[name] = {"index": i, "input": engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT,
                                 "dtype": np.dtype(trt.nptype(engine.get_tensor_dtype(name))),
                                 "shape": tuple(engine.get_tensor_shape(name))}
        else:  # TRT 8.0 / 8.2 bindings
            for i in range(engine.num_bindings):
                tensors[engine.get_binding_name(i)] = {
                    "index": i, "input": bool(engine.binding_is_input(i)),
                    "dtype": np.dtype(trt.nptype(engine.get_binding_dtype(i))),
                    "shape": tuple(engine.get_binding_shape(i))}
        return tensors

    def _set_batch(self, shape):
        """Set the input shape (dynamic batch), then (re)allocate every I/O buffer for it."""
        shape = tuple(int(d) for d in shape)
        input_name = self.meta["input"]["name"]
        info = self.tensors[input_name]
        if self.implicit:  # binding shapes exclude the batch axis
            if shape[1:] != info["shape"]:
                raise AgentError("engine input is {} per image; got {}".format(list(info["shape"]), list(shape)))
            if shape[0] > self.engine.max_batch_size:
                raise AgentError("batch {} exceeds the engine's max batch {}".format(
                    shape[0], self.engine.max_batch_size))
        elif -1 not in info["shape"]:  # static: nothing to set, but it must fit
            if shape != info["shape"]:
                raise AgentError("engine input is {}; got {}".format(list(info["shape"]), list(shape)))
        elif self.named:
            if not self.context.set_input_shape(input_name, shape):
                raise AgentError("engine rejects input shape {} (its profile allows {})".format(
                    list(shape), list(info["shape"])))
        elif not self.context.set_binding_shape(info["index"], shape):
            raise AgentError("engine rejects input shape {} (its profile allows {})".format(
                list(shape), list(info["shape"])))
        self._free_buffers()
        for name, tensor in self.tensors.items():
            if self.implicit:
                dims = (shape[0],) + tensor["shape"]
            elif self.named:
                dims = tuple(self.context.get_tensor_shape(name))
            else:
                dims = tuple(self.context.get_binding_shape(tensor["index"]))
            if any(d < 0 for d in dims):
                raise AgentError("tensor {} still has a dynamic shape {}".format(name, list(dims)))
            host = self.cuda.pagelocked_empty(int(np.prod(dims)), tensor["dtype"]).reshape(dims)
            device = self.cuda.mem_alloc(max(host.nbytes, 1))
            self.buffers[name] = (host, device)
            if self.named and not self.context.set_tensor_address(name, int(device)):
                raise AgentError("TensorRT refuses the buffer of tensor {}".format(name))
        self.batch = shape

    def _free_buffers(self):
        buffers, self.buffers = self.buffers, {}
        for _, device in buffers.values():
            device.free()  # the host arrays go with `buffers`, while the context is current

    def run_raw(self, batch):
        """The engine alone on a float32 [N, C, H, W] batch: copies of its outputs (NMS rows and the raw keep
        count, or decoded boxes and scores), in this thread, with the context current only meanwhile."""
        cuda = self.cuda
        self.ctx.push()
        try:
            if self.batch != tuple(batch.shape):
                self._set_batch(batch.shape)
            host, device = self.buffers[self.meta["input"]["name"]]
            np.copyto(host, batch, casting="same_kind")
            cuda.memcpy_htod_async(device, host, self.stream)
            if self.named:
                ok = self.context.execute_async_v3(self.stream.handle)
            else:
                bindings = [0] * len(self.tensors)
                for name, info in self.tensors.items():
                    bindings[info["index"]] = int(self.buffers[name][1])
                if self.implicit:
                    ok = self.context.execute_async(batch_size=batch.shape[0], bindings=bindings,
                                                    stream_handle=self.stream.handle)
                else:
                    ok = self.context.execute_async_v2(bindings=bindings, stream_handle=self.stream.handle)
            if not ok:
                raise AgentError("TensorRT execution failed")
            for name in self.output_names:
                out_host, out_device = self.buffers[name]
                cuda.memcpy_dtoh_async(out_host, out_device, self.stream)
            self.stream.synchronize()  # the host buffers hold the outputs only from here
            return [self.buffers[name][0].copy() for name in self.output_names]
        finally:
            self.ctx.pop()

    def postprocess(self, raw):
        """Outputs of run_raw -> TAO's NMS layout (numpy only: any thread, no CUDA context needed)."""
        first, second = raw
        if self.meta["output"]["kind"] == "tao_nms":
            # [N, keep_top_k, 7] from an implicit-batch engine, [N, 1, keep_top_k, 7] from an explicit one
            rows = first.reshape(first.shape[0], 1, -1, 7)
            return rows, keep_counts(second, rows.shape[2])
        return decoded_to_nms(first, second, self.meta["nms"])

    def infer(self, batch):
        return self.postprocess(self.run_raw(batch))

    def _release(self):
        """Everything made in the context, while it is current (pycuda frees a stream or buffer of a context that
        is not current only in the context's own thread, and TensorRT frees its memory in the current one)."""
        self._free_buffers()
        self.stream = None
        self.context = self.engine = self.runtime = None  # the order TensorRT wants them gone

    def close(self):
        if self.ctx is None:
            return
        self.ctx.push()
        try:
            self._release()
        finally:
            self.ctx.detach()  # current here: destroyed and popped, whichever thread this is
            self.ctx = None
