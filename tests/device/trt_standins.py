"""Recording stand-ins for `tensorrt` (8.0, 8.2, 10) and `pycuda` (driver, autoinit), for the agent's TensorRT path.

Each stand-in has exactly the API surface of its release, so a call the real module lacks fails here as it would on
a device, and it keeps the rules the real ones enforce or silently break on, recording every call (with its thread)
and every breach (`World.problems`) instead of crashing a GPU. Where each surface and rule comes from:

TensorRT Python bindings, NVIDIA/TensorRT python/src/infer/pyCore.cpp at tags 8.0.1, 8.2.1 and v10.0.1 (the .def
lines), and the Python API docs of those releases under https://docs.nvidia.com/deeplearning/tensorrt/:
archives/tensorrt-803/api/python_api/infer/Core/Engine.html and .../ExecutionContext.html (8.0),
archives/tensorrt-825/api/python_api/infer/Core/Engine.html (8.2), latest/_static/python-api/infer/Core/
ExecutionContext.html (10), and the 8.x -> 10.x migration guide (latest/api/migration-guide.html):
- 8.0 / 8.2 ICudaEngine: num_bindings, get_binding_name(index), get_binding_index(name), binding_is_input(index |
  name), get_binding_shape(index | name), get_binding_dtype(index | name), has_implicit_batch_dimension,
  max_batch_size, create_execution_context(). IExecutionContext: execute_async(batch_size=1, bindings,
  stream_handle, input_consumed=None), execute_async_v2(bindings, stream_handle, input_consumed=None),
  set_binding_shape(binding, shape) -> bool, get_binding_shape(binding), all_binding_shapes_specified.
- 10 (migration guide, "Removed Python APIs and Replacements"; the bindings API and implicit batch are gone):
  ICudaEngine: num_io_tensors, get_tensor_name(index), get_tensor_mode(name), get_tensor_shape(name),
  get_tensor_dtype(name), has_implicit_batch_dimension (utils::deprecateMember: reading it warns),
  create_execution_context(strategy=...). IExecutionContext: set_input_shape(name, shape) -> bool,
  get_tensor_shape(name), set_tensor_address(name, memory) -> bool, execute_async_v3(stream_handle) -> bool.
  trt.TensorIOMode (INPUT, OUTPUT) exists from 8.5 only.
- All: Logger(Logger.WARNING), init_libnvinfer_plugins(logger, namespace), Runtime(logger)
  .deserialize_cuda_engine(bytes) -> engine or None (a version-tag mismatch or a missing plugin creator is logged
  and gives None), nptype(DataType), DataType.FLOAT / HALF / INT8 / INT32 / BOOL. Enqueueing needs the engine's
  CUDA context current (TensorRT works in the current context); execute_async (enqueue) refuses explicit-batch
  engines and execute_async_v2 (enqueueV2) implicit-batch ones; an unset dynamic shape or tensor address fails.
- The NMS plugins (plugin/nmsPlugin/nmsPlugin.cpp getOutputDataType, kernels/gatherTopDetections.cu): NMS_1 is
  declared FLOAT but holds int32 counts.
- Call order as NVIDIA's samples: samples/python/common.py (8.2.1) do_inference / do_inference_v2 (memcpy_htod_async
  per input, execute_async(batch_size=, bindings=, stream_handle=) / execute_async_v2(bindings=, stream_handle=),
  memcpy_dtoh_async per output, stream.synchronize()); samples/python/common_runtime.py (v10.0.1): set_tensor_address
  per tensor, execute_async_v3(stream_handle=).

pycuda, inducer/pycuda src/cpp/cuda.hpp and src/wrapper/wrap_cudadrv.cpp, pycuda/autoinit.py:
- init(); Device(n).make_context() pushes the new context on the calling thread's context stack; Context.pop()
  pops this thread's top ("cannot pop non-current context" when empty); ctx.push() works from any thread;
  ctx.detach(): while current it destroys the context, else from the thread that made it it pushes and destroys
  it, else it does nothing ("leaked out-of-thread context").
- Stream(), mem_alloc(bytes), pagelocked_empty(shape, dtype, order="C", mem_flags=0) need a current context
  ("no currently active context?") and remember it; freeing them (free() or garbage collection) re-activates that
  context only from its own thread ("cannot activate out-of-thread context") and fails on a destroyed one ("dead
  context"): pycuda then prints a warning and the memory is gone with the context or leaked.
- memcpy_htod_async(dest, src, stream=None), memcpy_dtoh_async(dest, src, stream=None): queued on the stream; a
  host buffer is read or written when the stream runs them, which here is at stream.synchronize().
- pycuda.autoinit: make_default_context() in the importing thread, popped at exit.
"""

import importlib.abc
import importlib.util
import json
import sys
import threading
import types
import warnings
import weakref

import numpy as np

VERSIONS = {"8.0": "8.0.1.6", "8.2": "8.2.1.8", "10": "10.3.0.26"}
DTYPES = {"FLOAT": np.float32, "HALF": np.float16, "INT8": np.int8, "INT32": np.int32, "BOOL": np.bool_}


class World(object):
    """One simulated CUDA driver and TensorRT install: calls in order with their thread, and what went wrong."""

    def __init__(self, release, networks):
        self.release, self.version = release, VERSIONS[release]
        self.networks = networks  # engine blob "network" -> fn({input name: array}) -> {output name: array}
        self.calls = []  # (thread name, call, detail)
        self.problems = []
        self.local = threading.local()
        self.initialised = False
        self.plugins = False
        self.contexts = []
        # weak: what the code under test drops is garbage-collected (and checked) as it would be for real
        self.allocations, self.streams = weakref.WeakValueDictionary(), weakref.WeakValueDictionary()
        self.allocated, self.released = [], set()  # device allocation serials: made, and freed or collected
        self.stream_count = 0
        self.labels = {}  # device allocation serial -> tensor name (known once bound)
        self.deprecated = []

    def record(self, call, detail=None):
        self.calls.append((threading.current_thread().name, call, detail))

    def problem(self, text):
        self.problems.append("{}: {}".format(threading.current_thread().name, text))

    def stack(self):
        if not hasattr(self.local, "stack"):
            self.local.stack = []
        return self.local.stack

    def current(self):
        stack = self.stack()
        return stack[-1] if stack else None

    def need_context(self, what, driver):
        ctx = self.current()
        if ctx is None or not ctx.alive:
            self.problem("{} without a current CUDA context".format(what))
            raise driver.LogicError("explicit_context_dependent failed: invalid device context - no currently "
                                    "active context?")
        return ctx

    def release_in(self, ctx, what):
        """pycuda's scoped_context_activation around a free: the owning context, current or made so."""
        if not ctx.alive:
            self.problem("{} after its context was destroyed (pycuda: cannot activate dead context)".format(what))
        elif self.current() is not ctx and threading.current_thread() is not ctx.owner:
            self.problem("{} outside its context's thread (pycuda: cannot activate out-of-thread context)".format(
                what))

    def label(self, serial):
        return self.labels.get(serial, "?")

    def sequence(self, thread=None, names=None):
        return [(call, detail) for who, call, detail in self.calls
                if (thread is None or who == thread) and (names is None or call in names)]


def pycuda_modules(world):
    """(pycuda, pycuda.driver) stand-ins bound to `world`."""
    driver = types.ModuleType("pycuda.driver")

    class Error(Exception):
        pass

    class LogicError(Error):
        pass

    driver.Error, driver.LogicError = Error, LogicError

    def init(flags=0):
        world.record("init")
        world.initialised = True

    class Context(object):
        def __init__(self):
            self.alive, self.owner, self.serial = True, threading.current_thread(), len(world.contexts)
            world.contexts.append(self)

        def push(self):
            world.record("push", self.serial)
            if not self.alive:
                raise LogicError("cannot push a destroyed context")
            world.stack().append(self)

        @staticmethod
        def pop():
            stack = world.stack()
            world.record("pop", stack[-1].serial if stack else None)
            if not stack:
                raise LogicError("context::pop failed: invalid device context - cannot pop non-current context")
            stack.pop()

        def detach(self):
            world.record("detach", self.serial)
            if not self.alive:
                raise LogicError("context::detach failed: cannot detach from invalid context")
            stack = world.stack()
            if stack and stack[-1] is self:
                stack.pop()
            elif threading.current_thread() is not self.owner:
                world.problem("context {} detached from another thread while not current: leaked".format(
                    self.serial))
                self.leaked = True
            self.alive = False
            while self in stack:  # pycuda drops invalid entries from this thread's stack
                stack.remove(self)

    class Device(object):
        def __init__(self, number):
            if not world.initialised:
                raise LogicError("cuDeviceGet failed: initialization error (call pycuda.driver.init() first)")
            self.number = number

        def make_context(self, flags=0):
            ctx = Context()
            world.record("make_context", ctx.serial)
            world.stack().append(ctx)
            return ctx

    class Stream(object):
        def __init__(self, flags=0):
            self.ctx = world.need_context("Stream()", driver)
            world.stream_count += 1
            self.handle = 0x5000 + world.stream_count
            self.queue, self.destroyed = [], False
            world.streams[self.handle] = self
            world.record("Stream", self.handle)

        def enqueue(self, work):
            self.queue.append(work)

        def synchronize(self):
            world.record("synchronize", self.handle)
            queue, self.queue = self.queue, []
            for work in queue:
                work()

        def __del__(self):
            world.record("stream destroyed", self.handle)
            world.release_in(self.ctx, "stream destroyed")

    class DeviceAllocation(object):
        def __init__(self, nbytes):
            self.ctx = world.need_context("mem_alloc", driver)
            self.data = bytearray(nbytes)
            self.serial = len(world.allocated)
            self.address = 0x7F0000000000 + (self.serial << 24)
            self.freed = False
            world.allocated.append(self.serial)
            world.allocations[self.serial] = self

        def __int__(self):
            return self.address

        def __index__(self):
            return self.address

        def free(self):
            world.record("free", self.serial)
            if self.freed:
                raise LogicError("device_allocation::free failed: invalid resource handle")
            self.freed = True
            world.released.add(self.serial)
            world.release_in(self.ctx, "device memory freed")

        def __del__(self):
            if not self.freed:
                self.freed = True
                world.released.add(self.serial)
                world.record("device memory collected", self.serial)
                world.release_in(self.ctx, "device memory garbage-collected")

    class HostAllocation(bytearray):
        """Page-locked host memory: the base of the array pagelocked_empty returns."""

        def __del__(self):
            world.record("page-locked memory collected")
            world.release_in(self.ctx, "page-locked host memory garbage-collected")

    def mem_alloc(nbytes):
        allocation = DeviceAllocation(int(nbytes))
        world.record("mem_alloc", allocation.serial)
        return allocation

    def pagelocked_empty(shape, dtype, order="C", mem_flags=0):
        ctx = world.need_context("pagelocked_empty", driver)
        dtype = np.dtype(dtype)
        count = int(np.prod(shape))
        memory = HostAllocation(count * dtype.itemsize)
        memory.ctx = ctx
        world.record("pagelocked_empty", count)
        return np.frombuffer(memory, dtype=dtype, count=count).reshape(shape, order=order)

    def device_memory(address, nbytes, what):
        for allocation in list(world.allocations.values()):
            if not allocation.freed and allocation.address <= address < allocation.address + len(allocation.data):
                if address + nbytes > allocation.address + len(allocation.data):
                    world.problem("{} runs past the end of its device allocation".format(what))
                if allocation.ctx is not world.current():
                    world.problem("{} to memory of another CUDA context".format(what))
                return allocation
        world.problem("{} to an address no live allocation holds".format(what))
        raise LogicError("cuMemcpy failed: invalid argument")

    def copy(kind, dest, src, stream):
        world.need_context(kind, driver)
        host = src if kind == "memcpy_htod_async" else dest
        if not isinstance(host, np.ndarray) or not host.flags["C_CONTIGUOUS"]:
            raise TypeError("expected a contiguous host buffer")
        address = int(dest if kind == "memcpy_htod_async" else src)
        allocation = device_memory(address, host.nbytes, kind)
        offset = address - allocation.address
        world.record(kind, allocation.serial)

        def work():
            if kind == "memcpy_htod_async":
                allocation.data[offset:offset + host.nbytes] = host.tobytes()
            else:
                host[...] = np.frombuffer(bytes(allocation.data[offset:offset + host.nbytes]),
                                          dtype=host.dtype).reshape(host.shape)
        if stream is None:
            work()
        else:
            stream.enqueue(work)

    driver.init, driver.Device, driver.Context, driver.Stream = init, Device, Context, Stream
    driver.DeviceAllocation, driver.mem_alloc, driver.pagelocked_empty = DeviceAllocation, mem_alloc, pagelocked_empty
    driver.memcpy_htod_async = lambda dest, src, stream=None: copy("memcpy_htod_async", dest, src, stream)
    driver.memcpy_dtoh_async = lambda dest, src, stream=None: copy("memcpy_dtoh_async", dest, src, stream)
    package = types.ModuleType("pycuda")
    package.__path__ = []  # a package, so that `import pycuda.autoinit` goes through the finder below
    package.driver = driver
    return package, driver


class AutoinitFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """`import pycuda.autoinit`: a context made current in the importing thread, as pycuda/autoinit.py does."""

    def __init__(self, world, driver):
        self.world, self.driver = world, driver

    def find_spec(self, name, path, target=None):
        if name == "pycuda.autoinit":
            return importlib.util.spec_from_loader(name, self)
        return None

    def create_module(self, spec):
        return None

    def exec_module(self, module):
        self.world.record("import pycuda.autoinit")
        self.driver.init()
        module.context = self.driver.Device(0).make_context()
        module.device = module.context


class Dims(object):
    """trt.Dims: iterable and indexable, not a tuple."""

    def __init__(self, values):
        self._values = tuple(int(v) for v in values)

    def __iter__(self):
        return iter(self._values)

    def __len__(self):
        return len(self._values)

    def __getitem__(self, i):
        return self._values[i]

    def __repr__(self):
        return "Dims{}".format(self._values)


def engine_blob(release, network, tensors, implicit=False, max_batch_size=1, plugins=()):
    """What the stand-in deserializes: the engine's I/O and the network that computes its outputs.
    tensors: [(name, is_input, shape (-1: dynamic; no batch axis when implicit), DataType name)]."""
    return json.dumps({"standin_tensorrt": VERSIONS[release], "network": network, "implicit": implicit,
                       "max_batch_size": max_batch_size, "plugins": list(plugins),
                       "tensors": [{"name": n, "input": i, "shape": list(s), "dtype": d}
                                   for n, i, s, d in tensors]}).encode()


def tensorrt_module(world, driver):
    trt = types.ModuleType("tensorrt")
    trt.__version__ = world.version
    named_api = world.release == "10"
    max_profile_batch = 8  # the optimisation profile's max batch of the stand-in's dynamic engines

    class DataType(object):
        FLOAT, HALF, INT8, INT32, BOOL = "FLOAT", "HALF", "INT8", "INT32", "BOOL"

    def nptype(dtype):
        return DTYPES[dtype]

    class Logger(object):
        INTERNAL_ERROR, ERROR, WARNING, INFO, VERBOSE = 0, 1, 2, 3, 4

        def __init__(self, min_severity=WARNING):
            self.min_severity = min_severity

    def init_libnvinfer_plugins(logger, namespace):
        world.record("init_libnvinfer_plugins", namespace)
        world.plugins = True
        return True

    class Tensor(object):
        def __init__(self, spec, index):
            self.name, self.input, self.index = spec["name"], spec["input"], index
            self.shape, self.dtype = tuple(spec["shape"]), spec["dtype"]

    class Engine(object):
        def __init__(self, spec):
            self.spec = spec
            self.ctx = world.current()
            self.tensors = [Tensor(t, i) for i, t in enumerate(spec["tensors"])]
            self.by_name = {t.name: t for t in self.tensors}

        def _tensor(self, key):
            return self.tensors[key] if isinstance(key, int) else self.by_name[key]

        def create_execution_context(self, *args, **kwargs):
            world.record("create_execution_context")
            if world.current() is not self.ctx:
                world.problem("execution context created outside the engine's CUDA context")
            return (ContextV3 if named_api else ContextV2)(self)

        def __del__(self):
            check_context(self.ctx, "engine destroyed")

    class EngineV2(Engine):  # 8.0 / 8.2: the bindings API
        @property
        def num_bindings(self):
            return len(self.tensors)

        def get_binding_name(self, index):
            return self.tensors[index].name

        def get_binding_index(self, name):
            return self.by_name[name].index if name in self.by_name else -1

        def binding_is_input(self, key):
            return self._tensor(key).input

        def get_binding_shape(self, key):
            return Dims(self._tensor(key).shape)

        def get_binding_dtype(self, key):
            return self._tensor(key).dtype

        @property
        def has_implicit_batch_dimension(self):
            return bool(self.spec["implicit"])

        @property
        def max_batch_size(self):
            return self.spec["max_batch_size"] if self.spec["implicit"] else 1

    class EngineV3(Engine):  # 10: named tensors only
        @property
        def num_io_tensors(self):
            return len(self.tensors)

        def get_tensor_name(self, index):
            return self.tensors[index].name

        def get_tensor_mode(self, name):
            return TensorIOMode.INPUT if self.by_name[name].input else TensorIOMode.OUTPUT

        def get_tensor_shape(self, name):
            return Dims(self.by_name[name].shape)

        def get_tensor_dtype(self, name):
            return self.by_name[name].dtype

        @property
        def has_implicit_batch_dimension(self):
            world.deprecated.append("has_implicit_batch_dimension")
            warnings.warn("has_implicit_batch_dimension is deprecated: Implicit batch dimensions support has been "
                          "removed", DeprecationWarning, stacklevel=2)
            return False

    class TensorIOMode(object):
        INPUT, OUTPUT = "INPUT", "OUTPUT"

    def check_context(ctx, what):
        if not ctx.alive:
            world.problem("{} after its CUDA context was destroyed".format(what))
        elif world.current() is not ctx:
            world.problem("{} while its CUDA context is not current".format(what))

    class ExecutionContext(object):
        def __init__(self, engine):
            self.engine = engine  # keep_alive<0, 1>: the context keeps its engine
            self.shapes = {}  # input name -> shape set
            self.addresses = {}

        def _batch(self):
            inputs = [t for t in self.engine.tensors if t.input]
            shape = self.shapes.get(inputs[0].name, inputs[0].shape)
            return shape[0]

        def _resolved(self, tensor):
            if tensor.input:
                return self.shapes.get(tensor.name, tensor.shape)
            batch = self._batch()
            return tuple(batch if d == -1 else d for d in tensor.shape)

        def _set_shape(self, tensor, shape):
            shape = tuple(int(d) for d in shape)
            fits = (tensor.input and len(shape) == len(tensor.shape)
                    and all(want in (-1, got) for want, got in zip(tensor.shape, shape))
                    and 1 <= shape[0] <= (max_profile_batch if tensor.shape[0] == -1 else shape[0]))
            if fits:
                self.shapes[tensor.name] = shape
            return fits

        def _run(self, stream_handle, addresses, batch, what):
            """Check and queue one execution; outputs computed from inputs when the stream runs."""
            if world.current() is not self.engine.ctx:
                world.problem("{} outside the engine's CUDA context".format(what))
                return False
            if any(-1 in self._resolved(t) for t in self.engine.tensors if t.input):
                world.problem("{} with an input shape not set".format(what))
                return False
            stream = world.streams.get(stream_handle)
            if stream is None:
                world.problem("{} on a stream handle pycuda never made".format(what))
                return False
            views = {}
            for tensor in self.engine.tensors:
                shape = self._resolved(tensor)
                if self.engine.spec["implicit"]:
                    shape = (batch,) + shape
                nbytes = int(np.prod(shape)) * np.dtype(DTYPES[tensor.dtype]).itemsize
                address = addresses.get(tensor.name)
                allocation = next((a for a in list(world.allocations.values())
                                   if not a.freed and a.address == address), None)
                if allocation is None or len(allocation.data) < nbytes or allocation.ctx is not self.engine.ctx:
                    world.problem("{}: tensor {} is bound to no fitting allocation of this context".format(
                        what, tensor.name))
                    return False
                world.labels[allocation.serial] = tensor.name
                views[tensor.name] = (allocation, shape, np.dtype(DTYPES[tensor.dtype]), nbytes)
            network = world.networks[self.engine.spec["network"]]

            def work():
                inputs = {name: np.frombuffer(bytes(a.data[:n]), dtype=d).reshape(s)
                          for name, (a, s, d, n) in views.items() if self.engine.by_name[name].input}
                for name, value in network(inputs).items():
                    allocation, shape, dtype, nbytes = views[name]
                    data = np.ascontiguousarray(value).reshape(shape)
                    if data.dtype != dtype and data.dtype.itemsize == dtype.itemsize:
                        data = data.view(dtype)  # what a plugin writes, whatever the binding says
                    allocation.data[:nbytes] = data.astype(dtype, copy=False).tobytes()
            stream.enqueue(work)
            return True

        def __del__(self):
            check_context(self.engine.ctx, "execution context destroyed")

    class ContextV2(ExecutionContext):  # 8.0 / 8.2
        def set_binding_shape(self, binding, shape):
            world.record("set_binding_shape", (binding, tuple(shape)))
            if self.engine.spec["implicit"]:
                world.problem("set_binding_shape on an implicit-batch engine")
                return False
            return self._set_shape(self.engine.tensors[binding], shape)

        def get_binding_shape(self, binding):
            return Dims(self._resolved(self.engine.tensors[binding]))

        @property
        def all_binding_shapes_specified(self):
            return all(-1 not in self._resolved(t) for t in self.engine.tensors if t.input)

        def _addresses(self, bindings):
            if len(bindings) != len(self.engine.tensors):
                world.problem("{} bindings for {} tensors".format(len(bindings), len(self.engine.tensors)))
            return {t.name: int(bindings[t.index]) for t in self.engine.tensors if t.index < len(bindings)}

        def execute_async(self, batch_size=1, bindings=None, stream_handle=None, input_consumed=None):
            if bindings is None or stream_handle is None:
                raise TypeError("execute_async(): incompatible function arguments")
            world.record("execute_async", batch_size)
            if not self.engine.spec["implicit"]:
                world.problem("execute_async (enqueue) on an explicit-batch engine: use execute_async_v2")
                return False
            if not 1 <= batch_size <= self.engine.spec["max_batch_size"]:
                world.problem("execute_async with batch {} over the engine's max".format(batch_size))
                return False
            return self._run(stream_handle, self._addresses(bindings), batch_size, "execute_async")

        def execute_async_v2(self, bindings, stream_handle, input_consumed=None):
            world.record("execute_async_v2")
            if self.engine.spec["implicit"]:
                world.problem("execute_async_v2 (enqueueV2) on an implicit-batch engine: use execute_async")
                return False
            return self._run(stream_handle, self._addresses(bindings), None, "execute_async_v2")

    class ContextV3(ExecutionContext):  # 10
        def set_input_shape(self, name, shape):
            world.record("set_input_shape", (name, tuple(shape)))
            return self._set_shape(self.engine.by_name[name], shape)

        def get_tensor_shape(self, name):
            return Dims(self._resolved(self.engine.by_name[name]))

        def set_tensor_address(self, name, memory):
            world.record("set_tensor_address", name)
            if name not in self.engine.by_name:
                return False
            self.addresses[name] = int(memory)
            return True

        def execute_async_v3(self, stream_handle):
            world.record("execute_async_v3")
            return self._run(stream_handle, self.addresses, None, "execute_async_v3")

    class Runtime(object):
        def __init__(self, logger):
            self.logger = logger

        def deserialize_cuda_engine(self, serialized_engine):
            world.record("deserialize_cuda_engine")
            if world.current() is None:
                world.problem("deserialize_cuda_engine without a current CUDA context (TensorRT would make the "
                              "primary context its own)")
            try:
                spec = json.loads(bytes(serialized_engine).decode())
            except ValueError:
                return None  # "Serialization assertion ... failed": logged, no engine
            if spec.get("standin_tensorrt") != world.version:
                return None  # "The engine plan file is not compatible with this version of TensorRT"
            if spec["plugins"] and not world.plugins:
                return None  # "getPluginCreator could not find plugin"
            if named_api and spec["implicit"]:
                return None
            return (EngineV3 if named_api else EngineV2)(spec)

    trt.DataType, trt.nptype, trt.Logger, trt.Runtime = DataType, nptype, Logger, Runtime
    trt.init_libnvinfer_plugins = init_libnvinfer_plugins
    if named_api:
        trt.TensorIOMode = TensorIOMode
    return trt


def install(monkeypatch, release, networks):
    """Put the stand-ins where `import tensorrt` / `import pycuda.driver` find them; return the World."""
    world = World(release, networks)
    package, driver = pycuda_modules(world)
    monkeypatch.setitem(sys.modules, "pycuda", package)
    monkeypatch.setitem(sys.modules, "pycuda.driver", driver)
    monkeypatch.setitem(sys.modules, "tensorrt", tensorrt_module(world, driver))
    monkeypatch.delitem(sys.modules, "pycuda.autoinit", raising=False)
    finder = AutoinitFinder(world, driver)
    monkeypatch.setattr(sys, "meta_path", [finder] + sys.meta_path)
    world.driver = driver
    return world
