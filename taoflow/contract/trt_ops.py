"""What TensorRT's ONNX parser and plugin library accept, per release, as data: the exporters check their graphs
against it and preflight checks a device's TensorRT against it.

Operators: onnx-tensorrt `docs/operators.md` at 009d6541 (the matrix for TensorRT 8.4, opsets <= 13), minus the
operators a release added later (onnx-tensorrt `docs/Changelog.md` and TensorRT OSS `CHANGELOG.md`: 8.0.1 added
Celu, CumSum, ...; 8.2.0 EA added Einsum, IsNaN, ...). Experimental operators (NonMaxSuppression) are never
exported. A Jetson Nano runs TensorRT 8.0.1 (JetPack 4.6) or 8.2.1 (4.6.1+).

Plugins: an op type the parser does not know goes to its FallbackPluginImporter (onnx-tensorrt
`builtin_op_importers.cpp`, present in release/7.1 through 10.x), which asks the plugin registry for a creator of
that name (plugin_version "1", namespace "") and converts each ONNX attribute by its own type (INT -> kINT32, FLOAT ->
kFLOAT32, INTS -> kINT32 array), so a creator that ASSERTs a field type (nmsPlugin.cpp: topK kINT32,
confidenceThreshold kFLOAT32) needs the attribute in exactly that ONNX type. Which creators libnvinfer_plugin
registers, per release (NVIDIA/TensorRT `plugin/InferPlugin.cpp`, later `plugin/api/inferPlugin.cpp`, at each
release tag):

  creator                 first   last    notes
  NMS_TRT                 5.1     10.x    TAO 3/4 UFF graphs; marked DEPRECATED in plugin/README.md from 9.1
  BatchedNMS_TRT          5.1     10.x    DEPRECATED from 9.1
  BatchTilePlugin_TRT     6.0     10.x    TAO 3/4 UFF graphs; DEPRECATED from 9.1
  BatchedNMSDynamic_TRT   7.2     10.x    CHANGELOG 7.2.1: "Update batchedNMS plugin to IPluginV2DynamicExt";
                                          DEPRECATED from 9.1
  NMSDynamic_TRT          8.0     10.x    CHANGELOG 21.03: "NMS/batchedNMS plugins ... based on IPluginV2DynamicExt"
                                          (master on 7.2.3; first release branch release/8.0); DEPRECATED from 9.1
  EfficientNMS_TRT        8.0     -       CHANGELOG 8.0.1: "Added EfficientNMS_TRT"; dynamic input shapes from
                                          21.10 (8.0.3); the only NMS creator left in 11.0

(v11.0's inferPlugin.cpp registers EfficientNMS_TRT and none of the others.) A stock JetPack library is built from
the release's sources, but whether a device's library really has a creator is what the agent's probe reads from the
library itself; these tables say what a release can have.
"""

import re

TRT_SUPPORTED = frozenset("""
Abs Acos Acosh Add And ArgMax ArgMin Asin Asinh Atan Atanh AveragePool BatchNormalization Cast Ceil Celu Clip Concat
Constant ConstantOfShape Conv ConvTranspose Cos Cosh CumSum DepthToSpace DequantizeLinear Div Dropout Einsum Elu Equal
Erf Exp Expand EyeLike Flatten Floor Gather GatherElements GatherND Gemm GlobalAveragePool GlobalLpPool GlobalMaxPool
Greater GreaterOrEqual GRU HardSigmoid Identity If ImageScaler InstanceNormalization IsNaN LeakyRelu Less LessOrEqual
Log LogSoftmax Loop LRN LSTM LpNormalization LpPool MatMul Max MaxPool Mean Min Mul Neg Not Or Pad ParametricSoftplus
Pow PRelu QuantizeLinear RandomUniform RandomUniformLike Range ReduceL1 ReduceL2 ReduceLogSum ReduceLogSumExp ReduceMax
ReduceMean ReduceMin ReduceProd ReduceSum ReduceSumSquare Relu Reshape Resize ReverseSequence RNN Round ScaledTanh Scan
Scatter ScatterElements ScatterND Selu Shape Sigmoid Sign Sin Sinh Size Slice Softmax Softplus Softsign SpaceToDepth
Split Sqrt Squeeze Sub Sum Tan Tanh ThresholdedRelu Tile TopK Transpose Unsqueeze Upsample Where Xor
""".split())
TRT_EXPERIMENTAL = frozenset({"NonMaxSuppression"})
# ONNX operators the parser gained in each release; TRT_SUPPORTED is TensorRT 8.4's, so an older TensorRT lacks
# the operators added after it.
TRT_OPS_ADDED = {
    (8, 0): {"Celu", "CumSum", "EyeLike", "GatherElements", "GlobalLpPool", "GreaterOrEqual", "LessOrEqual",
             "LpNormalization", "LpPool", "ReverseSequence"},
    (8, 2): {"Einsum", "IsNaN", "GatherND", "Scatter", "ScatterElements", "ScatterND", "Sign", "Round"},
    (8, 4): {"Xor"},
}
# Newest ONNX opset the parser reads, by first TensorRT release (onnx-tensorrt docs/operators.md).
TRT_MAX_OPSET = (((8, 4), 17), ((8, 0), 13), ((7, 0), 11))
# Plugin creator -> (first release that registers it, first release that no longer does; None: still there).
PLUGIN_RELEASES = {
    "NMS_TRT": ((5, 1), (11, 0)),
    "BatchedNMS_TRT": ((5, 1), (11, 0)),
    "BatchTilePlugin_TRT": ((6, 0), (11, 0)),
    "BatchedNMSDynamic_TRT": ((7, 2), (11, 0)),
    "NMSDynamic_TRT": ((8, 0), (11, 0)),
    "EfficientNMS_TRT": ((8, 0), None),
}
PLUGIN_SUFFIX = "_TRT"  # the plugin creators' names, as ONNX op types of TAO's and taoflow's plugin graphs
# The TensorRT releases taoflow's exports are checked against: JetPack 4.6 (8.0.1), 4.6.1+ (8.2.1), and TensorRT 10
# (JetPack 6, x86 DeepStream 7).
TARGET_RELEASES = ("8.0.1", "8.2.1", "10.3.0")


def version_tuple(text, parts=2):
    """(major, minor) of a version string ("8.2.1.8" -> (8, 2)); None when it has no number."""
    numbers = [int(n) for n in re.findall(r"\d+", str(text or ""))[:parts]]
    return tuple(numbers + [0] * (parts - len(numbers))) if numbers else None


def trt_supported_ops(trt_version):
    """The ONNX operators the parser of this TensorRT release supports (8.4's list minus later additions)."""
    version = version_tuple(trt_version) or (0, 0)
    ops = set(TRT_SUPPORTED)
    for added, names in TRT_OPS_ADDED.items():
        if version < added:
            ops -= names
    return ops


def trt_max_opset(trt_version):
    version = version_tuple(trt_version) or (0, 0)
    return next((opset for first, opset in TRT_MAX_OPSET if version >= first), 9)


def plugin_in_release(name, trt_version):
    """Whether this TensorRT release's libnvinfer_plugin registers the creator `name`."""
    if name not in PLUGIN_RELEASES:
        return False
    version = version_tuple(trt_version) or (0, 0)
    first, gone = PLUGIN_RELEASES[name]
    return version >= first and (gone is None or version < gone)


def plugin_releases_text(name):
    """"TensorRT 8.0 to 10.x" for the messages."""
    first, gone = PLUGIN_RELEASES[name]
    return f"TensorRT {first[0]}.{first[1]} " + (f"to {gone[0] - 1}.x" if gone else "and newer")


def parser_problems(ops, opset, trt_version, plugins=(), check_release=True):
    """Why this TensorRT release cannot parse a graph with these operators and opset ([] when it can).

    `plugins`: the op types the graph hands to plugin creators (its `*_TRT` nodes); with `check_release` each must
    be registered by this release's plugin library (off where a device's own library was read: that decides).
    Every other op must be one the parser supports."""
    problems = []
    lacking = sorted(set(ops) - trt_supported_ops(trt_version) - set(plugins))
    if lacking:
        problems.append(f"TensorRT {trt_version}'s ONNX parser does not support {', '.join(lacking)}")
    absent = sorted(p for p in set(plugins) if check_release and not plugin_in_release(p, trt_version))
    for name in absent:
        known = f" (it is in {plugin_releases_text(name)})" if name in PLUGIN_RELEASES else ""
        problems.append(f"TensorRT {trt_version}'s plugin library has no {name}{known}")
    if opset is not None and opset > trt_max_opset(trt_version):
        problems.append(f"ONNX opset {opset} is newer than TensorRT {trt_version} parses ({trt_max_opset(trt_version)})"
                        f"; export with --target_opset {trt_max_opset(trt_version)}")
    return problems


def unsupported_ops(ops, trt_version=None):
    """The operators of `ops` that the parser (of `trt_version`; default: the newest in the table) rejects,
    plugin ops excluded."""
    supported = trt_supported_ops(trt_version) if trt_version else TRT_SUPPORTED
    return sorted(op for op in set(ops) - supported if not op.endswith(PLUGIN_SUFFIX))
