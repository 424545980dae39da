#!/usr/bin/env python3
"""Small random ONNX graphs, one per imported operator family, with onnxruntime's outputs.

Usage: python3 tools/onnx_cases.py OUT_DIR [--seed N]

For each case NAME it writes NAME.onnx, NAME.input.f32 and NAME.output.f32 (little-endian
float32, C order) and NAME.json ({"input_shape": [...], "output_shape": [...], "refused":
null or the operator the importer must name}). onnxruntime is the independent runtime the
Rust importer and reference executor are checked against (peregrine-model/tests/onnx_import.rs).
Sizes are odd on purpose. Needs: pip install onnx onnxruntime numpy.
"""
import json
import os
import sys

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

OPSET = 17


def const(name, arr):
    return numpy_helper.from_array(np.asarray(arr, dtype=np.float32), name)


class Case:
    def __init__(self, name, rng, shape):
        self.name, self.rng, self.shape = name, rng, list(shape)
        self.nodes, self.inits, self.counter = [], [], 0

    def w(self, *shape, scale=0.3):
        self.counter += 1
        n = f"{self.name}_w{self.counter}"
        self.inits.append(const(n, self.rng.normal(0, scale, size=shape)))
        return n

    def cint(self, values):
        self.counter += 1
        n = f"{self.name}_i{self.counter}"
        self.inits.append(numpy_helper.from_array(np.asarray(values, dtype=np.int64), n))
        return n

    def op(self, op_type, inputs, **attrs):
        self.counter += 1
        out = f"{op_type.lower()}_{self.counter}"
        self.nodes.append(helper.make_node(op_type, inputs, [out], name=f"{op_type}_{self.counter}", **attrs))
        return out

    def bn(self, x, c):
        r = self.rng
        ins = [x]
        for v in (r.uniform(0.5, 1.5, c), r.normal(0, 0.2, c), r.normal(0, 0.2, c), r.uniform(0.5, 2.0, c)):
            self.counter += 1
            n = f"{self.name}_bn{self.counter}"
            self.inits.append(const(n, v))
            ins.append(n)
        return self.op("BatchNormalization", ins, epsilon=1e-3)

    def model(self, out, dynamic=False):
        dims = ["N"] + self.shape[1:] if dynamic else self.shape
        x = helper.make_tensor_value_info("image", TensorProto.FLOAT, dims)
        y = helper.make_tensor_value_info(out, TensorProto.FLOAT, None)
        g = helper.make_graph(self.nodes, self.name, [x], [y], self.inits)
        m = helper.make_model(g, opset_imports=[helper.make_opsetid("", OPSET)])
        m.ir_version = 8
        return m


def cases(seed):
    rng = np.random.default_rng(seed)
    out = []

    c = Case("conv_bn_relu", rng, [1, 3, 13, 11])
    y = c.op("Conv", ["image", c.w(5, 3, 3, 3), c.w(5)], pads=[1, 1, 1, 1])
    y = c.op("Relu", [c.bn(y, 5)])
    out.append((c, y, None, {}))

    c = Case("conv_stride_dilation_groups", rng, [1, 4, 17, 15])
    y = c.op("Conv", ["image", c.w(6, 2, 3, 3)], pads=[2, 2, 2, 2], strides=[2, 2], dilations=[2, 2], group=2)
    y = c.op("Conv", [y, c.w(6, 1, 3, 3), c.w(6)], auto_pad="SAME_UPPER", group=6)
    out.append((c, y, None, {}))

    c = Case("conv_transpose", rng, [1, 3, 7, 9])
    y = c.op("ConvTranspose", ["image", c.w(3, 4, 3, 3), c.w(4)], strides=[2, 2], pads=[1, 1, 1, 1], output_padding=[1, 1])
    out.append((c, y, None, {}))

    c = Case("pools", rng, [1, 3, 15, 13])
    a = c.op("MaxPool", ["image"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    b = c.op("AveragePool", [a], kernel_shape=[3, 3], strides=[1, 1], pads=[1, 1, 1, 1], count_include_pad=1)
    y = c.op("GlobalAveragePool", [b])
    out.append((c, y, None, {}))

    c = Case("gemm_matmul", rng, [1, 3, 5, 7])
    f = c.op("Flatten", ["image"], axis=1)
    g = c.op("Gemm", [f, c.w(11, 105), c.w(11)], transB=1, alpha=0.5, beta=2.0)
    m = c.op("MatMul", [c.op("Relu", [g]), c.w(11, 9)])
    y = c.op("Add", [m, c.w(9)])
    out.append((c, y, None, {}))

    c = Case("arithmetic", rng, [1, 5, 9, 7])
    a = c.op("Add", ["image", c.w(1, 5, 1, 1)])
    a = c.op("Mul", [a, c.w(5, 1, 1)])
    a = c.op("Div", [a, const_scalar(c, 1.7)])
    a = c.op("Sub", [a, const_scalar(c, 0.25)])
    b = c.op("Sub", [const_scalar(c, 2.0), "image"])
    y = c.op("Add", [a, b])
    out.append((c, y, None, {}))

    c = Case("silu", rng, [1, 4, 11, 9])
    x = c.op("Conv", ["image", c.w(6, 4, 1, 1)])
    y = c.op("Mul", [x, c.op("Sigmoid", [x])])
    out.append((c, y, None, {}))

    c = Case("concat_resize", rng, [1, 3, 7, 5])
    a = c.op("Conv", ["image", c.w(4, 3, 3, 3)], pads=[1, 1, 1, 1])
    b = c.op("Conv", ["image", c.w(2, 3, 1, 1)])
    cat = c.op("Concat", [a, b], axis=1)
    r = c.op("Resize", [cat, "", c.w_scales([1, 1, 2, 2])], mode="nearest")
    y = c.op("Resize", [r, "", c.w_scales([1, 1, 3, 3])], mode="nearest", coordinate_transformation_mode="asymmetric", nearest_mode="floor")
    out.append((c, y, None, {}))

    # torch.flatten(x, 1) as exported by older tools: Shape → Gather → Unsqueeze → Concat → Reshape.
    c = Case("shape_subgraph", rng, [1, 2, 5, 3])
    s = c.op("Shape", ["image"])
    n = c.op("Gather", [s, c.cint(0)], axis=0)
    n = c.op("Unsqueeze", [n, c.cint([0])])
    shape = c.op("Concat", [n, c.cint([-1])], axis=0)
    y = c.op("Reshape", ["image", shape])
    y = c.op("Gemm", [y, c.w(7, 30)], transB=1)
    out.append((c, y, None, {}))

    c = Case("activations", rng, [1, 3, 9, 7])
    x = c.op("Mul", ["image", const_scalar(c, 4.0)])
    parts = [
        c.op("LeakyRelu", [x], alpha=0.13),
        c.op("HardSigmoid", [x]),
        c.op("HardSwish", [x]),
        c.op("Sigmoid", [x]),
        c.op("Clip", [x, const_scalar(c, 0.0), const_scalar(c, 6.0)]),
        c.op("Clip", [x, const_scalar(c, 0.0)]),
        c.op("Clip", [x, const_scalar(c, -1.5), const_scalar(c, 2.5)]),
    ]
    y = c.op("Concat", parts, axis=1)
    out.append((c, y, None, {}))

    # Hard-swish written out three ways; the importer must fuse each into one activation.
    c = Case("hard_swish_written_out", rng, [1, 4, 7, 9])
    x = c.op("Mul", ["image", const_scalar(c, 3.0)])
    g = c.op("Div", [c.op("Clip", [c.op("Add", [x, const_scalar(c, 3.0)]), const_scalar(c, 0.0), const_scalar(c, 6.0)]), const_scalar(c, 6.0)])
    a = c.op("Mul", [x, g])
    g = c.op("Clip", [c.op("Add", [a, const_scalar(c, 3.0)]), const_scalar(c, 0.0), const_scalar(c, 6.0)])
    b = c.op("Div", [c.op("Mul", [g, a]), const_scalar(c, 6.0)])
    y = c.op("Mul", [b, c.op("HardSigmoid", [b], alpha=1.0 / 6.0, beta=0.5)])
    out.append((c, y, None, {"hard_swish": 3, "mul": 0, "clip": 0}))

    # Squeeze-and-excitation: a [C, 1, 1] gate times the map, either operand order, and a
    # product of two equally shaped maps.
    c = Case("squeeze_excitation", rng, [1, 5, 11, 9])
    x = c.op("Conv", ["image", c.w(6, 5, 3, 3)], pads=[1, 1, 1, 1])
    g = c.op("GlobalAveragePool", [x])
    g = c.op("Relu", [c.op("Conv", [g, c.w(3, 6, 1, 1), c.w(3)])])
    g = c.op("HardSigmoid", [c.op("Conv", [g, c.w(6, 3, 1, 1), c.w(6)])], alpha=0.2, beta=0.5)
    a = c.op("Mul", [x, g])
    b = c.op("Mul", [g, c.op("Conv", [a, c.w(6, 6, 1, 1)])])
    y = c.op("Mul", [a, b])
    out.append((c, y, None, {"mul": 3}))

    # YOLO-style Split (sizes given), channel Slice, and a flatten whose shape comes from a
    # Slice of Shape.
    c = Case("split_slice_pad", rng, [1, 6, 9, 11])
    x = c.op("Conv", ["image", c.w(6, 6, 1, 1)])
    c.counter += 1
    parts = [f"split_{c.counter}_{k}" for k in range(3)]
    c.nodes.append(helper.make_node("Split", [x, c.cint([2, 3, 1])], parts, name=f"Split_{c.counter}", axis=1))
    sl = c.op("Slice", ["image", c.cint([1]), c.cint([4]), c.cint([1])])
    cat = c.op("Concat", [parts[2], parts[0], sl, parts[1]], axis=1)
    p = c.op("Pad", [cat, c.cint([0, 0, 1, 2, 0, 0, 1, 2])])
    y = c.op("Conv", [p, c.w(4, 9, 3, 3)], strides=[2, 2])
    s = c.op("Shape", [y])
    n = c.op("Slice", [s, c.cint([0]), c.cint([1]), c.cint([0])])
    y = c.op("Reshape", [y, c.op("Concat", [n, c.cint([-1])], axis=0)])
    out.append((c, y, None, {}))

    # Asymmetric padding (TensorFlow exports): a lopsided Pad, a Conv with four different pads,
    # SAME_UPPER at stride 2 on an even size (the extra row after) and SAME_LOWER (before).
    c = Case("asymmetric_padding", rng, [1, 3, 12, 9])
    p = c.op("Pad", ["image", c.cint([0, 0, 0, 2, 0, 0, 1, 0])])
    y = c.op("Conv", [p, c.w(4, 3, 3, 3), c.w(4)], pads=[0, 1, 2, 3])
    y = c.op("Conv", [c.op("Relu", [y]), c.w(5, 4, 3, 3)], auto_pad="SAME_UPPER", strides=[2, 2])
    y = c.op("Conv", [y, c.w(5, 1, 2, 4)], auto_pad="SAME_LOWER", group=5)
    out.append((c, y, None, {}))

    c = Case("refused_asymmetric_pool", rng, [1, 2, 6, 6])
    y = c.op("AveragePool", ["image"], kernel_shape=[3, 3], strides=[2, 2], pads=[0, 0, 1, 1], count_include_pad=1)
    out.append((c, y, "AveragePool", {}))

    c = Case("refused_softmax", rng, [1, 3, 5, 5])
    r = c.op("Relu", ["image"])
    y = c.op("Softmax", [r], axis=1)
    # With --graph-output at the Relu the same file imports (the test checks max(x, 0)).
    out.append((c, y, "Softmax", {"cut_at": r}))
    return out


def const_scalar(c, v):
    c.counter += 1
    n = f"{c.name}_s{c.counter}"
    c.inits.append(const(n, np.float32(v)))
    return n


def w_scales(self, v):
    self.counter += 1
    n = f"{self.name}_sc{self.counter}"
    self.inits.append(const(n, v))
    return n


Case.w_scales = w_scales


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    out_dir = sys.argv[1]
    seed = int(sys.argv[sys.argv.index("--seed") + 1]) if "--seed" in sys.argv else 2026
    os.makedirs(out_dir, exist_ok=True)
    rng = np.random.default_rng(seed + 1)
    for case, y, refused, extra in cases(seed):
        model = case.model(y, dynamic=case.name == "shape_subgraph")
        # (no onnx.checker: output shapes are left undeclared; onnxruntime validates on load)
        path = os.path.join(out_dir, case.name + ".onnx")
        onnx.save(model, path)
        x = rng.normal(0, 1, size=case.shape).astype(np.float32)
        sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        (result,) = sess.run(None, {"image": x})
        result = np.asarray(result, dtype=np.float32)
        x.tofile(os.path.join(out_dir, case.name + ".input.f32"))
        result.tofile(os.path.join(out_dir, case.name + ".output.f32"))
        meta = {"input_shape": case.shape, "output_shape": list(result.shape), "refused": refused}
        if "cut_at" in extra:
            meta["cut_at"] = extra["cut_at"]
        kinds = {k: v for k, v in extra.items() if k != "cut_at"}
        if kinds:
            meta["ir_kinds"] = kinds
        with open(os.path.join(out_dir, case.name + ".json"), "w") as f:
            json.dump(meta, f)
    print(f"onnxruntime {ort.__version__}, onnx {onnx.__version__}: {len(cases(seed))} cases in {out_dir}")


if __name__ == "__main__":
    main()
