"""ONNX operators TensorRT 10's ONNX parser supports, with the data types it accepts.

Transcribed from onnx-tensorrt ``docs/operators.md`` (release 10.1, the first-input types
of each supported operator). An operator not listed here is not supported.
"""

from __future__ import annotations

OPSET_RANGE = (9, 20)  # default-domain opsets the parser imports

_GROUPS: dict[tuple[str, ...], str] = {
    ('float32', 'float16', 'bfloat16'): (
        "Acos Acosh Asin Asinh Atan Atanh AveragePool BatchNormalization Ceil Celu Clip Conv "
        "ConvTranspose Cos Cosh CumSum Dropout Einsum Elu Erf Exp Floor GRU Gemm GlobalAveragePool "
        "GlobalLpPool GlobalMaxPool GroupNormalization HardSigmoid HardSwish Hardmax ImageScaler "
        "InstanceNormalization IsInf LRN LSTM LayerNormalization LeakyRelu Log LogSoftmax LpNormalization "
        "LpPool MatMul MaxPool MeanVarianceNormalization PRelu ParametricSoftplus Pow QuantizeLinear RNN "
        "RandomNormal RandomNormalLike RandomUniform RandomUniformLike Reciprocal Resize Round ScaledTanh "
        "Scan Selu Sigmoid Sin Sinh Softmax Softplus Softsign Sqrt Tan Tanh ThresholdedRelu Upsample"
    ),
    ('float32', 'float16', 'bfloat16', 'int32', 'int64'): (
        "Abs Add ArgMax ArgMin DepthToSpace Div Equal Greater GreaterOrEqual IsNaN Less LessOrEqual Max "
        "Min Mod Mul Neg Pad Range ReduceL1 ReduceL2 ReduceLogSum ReduceLogSumExp ReduceMax ReduceMean "
        "ReduceMin ReduceProd ReduceSum ReduceSumSquare Relu Scatter ScatterElements ScatterND Shrink "
        "Sign SpaceToDepth Sub Sum TopK"
    ),
    ('float32', 'float16', 'bfloat16', 'int32', 'int64', 'bool'): (
        "Concat Constant ConstantOfShape Expand EyeLike Flatten Gather GatherElements GatherND Identity "
        "If Loop OneHot Reshape ReverseSequence Shape Size Slice Split Squeeze Tile Transpose Trilu "
        "Unsqueeze Where"
    ),
    ('float32', 'float16'): (
        "DeformConv GridSample Mish NonMaxSuppression NonZero RoiAlign"
    ),
    ('bool',): (
        "And Not Or Xor"
    ),
    ('float32', 'float16', 'bfloat16', 'int32', 'int64', 'uint8', 'bool'): (
        "Cast CastLike"
    ),
    ('int8', 'float8', 'int4'): (
        "DequantizeLinear"
    ),
    ('float32', 'float16', 'bfloat16', 'int8', 'int32', 'int64'): (
        "Gelu"
    ),
    ('float32', 'float16', 'bfloat16', 'float8', 'int32', 'int64'): (
        "Mean"
    ),
}

SUPPORTED_TYPES: dict[str, frozenset[str]] = {op: frozenset(types) for types, ops in _GROUPS.items() for op in ops.split()}
