"""ONNX ops the runtime has no kernel for but that ONNX defines as a function of other ops (Attention
and RotaryEmbedding from opset 23, the window functions, CenterCropPad, AffineGrid, SwiGLU, ...):
the converter replaces each such node by the function's body, as onnx's own ``*_expanded`` test
models do, so that a model using them converts instead of stopping at the op. A body made for the
node's input types (a context-dependent function: Attention's depends on the ranks of Q, K and V)
is built from the types shape inference gave the graph (and, for a function op inside a body, from
shape inference over that body).

A body is taken only where each of its ops means at the model's opset what it means at the body's
own (the same schema version); otherwise the node is left as it is and the converter names it as
unsupported. Bodies with subgraphs (If, Loop) are left too: the runtime runs no subgraphs."""
from __future__ import annotations

from collections.abc import Callable

MAX_DEPTH = 4  # bodies that use function ops are expanded in turn, this deep at most


def _onnx():
    import onnx

    return onnx


def _same_meaning(op: str, version: int, opset: int) -> bool:
    """Whether ``op`` of the default domain has the same schema at ``version`` and at ``opset``."""
    defs = _onnx().defs
    try:
        return defs.get_schema(op, version, "").since_version == defs.get_schema(op, opset, "").since_version
    except defs.SchemaError:
        return False


def _function(node, opset: int, types: dict):
    """The FunctionProto that defines ``node`` at ``opset`` (context-dependent ones built for the
    node's input types), or None where ONNX defines none or a needed input type is unknown."""
    onnx = _onnx()
    try:
        schema = onnx.defs.get_schema(node.op_type, opset, "")
    except onnx.defs.SchemaError:
        return None
    plain = [v for v in schema.function_opset_versions if v <= opset]
    if plain:
        return onnx.FunctionProto.FromString(schema.get_function_with_opset_version(max(plain)))
    built = [v for v in schema.context_dependent_function_opset_versions if v <= opset]
    if not built or any(name and name not in types for name in node.input):
        return None
    input_types = [(types[name] if name else onnx.TypeProto()).SerializeToString() for name in node.input]
    text = schema.get_context_dependent_function_with_opset_version(max(built), node.SerializeToString(), input_types)
    return onnx.FunctionProto.FromString(text)


def _body(node, fn, opset: int, prefix: str) -> list | None:
    """The nodes of ``fn`` bound to ``node``: its inputs and outputs for the function's, ``prefix``
    before every internal name, its attributes (or the schema's defaults) for the references."""
    onnx = _onnx()
    version = next((o.version for o in fn.opset_import if o.domain in ("", "ai.onnx")), opset)
    if any(n.domain not in ("", "ai.onnx") or not _same_meaning(n.op_type, version, opset) for n in fn.node):
        return None
    if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for n in fn.node for a in n.attribute):
        return None
    schema = onnx.defs.get_schema(node.op_type, opset, "")
    attrs = {name: a.default_value for name, a in schema.attributes.items() if a.default_value.name}
    attrs.update({a.name: a for a in node.attribute})
    names = {inner: (node.input[i] if i < len(node.input) else "") for i, inner in enumerate(fn.input)}
    names.update({inner: node.output[i] for i, inner in enumerate(fn.output) if i < len(node.output) and node.output[i]})

    def rename(inner: str) -> str:
        return names.get(inner, prefix + inner if inner else "")

    body = []
    for k, inner in enumerate(fn.node):
        out = onnx.NodeProto(op_type=inner.op_type, domain="", name=f"{prefix}{inner.name or inner.op_type}_{k}",
                             input=[rename(x) for x in inner.input], output=[rename(x) for x in inner.output])
        for a in inner.attribute:
            if a.ref_attr_name:
                if a.ref_attr_name not in attrs:
                    continue  # an optional attribute the node does not set: the op's own default
                bound = onnx.AttributeProto()
                bound.CopyFrom(attrs[a.ref_attr_name])
                bound.name = a.name
                out.attribute.append(bound)
            else:
                out.attribute.append(a)
        body.append(out)
    return body


def expand_functions(nodes: list, opset: int, types: dict, supported: Callable[[object, dict], bool],
                     depth: int = 0) -> list:
    """``nodes`` (NodeProtos) with each default-domain node the runtime does not run as it is
    (``supported(node, types)`` false) replaced by its function body, where ONNX defines one that
    applies (see the module docstring). ``types``: the TypeProto of each value whose type is known (a
    context-dependent body needs its inputs'; a kernel may take only some forms of its op)."""
    out = []
    for i, node in enumerate(nodes):
        fn = None
        if depth < MAX_DEPTH and node.domain in ("", "ai.onnx") and not supported(node, types):
            fn = _function(node, opset, types)
        body = None if fn is None else _body(node, fn, opset, f"{node.name or node.op_type}_{i}/")
        if body is None:
            out.append(node)
            continue
        if not all(supported(n, types) for n in body):  # inner function ops may need their inputs' types
            types = {**types, **_inferred(body, node, opset, types)}
        out.extend(expand_functions(body, opset, types, supported, depth + 1))
    return out


def _inferred(body: list, node, opset: int, types: dict) -> dict:
    """The types shape inference gives a body's values, from the types of the node's inputs (a
    SoftmaxCrossEntropyLoss body's NegativeLogLikelihoodLoss is context-dependent in turn); none
    where inference fails."""
    onnx = _onnx()
    inputs = [onnx.helper.make_value_info(name, types[name]) for name in dict.fromkeys(node.input) if name in types]
    graph = onnx.helper.make_graph(body, "body", inputs, [])
    try:
        model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", opset)])
        return {v.name: v.type for v in onnx.shape_inference.infer_shapes(model).graph.value_info}
    except Exception:  # noqa: BLE001  (an inner node then stays unexpanded and is named as unsupported)
        return {}
