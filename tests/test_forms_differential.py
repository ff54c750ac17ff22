"""Differential tests of every form a model travels in: random ReLU RNNs and random MLPs, saved each
way users save them (the module itself, the legacy exporter with dynamic batch and length, the
default exporter with an example batch of 1 to 4, torch.export, TorchScript), certified on rows and
(where the form keeps the length free) on a padded .npz of sequences of different lengths, against
the independent float64 references: radii and prediction radii, in float64 and by default.

Hypothesis draws the cases, derandomized (the same cases every run): ``LRCERT_FORM_CASES`` per form
and family, 5 in the default suite (50 cases), 30 under ``-m slow`` (300)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
from exporting import export
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from recurrent_reference import Sequence, from_torch_rnn, max_faces
from recurrent_reference import reference_radii as sequence_reference
from reference import close, reference_radii
from test_cli import invoke

import lrcert

CASES = int(os.environ.get("LRCERT_FORM_CASES", "5"))  # per form
#: The forms, and whether each leaves the sequence length free (a padded .npz is certified there).
FORMS = {"module": True, "legacy-steps": True, "dynamo": False, "pt2": False, "torchscript": True}
HEADS = ("last", "mean", "max", "final", "flat", "relu")
CLASSES = 3


class RandomRNN(nn.Module):
    """nn.RNN (ReLU), batch_first either way (the other way: the forward transposes itself), and a
    head: the last step, the mean or max over steps, the final state, every step flattened, or a
    ReLU layer on the last step."""

    def __init__(self, layers, hidden, features, bidirectional, bias, batch_first, head, seed):
        super().__init__()
        torch.manual_seed(seed)
        self.batch_first, self.head = batch_first, head
        self.rnn = nn.RNN(features, hidden, num_layers=layers, nonlinearity="relu", bias=bias,
                          batch_first=batch_first, bidirectional=bidirectional)
        width = hidden if head == "final" else hidden * (2 if bidirectional else 1)
        self.hidden = nn.Linear(width, 4) if head == "relu" else None
        self.out = nn.Linear(4 if head == "relu" else width, CLASSES)

    def forward(self, x):  # (B, T, F)
        out, h = self.rnn(x) if self.batch_first else self.rnn(x.transpose(0, 1))
        out = out if self.batch_first else out.transpose(0, 1)
        if self.head == "flat":
            return self.out(out).flatten(1)
        last = {"last": lambda: out[:, -1], "mean": lambda: out.mean(1), "max": lambda: out.max(1).values,
                "final": lambda: h[-1], "relu": lambda: torch.relu(self.hidden(out[:, -1]))}[self.head]()
        return self.out(last)

    def reference(self) -> Sequence:
        w, b = self.out.weight.detach().double(), self.out.bias.detach().double()

        def head(seq, finals, faces):
            if self.head == "flat":
                return (seq @ w.T + b).reshape(-1)
            if self.head == "relu":
                z = self.hidden.weight.detach().double() @ seq[-1] + self.hidden.bias.detach().double()
                faces.append(z)
                return w @ torch.relu(z) + b
            last = {"last": lambda: seq[-1], "mean": lambda: seq.mean(0), "max": lambda: max_faces(seq, faces),
                    "final": lambda: finals[-1]}[self.head]()
            return w @ last + b

        return Sequence(from_torch_rnn(self.rnn), head)


class RandomMLP(nn.Module):
    """Dense and ReLU layers over (T, F) rows, applied per step; ``moved``: to x.transpose(0, 1), the
    batch axis moved as a user's forward may (its output holds the batch on axis 1)."""

    def __init__(self, features, widths, moved, seed):
        super().__init__()
        torch.manual_seed(seed)
        layers, width = [], features
        for w in widths:
            layers += [nn.Linear(width, w), nn.ReLU()]
            width = w
        self.net, self.moved = nn.Sequential(*layers, nn.Linear(width, CLASSES)), moved

    def forward(self, x):
        return self.net(x.transpose(0, 1) if self.moved else x)


def _saved(model: nn.Module, batch_example: torch.Tensor, tmp_path, form: str):
    """The model as ``form`` keeps it: the module, or a file written by :func:`exporting.export`."""
    if form == "module":
        return model
    suffix = {"pt2": ".pt2", "torchscript": ".pt"}.get(form, ".onnx")
    return Path(export(model, batch_example, tmp_path / f"model{suffix}", form))


def _network(saved, shape):
    return lrcert.load(saved, trust_pickle=True, sample_shape=shape) if not isinstance(saved, nn.Module) else saved


def _assert_rows_match(saved, rows: torch.Tensor, expected: list[dict]) -> None:
    """Rows certified in float64 and by default equal the reference's radii and prediction radii."""
    network = _network(saved, tuple(rows.shape[1:]))
    for dtype in (torch.float64, None):
        for result, want in zip(lrcert.certify(network, rows, dtype=dtype), expected):
            for p in ("l1", "l2", "linf"):
                assert close(result.radius[p], want["radius"][p], 1e-9), (dtype, p, result.radius, want["radius"])
                if "prediction_radius" in want:
                    assert close(result.prediction_radius[p], want["prediction_radius"][p], 1e-9), (dtype, p)


def _assert_npz_matches(saved, form, tmp_path, rows: list[torch.Tensor], expected: list[dict]) -> None:
    """A padded .npz of the rows, certified by the command line, row by row at its own length."""
    longest = max(len(r) for r in rows)
    padded = np.zeros((len(rows), longest, rows[0].shape[1]), dtype=np.float32)
    for k, row in enumerate(rows):
        padded[k, :len(row)] = row.numpy()
    np.savez(tmp_path / "sequences.npz", x=padded, lengths=np.array([len(r) for r in rows]))
    model = saved
    if isinstance(saved, nn.Module):  # (the command line reads files: the module as TorchScript)
        model = export(saved, torch.from_numpy(padded[:1]), tmp_path / "module.pt", "torchscript")
    done = invoke("certify", model, tmp_path / "sequences.npz", "-f", "json", "--trust-pickle")
    assert done.exit_code == 0, (form, done.stderr)
    for result, want in zip(json.loads(done.stdout)["results"], expected):
        for p in ("l1", "l2", "linf"):
            assert close(result["radius"][p], want["radius"][p], 1e-9), (form, p)


rnn_cases = st.fixed_dictionaries({
    "layers": st.integers(1, 3), "hidden": st.integers(1, 10), "features": st.integers(1, 6),
    "bidirectional": st.booleans(), "bias": st.booleans(), "batch_first": st.booleans(),
    "head": st.sampled_from(HEADS), "seed": st.integers(0, 2**16),
})
SETTINGS = settings(max_examples=CASES, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@pytest.mark.parametrize("form", sorted(FORMS))
@SETTINGS
@given(spec=rnn_cases, batch=st.integers(1, 4), steps=st.integers(2, 5))
@example(spec={"layers": 2, "hidden": 5, "features": 3, "bidirectional": True, "bias": True, "batch_first": True,
               "head": "last", "seed": 0}, batch=3, steps=4)  # (the case: a batch from the loader)
def test_random_rnns_certify_exactly_in_every_form(tmp_path_factory, spec, form, batch, steps):
    model = RandomRNN(**spec).eval()
    tmp_path = tmp_path_factory.mktemp(form)
    generator = torch.Generator().manual_seed(spec["seed"])
    batch_example = torch.randn(batch, steps, spec["features"], generator=generator)
    saved = _saved(model, batch_example, tmp_path, form)
    rows = torch.randn(2, steps, spec["features"], generator=generator)
    reference = model.reference()
    _assert_rows_match(saved, rows, [sequence_reference(reference, row) for row in rows])
    if FORMS[form] and spec["head"] != "flat":  # (flat: the output's size follows the length)
        lengths = [steps, max(steps - 1, 1), steps + 1]
        sequences = [torch.randn(n, spec["features"], generator=generator) for n in lengths]
        _assert_npz_matches(saved, form, tmp_path, sequences, [sequence_reference(reference, s) for s in sequences])


@pytest.mark.parametrize("form", sorted(FORMS))
@SETTINGS
@given(features=st.integers(1, 6), widths=st.lists(st.integers(1, 8), min_size=1, max_size=3), moved=st.booleans(),
       seed=st.integers(0, 2**16), batch=st.integers(1, 4), steps=st.integers(1, 4))
@example(features=3, widths=[4], moved=True, seed=0, batch=4, steps=2)  # (x.transpose(0, 1), a batch of 4)
def test_random_mlps_certify_exactly_in_every_form(tmp_path_factory, features, widths, moved, seed, form, batch, steps):
    model = RandomMLP(features, widths, moved, seed).eval()
    tmp_path = tmp_path_factory.mktemp(form)
    generator = torch.Generator().manual_seed(seed)
    batch_example = torch.randn(batch, steps, features, generator=generator)
    saved = _saved(model, batch_example, tmp_path, form)
    rows = torch.randn(2, steps, features, generator=generator)
    expected = [{"radius": reference_radii(model.double(), row[None].double())} for row in rows]
    model.float()
    _assert_rows_match(saved, rows, expected)


@pytest.mark.slow
def test_hundreds_of_random_forms():
    """The two properties above at 30 cases per form each (a fresh process reads the count)."""
    import subprocess
    import sys

    env = {**os.environ, "LRCERT_FORM_CASES": "30"}
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__, "-m", "not slow"],
                          env=env, capture_output=True, text=True, cwd=os.path.dirname(__file__))
    assert done.returncode == 0, done.stdout[-4000:]
