"""ONNX operators the TensorRT ONNX parser supports (onnx-tensorrt docs/operators.md at 009d6541, TensorRT 8.4,
opsets <= 13), as data. Jetson Nanos run TensorRT 8.0/8.2, so treat this as an upper bound; experimental operators
(NonMaxSuppression) are deliberately absent. Exports for Jetson must stay inside this set."""

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


def unsupported_ops(onnx_model):
    """Operator types of the graph (any subgraph included) that TensorRT's parser would reject."""
    ops = set()

    def walk(graph):
        for node in graph.node:
            ops.add(node.op_type)
            for attr in node.attribute:
                if attr.g is not None and attr.g.node:
                    walk(attr.g)
    walk(onnx_model.graph)
    return sorted(ops - TRT_SUPPORTED)
