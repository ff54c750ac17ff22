"""Small ONNX graphs written by hand (onnx.helper), one per family of supported or refused ops."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

RNG = np.random.default_rng(1234)


def weight(*shape: int, scale: float = 0.5) -> np.ndarray:
    return (RNG.standard_normal(shape) * scale).astype(np.float32)


def make(nodes, inputs_shape, initializers: dict, *, out_rank: int = 2, opset: int = 13, weights_as_inputs: bool = False,
         check: bool = True):
    """A model with one float input ``x`` of ``inputs_shape`` and one output ``y`` of rank ``out_rank``."""
    inits = [numpy_helper.from_array(np.asarray(v), name) for name, v in initializers.items()]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, inputs_shape)]
    if weights_as_inputs:  # old exporters list every weight among the graph inputs too
        inputs += [helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)) for t in inits]
    output = helper.make_tensor_value_info("y", TensorProto.FLOAT, [f"d{i}" for i in range(out_rank)])
    graph = helper.make_graph(nodes, "test", inputs, [output], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    if check:
        onnx.checker.check_model(model)
    return model


def n(op, inputs, outputs, name=None, domain=None, **attrs):
    return helper.make_node(op, inputs, outputs, name=name or f"{op}_{outputs[0]}", domain=domain, **attrs)


SUPPORTED = {
    # Gemm with transB, alpha/beta; weights listed among graph inputs (old exporters)
    "gemm": lambda: make(
        [
            n("Gemm", ["x", "W1", "b1"], ["h"], transB=1, alpha=0.7, beta=1.3),
            n("Relu", ["h"], ["a"]),
            n("Gemm", ["a", "W2", "b2"], ["y"]),
        ],
        ["N", 5],
        {"W1": weight(8, 5), "b1": weight(8), "W2": weight(8, 3), "b2": weight(3)},
        weights_as_inputs=True,
    ),
    # MatMul with the constant on the right, Add with the constant first; fixed batch axis 1
    "matmul_right": lambda: make(
        [
            n("MatMul", ["x", "W"], ["h"]),
            n("Add", ["b", "h"], ["z"]),
            n("LeakyRelu", ["z"], ["a"], alpha=0.2),
            n("MatMul", ["a", "W2"], ["y"]),
        ],
        [1, 6],
        {"W": weight(6, 7), "b": weight(7), "W2": weight(7, 2)},
    ),
    # MatMul with the constant on the left, on a model without batch axis
    "matmul_left_no_batch": lambda: make(
        [
            n("MatMul", ["C", "x"], ["h"]),
            n("Add", ["h", "b"], ["z"]),
            n("Relu", ["z"], ["a"]),
            n("Reshape", ["a", "flat"], ["f"]),
            n("MatMul", ["f", "W"], ["y"]),
        ],
        [3, 4],
        {"C": weight(5, 3), "b": weight(5, 1), "flat": np.array([1, 20], dtype=np.int64), "W": weight(20, 2)},
    ),
    # strided, dilated, grouped Conv with asymmetric pads; MaxPool; GlobalAveragePool
    "conv": lambda: make(
        [
            n("Conv", ["x", "K1", "c1"], ["h"], strides=[2, 1], pads=[0, 1, 1, 0], dilations=[1, 2], group=1),
            n("Relu", ["h"], ["a"]),
            n("Conv", ["a", "K2"], ["h2"], pads=[1, 1, 1, 1], group=2),
            n("Relu", ["h2"], ["a2"]),
            n("MaxPool", ["a2"], ["p"], kernel_shape=[2, 2], strides=[2, 2], pads=[1, 1, 1, 1]),
            n("GlobalAveragePool", ["p"], ["g"]),
            n("Flatten", ["g"], ["f"]),
            n("Gemm", ["f", "W", "b"], ["y"]),
        ],
        ["N", 2, 9, 8],
        {"K1": weight(4, 2, 3, 3), "c1": weight(4), "K2": weight(4, 2, 3, 3), "W": weight(4, 3), "b": weight(3)},
    ),
    # ConvTranspose and explicit BatchNormalization (folded into scale and shift)
    "convtranspose_bn": lambda: make(
        [
            n("Reshape", ["x", "shape"], ["r"]),
            n("ConvTranspose", ["r", "K", "c"], ["u"], strides=[2, 2], pads=[1, 1, 1, 1], output_padding=[1, 1]),
            n("BatchNormalization", ["u", "s", "t", "m", "v"], ["bn"], epsilon=1e-3),
            n("Relu", ["bn"], ["a"]),
            n("ReduceMean", ["a"], ["y"], axes=[2, 3], keepdims=0),
        ],
        [1, 12],
        {
            "shape": np.array([1, 3, 2, 2], dtype=np.int64), "K": weight(3, 4, 3, 3), "c": weight(4),
            "s": weight(4) + 1, "t": weight(4), "m": weight(4), "v": np.abs(weight(4)) + 0.5,
        },
    ),
    # Sub/Div normalisation, Pad, AveragePool, Transpose, Reshape, Squeeze, Unsqueeze, Identity,
    # Dropout, Mul by a constant, a residual Add of two branches, a trailing Softmax
    "plumbing": lambda: make(
        [
            n("Sub", ["x", "mean"], ["s"]),
            n("Div", ["s", "std"], ["d"]),
            n("Pad", ["d", "pads", "padval"], ["p"], mode="constant"),
            n("AveragePool", ["p"], ["ap"], kernel_shape=[2, 2], strides=[2, 2]),
            n("Relu", ["ap"], ["a"]),
            n("Transpose", ["a"], ["t"], perm=[0, 1, 3, 2]),
            n("Mul", ["t", "scale"], ["m"]),
            n("Identity", ["m"], ["i"]),
            n("Dropout", ["i"], ["dr"]),
            n("Add", ["dr", "a"], ["res"]),
            n("Reshape", ["res", "flat"], ["r"]),
            n("Unsqueeze", ["r", "axis1"], ["u"]),
            n("Squeeze", ["u", "axis1"], ["q"]),
            n("Gemm", ["q", "W", "b"], ["logits"], transB=1),
            n("Relu", ["logits"], ["z"]),
            n("Gemm", ["z", "W2", "b2"], ["o"], transB=1),
            n("Softmax", ["o"], ["y"], axis=1),
        ],
        [1, 2, 6, 6],
        {
            "mean": np.float32(0.1), "std": np.array([[[0.5]], [[2.0]]], dtype=np.float32),
            "pads": np.array([0, 0, 1, 1, 0, 0, 1, 1], dtype=np.int64), "padval": np.float32(0.25),
            "scale": weight(1, 2, 1, 4), "flat": np.array([1, -1], dtype=np.int64), "axis1": np.array([1], dtype=np.int64),
            "W": weight(6, 32), "b": weight(6), "W2": weight(3, 6), "b2": weight(3),
        },
    ),
    # Slice, Gather with constant indices, Concat of two input-dependent branches, Sub of two branches
    "slice_gather_concat": lambda: make(
        [
            n("Relu", ["x"], ["a"]),
            n("Slice", ["a", "starts", "ends", "axes"], ["s"]),
            n("Gather", ["x", "idx"], ["g"], axis=1),
            n("Sub", ["s", "g"], ["d"]),
            n("Concat", ["d", "a"], ["c"], axis=1),
            n("MatMul", ["c", "W"], ["h"]),
            n("Relu", ["h"], ["y"]),
        ],
        ["N", 6],
        {
            "starts": np.array([1], dtype=np.int64), "ends": np.array([4], dtype=np.int64),
            "axes": np.array([1], dtype=np.int64), "idx": np.array([5, 0, 2], dtype=np.int64), "W": weight(9, 4),
        },
    ),
    # padding as exporters write it: SAME_UPPER convolutions and max-pools (asymmetric pads),
    # ceil-mode max-pool, average pool without the padding in its count, Clip(min=0) as a ReLU,
    # BatchNormalization-15
    "same_padding": lambda: make(
        [
            n("Conv", ["x", "K"], ["h"], auto_pad="SAME_UPPER", strides=[2, 2]),
            n("MaxPool", ["h"], ["a"], kernel_shape=[2, 2], strides=[2, 2], auto_pad="SAME_UPPER"),
            n("Conv", ["a", "K2", "c2"], ["h2"], auto_pad="SAME_LOWER"),
            n("Relu", ["h2"], ["y"]),
        ],
        ["N", 1, 9, 9],
        {"K": weight(3, 1, 4, 4), "K2": weight(2, 3, 2, 2), "c2": weight(2)},
        out_rank=4,
    ),
    "pool_modes": lambda: make(
        [
            n("Conv", ["x", "K"], ["h"], pads=[1, 1, 1, 1]),
            n("BatchNormalization", ["h", "s", "t", "m", "v"], ["b"], training_mode=0),
            n("Relu", ["b"], ["a"]),
            n("MaxPool", ["a"], ["p"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1], ceil_mode=1),
            n("AveragePool", ["p"], ["q"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1], count_include_pad=0),
            n("Flatten", ["q"], ["f"]),
            n("MatMul", ["f", "W"], ["g"]),
            n("Clip", ["g", "zero"], ["y"]),
        ],
        ["N", 1, 7, 7],
        {
            "K": weight(2, 1, 3, 3), "s": weight(2) + 1, "t": weight(2), "m": weight(2), "v": np.abs(weight(2)) + 0.5,
            "W": weight(8, 3), "zero": np.float32(0),
        },
        opset=15,
    ),
}


def _moved(op_nodes, out_channels_and_size: int, opset: int = 13, extra: dict | None = None, channels: int = 4):
    """A conv (``channels`` out) and ReLU in front of ops that move entries (``m`` in, ``moved`` out),
    a ReLU and a MatMul to 3 outputs after: every op's output is both read by faces and sets the logits."""
    return make(
        [
            n("Conv", ["x", "K", "c"], ["h"], pads=[1, 1, 1, 1]),
            n("Relu", ["h"], ["m"]),
            *op_nodes,
            n("Relu", ["moved"], ["a"]),
            n("Flatten", ["a"], ["f"]),
            n("MatMul", ["f", "W"], ["y"]),
        ],
        [1, 1, 4, 4],
        {"K": weight(channels, 1, 3, 3), "c": weight(channels), "W": weight(out_channels_and_size, 3), **(extra or {})},
        opset=opset,
    )


#: Ops that only move, repeat, drop or interpolate entries with constant parameters.
SUPPORTED.update({
    "matmul_with_a_vector": lambda: make(
        [n("MatMul", ["x", "W"], ["h"]), n("Relu", ["h"], ["a"]), n("MatMul", ["a", "v"], ["y"])],
        [1, 4], {"W": weight(4, 5), "v": weight(5)}, out_rank=1),
    "flatten_axis_0": lambda: make(
        [n("Flatten", ["x"], ["f"], axis=0), n("MatMul", ["f", "W"], ["h"]), n("Relu", ["h"], ["a"]),
         n("MatMul", ["a", "W2"], ["y"])],
        [1, 4], {"W": weight(4, 5), "W2": weight(5, 2)}),
    "where_constant_condition": lambda: make(
        [n("MatMul", ["x", "W"], ["h"]), n("Relu", ["h"], ["a"]), n("Neg", ["h"], ["b"]),
         n("Where", ["cond", "a", "fill"], ["w1"]), n("Where", ["cond", "b", "w1"], ["w2"]), n("Relu", ["w2"], ["r"]),
         n("MatMul", ["r", "W2"], ["y"])],
        [1, 4], {"W": weight(4, 5), "cond": np.array([True, False, True, True, False]), "fill": weight(5),
                 "W2": weight(5, 3)}),
    "einsum_with_a_constant": lambda: make(
        [n("Einsum", ["x", "W"], ["h"], equation="bi,ij->bj"), n("Relu", ["h"], ["a"]),
         n("Einsum", ["W2", "a"], ["y"], equation="jk,bj->bk")],
        [1, 4], {"W": weight(4, 5), "W2": weight(5, 3)}, opset=13),
    "dropout_in_inference_mode": lambda: make(
        [n("Gemm", ["x", "W", "b"], ["h"]), n("Dropout", ["h", "ratio", "training"], ["d"]), n("Relu", ["d"], ["a"]),
         n("Gemm", ["a", "W2", "b2"], ["y"])],
        ["N", 4], {"W": weight(4, 3), "b": weight(3), "W2": weight(3, 2), "b2": weight(2),
                   "ratio": np.array(0.5, dtype=np.float32), "training": np.array(False)},
    ),
    "split": lambda: _moved(
        [n("Split", ["m", "sizes"], ["s1", "s2"], axis=1), n("Neg", ["s1"], ["n1"]), n("Concat", ["s2", "n1"], ["moved"], axis=1)],
        64, extra={"sizes": np.array([1, 3], dtype=np.int64)}),
    "resize_nearest": lambda: _moved(
        [n("Resize", ["m", "", "scales"], ["moved"], mode="nearest")], 256,
        extra={"scales": np.array([1, 1, 2, 2], dtype=np.float32)}),
    "resize_linear_sizes": lambda: _moved(
        [n("Resize", ["m", "", "", "sizes"], ["moved"], mode="linear")], 4 * 7 * 6,
        extra={"sizes": np.array([1, 4, 7, 6], dtype=np.int64)}),
    "resize_linear_align_corners": lambda: _moved(
        [n("Resize", ["m", "", "scales"], ["moved"], mode="linear", coordinate_transformation_mode="align_corners")], 256,
        extra={"scales": np.array([1, 1, 2, 2], dtype=np.float32)}),
    "resize_cubic": lambda: _moved(
        [n("Resize", ["m", "", "scales"], ["moved"], mode="cubic")], 4 * 8 * 6,
        extra={"scales": np.array([1, 1, 2, 1.5], dtype=np.float32)}),
    "upsample_opset_9": lambda: _moved(  # (an old opset: ONNX's version converter makes it a Resize)
        [n("Upsample", ["m", "scales"], ["moved"], mode="nearest")], 256,
        extra={"scales": np.array([1, 1, 2, 2], dtype=np.float32)}, opset=9),
    # (8 channels: 2 after the move, so that DCR and CRD order them differently)
    "depth_to_space_dcr": lambda: _moved([n("DepthToSpace", ["m"], ["moved"], blocksize=2, mode="DCR")], 128, channels=8),
    "depth_to_space_crd": lambda: _moved([n("DepthToSpace", ["m"], ["moved"], blocksize=2, mode="CRD")], 128, channels=8),
    "space_to_depth": lambda: _moved([n("SpaceToDepth", ["m"], ["moved"], blocksize=2)], 64),
    "tile": lambda: _moved([n("Tile", ["m", "repeats"], ["moved"])], 4 * 4 * 12,
                           extra={"repeats": np.array([1, 1, 1, 3], dtype=np.int64)}),
    "gather_elements": lambda: _moved([n("GatherElements", ["m", "index"], ["moved"], axis=3)], 4 * 4 * 5,
                                      extra={"index": RNG.integers(0, 4, (1, 4, 4, 5)).astype(np.int64)}),
    "gather_nd": lambda: _moved([n("GatherND", ["m", "index"], ["moved"])], 5 * 4 * 4,  # (batch 0, channel) pairs
                                extra={"index": np.stack([np.zeros((1, 5), np.int64), RNG.integers(0, 4, (1, 5))], -1)}),
})

REFUSED = {
    # Resize attributes PyTorch's interpolation has no equivalent of (onnx2torch only warns): checked against onnx.reference
    "resize_cubic_coefficient": (
        lambda: _moved([n("Resize", ["m", "", "scales"], ["moved"], name="up", mode="cubic", cubic_coeff_a=-0.5)], 4 * 8 * 8,
                       extra={"scales": np.array([1, 1, 2, 2], dtype=np.float32)}),
        ["'up' (Resize, cubic_coeff_a=-0.5, mode=cubic): PyTorch's interpolation, which lrcert reads it as, computes it "
         "otherwise than ONNX (values up to 0.208 off)"],
    ),
    "resize_linear_asymmetric": (
        lambda: _moved([n("Resize", ["m", "", "", "sizes"], ["moved"], name="up", mode="linear",
                          coordinate_transformation_mode="asymmetric")], 4 * 7 * 6,
                       extra={"sizes": np.array([1, 4, 7, 6], dtype=np.int64)}),
        ["'up' (Resize, coordinate_transformation_mode=asymmetric, mode=linear): PyTorch's interpolation, which lrcert "
         "reads it as, computes it otherwise than ONNX (values up to 0.824 off)"],
    ),
    "dropout_in_training_mode": (
        lambda: make(
            [n("Gemm", ["x", "W", "b"], ["h"], name="fc"), n("Dropout", ["h", "ratio", "training"], ["d"], name="drop"),
             n("Relu", ["d"], ["a"], name="relu"), n("Gemm", ["a", "W2", "b2"], ["y"], name="out")],
            ["N", 4], {"W": weight(4, 3), "b": weight(3), "W2": weight(3, 2), "b2": weight(2),
                       "ratio": np.array(0.5, dtype=np.float32), "training": np.array(True)},
        ),
        ["'drop' (Dropout) is dropout in training mode (random masks; export the model in eval mode)"],
    ),
    "sigmoid": (
        lambda: make(
            [n("Gemm", ["x", "W", "b"], ["h"], name="fc"), n("Sigmoid", ["h"], ["s"], name="squash"),
             n("Gemm", ["s", "W2", "b2"], ["y"], name="out")],
            ["N", 4], {"W": weight(4, 3), "b": weight(3), "W2": weight(3, 2), "b2": weight(2)},
        ),
        ["'squash' (Sigmoid) is not piecewise linear"],
    ),
    "products": (
        lambda: make(
            [
                n("Relu", ["x"], ["a"], name="relu"),
                n("Mul", ["a", "x"], ["sq"], name="square"),
                n("MatMul", ["sq", "W"], ["h"], name="mm"),
                n("Transpose", ["h"], ["ht"], name="t"),
                n("MatMul", ["h", "ht"], ["gram"], name="gram"),
                n("Div", ["W3", "gram"], ["inv"], name="invert"),
                n("MatMul", ["inv", "W2"], ["y"], name="out"),
            ],
            [1, 4], {"W": weight(4, 3), "W2": weight(1, 2), "W3": weight(1, 1)},
        ),
        [
            "'square' (Mul) multiplies two input-dependent tensors",
            "'gram' (MatMul) multiplies two input-dependent tensors",
            "'invert' (Div) takes an input-dependent operand 1, which must be constant",
        ],
    ),
    "softmax_inside": (
        lambda: make(
            [n("Softmax", ["x"], ["s"], name="early_softmax", axis=1), n("MatMul", ["s", "W"], ["y"], name="out")],
            [1, 4], {"W": weight(4, 2)},
        ),
        ["'early_softmax' (Softmax) is not piecewise linear"],
    ),
    "unsupported_op": (
        lambda: make(
            [n("Round", ["x"], ["a"], name="rounding"), n("MatMul", ["a", "W"], ["y"], name="out")],
            [1, 4], {"W": weight(4, 2)},
        ),
        ["'rounding' (Round) is an operation lrcert does not support"],
    ),
}
