"""Recurrent networks: ReLU RNNs certified exactly, against an independent float64 reference
(tests/recurrent_reference.py: the unrolled equations and autograd Jacobians, no lrcert code)."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import lrcert
from lrcert.errors import LrcertError
from recurrent_reference import Direction, Layer, Sequence, from_torch_rnn, max_faces, reference_radii

FEATURES, HIDDEN, CLASSES = 5, 6, 4


class Classifier(nn.Module):
    """nn.RNN (ReLU) and a linear head: on the last step, the mean or max over steps, the final
    state, every step (many-to-many, (B, T, C)) or every step flattened."""

    def __init__(self, layers=1, bidirectional=False, batch_first=True, bias=True, h0=False, head="last", seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.batch_first, self.head = batch_first, head
        self.rnn = nn.RNN(FEATURES, HIDDEN, num_layers=layers, nonlinearity="relu", batch_first=batch_first,
                          bidirectional=bidirectional, bias=bias)
        directions = 2 if bidirectional else 1
        self.linear = nn.Linear(HIDDEN if head == "final" else HIDDEN * directions, CLASSES)
        self.h0 = torch.randn(layers * directions, 1, HIDDEN) * 0.5 if h0 else None

    def forward(self, x):  # x: (B, T, F)
        h0 = None if self.h0 is None else self.h0.expand(-1, x.shape[0], -1).contiguous()
        out, h = self.rnn(x if self.batch_first else x.transpose(0, 1), h0)
        out = out if self.batch_first else out.transpose(0, 1)  # (B, T, D·H)
        if self.head == "last":
            return self.linear(out[:, -1])
        if self.head == "mean":
            return self.linear(out.mean(1))
        if self.head == "max":
            return self.linear(out.max(1).values)
        if self.head == "final":
            return self.linear(h[-1])
        steps = self.linear(out)
        return steps if self.head == "steps" else steps.flatten(1)

    def reference(self) -> Sequence:
        w, b = self.linear.weight.detach().double(), self.linear.bias.detach().double()
        heads = {
            "last": lambda seq, finals, faces: w @ seq[-1] + b,
            "mean": lambda seq, finals, faces: w @ seq.mean(0) + b,
            "max": lambda seq, finals, faces: w @ max_faces(seq, faces) + b,
            "final": lambda seq, finals, faces: w @ finals[-1] + b,
        }
        per_step = lambda seq, finals, faces: (seq @ w.T + b).reshape(-1)  # noqa: E731
        return Sequence(from_torch_rnn(self.rnn, self.h0), heads.get(self.head, per_step))


def check_exact(model: nn.Module, reference: Sequence, steps: int, inputs: int = 3, seed: int = 1):
    """lrcert's radii, binding faces and prediction radii equal the reference's on random inputs."""
    x = torch.randn(inputs, steps, FEATURES, generator=torch.Generator().manual_seed(seed))
    results = lrcert.certify(model.eval(), x)
    for result, row in zip(results, x):
        expected = reference_radii(reference, row)
        for p in ("l1", "l2", "linf"):
            assert result.radius[p] == pytest.approx(expected["radius"][p], rel=1e-9), p
            assert result.prediction_radius[p] == pytest.approx(expected["prediction_radius"][p], rel=1e-9), p
        face, named = result.binding["l2"], expected["binding"]["l2"]
        if named[0] != "head":
            layer, direction, t, unit = named
            assert (face.step, face.position[-1]) == (t, unit)
            assert face.direction == ("reverse" if direction else "forward")
            assert f"l{layer}" in face.layer or ".l" not in face.layer
    return results


@pytest.mark.parametrize("layers", [1, 2, 3])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_nn_rnn_stacks_and_directions_are_exact(layers, bidirectional):
    model = Classifier(layers=layers, bidirectional=bidirectional)
    check_exact(model, model.reference(), steps=4)


@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("h0", [False, True])
def test_nn_rnn_layouts_biases_and_initial_states_are_exact(batch_first, bias, h0):
    model = Classifier(layers=2, bidirectional=True, batch_first=batch_first, bias=bias, h0=h0, seed=2)
    check_exact(model, model.reference(), steps=3)


@pytest.mark.parametrize("head", ["last", "mean", "max", "final", "steps", "flat"])
def test_many_to_one_and_many_to_many_heads_are_exact(head):
    model = Classifier(layers=2, bidirectional=True, head=head, seed=3)
    check_exact(model, model.reference(), steps=5)


class Elman(nn.Module):
    """An Elman network written by hand: nn.Linear in a Python loop (or nn.RNNCell)."""

    def __init__(self, cell: bool = False, seed: int = 4):
        super().__init__()
        torch.manual_seed(seed)
        self.cell = nn.RNNCell(FEATURES, HIDDEN, nonlinearity="relu") if cell else None
        self.inp, self.rec = nn.Linear(FEATURES, HIDDEN), nn.Linear(HIDDEN, HIDDEN, bias=False)
        self.out = nn.Linear(HIDDEN, CLASSES)

    def forward(self, x):
        h = x.new_zeros(x.shape[0], HIDDEN)
        for t in range(x.shape[1]):
            h = self.cell(x[:, t], h) if self.cell is not None else torch.relu(self.inp(x[:, t]) + self.rec(h))
        return self.out(h)

    def reference(self) -> Sequence:
        if self.cell is not None:
            c = self.cell
            step = Direction(c.weight_ih.detach().double(), c.weight_hh.detach().double(),
                             c.bias_ih.detach().double() + c.bias_hh.detach().double())
        else:
            step = Direction(self.inp.weight.detach().double(), self.rec.weight.detach().double(), self.inp.bias.detach().double())
        w, b = self.out.weight.detach().double(), self.out.bias.detach().double()
        return Sequence([Layer([step])], lambda seq, finals, faces: w @ finals[-1] + b)


@pytest.mark.parametrize("cell", [False, True])
def test_an_elman_loop_written_by_hand_is_exact(cell):
    model = Elman(cell=cell)
    x = torch.randn(2, 6, FEATURES, generator=torch.Generator().manual_seed(5))
    results = lrcert.certify(model.eval(), x)
    for result, row in zip(results, x):
        expected = reference_radii(model.reference(), row)
        for p in ("l1", "l2", "linf"):
            assert result.radius[p] == pytest.approx(expected["radius"][p], rel=1e-9)


def test_binding_faces_read_as_layer_direction_step_and_unit():
    model = Classifier(layers=2, bidirectional=True, seed=6)
    network = lrcert.from_module(model, (7, FEATURES))
    (shape,) = network.recurrences
    assert (shape.layers, shape.hidden, shape.steps, shape.directions) == (2, HIDDEN, 7, ("forward", "reverse"))
    assert "rnn.l1.reverse t=3" in network.steps
    result = lrcert.certify(network, torch.randn(1, 7, FEATURES))[0]
    face = result.binding["l2"]
    assert face.describe() == f"{face.layer} unit {face.position[-1]}"
    assert face.layer.startswith("rnn.l") and f"t={face.step}" in face.layer
    assert {"step", "direction"} <= set(face.as_dict())


@pytest.mark.parametrize("module, why", [
    (nn.LSTM(FEATURES, HIDDEN, batch_first=True), "an LSTM, whose sigmoid/tanh gates are not piecewise linear"),
    (nn.GRU(FEATURES, HIDDEN, batch_first=True), "a GRU, whose sigmoid/tanh gates are not piecewise linear"),
    (nn.RNN(FEATURES, HIDDEN, batch_first=True), "an RNN with tanh, which is not piecewise linear"),
    (nn.LSTMCell(FEATURES, HIDDEN), "an LSTM cell"),
])
def test_lstm_gru_and_tanh_rnns_are_refused_in_one_line(module, why):
    class Wrapped(nn.Module):
        def __init__(self):
            super().__init__()
            self.recurrent = module

        def forward(self, x):
            out = self.recurrent(x if not isinstance(module, nn.LSTMCell) else x[:, 0])
            return out[0]

    with pytest.raises(LrcertError) as error:
        lrcert.from_module(Wrapped(), (4, FEATURES))
    message = str(error.value)
    assert why in message and "nn.RNN(..., nonlinearity='relu')" in message and "\n" not in message
    assert "'recurrent'" in message


# ---------------------------------------------------------------------------------------------- ONNX RNN nodes

ONNX_REFERENCE_ACTIVATION = {"Relu": ("relu", 0.0, 0.0), "LeakyRelu": ("leaky", 0.01, 0.0),
                             "HardSigmoid": ("hardsigmoid", 0.2, 0.5), "Affine": ("affine", 1.0, 0.0)}


def onnx_rnn(direction="forward", activations=("Relu",), alpha=(), beta=(), clip=None, initial_h=False, layout=0,
             batch="N", seed=0):
    """(an ONNX model of one RNN node reading x (N, T, F), a linear head on Y_h, its reference).
    Layout 0 transposes x to (T, N, F) first, as the legacy exporter does; ``initial_h`` needs batch 1."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    d = 2 if direction == "bidirectional" else 1
    w = (rng.standard_normal((d, HIDDEN, FEATURES)) * 0.5).astype(np.float32)
    r = (rng.standard_normal((d, HIDDEN, HIDDEN)) * 0.3).astype(np.float32)
    b = (rng.standard_normal((d, 2 * HIDDEN)) * 0.3).astype(np.float32)
    h0 = (rng.standard_normal((d, 1, HIDDEN)) * 0.5).astype(np.float32)
    g = (rng.standard_normal((CLASSES, d * HIDDEN)) * 0.5).astype(np.float32)
    c = (rng.standard_normal(CLASSES) * 0.1).astype(np.float32)
    attributes = {"hidden_size": HIDDEN, "direction": direction, "activations": list(activations)}
    attributes |= {"activation_alpha": list(alpha)} if alpha else {}
    attributes |= {"activation_beta": list(beta)} if beta else {}
    attributes |= {"clip": clip} if clip is not None else {}
    attributes |= {"layout": layout} if layout else {}
    init = {"W": w, "R": r, "B": b, "G": g, "c": c, "flat": np.array([0, d * HIDDEN], dtype=np.int64)}
    rnn_inputs = ["xt" if layout == 0 else "x", "W", "R", "B"] + (["", "h0"] if initial_h else [])
    if initial_h:
        init["h0"] = h0 if layout == 0 else h0.transpose(1, 0, 2)
    nodes = [helper.make_node("Transpose", ["x"], ["xt"], perm=[1, 0, 2])] if layout == 0 else []
    nodes.append(helper.make_node("RNN", rnn_inputs, ["Y", "Y_h"], name="rnn", **attributes))
    nodes += [helper.make_node("Transpose", ["Y_h"], ["Y_hb"], perm=[1, 0, 2])] if layout == 0 else []
    nodes += [helper.make_node("Reshape", ["Y_hb" if layout == 0 else "Y_h", "flat"], ["features"]),
              helper.make_node("Gemm", ["features", "G", "c"], ["y"], transB=1)]
    graph = helper.make_graph(nodes, "rnn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, "T", FEATURES])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, CLASSES])],
                              [numpy_helper.from_array(v, k) for k, v in init.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])

    alphas, betas, layers = iter(alpha), iter(beta), []
    for k in range(d):
        name = activations[k] if len(activations) > k else activations[0]
        kind, default_alpha, default_beta = ONNX_REFERENCE_ACTIVATION[name]
        exact = lambda v: float(np.float32(v))  # noqa: E731  (the file stores attributes as float32; defaults are the spec's)
        given_alpha = next(alphas, None) if name in ("LeakyRelu", "HardSigmoid", "Affine") else None
        given_beta = next(betas, None) if name in ("HardSigmoid", "Affine") else None
        a = default_alpha if given_alpha is None else exact(given_alpha)
        bb = default_beta if given_beta is None else exact(given_beta)
        t = lambda v: torch.from_numpy(np.asarray(v, dtype=np.float64))  # noqa: E731
        layers.append(Direction(t(w[k]), t(r[k]), t(b[k, :HIDDEN]) + t(b[k, HIDDEN:]), t(h0[k, 0]) if initial_h else None,
                                reverse=direction == "reverse" or k == 1, activation=kind, alpha=a, beta=bb,
                                clip=None if clip is None else exact(clip)))
    head = lambda seq, finals, faces: t(g) @ torch.cat(finals) + t(c)  # noqa: E731
    return model, Sequence([Layer(layers)], head)


def check_onnx_exact(tmp_path, model, reference, lengths=(3, 5), runtime=True):
    """The file certified at several lengths in one run equals the reference (and onnxruntime
    computes what the reference computes: the reference reads the ONNX spec as the runtime does)."""
    import numpy as np
    import onnx

    path = tmp_path / "rnn.onnx"
    onnx.save(model, path)
    generator = torch.Generator().manual_seed(7)
    rows = [torch.randn(n, FEATURES, generator=generator) for n in lengths]
    results = lrcert.certify(str(path), rows)
    for result, row in zip(results, rows):
        expected = reference_radii(reference, row)
        assert result.length == len(row)
        for p in ("l1", "l2", "linf"):
            assert result.radius[p] == pytest.approx(expected["radius"][p], rel=1e-9), p
            assert result.prediction_radius[p] == pytest.approx(expected["prediction_radius"][p], rel=1e-9), p
        if runtime:
            import onnxruntime

            got = onnxruntime.InferenceSession(str(path)).run(None, {"x": row[None].numpy()})[0][0]
            want = reference.run(row.double(), []).numpy()
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    return results


@pytest.mark.parametrize("direction", ["forward", "reverse", "bidirectional"])
@pytest.mark.parametrize("layout", [0, 1])
def test_onnx_rnn_directions_and_layouts_are_exact(tmp_path, direction, layout):
    model, reference = onnx_rnn(direction, ("Relu",) * (2 if direction == "bidirectional" else 1), layout=layout, seed=layout)
    results = check_onnx_exact(tmp_path, model, reference, runtime=layout == 0)  # (onnxruntime: layout 0 only)
    face = results[-1].binding["l2"]
    assert face.layer.startswith("rnn") and f"t={face.step}" in face.layer
    assert face.direction in (("forward", "reverse") if direction == "bidirectional" else (direction,))


@pytest.mark.parametrize("activations, alpha, beta, clip", [
    (("LeakyRelu",), (0.1,), (), None),
    (("LeakyRelu", "Relu"), (), (), None),
    (("HardSigmoid",), (0.3,), (0.4,), None),
    (("Relu", "Affine"), (0.5,), (0.2,), None),
    (("Relu",), (), (), 0.7),
])
def test_onnx_rnn_piecewise_linear_activations_and_clip_are_exact(tmp_path, activations, alpha, beta, clip):
    direction = "bidirectional" if len(activations) == 2 else "forward"
    model, reference = onnx_rnn(direction, activations, alpha, beta, clip, seed=3)
    check_onnx_exact(tmp_path, model, reference)


@pytest.mark.parametrize("layout", [0, 1])
def test_onnx_rnn_with_a_constant_initial_state_is_exact(tmp_path, layout):
    model, reference = onnx_rnn("bidirectional", ("Relu", "Relu"), initial_h=True, layout=layout, batch=1, seed=4)
    check_onnx_exact(tmp_path, model, reference, runtime=layout == 0)


@pytest.mark.parametrize("op, why", [("Tanh", "uses the activation Tanh, which is not piecewise linear"),
                                     (None, "uses the activation Tanh (the ONNX default)"),
                                     ("LSTM", "is an LSTM, whose sigmoid/tanh gates"), ("GRU", "is a GRU, whose sigmoid/tanh gates")])
def test_onnx_lstm_gru_and_tanh_rnn_are_refused_in_one_line(tmp_path, op, why):
    import onnx

    model, _ = onnx_rnn()
    node = next(n for n in model.graph.node if n.op_type == "RNN")
    del node.attribute[:]
    gates = {"LSTM": 4, "GRU": 3}.get(op, 1)
    node.attribute.append(onnx.helper.make_attribute("hidden_size", HIDDEN))
    if op == "Tanh":
        node.attribute.append(onnx.helper.make_attribute("activations", ["Tanh"]))
    if op in ("LSTM", "GRU"):
        node.op_type = op
        for name, rows in (("W", gates * HIDDEN), ("R", gates * HIDDEN), ("B", 2 * gates * HIDDEN)):
            tensor = next(t for t in model.graph.initializer if t.name == name)
            import numpy as np

            array = np.zeros((1, rows, *onnx.numpy_helper.to_array(tensor).shape[2:]), dtype=np.float32)
            tensor.CopyFrom(onnx.numpy_helper.from_array(array, name))
    path = tmp_path / "refused.onnx"
    onnx.save(model, path)
    with pytest.raises(LrcertError) as error:
        lrcert.load(str(path), sample_shape=(4, FEATURES))
    message = str(error.value)
    assert "'rnn'" in message and why in message and "\n" not in message
    assert "nn.RNN(..., nonlinearity='relu')" in message


# ---------------------------------------------------------------------------------------------- both exporters

def dyadic(model: nn.Module) -> nn.Module:
    """Weights (and h0) rounded to multiples of 1/16: W_hh·h0 + b is then exact in float32, so the
    default exporter's folding of that constant (in float32) leaves the reference's function."""
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.copy_(torch.round(parameter * 16) / 16)
    if getattr(model, "h0", None) is not None:
        model.h0 = torch.round(model.h0 * 16) / 16
    return model


def export(model: nn.Module, path, steps: int, dynamo: bool) -> None:
    import contextlib
    import io
    import warnings

    example = torch.randn(1, steps, FEATURES)
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        if dynamo:
            torch.onnx.export(model, (example,), str(path), dynamo=True)
        else:
            torch.onnx.export(model, (example,), str(path), dynamo=False, input_names=["x"],
                              dynamic_axes={"x": {0: "batch", 1: "steps"}})


LEGACY_FORMS = {
    "two bidirectional layers, h0": lambda: Classifier(layers=2, bidirectional=True, h0=True, seed=8),
    "three layers, no bias, time first": lambda: Classifier(layers=3, bias=False, batch_first=False, seed=9),
    "mean over steps": lambda: Classifier(head="mean", bidirectional=True, seed=10),
    "max over steps": lambda: Classifier(head="max", seed=11),
    "many to many": lambda: Classifier(head="steps", seed=12),
}
EXPORTED_FORMS = {**LEGACY_FORMS, "Elman loop": lambda: Elman(seed=13)}


@pytest.mark.parametrize("form", sorted(LEGACY_FORMS))
def test_the_legacy_exporters_rnn_nodes_certify_every_length_exactly(tmp_path, form):
    model = LEGACY_FORMS[form]().eval()
    path = tmp_path / "legacy.onnx"
    export(model, path, steps=4, dynamo=False)
    rows = [torch.randn(n, FEATURES, generator=torch.Generator().manual_seed(n)) for n in (3, 6, 2)]
    results = lrcert.certify(str(path), rows)
    for result, row in zip(results, rows):
        expected = reference_radii(model.reference(), row)
        for p in ("l1", "l2", "linf"):
            assert result.radius[p] == pytest.approx(expected["radius"][p], rel=1e-9), (p, len(row))
            assert result.prediction_radius[p] == pytest.approx(expected["prediction_radius"][p], rel=1e-9), (p, len(row))


@pytest.mark.parametrize("form, dynamo", [("two bidirectional layers, h0", True), ("max over steps", True),
                                         ("Elman loop", True), ("Elman loop", False)])
def test_exports_for_one_length_certify_exactly_and_refuse_other_lengths(tmp_path, form, dynamo):
    """The default exporter unrolls the steps of the length it is given, and the legacy exporter a
    loop written in Python: both run that length only."""
    model = dyadic(EXPORTED_FORMS[form]().eval())
    path = tmp_path / "exported.onnx"
    export(model, path, steps=5, dynamo=dynamo)
    rows = [torch.randn(5, FEATURES, generator=torch.Generator().manual_seed(k)) for k in range(2)]
    for result, row in zip(lrcert.certify(str(path), torch.stack(rows)), rows):
        expected = reference_radii(model.reference(), row)
        for p in ("l1", "l2", "linf"):
            assert result.radius[p] == pytest.approx(expected["radius"][p], rel=1e-9), p
    with pytest.raises(LrcertError, match="(exactly 5 steps.*rows of 3|runs sequences of 5 steps but not of 3).*dynamic "
                                          "sequence axis") as error:
        lrcert.certify(str(path), [rows[0], rows[1][:3]])
    assert "\n" not in str(error.value)


class StepsAndState(nn.Module):
    """Many-to-many: a prediction per step and the final state, returned as two outputs."""

    def __init__(self):
        super().__init__()
        self.inner = Classifier(layers=2, head="steps", seed=14)

    def forward(self, x):
        out, h = self.inner.rnn(x)
        return self.inner.linear(out), h

    def reference(self) -> Sequence:
        return self.inner.reference()


def test_an_onnx_model_with_a_prediction_per_step_and_its_state_as_outputs_is_exact(tmp_path):
    import contextlib
    import io
    import warnings

    model = StepsAndState().eval()
    path = tmp_path / "steps.onnx"
    with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.randn(1, 4, FEATURES),), str(path), dynamo=False, input_names=["x"],
                          output_names=["steps", "state"], dynamic_axes={"x": {0: "batch", 1: "steps"}})
    rows = [torch.randn(n, FEATURES, generator=torch.Generator().manual_seed(n)) for n in (3, 6)]
    network = lrcert.load(str(path), sample_shape=(6, FEATURES))
    assert network.output_shape == (6, CLASSES) and any("2 outputs" in note for note in network.notes)
    for result, row in zip(lrcert.certify(str(path), rows), rows):
        expected = reference_radii(model.reference(), row)
        for p in ("l1", "l2", "linf"):
            assert result.radius[p] == pytest.approx(expected["radius"][p], rel=1e-9)
            assert result.prediction_radius[p] == pytest.approx(expected["prediction_radius"][p], rel=1e-9)


def test_a_torch_export_program_holding_an_rnn_is_exact(tmp_path):
    import warnings

    model = Classifier(layers=2, bidirectional=True, seed=15).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.export.save(torch.export.export(model, (torch.randn(1, 5, FEATURES),)), str(tmp_path / "rnn.pt2"))
    x = torch.randn(2, 5, FEATURES, generator=torch.Generator().manual_seed(16))
    for result, row in zip(lrcert.certify(str(tmp_path / "rnn.pt2"), x), x):
        expected = reference_radii(model.reference(), row)
        for p in ("l1", "l2", "linf"):
            assert result.radius[p] == pytest.approx(expected["radius"][p], rel=1e-9)
        assert f"t={result.binding['l2'].step}" in result.binding["l2"].layer


def test_an_onnx_rnn_that_names_y_alone_with_lowercase_activations_is_exact(tmp_path):
    """RNN(…) → Y only (no Y_h), the mean over steps read from Y; activations spelt in lower case."""
    import numpy as np
    import onnx
    from onnx import helper, numpy_helper

    model, _ = onnx_rnn("bidirectional", ("Relu", "Relu"), seed=17)
    graph = model.graph
    rnn = next(n for n in graph.node if n.op_type == "RNN")
    next(a for a in rnn.attribute if a.name == "activations").strings[:] = [b"relu", b"relu"]
    del rnn.output[:]
    rnn.output.append("Y")  # (T, D, N, H)
    keep = [n for n in graph.node if n.op_type in ("Transpose", "RNN") and "Y_h" not in n.input]
    graph.initializer.append(numpy_helper.from_array(np.array([0, 2 * HIDDEN], dtype=np.int64), "flat2"))
    keep += [helper.make_node("ReduceMean", ["Y"], ["m"], axes=[0], keepdims=0),  # (D, N, H)
             helper.make_node("Transpose", ["m"], ["mt"], perm=[1, 0, 2]),
             helper.make_node("Reshape", ["mt", "flat2"], ["f"]),
             helper.make_node("Gemm", ["f", "G", "c"], ["y"], transB=1)]
    del graph.node[:]
    graph.node.extend(keep)
    path = tmp_path / "y_only.onnx"
    onnx.save(model, path)
    w = {t.name: torch.from_numpy(numpy_helper.to_array(t).astype(np.float64)) for t in graph.initializer}
    directions = [Direction(w["W"][k], w["R"][k], w["B"][k, :HIDDEN] + w["B"][k, HIDDEN:], reverse=k == 1) for k in range(2)]
    head = lambda seq, finals, faces: w["G"] @ seq.mean(0) + w["c"]  # noqa: E731
    reference = Sequence([Layer(directions)], head)
    rows = [torch.randn(n, FEATURES, generator=torch.Generator().manual_seed(n)) for n in (4, 7)]
    for result, row in zip(lrcert.certify(str(path), rows), rows):
        expected = reference_radii(reference, row)
        for p in ("l1", "l2", "linf"):
            assert result.radius[p] == pytest.approx(expected["radius"][p], rel=1e-9)
