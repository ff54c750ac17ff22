"""ONNX graphs made plain once when the model loads, so that no converter has to know about their
forms: constant subgraphs computed (a Conv whose kernel is a Constant node's output, a MatMul by
``Transpose(weight)``, shapes built from Constant nodes), and inputs and outputs declared without
a type given the one ONNX's shape inference finds (:func:`complete_types`).

A node is folded when every input it reads is a constant (an initializer, or the output of a
node folded before it) and what it computes is exact in any precision: it moves, repeats, drops
or relabels entries (Constant, Transpose, Reshape, Slice, Gather, Concat, Cast, …). Its outputs
that other nodes read become initializers, with the values ONNX's reference implementation
(``onnx.reference``) computes at the graph's own opset. Arithmetic on constants (a kernel times
a scale) is not folded here: the converters compute it, and lrcert's trace recomputes it in
float64 (:mod:`lrcert.models.convert`), which rounding once in the graph's dtype would lose.
"""

from __future__ import annotations

#: Ops whose outputs are their inputs' entries moved, repeated, dropped or relabelled (or
#: constants and shapes): computing them once changes no value.
EXACT = {
    "Constant", "ConstantOfShape", "Identity", "Transpose", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Concat",
    "Split", "Slice", "Gather", "GatherElements", "GatherND", "Expand", "Tile", "Shape", "Size", "Pad", "DepthToSpace",
    "SpaceToDepth", "Cast", "Neg", "Abs",
}


def fold_constants(model) -> int:
    """Fold ``model``'s exact constant subgraphs into initializers, in place; how many nodes it
    folded (0 where there are none, or where ONNX's reference implementation cannot run them:
    the converters then meet them as before)."""
    from onnx import numpy_helper

    graph = model.graph
    known = {t.name for t in graph.initializer}
    outputs = {o.name for o in graph.output}
    folded = []
    for node in graph.node:
        if (node.op_type in EXACT and node.domain in ("", "ai.onnx") and all(not i or i in known for i in node.input)
                and not any(o in outputs for o in node.output)
                and not any(a.type in (a.GRAPH, a.GRAPHS) for a in node.attribute)):
            folded.append(node)
            known.update(o for o in node.output if o)
    if not folded:
        return 0
    chosen = {id(node) for node in folded}
    rest = [node for node in graph.node if id(node) not in chosen]
    made = {o for node in folded for o in node.output if o}
    needed = sorted({i for node in rest for i in node.input if i in made})
    try:
        values = _evaluate(model, folded, needed)
    except Exception:  # (a node the reference implementation cannot run: leave the graph as it is)
        return 0
    del graph.node[:]
    graph.node.extend(rest)
    graph.initializer.extend(numpy_helper.from_array(value, name) for name, value in zip(needed, values))
    return len(folded)


def _evaluate(model, nodes: list, names: list[str]) -> list:
    """The values of ``names``, computed by ``nodes`` from the graph's initializers at its opsets."""
    from onnx import TypeProto, ValueInfoProto, helper
    from onnx.reference import ReferenceEvaluator

    if not names:
        return []
    read = {i for node in nodes for i in node.input if i}
    weights = [t for t in model.graph.initializer if t.name in read]
    wanted = []
    for name in names:
        info = ValueInfoProto()
        info.name = name
        info.type.CopyFrom(TypeProto())
        wanted.append(info)
    graph = helper.make_graph(nodes, "constants", [], wanted, weights)
    sub = helper.make_model(graph, opset_imports=list(model.opset_import), ir_version=model.ir_version)
    return ReferenceEvaluator(sub).run(None, {})


def complete_types(model) -> int:
    """Give graph inputs and outputs declared without a type (which ONNX's checker refuses and
    onnxruntime infers) the type ONNX's shape inference finds, and drop untyped ``value_info``
    hints; how many entries it typed."""
    import onnx

    graph = model.graph
    for info in [info for info in graph.value_info if not info.HasField("type")]:
        graph.value_info.remove(info)
    untyped = [info for info in (*graph.input, *graph.output) if not info.HasField("type")]
    if not untyped:
        return 0
    try:
        inferred = onnx.shape_inference.infer_shapes(model).graph
    except Exception:  # (the checker then names the entry)
        return 0
    found = {info.name: info.type for info in (*inferred.value_info, *inferred.output, *inferred.input)
             if info.HasField("type")}
    typed = 0
    for info in untyped:
        if info.name in found:
            info.type.CopyFrom(found[info.name])
            typed += 1
    return typed
