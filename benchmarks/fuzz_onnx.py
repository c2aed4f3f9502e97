"""The ONNX side of ``benchmarks/fuzz.py``: seed models for every op family, and converter fuzzing.

Seeds: a few models built here with onnx.helper (a transformer block, LSTM/GRU/RNN, ConvTranspose
and Resize), plus up to PER_OP of onnx's own backend node cases for every op in the CPU registry
(``benchmarks/onnx_node_suite.py``), each with the inputs it came with, so that integer inputs
(Gather's indices, OneHot's depth, ...) are real. The registry is read at run time: an op added to
it is seeded as soon as onnx has a case for it.

Converter fuzzing: a seed's ONNX bytes, mutated inside the protobuf structure (attributes, dims,
element types, op types, opsets, initializer data) or as raw bytes, go through ``from_onnx`` and
then the runtime. onnx's checker, shape inference and reference evaluator run native code that can
crash or hang on hostile input, so each conversion runs in a forked child (``isolated``) with an
address-space limit and a SIGALRM whose default action kills the child even inside C++.
"""
from __future__ import annotations

import faulthandler
import os
import random
import resource
import signal
import traceback
import warnings
from collections import Counter
from functools import lru_cache
from typing import Callable

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from dcm.errors import DcmError
from dcm.format import Model, read, to_bytes
from dcm.runtime import InferenceSession

PER_OP = 3  # backend node cases kept per registry op
OPSET = 21  # the hand-built models' opset: Gelu, LayerNormalization and Resize's modes are all in it

Seed = tuple[str, bytes, dict]  # (name, ONNX bytes, feeds)


# --- hand-built models ---------------------------------------------------------------------------

def _pruned(rng: np.random.Generator, shape: tuple[int, ...], density: float) -> np.ndarray:
    w = rng.normal(size=shape).astype(np.float32)
    w[rng.random(shape) > density] = 0
    return w


def _model(nodes: list, inputs: list, outputs: list, weights: dict[str, np.ndarray]) -> bytes:
    graph = helper.make_graph(nodes, "fuzz", inputs, outputs,
                              [numpy_helper.from_array(v, k) for k, v in weights.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)]).SerializeToString()


def _transformer() -> Seed:
    """One pre-norm encoder block: LayerNorm, pruned Q/K/V/out projections (constant MatMul weights:
    the compiled sparse product), two-head attention with Softmax, a Gelu feed-forward, residuals."""
    rng = np.random.default_rng(11)
    d, heads, seq = 16, 2, 5
    w = {n: _pruned(rng, (d, d), 0.25) for n in ("wq", "wk", "wv", "wo")}
    w |= {"w1": _pruned(rng, (d, 2 * d), 0.25), "w2": _pruned(rng, (2 * d, d), 0.25),
          "g": np.ones(d, np.float32), "b": np.zeros(d, np.float32),
          "split": np.array([1, seq, heads, d // heads], np.int64), "merge": np.array([1, seq, d], np.int64),
          "scale": np.array(1 / np.sqrt(d // heads), np.float32)}
    n = helper.make_node
    nodes = [n("LayerNormalization", ["x", "g", "b"], ["h"], axis=-1)]
    for p in ("q", "k", "v"):
        nodes += [n("MatMul", ["h", "w" + p], [p + "0"]), n("Reshape", [p + "0", "split"], [p + "1"]),
                  n("Transpose", [p + "1"], [p], perm=[0, 2, 3, 1] if p == "k" else [0, 2, 1, 3])]
    nodes += [n("MatMul", ["q", "k"], ["s0"]), n("Mul", ["s0", "scale"], ["s1"]), n("Softmax", ["s1"], ["a"], axis=-1),
              n("MatMul", ["a", "v"], ["c0"]), n("Transpose", ["c0"], ["c1"], perm=[0, 2, 1, 3]),
              n("Reshape", ["c1", "merge"], ["c2"]), n("MatMul", ["c2", "wo"], ["o"]), n("Add", ["x", "o"], ["r"]),
              n("LayerNormalization", ["r", "g", "b"], ["h2"], axis=-1), n("MatMul", ["h2", "w1"], ["f0"]),
              n("Gelu", ["f0"], ["f1"]), n("MatMul", ["f1", "w2"], ["f2"]), n("Add", ["r", "f2"], ["y"])]
    x = rng.normal(size=(1, seq, d)).astype(np.float32)
    return ("transformer", _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, seq, d])],
                                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, seq, d])], w), {"x": x})


def _recurrent() -> Seed:
    """LSTM, then GRU, then RNN over its outputs (one direction, then both, then reverse)."""
    rng = np.random.default_rng(12)
    seq, batch, d, h = 4, 2, 3, 5
    w = {"lw": rng.normal(size=(1, 4 * h, d)), "lr": rng.normal(size=(1, 4 * h, h)), "lb": rng.normal(size=(1, 8 * h)),
         "gw": rng.normal(size=(2, 3 * h, h)), "gr": rng.normal(size=(2, 3 * h, h)),
         "rw": rng.normal(size=(1, h, 2 * h)), "rr": rng.normal(size=(1, h, h)), "axes": np.array([1], np.int64),
         "merge": np.array([seq, batch, 2 * h], np.int64)}
    w = {k: v.astype(np.float32) if v.dtype == np.float64 else v for k, v in w.items()}
    n = helper.make_node
    nodes = [n("LSTM", ["x", "lw", "lr", "lb"], ["l"], hidden_size=h),
             n("Squeeze", ["l", "axes"], ["l1"]),
             n("GRU", ["l1", "gw", "gr"], ["g"], hidden_size=h, direction="bidirectional", linear_before_reset=1),
             n("Transpose", ["g"], ["g1"], perm=[0, 2, 1, 3]), n("Reshape", ["g1", "merge"], ["g2"]),
             n("RNN", ["g2", "rw", "rr"], ["r", "y"], hidden_size=h, direction="reverse")]
    x = rng.normal(size=(seq, batch, d)).astype(np.float32)
    return ("recurrent", _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [seq, batch, d])],
                                [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, batch, h])], w), {"x": x})


def _upsampling() -> Seed:
    """ConvTranspose (stride 2, pads, output padding, groups), Resize (linear, then nearest by sizes),
    MaxPool: a decoder's layers."""
    rng = np.random.default_rng(13)
    w = {"k": _pruned(rng, (4, 3, 3, 3), 0.5), "kb": rng.normal(size=6).astype(np.float32),
         "scales": np.array([1, 1, 1.5, 1.5], np.float32), "sizes": np.array([1, 6, 7, 9], np.int64)}
    n = helper.make_node
    nodes = [n("ConvTranspose", ["x", "k", "kb"], ["t"], strides=[2, 2], pads=[1, 1, 1, 1], output_padding=[1, 1],
               group=2),
             n("Resize", ["t", "", "scales"], ["u"], mode="linear"),
             n("Resize", ["u", "", "", "sizes"], ["v"], mode="nearest"),
             n("MaxPool", ["v"], ["y"], kernel_shape=[2, 2], strides=[1, 2])]
    x = rng.normal(size=(1, 4, 5, 5)).astype(np.float32)
    return ("upsampling", _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 5, 5])],
                                 [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], w), {"x": x})


BUILT = (_transformer, _recurrent, _upsampling)


# --- seeds ---------------------------------------------------------------------------------------

@lru_cache(maxsize=None)
def onnx_seeds() -> tuple[Seed, ...]:
    """The hand-built models, then up to PER_OP backend node cases per registry op (runnable ones
    only, see onnx_node_suite.skip_reason), each with its first data set as feeds."""
    from benchmarks.onnx_node_suite import _array, all_cases, main_op, skip_reason

    out = [build() for build in BUILT]
    kept: Counter = Counter()
    for case in all_cases():
        op = main_op(case)
        if kept[op] >= PER_OP or skip_reason(case) is not None or not case.data_sets:
            continue
        g = case.model.graph
        weights = {t.name for t in g.initializer}
        names = [v.name for v in g.input if v.name not in weights]
        out.append((case.name, case.model.SerializeToString(),
                    {n: _array(x) for n, x in zip(names, case.data_sets[0][0])}))
        kept[op] += 1
    return tuple(out)


@lru_cache(maxsize=None)
def node_seeds() -> tuple[tuple[str, bytes, dict], ...]:
    """(name, .dcm bytes, feeds) of the ONNX seeds that convert and run unmutated. One that fails
    is a conformance problem, not a fuzz finding: ``failed_seeds`` names it and the campaign's JSON
    records it."""
    out = []
    for name, data, feeds in onnx_seeds():
        try:
            model = _converted(data)
            InferenceSession(model, threads=1).run(None, {v.name: feeds[v.name] for v in model.inputs})
        except Exception:  # noqa: BLE001 - any failure leaves the seed out, by name
            continue
        out.append((name, to_bytes(model), feeds))
    return tuple(out)


def failed_seeds() -> list[str]:
    """Names of ONNX seeds that do not convert and run unmutated."""
    ok = {name for name, _, _ in node_seeds()}
    return [name for name, _, _ in onnx_seeds() if name not in ok]


# --- the property ----------------------------------------------------------------------------------

def _converted(data: bytes) -> Model:
    """ONNX bytes converted, written and read back: the model a user of ``dcm convert`` runs."""
    from dcm.converters.onnx_in import from_onnx

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a mutated model's numpy warnings are not findings
        return read(to_bytes(from_onnx(data)))


def convert_and_run(data: bytes, feeds: dict | None, ran: Counter | None) -> str:
    """'ok', 'converted' (no feeds fit its inputs) or 'rejected' (a DcmError); anything else propagates.
    Conversion, the file round trip, load and a run: the whole path a user's model takes. ``ran``
    counts the ops of a model that ran to its end."""
    try:
        model = _converted(data)
        if not feeds or any(v.name not in feeds for v in model.inputs):
            return "converted"
        InferenceSession(model, threads=1).run(None, {v.name: feeds[v.name] for v in model.inputs})
    except DcmError:
        return "rejected"
    if ran is not None:
        ran.update({n.op for n in model.nodes})
    return "ok"


def isolated(fn: Callable[[], str], seconds: int, memory: int) -> tuple[str, str]:
    """fn() in a forked child with an address-space limit and a SIGALRM at its default action (which
    ends the child even inside native code): (its result, ""), ("crash", the traceback or the signal
    that ended it) or ("hang", "")."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns
        os.close(read_end)
        faulthandler.disable()  # the parent reports the signal; a stack dump would only be noise
        try:
            if "libasan" not in os.environ.get("LD_PRELOAD", ""):  # ASan reserves terabytes of address space
                resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
            signal.signal(signal.SIGALRM, signal.SIG_DFL)
            signal.alarm(seconds)
            message = "ok " + fn()
        except BaseException:  # noqa: BLE001 - everything that is not fn's answer is the finding
            message = "crash " + traceback.format_exc(limit=-6)
        os.write(write_end, message.encode()[:60_000])  # under the pipe's buffer: the write never blocks
        os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as f:
        message = f.read().decode(errors="replace")
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        return ("hang", "") if sig == signal.SIGALRM else ("crash", f"killed by {signal.Signals(sig).name}")
    kind, _, detail = message.partition(" ")
    if kind == "ok":
        return detail, ""
    return "crash", detail or f"exit status {os.WEXITSTATUS(status)} without an answer"


# --- mutators ----------------------------------------------------------------------------------------

def _interesting(rng: random.Random) -> int:
    from benchmarks.fuzz import INTERESTING

    return max(-(2**63), min(2**63 - 1, rng.choice(INTERESTING) + rng.choice([0, 0, 0, -1, 1])))


ATTRIBUTE_NAMES = ("axis", "axes", "perm", "kernel_shape", "pads", "strides", "dilations", "group", "to", "mode",
                   "hidden_size", "direction", "output_padding", "depth", "batch_dims", "keepdims", "k", "blocksize")


def _mutate_attribute(m, rng: random.Random) -> None:
    nodes = list(m.graph.node)
    if not nodes:
        return
    node = rng.choice(nodes)
    if node.attribute and rng.random() < 0.8:
        a = rng.choice(list(node.attribute))
        if rng.random() < 0.1:
            node.attribute.remove(a)
        elif a.type == onnx.AttributeProto.INT:
            a.i = _interesting(rng)
        elif a.type == onnx.AttributeProto.INTS:
            values = list(a.ints)
            op = rng.randrange(3)
            if op == 0 and values:
                values[rng.randrange(len(values))] = _interesting(rng)
            elif op == 1 and values:
                del values[rng.randrange(len(values))]
            else:
                values.append(_interesting(rng))
            del a.ints[:]
            a.ints.extend(values)
        elif a.type == onnx.AttributeProto.FLOAT:
            a.f = rng.choice([float("nan"), float("inf"), -1.0, 0.0, 1e30, -1e-30])
        elif a.type == onnx.AttributeProto.STRING:
            a.s = rng.choice([b"", b"x", b"linear", b"cubic", b"nearest", b"reverse", b"bidirectional", b"\xff"])
        elif a.type == onnx.AttributeProto.TENSOR:
            a.t.dims[:] = [_interesting(rng) % 2**40 for _ in a.t.dims] or [0]
        return
    name = rng.choice(ATTRIBUTE_NAMES)
    if any(a.name == name for a in node.attribute):
        return
    value = [_interesting(rng) for _ in range(rng.randrange(5))] if rng.random() < 0.5 else _interesting(rng)
    node.attribute.append(helper.make_attribute(name, value))


def _mutate_dims(m, rng: random.Random) -> None:
    g = m.graph
    if g.initializer and rng.random() < 0.5:
        t = rng.choice(list(g.initializer))
        op = rng.randrange(3)
        if op == 0 and t.dims:
            t.dims[rng.randrange(len(t.dims))] = _interesting(rng)
        elif op == 1:
            t.data_type = rng.randrange(0, 26)
        else:  # data that does not fill its dims
            raw = t.raw_data or numpy_helper.to_array(t).tobytes()
            t.ClearField("raw_data")
            for f in ("float_data", "int32_data", "int64_data", "double_data"):
                t.ClearField(f)
            t.raw_data = raw[: rng.randrange(len(raw) + 1)] if raw else b"\x00" * rng.choice([1, 3, 7])
        return
    values = [v for v in (*g.input, *g.output, *g.value_info) if v.type.HasField("tensor_type")]
    if not values:
        return
    t = rng.choice(values).type.tensor_type
    if rng.random() < 0.2:
        t.elem_type = rng.randrange(0, 26)
    elif t.shape.dim and rng.random() < 0.8:
        d = t.shape.dim[rng.randrange(len(t.shape.dim))]
        if rng.random() < 0.7:
            d.dim_value = _interesting(rng)
        else:
            d.dim_param = rng.choice(["", "batch", "N", "\u00e9"])
    else:
        t.shape.dim.add().dim_value = rng.choice([0, 1, 2, 2**31])


def _mutate_node(m, rng: random.Random) -> None:
    from dcm.runtime.cpu import REGISTRY

    g = m.graph
    if not g.node:
        return
    i = rng.randrange(len(g.node))
    node = g.node[i]
    op = rng.randrange(6)
    if op == 0:
        node.op_type = rng.choice(sorted(REGISTRY))
    elif op == 1 and node.input:
        del node.input[rng.randrange(len(node.input))]
    elif op == 2:
        names = [x for n in g.node for x in (*n.input, *n.output)] + [t.name for t in g.initializer] + [""]
        node.input.append(rng.choice(names))
    elif op == 3 and node.output:  # an output some node reads: cycles, duplicates
        node.output[rng.randrange(len(node.output))] = rng.choice([x for n in g.node for x in n.input] or ["y"])
    elif op == 4:
        g.node.insert(rng.randrange(len(g.node) + 1), node)  # duplicate
    else:
        del g.node[i]


def _mutate_model(m, rng: random.Random) -> None:
    op = rng.randrange(4)
    if op == 0 and m.opset_import:
        m.opset_import[0].version = rng.choice([0, 1, 6, 7, 11, 13, 17, 20, 21, 22, 23, 24, 1000, 2**31])
    elif op == 1:
        m.ir_version = rng.choice([0, 1, 3, 7, 10, 11, 12, 2**40])
    elif op == 2 and m.graph.output:
        del m.graph.output[rng.randrange(len(m.graph.output))]
    elif m.graph.input:
        m.graph.input.append(m.graph.input[rng.randrange(len(m.graph.input))])  # a duplicate input


STRUCTURED = (_mutate_attribute, _mutate_attribute, _mutate_dims, _mutate_node, _mutate_model)


def _mutate_raw(data: bytes, rng: random.Random) -> bytes:
    buf = bytearray(data)
    for _ in range(rng.choice([1, 1, 2, 8])):
        if not buf:
            break
        i = rng.randrange(len(buf))
        op = rng.randrange(4)
        if op == 0:
            buf[i] ^= 1 << rng.randrange(8)
        elif op == 1:
            buf[i] = rng.choice([0x00, 0x7F, 0x80, 0xFF])
        elif op == 2:
            del buf[i : i + rng.choice([1, 4, 32])]
        else:
            buf[i:i] = bytes(rng.randrange(256) for _ in range(rng.choice([1, 4])))
    return bytes(buf)


def mutate_onnx(data: bytes, rng: random.Random) -> bytes:
    """A structured mutation (parsed, changed, serialized again) most of the time, raw bytes else."""
    if rng.random() < 0.2:
        return _mutate_raw(data, rng)
    m = onnx.ModelProto()
    m.ParseFromString(data)
    for _ in range(rng.choice([1, 1, 1, 2, 3])):
        rng.choice(STRUCTURED)(m, rng)
    return m.SerializeToString()


def generate_onnx(rng: random.Random) -> tuple[bytes, dict]:
    """(mutated ONNX bytes, the seed's feeds)."""
    _, data, feeds = rng.choice(onnx_seeds())
    try:
        return mutate_onnx(data, rng), feeds
    except (ValueError, TypeError, IndexError, AttributeError, OverflowError):  # a mutation the protobuf refused
        return data[: rng.randrange(len(data))], feeds


def check_conversion(data: bytes, feeds: dict, seconds: int, memory: int, ran: Counter) -> tuple[str, str]:
    """(outcome, detail) of convert_and_run on a mutated model, isolated; the ops it ran join ``ran``."""
    ops: Counter = Counter()

    def work() -> str:
        outcome = convert_and_run(data, feeds, ops)
        return outcome + " " + ",".join(sorted(ops))  # the child's counter travels back in its answer

    answer, detail = isolated(work, seconds, memory)
    outcome, _, names = answer.partition(" ")
    if names:
        ran.update(names.split(","))
    return outcome, detail
