"""ONNX model -> dcm Model: constant folding, BatchNorm folding, Dropout removal, weight coding.

Folding uses onnx's own reference evaluator, so every op it folds means exactly what ONNX says.
"""
from __future__ import annotations

import os
import warnings
from collections import Counter
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Literal

import numpy as np

from dcm.converters.compact import compact_names, drop_default_attrs
from dcm.converters.functions import expand_functions
from dcm.errors import ConversionError
from dcm.format.model import Model, Node, ValueInfo
from dcm.encoder.codec import encode_raw
from dcm.encoder.prune import mask_by_sparsity
from dcm.encoder.smallest import encode_smallest, largest_change
from dcm.names import KINDS, by_layer, layer_aliases

MIN_OPSET = 7
# op -> positions of its weight inputs (Gather: an embedding table; recurrent layers: W and R)
WEIGHT_OPS = {"Conv": (1,), "ConvTranspose": (1,), "Gemm": (1,), "MatMul": (1,), "Gather": (0,),
              "LSTM": (1, 2), "GRU": (1, 2), "RNN": (1, 2)}
ONNX_DTYPES = {1: "float32", 2: "uint8", 3: "int8", 5: "int16", 6: "int32", 7: "int64", 9: "bool",
               10: "float16", 11: "float64"}


@dataclass
class ConvertOptions:
    """How weights are coded. The defaults keep a model's own zeros and use 8-bit codebooks,
    which is lossless for a model that already holds <= 256 distinct values per layer."""

    exact: bool = False
    sparsity: float | dict[str, float] | None = None  # post-training pruning (no retraining!)
    code_bits: dict[str, int] = field(default_factory=lambda: {"conv": 8, "fc": 8})
    index_bits: dict[str, int | Literal["auto"]] = field(default_factory=lambda: {"conv": 8, "fc": 5})
    masks: dict[str, np.ndarray] = field(default_factory=dict)  # explicit kept positions per weight
    min_coded_elements: int = 64  # smaller weights stay raw: coding them would cost more than it saves
    metadata: dict[str, str] = field(default_factory=dict)
    compact_graph: bool = False  # short value names, no node names or default-valued attributes (.compact)


def _onnx():
    try:
        import onnx  # noqa: F401
        import onnx.numpy_helper  # noqa: F401
    except ImportError:
        raise ConversionError("ONNX conversion needs the 'onnx' extra: pip install 'dcm[onnx]'") from None
    return onnx


def load_onnx(source: str | os.PathLike | bytes):
    """Parse an ONNX file; a missing, truncated or non-ONNX file is one clear ConversionError."""
    onnx = _onnx()
    try:
        if isinstance(source, (bytes, bytearray)):
            model = onnx.load_from_string(bytes(source))
        else:
            if os.path.isdir(source):
                raise ConversionError(f"{source} is a directory, not an ONNX file")
            if not os.path.exists(source):
                raise ConversionError(f"{source}: no such file")
            model = onnx.load(str(source))
    except ConversionError:
        raise
    except Exception as exc:  # protobuf raises its own DecodeError family
        raise ConversionError(f"{source if not isinstance(source, bytes) else 'input'}: not a valid ONNX model ({type(exc).__name__}: {exc})") from None
    if not model.graph.node:
        raise ConversionError("the ONNX model has no nodes (truncated or empty file?)")
    return model


def _text(value: bytes, what: str) -> str:
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        raise ConversionError(f"{what}: {value[:40]!r} is not UTF-8 text") from None


def _array(t, what: str) -> np.ndarray:
    """A TensorProto as numpy; one whose data does not fill its dims is a ConversionError."""
    try:
        return _onnx().numpy_helper.to_array(t)
    except ValueError as exc:
        raise ConversionError(f"{what}: its data does not match its dims {list(t.dims)} ({exc})") from None


def _check_text(model) -> None:
    """protobuf hands back a string field that is not UTF-8 as bytes: refuse one before it is used as a name."""
    g = model.graph
    names = [(f"node {i} op type", n.op_type) for i, n in enumerate(g.node)]
    names += [(f"node {i} name", n.name) for i, n in enumerate(g.node)]
    names += [(f"node {i} input or output", x) for i, n in enumerate(g.node) for x in (*n.input, *n.output)]
    names += [(f"node {i} attribute name", a.name) for i, n in enumerate(g.node) for a in n.attribute]
    names += [("graph value name", v.name) for v in (*g.input, *g.output, *g.value_info, *g.initializer)]
    for what, name in names:
        if not isinstance(name, str):
            raise ConversionError(f"{what}: {name[:40]!r} is not UTF-8 text")


def _attrs(node) -> dict[str, Any]:
    onnx = _onnx()
    out = {}
    for a in node.attribute:
        v = onnx.helper.get_attribute_value(a)
        what = f"node {node.name or node.op_type!r} ({node.op_type}): attribute {a.name!r}"
        if isinstance(v, bytes):
            v = _text(v, what)
        elif isinstance(v, list):
            v = [_text(x, what) if isinstance(x, bytes) else x for x in v]
            if not v:
                continue  # an empty list carries no information and has no JSON type
        elif isinstance(v, onnx.TensorProto):  # spec 4.3 (ConstantOfShape's fill value)
            v = _array(v, what)
            if v.dtype.name not in ONNX_DTYPES.values():
                raise ConversionError(f"node {node.name or node.op_type!r} ({node.op_type}): tensor attribute "
                                      f"{a.name!r} has element type {v.dtype}, which cannot be stored")
            out[a.name] = v
            continue
        if not (isinstance(v, (int, float, str)) or (isinstance(v, list) and all(isinstance(x, (int, float, str)) for x in v))):
            raise ConversionError(f"node {node.name or node.op_type!r} ({node.op_type}): attribute {a.name!r} "
                                  "of this type cannot be stored (graph or tensor attribute)")
        out[a.name] = v
    return out


def _dims(vi) -> list[int | str]:
    """A value info's shape; a dim without size or name gets a name of its own."""
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or f"{vi.name}_dim{i}")
            for i, d in enumerate(vi.type.tensor_type.shape.dim)]


def _value_info(vi) -> ValueInfo:
    t = vi.type.tensor_type
    dtype = ONNX_DTYPES.get(t.elem_type)
    if dtype is None:
        raise ConversionError(f"value {vi.name!r}: element type {t.elem_type} is not supported")
    return ValueInfo(vi.name, dtype, _dims(vi))


# Folded with dcm's own kernel instead of onnx's reference: its GatherElements goes through
# np.choose, which takes at most 32 choices (a gather along an axis longer than 32 fails with
# "cannot reshape array of size 1 into shape ...") and wraps out-of-range indices; it has no
# DequantizeLinear or QuantizeLinear before opset 19 (a quantized weight at opset 13-18).
FOLD_WITH_RUNTIME = ("GatherElements", "DequantizeLinear", "QuantizeLinear")


def _evaluate(node, consts: dict[str, np.ndarray], opset: int) -> list[np.ndarray]:
    from onnx.reference import ReferenceEvaluator

    onnx = _onnx()
    if node.op_type in FOLD_WITH_RUNTIME:
        from dcm.runtime.cpu import REGISTRY

        kernel = REGISTRY[node.op_type](Node(node.op_type, list(node.input), list(node.output), _attrs(node)), None)
        return list(kernel(*(consts[i] for i in node.input)))
    graph_inputs = [i for i in node.input if i]
    g = onnx.helper.make_graph(
        [node], "fold",
        [onnx.helper.make_tensor_value_info(n, onnx.helper.np_dtype_to_tensor_dtype(consts[n].dtype), consts[n].shape)
         for n in graph_inputs],
        [onnx.helper.make_tensor_value_info(o, onnx.TensorProto.UNDEFINED, None) for o in node.output])
    m = onnx.helper.make_model(g, opset_imports=[onnx.helper.make_opsetid("", opset)])
    return ReferenceEvaluator(m).run(None, {n: consts[n] for n in graph_inputs})


def _upgraded(model):
    """A model of an opset older than MIN_OPSET (PyTorch's exports of 2018 are at opset 6) brought up to
    it by onnx's version converter, which rewrites what changed (the broadcast attribute of Add, Mul,
    ... gave way to numpy broadcasting at opset 7); other models as they are."""
    onnx = _onnx()
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if not 0 < opset < MIN_OPSET:
        return model
    model = _copy(model)
    _per_channel_prelu(model)
    try:
        return onnx.version_converter.convert_version(model, MIN_OPSET)
    except Exception as exc:
        raise ConversionError(f"ONNX opset {opset} is older than the supported {MIN_OPSET}, and onnx's version "
                              f"converter could not upgrade it ({type(exc).__name__}: {str(exc)[:200]})") from None


def _per_channel_prelu(model) -> None:
    """Before opset 7 PRelu applied a slope of C values to the input's channels (axis 1); from opset 7
    it broadcasts from the right, which the version converter does not rewrite: such a constant slope
    becomes [C, 1, ..., 1] for the input's rank (PyTorch's per-channel PReLU exported at opset 6)."""
    onnx = _onnx()
    inits = {t.name: t for t in model.graph.initializer}
    ranks = {v.name: len(v.type.tensor_type.shape.dim)
             for v in [*model.graph.input, *onnx.shape_inference.infer_shapes(model).graph.value_info]
             if v.type.tensor_type.HasField("shape")}
    for node in model.graph.node:
        slope = inits.get(node.input[1]) if node.op_type == "PRelu" and len(node.input) > 1 else None
        rank = ranks.get(node.input[0], 0) if slope is not None else 0
        if rank > 2 and len(slope.dims) == 1 and slope.dims[0] > 1:
            slope.dims[:] = [slope.dims[0]] + [1] * (rank - 2)
            for v in model.graph.input:  # (old exporters declare initializers as inputs too)
                if v.name == slope.name:
                    v.type.tensor_type.shape.CopyFrom(onnx.helper.make_tensor_type_proto(1, slope.dims).tensor_type.shape)


class _Graph:
    """A mutable working copy of the ONNX graph while folding."""

    def __init__(self, model):
        onnx = _onnx()
        self.opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
        if self.opset < MIN_OPSET:
            raise ConversionError(f"ONNX opset {self.opset} is older than the supported {MIN_OPSET}; "
                                  "upgrade it with onnx.version_converter")
        g = model.graph
        self.producer = f"{model.producer_name} {model.producer_version}".strip()
        # Copies only: nothing here may point into ``model``, so that a caller who owns it can free
        # it (protobuf keeps all of a message's bytes in one arena, every initializer included).
        self.consts = {t.name: _array(t, f"initializer {t.name!r}") for t in g.initializer}
        self.inputs = [_value_info(v) for v in g.input if v.name not in self.consts]
        for v in g.input:  # without a shape the rank is unknown, and no kernel can be planned for it
            if v.name not in self.consts and not v.type.tensor_type.HasField("shape"):
                raise ConversionError(f"input {v.name!r} declares no shape, so its rank is unknown: give the "
                                      "input its dims (symbolic names where sizes vary, [] for a scalar)")
        try:
            if not _int32_attributes(g):
                raise ValueError("an integer attribute past int32")
            inferred = onnx.shape_inference.infer_shapes(_without_weights(model)).graph
        except Exception:
            inferred = g
        outs = {v.name: v for v in inferred.output}
        self.outputs = [_value_info(outs.get(v.name, v)) for v in g.output]
        # Only value infos that carry a shape: one without (shape inference could not tell the rank,
        # e.g. a Squeeze whose axes it cannot see) is unknown, not a scalar. The exporter's own value
        # infos fill what inference leaves out (the dynamo exporter writes them all).
        self.shapes = {v.name: _dims(v) for v in list(g.value_info) + list(inferred.value_info) + list(inferred.input)
                       if v.type.HasField("tensor_type") and v.type.tensor_type.HasField("shape")}
        from dcm.runtime.cpu import REGISTRY  # what the runtime can execute (numpy-only import)

        types = {t.name: onnx.helper.make_tensor_type_proto(t.data_type, list(t.dims)) for t in g.initializer}
        for v in [*inferred.value_info, *inferred.input, *inferred.output, *g.value_info]:
            known = types.get(v.name)
            if v.type.HasField("tensor_type") and (known is None or len(v.type.tensor_type.shape.dim)
                                                   >= len(known.tensor_type.shape.dim)):
                types[v.name] = v.type  # the exporter's own value infos last: inference may know less

        def runs(node, known: dict) -> bool:  # a registry op, in a form its kernel takes
            kernel = REGISTRY.get(node.op_type)
            return kernel is not None and kernel.takes_onnx(node, known)

        self.nodes = expand_functions([_copy(n) for n in g.node], self.opset, types, runs)
        for node in self.nodes:
            if node.op_type in REGISTRY and not runs(node, types):
                raise ConversionError(f"unsupported op {node.op_type} in node {node.name!r}: its kernel does not run "
                                      "this form of it, and its ONNX function body could not replace it")

    def static_shape(self, name: str) -> list[int] | None:
        s = self.shapes.get(name)
        return s if s is not None and all(isinstance(d, int) for d in s) else None


def _int32_attributes(graph) -> bool:
    """Whether every integer attribute of the graph's nodes (subgraphs included; a Constant's values
    are data, not read as sizes) fits int32. onnx's shape inference narrows them, and a
    LayerNormalization axis of 2**31 made it crash the process (onnx 1.23: a segfault, not an
    exception); such a graph is converted without its inference."""
    for node in graph.node:
        for a in node.attribute if node.op_type != "Constant" else ():
            if any(not -2**31 <= v < 2**31 for v in [a.i, *a.ints]):
                return False
            if not all(_int32_attributes(sub) for sub in [*([a.g] if a.HasField("g") else []), *a.graphs]):
                return False
    return True


def _copy(message):
    out = type(message)()
    out.CopyFrom(message)
    return out


def _without_weights(model):
    """The graph with initializers declared by shape only: shape inference without copying weights."""
    onnx = _onnx()
    g = model.graph
    declared = {v.name for v in g.input}
    shapes = [onnx.helper.make_tensor_value_info(t.name, t.data_type, list(t.dims))
              for t in g.initializer if t.name not in declared]
    graph = onnx.helper.make_graph(list(g.node), g.name, list(g.input) + shapes, list(g.output))
    return onnx.helper.make_model(graph, opset_imports=list(model.opset_import), ir_version=model.ir_version)


def _taken_branch(node, g: _Graph, serial: int) -> list:
    """An If whose condition folded to a constant (a test of a static shape, as exporters write them)
    as the nodes of the branch it takes: the branch's outputs renamed to the If's, its other values
    prefixed, its constants added to the graph's; an output the branch only passes through becomes an
    Identity. The .dcm format stores no subgraphs, so an If on a run-time condition is refused."""
    onnx = _onnx()
    cond = g.consts[node.input[0]]
    if cond.size != 1:
        raise ConversionError(f"node {node.name or 'If'!r} (If): condition of {cond.size} values, one expected")
    branch = next(a.g for a in node.attribute if a.name == ("then_branch" if bool(cond.reshape(-1)[0]) else "else_branch"))
    if len(branch.output) != len(node.output):
        raise ConversionError(f"node {node.name or 'If'!r} (If): the branch has {len(branch.output)} outputs for "
                              f"{len(node.output)}")
    prefix = f"{node.name or 'If'}_{serial}/"
    produced = {o for n in branch.node for o in n.output}
    inner = produced | {t.name for t in branch.initializer}
    names: dict[str, str] = {}
    for v, out in zip(branch.output, node.output):
        if v.name in produced:
            names.setdefault(v.name, out)  # (a value returned twice: its second output an Identity)

    def rename(name: str) -> str:
        return names.get(name, prefix + name if name in inner else name)  # outer-scope values as they are

    for t in branch.initializer:
        g.consts[rename(t.name)] = _array(t, f"initializer {t.name!r} of {node.name or 'If'!r}")
    nodes = []
    for k, inner_node in enumerate(branch.node):
        n = _copy(inner_node)
        n.name = f"{prefix}{inner_node.name or inner_node.op_type}_{k}"
        n.input[:] = [rename(x) if x else "" for x in n.input]
        n.output[:] = [rename(x) if x else "" for x in n.output]
        _rename_captured(n, rename)
        nodes.append(n)
    for v, out in zip(branch.output, node.output):
        if names.get(v.name) != out:  # a value from outside the branch, one of its constants, or a repeat
            nodes.append(onnx.helper.make_node("Identity", [rename(v.name)], [out], name=f"{prefix}{out}"))
    return nodes


def _rename_captured(node, rename) -> None:
    """The values a node's subgraphs (a nested If's branches) read from outside them, renamed."""
    for a in node.attribute:
        for sub in [a.g] if a.HasField("g") else list(a.graphs):
            for n in sub.node:
                n.input[:] = [rename(x) if x else "" for x in n.input]
                _rename_captured(n, rename)


def _fold_constants(g: _Graph) -> list:
    """Evaluate every node whose inputs are all constants (and Shape of a statically shaped value);
    an If on a constant condition becomes the branch it takes, folded in turn."""
    kept, inlined = [], 0
    pending = list(reversed(g.nodes))
    while pending:
        node = pending.pop()
        if node.domain not in ("", "ai.onnx"):
            raise ConversionError(f"node {node.name or node.op_type!r}: custom domain {node.domain!r} is not supported")
        if node.op_type == "If" and node.input and node.input[0] in g.consts:
            pending += reversed(_taken_branch(node, g, inlined))
            inlined += 1
            continue
        if node.op_type in ("If", "Loop", "Scan"):
            raise ConversionError(f"node {node.name or node.op_type!r} ({node.op_type}): control flow on values known "
                                  "only at run time is not supported (a .dcm stores no subgraphs; an If whose "
                                  "condition folds to a constant becomes its branch)")
        if node.op_type == "Shape" and node.input and node.input[0] not in g.consts:
            shape = g.static_shape(node.input[0])
            if shape is not None:
                a = {at.name: at.i for at in node.attribute}
                g.consts[node.output[0]] = np.array(shape[a.get("start", 0):a.get("end", len(shape))], dtype=np.int64)
                continue
        if all(not i or i in g.consts for i in node.input) and node.op_type not in ("RandomNormal", "RandomUniform"):
            try:
                values = _evaluate(node, g.consts, g.opset)
            except Exception as exc:
                raise ConversionError(f"node {node.name or node.op_type!r} ({node.op_type}): cannot fold its "
                                      f"constant inputs ({type(exc).__name__}: {exc})") from None
            for name, v in zip(node.output, values):
                g.consts[name] = np.asarray(v)
            continue
        kept.append(node)
    return kept


def _to_nodes(onnx_nodes: list) -> list[Node]:
    out = []
    for i, n in enumerate(onnx_nodes):
        name = n.name or f"{n.op_type}_{i}"
        out.append(Node(n.op_type, list(n.input), _output_names(list(n.output), name), _attrs(n), name))
    return out


def _output_names(outputs: list[str], node: str) -> list[str]:
    """ONNX leaves an optional output it does not want unnamed (an LSTM's ``["", "Y_h"]``); spec 4
    requires node output names: trailing unnamed outputs are dropped, the others get a name of their own."""
    while outputs and not outputs[-1]:
        outputs.pop()
    return [o or f"{node}/unused_output_{i}" for i, o in enumerate(outputs)]


def _drop_identities(nodes: list[Node], outputs: list[ValueInfo]) -> list[Node]:
    """Remove Dropout/Identity by pointing their consumers at their input (model outputs keep theirs)."""
    out_names = {v.name for v in outputs}
    used = {x for n in nodes for x in n.inputs}
    rename: dict[str, str] = {}
    out = []
    for n in nodes:  # one pass each way: graphs with hundreds of layers must not cost O(nodes^2)
        passthrough = n.op in ("Dropout", "Identity") and n.outputs[0] not in out_names
        if passthrough and (len(n.outputs) == 1 or n.outputs[1] not in used):
            rename[n.outputs[0]] = rename.get(n.inputs[0], n.inputs[0])
            continue
        out.append(n)
    for n in out:
        n.inputs = [rename.get(x, x) for x in n.inputs]
    return out


def _fold_batchnorm(nodes: list[Node], consts: dict[str, np.ndarray], outputs: list[ValueInfo]) -> list[Node]:
    """Conv/Gemm followed by inference BatchNormalization: scale the weight rows, shift the bias."""
    out_names = {v.name for v in outputs}
    producer = {o: n for n in nodes for o in n.outputs}
    uses = Counter(x for n in nodes for x in n.inputs)
    removed = set()
    for bn in nodes:
        if bn.op != "BatchNormalization" or len(bn.outputs) != 1 or not all(i in consts for i in bn.inputs[1:5]):
            continue
        prev = producer.get(bn.inputs[0])
        if prev is None or prev.op not in ("Conv", "Gemm") or prev.inputs[1] not in consts:
            continue
        if uses[bn.inputs[0]] != 1 or bn.inputs[0] in out_names:
            continue
        if prev.op == "Gemm" and (prev.attrs.get("transA", 0) or len(prev.inputs) > 2 and prev.inputs[2] and prev.inputs[2] not in consts):
            continue
        if uses[prev.inputs[1]] != 1:
            continue  # a shared weight cannot be rescaled for one user
        scale, beta, mean, var = (consts[i].astype(np.float64) for i in bn.inputs[1:5])
        a = scale / np.sqrt(var + float(bn.attrs.get("epsilon", 1e-5)))
        w = consts[prev.inputs[1]].astype(np.float64)
        trans_b = prev.op == "Conv" or prev.attrs.get("transB", 0)
        w = w * (a.reshape((-1,) + (1,) * (w.ndim - 1)) if trans_b else a.reshape(1, -1))
        b_name = prev.inputs[2] if len(prev.inputs) > 2 and prev.inputs[2] else None
        b = consts[b_name].astype(np.float64) if b_name else np.zeros(len(a))
        if prev.op == "Gemm":
            b = np.broadcast_to(b * float(prev.attrs.get("beta", 1.0)), a.shape)
            w = w * float(prev.attrs.get("alpha", 1.0))
            prev.attrs = {k: v for k, v in prev.attrs.items() if k not in ("alpha", "beta")}
        new_b = (b - mean) * a + beta
        w_name, nb_name = prev.inputs[1] + "_bnfolded", (b_name or prev.outputs[0] + "_bias") + "_bnfolded"
        consts[w_name] = w.astype(np.float32)
        consts[nb_name] = new_b.astype(np.float32)
        prev.inputs = [prev.inputs[0], w_name, nb_name]
        prev.outputs = [bn.outputs[0]]
        removed.add(id(bn))
    return [n for n in nodes if id(n) not in removed]


def _layer_kind(op: str) -> str:
    return "conv" if op in ("Conv", "ConvTranspose") else "fc"


def _pick(setting: Any, name: str, kind: str) -> Any:
    if isinstance(setting, dict):
        return setting.get(name, setting.get(kind))
    return setting


def from_onnx(source, options: ConvertOptions | None = None,
              progress: Callable[[Any], Any] | None = None) -> Model:
    """Convert an ONNX model (path, bytes or ModelProto) into a dcm ``Model`` with coded weights."""
    onnx = _onnx()
    opts = options or ConvertOptions()
    model = source if isinstance(source, onnx.ModelProto) else load_onnx(source)
    _check_text(model)
    model = _upgraded(model)
    g = _Graph(model)
    del model  # when we loaded it, this frees the protobuf copy of every weight
    nodes = _to_nodes(_fold_constants(g))
    nodes = _drop_identities(nodes, g.outputs)
    nodes = _fold_batchnorm(nodes, g.consts, g.outputs)
    from dcm.runtime.cpu import REGISTRY

    unsupported = [n for n in nodes if n.op not in REGISTRY]
    if unsupported:
        n = unsupported[0]
        raise ConversionError(f"unsupported op {n.op} in node {n.name!r} (all unsupported: "
                              f"{', '.join(sorted({m.op for m in unsupported}))})")
    known = {v.name for v in g.inputs} | set(g.consts)
    for n in nodes:
        for x in n.inputs:
            if x and x not in known:
                raise ConversionError(f"node {n.name!r} ({n.op}): input {x!r} is missing (no initializer, "
                                      "graph input or earlier node provides it)")
        known.update(n.outputs)
    used = {x for n in nodes for x in n.inputs} | {v.name for v in g.outputs}  # an output may be folded
    weight_of, aliases = {}, {}
    for n in nodes:
        for i in WEIGHT_OPS.get(n.op, ()):
            if len(n.inputs) > i and n.inputs[i] in g.consts and g.consts[n.inputs[i]].ndim >= 2:
                weight_of.setdefault(n.inputs[i], _layer_kind(n.op))
                aliases.setdefault(n.inputs[i], set()).update(layer_aliases(n.name, n.inputs[i]))
    opts = replace(opts, **{k: by_layer(getattr(opts, k), aliases, k.replace("_", "-"), ConversionError, KINDS)
                            for k in ("sparsity", "code_bits", "index_bits")})
    tensors, change = {}, (0.0, "")
    names = [name for name in g.consts if name in used]
    for name in (progress(names) if progress else names):
        value = g.consts.pop(name)  # the dense copy is released once its tensor is coded
        kind = weight_of.get(name)
        if kind is None or value.size < opts.min_coded_elements or not np.issubdtype(value.dtype, np.floating):
            tensors[name] = encode_raw(value, name)
            continue
        w = np.asarray(value, dtype=np.float32)
        mask = opts.masks.get(name)
        s = _pick(opts.sparsity, name, kind)
        if s:
            mask = mask_by_sparsity(w, float(s))
        tensors[name] = encode_smallest(w, mask, exact=opts.exact, code_bits=_pick(opts.code_bits, name, kind),
                                        index_bits=_pick(opts.index_bits, name, kind), name=name)
        change = max(change, (largest_change(w, mask, tensors[name]), name))
    metadata = {"producer": "dcm", "source_format": "onnx",
                "source_producer": g.producer,
                "settings": _describe(opts), **opts.metadata}
    if change[0] > 0:  # one line, so that a lossy default is never silent
        warnings.warn(f"conversion changed weight values ({_describe_change(opts)}): largest change "
                      f"{change[0]:.2%} of a tensor's largest |weight|, in {change[1]!r}; --exact "
                      "(ConvertOptions(exact=True)) keeps them; check the accuracy with --check DATA.npz",
                      LossyConversionWarning, stacklevel=2)
    out = Model(g.inputs, g.outputs, nodes, tensors, metadata, g.opset)
    if opts.compact_graph:
        drop_default_attrs(out)
        compact_names(out)
    return out


class LossyConversionWarning(UserWarning):
    """Conversion stored some weights with other values than the source's (codebook, pruning)."""


def _describe_change(opts: ConvertOptions) -> str:
    how = [] if opts.exact else ["codebook quantization"]
    if opts.sparsity:
        how.append("post-training pruning without retraining")
    return " and ".join(how) or "pruning"


def _describe(opts: ConvertOptions) -> str:
    if opts.exact:
        return f"exact (float32 values); index bits {opts.index_bits}"
    return f"code bits {opts.code_bits}; index bits {opts.index_bits}; sparsity {opts.sparsity or 'as in source'}"
