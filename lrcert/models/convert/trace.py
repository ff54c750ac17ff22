"""The trace: the model run once under a ``TorchDispatchMode`` that hands every aten operation
reading an input-dependent tensor to its converter (:data:`CONVERTERS`, the families' registries
joined), lets constant computations run, and collects every problem; then the layer list checked
against the model's own output."""

from __future__ import annotations

from collections import Counter
from typing import Any, Callable

import torch
from torch import Tensor
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves, tree_map

from ...errors import SUPPORTED_NETWORKS, LrcertError, first_line
from ...network import ir
from ...runtime import devices
from .. import recurrent
from . import activations, linear, pooling, shapes
from .call import Call, Poison, Refused, Softmax

#: aten op → converter: every family's.
CONVERTERS: dict[Any, Callable[[Call], None]] = {**linear.CONVERTERS, **activations.CONVERTERS, **pooling.CONVERTERS,
                                                 **shapes.CONVERTERS}


#: Operations that are smooth or otherwise not piecewise linear: refused with that reason.
NOT_PIECEWISE_LINEAR = {
    "sigmoid", "tanh", "exp", "exp2", "expm1", "log", "log2", "log1p", "gelu", "silu", "elu", "selu",
    "celu", "softplus", "mish", "erf", "sqrt", "rsqrt", "pow", "reciprocal", "sin", "cos", "hardswish",
    "logsigmoid", "_softmax", "_log_softmax", "glu", "norm", "linalg_vector_norm",
}


class _Trace(TorchDispatchMode):
    @classmethod
    def _should_skip_dynamo(cls) -> bool:
        """No torch.compile wrapper: it would import torch._dynamo (about 1 s) at the trace's first
        op, and the trace never runs under torch.compile."""
        return False

    def __init__(self, names: dict[int, str], op_types: dict[str, str]):
        super().__init__()
        self.op_types = op_types
        self.layers: list[ir.Layer] = []
        self.node: dict[int, int] = {}  # id(tensor) -> layer index
        self.poison: dict[int, Poison] = {}  # id(tensor) -> why it may not be used
        self.alive: list[Tensor] = []  # keeps traced tensors alive so their ids stay unique
        self.viewed: set[int] = set()  # ids of traced tensors that have traced views
        self.problems: list[str] = []
        self.scope: list[str] = []
        self.module_names = names
        self.used_names: Counter[str] = Counter()
        #: id(constant float tensor) → (op, args, kwargs, which output): how the model computed it,
        #: so that :meth:`exact` can compute it again in float64
        self.recipes: dict[int, tuple] = {}
        self.exact_values: dict[int, Tensor] = {}

    def name(self, op: str) -> str:
        base = next((s for s in reversed(self.scope) if s), op)
        self.used_names[base] += 1
        n = self.used_names[base]
        return base if n == 1 else f"{base}#{n}"

    def bind(self, tensor: Tensor, index: int) -> None:
        self.node[id(tensor)] = index
        self.poison.pop(id(tensor), None)
        self.alive.append(tensor)
        if tensor._base is not None:
            self.viewed.add(id(tensor._base))

    def mark(self, out: Any, poison: Poison) -> None:
        for t in tree_leaves(out):
            if isinstance(t, Tensor):
                self.node.pop(id(t), None)
                self.poison[id(t)] = poison
                self.alive.append(t)

    def stand_in(self, out: Any) -> None:
        """After a refusal, let the trace go on (to find every problem) with placeholder layers."""
        for t in tree_leaves(out):
            if isinstance(t, Tensor) and t.is_floating_point():
                self.layers.append(ir.Input(name="(refused)", inputs=(), shape=tuple(t.shape), in_shapes=()))
                self.bind(t, len(self.layers) - 1)
            elif isinstance(t, Tensor):
                self.mark(t, Poison(None))

    def record(self, func, args, kwargs, out) -> None:
        """Remember how a constant float tensor was computed (not for random or in-place ops: their
        result cannot be computed again; an in-place op on a constant forgets that constant's recipe)."""
        mutated = func._schema.arguments[0].alias_info if func._schema.arguments else None
        if mutated is not None and mutated.is_write:
            self.recipes.pop(id(args[0]), None)
            return
        if torch.Tag.nondeterministic_seeded in func.tags:
            return
        for k, t in enumerate(tree_leaves(out)):
            if isinstance(t, Tensor) and t.is_floating_point():
                self.recipes[id(t)] = (func, args, kwargs, k)
                self.alive.append(t)

    def exact(self, value: Tensor) -> Tensor:
        """A constant float tensor in float64, as exact as the model's operations define it: those
        that computed it are run again on float64 operands (the model's dtype would round each step,
        e.g. an RNN's W_hh·h0 for a given h0); other constants are converted as they are."""
        known = self.exact_values.get(id(value))
        if known is not None:
            return known
        recipe = self.recipes.get(id(value))
        exact = value.detach().double() if value.is_floating_point() else value.detach().clone()
        if recipe is not None:
            func, args, kwargs, k = recipe
            again = lambda a: self.exact(a) if isinstance(a, Tensor) else torch.float64 if a in _FLOATS else a  # noqa: E731
            try:
                outputs = tree_leaves(func(*tree_map(again, args), **tree_map(again, kwargs)))
                if outputs[k].shape == value.shape and outputs[k].dtype == torch.float64:
                    exact = outputs[k]
            except Exception:  # an op without a float64 kernel: the model's value, converted
                pass
        self.exact_values[id(value)] = exact
        self.alive.append(value)  # (its id stays its own)
        return exact

    def where(self, op: str) -> str:
        """The running submodule and what it computes: its ONNX op type where known, else ``op``."""
        scope = next((s for s in reversed(self.scope) if s), None)
        return f"{scope!r} ({self.op_types.get(scope, op)})" if scope else f"the model's top level ({op})"

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        leaves = [t for t in tree_leaves((args, kwargs)) if isinstance(t, Tensor)]
        poisoned = [self.poison[id(t)] for t in leaves if id(t) in self.poison]
        if not poisoned and not any(id(t) in self.node for t in leaves):
            if any(t.is_floating_point() for t in leaves):
                self.record(func, args, kwargs, out)
            return out  # a constant computation: it simply runs
        op = func.overloadpacket.__name__
        if poisoned:
            if len(poisoned) == 1 and poisoned[0].softmax_of is not None and op in _SHAPE_OPS:
                self.mark(out, poisoned[0])  # a reshape after the final softmax: still the final softmax
                return out
            reasons = [p.reason for p in poisoned if p.reason]
            if reasons:
                self.problems.append(f"{self.where(op)} uses {reasons[0]}")
            self.mark(out, Poison(None))
            return out
        call = Call(self, func, args, kwargs, out)
        mutated = func._schema.arguments[0].alias_info if func._schema.arguments else None
        if mutated is not None and mutated.is_write and call.traced(args[0]):
            if args[0]._is_view() or id(args[0]) in self.viewed:
                self.problems.append(f"{self.where(op)} changes a tensor in place that shares memory with another")
                self.mark(out, Poison(None))
                return out
        converter = CONVERTERS.get(func.overloadpacket)
        try:
            if converter is None:
                raise Refused(_refusal(op))
            converter(call)
        except Refused as refusal:
            self.problems.append(f"{self.where(op)} {refusal}")
            self.stand_in(out)
        except Softmax as softmax:
            self.mark(out, Poison("a softmax output, which is not piecewise linear", softmax_of=softmax.source))
        return out


_FLOATS = (torch.float16, torch.bfloat16, torch.float32)


_DATA_DEPENDENT = {"_local_scalar_dense", "is_nonzero", "equal", "item", "gt", "lt", "ge", "le", "eq", "ne", "argmax",
                   "argmin", "sort", "topk", "where", "sign", "any", "all", "nonzero", "masked_fill", "heaviside"}


_SHAPE_OPS = {"view", "_unsafe_view", "reshape", "squeeze", "unsqueeze", "flatten", "clone", "alias", "detach",
              "contiguous", "_to_copy"}


def _refusal(op: str) -> str:
    if op in NOT_PIECEWISE_LINEAR:
        return "is not piecewise linear"
    if op in _DATA_DEPENDENT:
        return "reads or compares input-dependent values (data-dependent control flow or masking)"
    return "is an operation lrcert has no converter for"


def to_network(
    model: Callable[[Tensor], Any],
    sample_shape: tuple[int, ...],
    *,
    batch_axis: bool = True,
    source: str = "",
    dtype: torch.dtype | None = None,
    named: torch.nn.Module | None = None,
    op_types: dict[str, str] | None = None,
) -> ir.Network:
    """Trace ``model`` on one example input and return its layer list.

    ``sample_shape`` is the shape of one data row; the model is called on ``(1, *sample_shape)``
    when ``batch_axis`` is true (the usual case) or on ``sample_shape`` itself otherwise.
    Layers are named after the submodules of ``named`` (default: the model) that make them;
    refusals name a submodule's ``op_types`` entry (an ONNX node's op type) rather than the
    PyTorch op it ran.
    The layer list is checked to reproduce the model's output on that input.
    """
    if isinstance(model, torch.nn.Module):
        try:
            model.eval()
        except NotImplementedError:  # exported programs: the mode was fixed when they were exported
            pass
        names = {id(m): name for name, m in (named or model).named_modules()}
        floating = [t for t in (*model.parameters(), *model.buffers()) if t.is_floating_point()]
        dtype = dtype or (floating[0].dtype if floating else None)
        device = devices.of_module(model)
    else:
        names, device = {}, torch.device("cpu")
    dtype = dtype or torch.float32
    input_shape = (1, *sample_shape) if batch_axis else tuple(sample_shape)
    generator = torch.Generator(device="cpu").manual_seed(0)  # the same example wherever the model lives
    example = torch.randn(input_shape, generator=generator, dtype=dtype, device="cpu").to(device)

    trace = _Trace(names, op_types or {})
    trace.layers.append(ir.Input(name="input", inputs=(), shape=input_shape, in_shapes=()))
    trace.bind(example, 0)
    hooks = _scope_hooks(trace) if names else []
    namer = recurrent.Namer(trace.scope)
    try:
        with torch.no_grad(), torch.device(device), devices.exact_float32(), recurrent.naming(namer), \
                recurrent.Unrolled(namer, _refuse), trace:
            output = model(example)
    except LrcertError:
        raise
    except Exception as exc:  # the model itself failed on an input of this shape
        raise LrcertError(
            f"the model fails when called on an input of shape {list(input_shape)}: {type(exc).__name__}: "
            f"{first_line(exc)}",
            fix="check that the data rows have the shape the model expects (lrcert inspect MODEL)",
        ) from None
    finally:
        for hook in hooks:
            hook.remove()

    outputs = [t for t in tree_leaves(output) if isinstance(t, Tensor)]
    if len(outputs) != 1:
        raise LrcertError(
            f"the model returns {len(outputs)} tensors",
            fix="certify a model with a single output tensor (wrap it to return the one you want)",
        )
    output = outputs[0]
    notes = []
    poison = trace.poison.get(id(output))
    if poison is not None and poison.softmax_of is not None:
        notes.append("the model ends in a softmax: lrcert certified the logits before it (the regions are the same)")
        output_index = poison.softmax_of
    elif id(output) in trace.node:
        output_index = trace.node[id(output)]
    elif poison is not None:
        output_index = -1  # produced by refused operations: trace.problems says which, just below
    else:
        raise LrcertError("the model's output does not depend on its input", fix="check the model")
    if trace.problems:
        problems = list(dict.fromkeys(trace.problems))  # each once, in order
        raise LrcertError(
            f"{source or 'the model'} is not a supported piecewise-linear network: " + "; ".join(problems),
            fix=SUPPORTED_NETWORKS,
            details=problems,
        )
    traced_output = output_index
    if output_index >= 0 and any(isinstance(layer, ir.Nonlinearity) for layer in trace.layers[output_index + 1 :]):
        # nonlinearities past the output (an ONNX model's other outputs) bound the region too: the
        # network runs them all and reads the output from a copy of it placed last
        shape = trace.layers[output_index].shape
        trace.layers.append(ir.Reshape(name="output", inputs=(output_index,), shape=shape, in_shapes=(shape,)))
        output_index = len(trace.layers) - 1
    layers = tuple(layer.to("cpu", torch.float64) for layer in trace.layers)  # exact parameters, one dtype
    _check_layers(layers, source)
    network = ir.Network(
        layers=layers, output=output_index, sample_shape=tuple(sample_shape), notes=tuple(notes), source=source,
        recurrences=tuple(namer.shapes), steps=_steps(layers, namer),
    )
    _check_reproduces(network, example, output if not notes else None, trace, traced_output)
    if namer.replaced and not notes:  # lrcert's own steps ran for torch's RNN kernels in the trace: those must agree
        with torch.no_grad(), devices.exact_float32():
            _check_reproduces(network, example, _single_output(model(example)), trace, traced_output)
    return network


def _refuse(error: LrcertError) -> None:
    raise error


def _single_output(output: Any) -> Tensor:
    return next(t for t in tree_leaves(output) if isinstance(t, Tensor))


def _steps(layers: tuple[ir.Layer, ...], namer: recurrent.Namer) -> dict[str, ir.Step]:
    """The step (recurrence, layer, direction, t) of each nonlinear layer a recurrence made."""
    steps = {}
    for layer in layers:
        step = namer.steps.get(layer.name.split("#")[0])  # (a recurrence run twice: "rnn.l0 t=3#2")
        if step is not None and isinstance(layer, ir.Nonlinearity):
            steps[layer.name] = step
    return steps


def _check_layers(layers: tuple[ir.Layer, ...], source: str) -> None:
    """Refuse parameters that are not finite and tensors without elements: no radius could be trusted."""
    for layer in layers:
        if layer.size == 0:
            raise LrcertError(
                f"{source or 'the model'}: layer {layer.name!r} has shape {list(layer.shape)}, with no elements",
                fix="check the model's input shape and weights",
            )
        for name, value in vars(layer).items():
            if isinstance(value, Tensor) and value.is_floating_point() and not torch.isfinite(value).all():
                raise LrcertError(
                    f"{source or 'the model'}: the {name} of layer {layer.name!r} holds NaN or Inf",
                    fix="repair or re-export the model",
                )


def _scope_hooks(trace: _Trace) -> list:
    """Global module hooks that keep ``trace.scope`` equal to the stack of running module names."""

    def enter(module, args):
        trace.scope.append(trace.module_names.get(id(module), ""))

    def leave(module, args, result):
        if trace.scope:
            trace.scope.pop()

    return [
        torch.nn.modules.module.register_module_forward_pre_hook(enter),
        torch.nn.modules.module.register_module_forward_hook(leave, always_call=True),
    ]


def _check_reproduces(network: ir.Network, example: Tensor, output: Tensor | None, trace: _Trace, index: int) -> None:
    """The layer list must compute what the model computed (exit code 3 if not: a bug in lrcert)."""
    expected = output
    if expected is None:  # the output was a softmax: compare the logits recorded during the trace
        expected = next((t for t in trace.alive if trace.node.get(id(t)) == index), None)
        if expected is None:
            return
    with torch.no_grad():
        got = network.run(example.reshape(1, *network.sample_shape).to(network.device, network.dtype))
    expected = expected.reshape(got.shape).to(got.device, got.dtype)
    finite = torch.isfinite(expected)  # the model's own dtype may overflow where float64 does not
    got, expected = got[finite], expected[finite]
    scale = float(expected.abs().max()) + 1e-6 if len(expected) else 1.0
    if not torch.allclose(got, expected, rtol=1e-4, atol=1e-5 * scale):
        worst = float((got - expected).abs().max())
        raise LrcertError(
            f"the layer list built from the model does not reproduce its output (largest difference {worst:.3g})",
            fix="please report this model to the lrcert developers",
            internal=True,
        )


