"""TensorRT + pycuda runtime for serialized engines (TrtSSD-style), for JetPack 4.6 (TRT 8.0/8.2) and TRT 10.

This cannot run without a Jetson or an NVIDIA GPU; it is imported only when `tensorrt` imports. The calls used and
the TensorRT versions that have them (TensorRT Python API docs; "removed" per NVIDIA's 8.x -> 10.x migration guide,
"Removed Python APIs and Replacements"; "added 8.5" per the 8.5 release, which introduced the named-tensor API):

  call                                                  8.0  8.2  10.x  notes
  trt.Logger, trt.Runtime, trt.init_libnvinfer_plugins   y    y    y    plugins: NMS_TRT, BatchTilePlugin_TRT
  Runtime.deserialize_cuda_engine(bytes)                 y    y    y
  ICudaEngine.create_execution_context()                 y    y    y
  trt.nptype(DataType)                                   y    y    y
  ICudaEngine.has_implicit_batch_dimension, max_batch_size  y  y   -    implicit batch is gone in 10.0
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
The context is created explicitly instead of `import pycuda.autoinit` so that close() releases the GPU before the
agent exits and a failed load leaves no context behind.
"""

import numpy as np

from agent_common import AgentError
from agent_infer import decoded_to_nms


class TensorRTModel(object):
    name = "tensorrt"

    def __init__(self, engine_path, meta):
        import pycuda.driver as cuda
        import tensorrt as trt
        self.cuda, self.trt = cuda, trt
        self.version = trt.__version__
        self.meta = meta
        cuda.init()
        self.ctx = cuda.Device(0).make_context()
        try:
            self._load(engine_path)
        except BaseException:
            self.ctx.pop()
            self.ctx.detach()
            raise
        self.ctx.pop()  # infer() and close() push it again around every use

    def _load(self, engine_path):
        trt, cuda = self.trt, self.cuda
        logger = trt.Logger(trt.Logger.WARNING)
        trt.init_libnvinfer_plugins(logger, "")  # registers NMS_TRT / BatchTilePlugin_TRT before deserializing
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
        self.implicit = bool(getattr(self.engine, "has_implicit_batch_dimension", False))
        self.named = hasattr(self.engine, "num_io_tensors") and not self.implicit
        self.tensors = self._io_tensors()
        input_name = self.meta["input"]["name"]
        if input_name not in self.tensors or not self.tensors[input_name]["input"]:
            raise AgentError("engine has no input tensor {!r}".format(input_name), engine_path)
        out = self.meta["output"]
        self.output_names = ["NMS", "NMS_1"] if out["kind"] == "tao_nms" else [out["boxes"], out["scores"]]
        for name in self.output_names:
            if name not in self.tensors:
                raise AgentError("engine has no output tensor {!r} (has {})".format(
                    name, sorted(self.tensors)), engine_path)
        self.buffers = {}  # name -> (host pagelocked array, device allocation) for the current batch size
        self.batch = None

    def _io_tensors(self):
        engine, trt = self.engine, self.trt
        tensors = {}
        if self.named:  # TRT >= 8.5
            for i in range(engine.num_io_tensors):
                name = engine.get_tensor_name(i)
                tensors[name] = {"index": i, "input": engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT,
                                 "dtype": np.dtype(trt.nptype(engine.get_tensor_dtype(name)))}
        else:  # TRT 8.0 / 8.2 bindings
            for i in range(engine.num_bindings):
                name = engine.get_binding_name(i)
                tensors[name] = {"index": i, "input": engine.binding_is_input(i),
                                 "dtype": np.dtype(trt.nptype(engine.get_binding_dtype(i)))}
        return tensors

    def _set_batch(self, shape):
        """Set the input shape (dynamic batch) and (re)allocate every I/O buffer for it."""
        input_name = self.meta["input"]["name"]
        index = self.tensors[input_name]["index"]
        if self.implicit:
            if shape[0] > self.engine.max_batch_size:
                raise AgentError("batch {} exceeds the engine's max batch {}".format(shape[0],
                                                                                  self.engine.max_batch_size))
        elif self.named:
            if not self.context.set_input_shape(input_name, tuple(shape)):
                raise AgentError("engine rejects input shape {}".format(list(shape)))
        elif -1 in tuple(self.engine.get_binding_shape(index)):
            if not self.context.set_binding_shape(index, tuple(shape)):
                raise AgentError("engine rejects input shape {}".format(list(shape)))
        for _, device in self.buffers.values():
            device.free()
        self.buffers = {}
        for name, info in self.tensors.items():
            if self.implicit:  # binding shapes exclude the batch axis
                dims = (shape[0],) + tuple(self.engine.get_binding_shape(info["index"]))
            elif self.named:
                dims = tuple(self.context.get_tensor_shape(name))
            else:
                dims = tuple(self.context.get_binding_shape(info["index"]))
            if any(d < 0 for d in dims):
                raise AgentError("tensor {} still has a dynamic shape {}".format(name, list(dims)))
            host = self.cuda.pagelocked_empty(int(np.prod(dims)), info["dtype"]).reshape(dims)
            device = self.cuda.mem_alloc(max(host.nbytes, 1))
            self.buffers[name] = (host, device)
            if self.named:
                self.context.set_tensor_address(name, int(device))
        self.batch = tuple(shape)

    def infer(self, batch):
        cuda = self.cuda
        self.ctx.push()
        try:
            if self.batch != tuple(batch.shape):
                self._set_batch(batch.shape)
            host, device = self.buffers[self.meta["input"]["name"]]
            np.copyto(host, batch.astype(host.dtype, copy=False))
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
                    ok = self.context.execute_async_v2(bindings, self.stream.handle)
            if not ok:
                raise AgentError("TensorRT execution failed")
            for name in self.output_names:
                out_host, out_device = self.buffers[name]
                cuda.memcpy_dtoh_async(out_host, out_device, self.stream)
            self.stream.synchronize()
            first, second = [self.buffers[name][0].copy() for name in self.output_names]
        finally:
            self.ctx.pop()
        if self.meta["output"]["kind"] == "tao_nms":
            # NMS_1 is int32 in the engine; a [N, keep_top_k*7] view from an old exporter is reshaped here.
            return first.reshape(first.shape[0], 1, -1, 7), second.astype(np.int32).reshape(-1, 1, 1, 1)
        return decoded_to_nms(first, second, self.meta["nms"])

    def close(self):
        self.ctx.push()
        try:
            for _, device in self.buffers.values():
                device.free()
            self.buffers = {}
            self.context = self.engine = self.runtime = None
        finally:
            self.ctx.pop()
            self.ctx.detach()
