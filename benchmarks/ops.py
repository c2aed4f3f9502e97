"""Per-operator latency of dcm's CPU kernels vs onnxruntime, one single-node model per op.

    python -m benchmarks.ops [--threads N]

Every non-weight op of the runtime's registry that a CNN uses, on a [2, 64, 56, 56] float32 input
(ResNet's second stage), best of 5 repeats, 1 thread by default (dcm's BLAS limited with
threadpoolctl). Whole-model profiles hide a slow op behind the convolutions; this table shows
one op at a time (a LeakyRelu at 22x or a Clip at 7x of onnxruntime stands out here).
Prints a table, writes benchmarks/results/ops.json. Ratios < 1 mean dcm is faster.
"""
from __future__ import annotations

import argparse
import timeit

import numpy as np
from onnx import TensorProto, helper, numpy_helper
from threadpoolctl import threadpool_limits

from benchmarks.common import onnxruntime_session, save
from dcm.converters import ConvertOptions, from_onnx
from dcm.runtime import InferenceSession

SHAPE = [2, 64, 56, 56]
_C = SHAPE[1]
_RNG = np.random.default_rng(0)

CASES = [  # (op, attributes, constant inputs after x; "x" repeats the input)
    ("Relu", {}, []),
    ("LeakyRelu", {"alpha": 0.1}, []),
    ("Sigmoid", {}, []),
    ("Tanh", {}, []),
    ("Clip", {}, [np.float32(0), np.float32(6)]),
    ("Softmax", {"axis": 1}, []),
    ("LogSoftmax", {"axis": 1}, []),
    ("MaxPool", {"kernel_shape": [2, 2], "strides": [2, 2]}, []),
    ("MaxPool", {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1]}, []),
    ("AveragePool", {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1]}, []),
    ("GlobalAveragePool", {}, []),
    ("LRN", {"size": 5, "alpha": 1e-4, "beta": 0.75, "bias": 2.0}, []),
    ("BatchNormalization", {}, [_RNG.random(_C, dtype=np.float32), _RNG.random(_C, dtype=np.float32),
                                _RNG.random(_C, dtype=np.float32), _RNG.random(_C, dtype=np.float32) + 0.5]),
    ("Flatten", {}, []),
    ("Transpose", {"perm": [0, 2, 3, 1]}, []),
    ("Add", {}, [_RNG.standard_normal((_C, 1, 1)).astype(np.float32)]),
    ("Mul", {}, [_RNG.standard_normal(SHAPE[1:]).astype(np.float32)]),
    ("Add", {}, ["x"]),
    ("Pad", {}, [np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64)]),
    ("Concat", {"axis": 1}, ["x"]),
    ("Reshape", {}, [np.array([SHAPE[0], -1], np.int64)]),
]


def single_node(op: str, attrs: dict, extra: list):
    names = ["x" if isinstance(v, str) else f"c{i}" for i, v in enumerate(extra)]
    inits = [numpy_helper.from_array(np.asarray(v), n) for n, v in zip(names, extra) if not isinstance(v, str)]
    node = helper.make_node(op, ["x", *names], ["y"], **attrs)
    g = helper.make_graph([node], op, [helper.make_tensor_value_info("x", TensorProto.FLOAT, SHAPE)],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m


def best_ms(fn, number: int = 20) -> float:
    return 1e3 * min(timeit.repeat(fn, number=number, repeat=5)) / number


def run(threads: int) -> dict:
    x = _RNG.standard_normal(SHAPE).astype(np.float32)
    rows = []
    for op, attrs, extra in CASES:
        m = single_node(op, attrs, extra)
        sess = InferenceSession(from_onnx(m, ConvertOptions(exact=True)), threads=threads)
        with threadpool_limits(threads):
            t_dcm = best_ms(lambda: sess.run(None, {"x": x}))
        ort_sess = onnxruntime_session(m.SerializeToString(), threads)
        t_ort = best_ms(lambda: ort_sess.run(None, {"x": x}))
        label = op + "".join(f" {k}={v}" for k, v in attrs.items() if k in ("kernel_shape", "pads"))
        label += " (x, x)" if "x" in [v for v in extra if isinstance(v, str)] else ""
        rows.append({"op": label, "dcm_ms": t_dcm, "onnxruntime_ms": t_ort, "dcm_vs_onnxruntime": t_dcm / t_ort})
    return {"shape": SHAPE, "threads": threads, "rows": rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=1)
    result = run(ap.parse_args().threads)
    print(f"{'op':<52}{'dcm ms':>9}{'ort ms':>9}{'dcm/ort':>9}")
    for r in result["rows"]:
        print(f"{r['op'][:51]:<52}{r['dcm_ms']:>9.3f}{r['onnxruntime_ms']:>9.3f}{r['dcm_vs_onnxruntime']:>9.2f}")
    print(f"wrote {save('ops', result)}")


if __name__ == "__main__":
    main()
