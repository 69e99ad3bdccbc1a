"""test_mnist.py as a teaching assistant's grading check: a student's model.py
copied in, the card's checks run against it. Every correct MLP passes, whatever
its non-linearity and however many hidden layers; a model that returns
probabilities fails, and the failure says so."""

import importlib.util
import os
import sys

import pytest
from conftest import PROJECT

# A student's model.py: the class takes the hidden widths alone, as a homework's does.
STUDENT_MODEL = '''
import torch
import torch.nn.functional as F
from torch import nn


class MLP(nn.Module):
    def __init__(self, widths):
        super().__init__()
        sizes = [28 * 28, *widths]
        self.hidden = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes, sizes[1:]))
        self.out = nn.Linear(sizes[-1], 10)

    def forward(self, x):
        h = x.flatten(1)
        for layer in self.hidden:
            h = {activation}(layer(h))
        return {output}
'''

# Another student's, built as one nn.Sequential.
SEQUENTIAL_MODEL = '''
from torch import nn


def MLP(widths):
    sizes = [28 * 28, *widths]
    layers = [nn.Flatten()]
    for n_in, n_out in zip(sizes, sizes[1:]):
        layers += [nn.Linear(n_in, n_out), nn.{activation}()]
    return nn.Sequential(*layers, nn.Linear(sizes[-1], 10))
'''

CORRECT_MODELS = {
    "relu": STUDENT_MODEL.format(activation="torch.relu", output="self.out(h)"),
    "gelu": STUDENT_MODEL.format(activation="F.gelu", output="self.out(h)"),
    "tanh": STUDENT_MODEL.format(activation="torch.tanh", output="self.out(h)"),
    "sigmoid": STUDENT_MODEL.format(activation="torch.sigmoid", output="self.out(h)"),
    "sigmoid, nn.Sequential": SEQUENTIAL_MODEL.format(activation="Sigmoid"),
}
PROBABILITIES_MODEL = STUDENT_MODEL.format(activation="torch.relu",
                                           output="self.out(h).softmax(dim=1)")


def run_the_card_s_checks(model_source, folder, monkeypatch, capsys):
    """python -m pytest test_mnist.py with `model_source` as model.py, in this
    process: the file loaded as the module `model` that test_mnist.py imports.
    Returns the exit code and the report."""
    path = folder / "model.py"
    path.write_text(model_source)
    spec = importlib.util.spec_from_file_location("model", path)
    student_model = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(student_model)
    monkeypatch.setitem(sys.modules, "model", student_model)
    # test_mnist.py imported anew, its `from model import MLP` the student's
    card = os.path.join(PROJECT, "test_mnist.py")
    for name, module in list(sys.modules.items()):
        if getattr(module, "__file__", None) == card:
            monkeypatch.delitem(sys.modules, name)
    # (no:unraisableexception: its clean-up collects garbage five times, 0.9 s a run)
    code = pytest.main([card, "-q", "-p", "no:cacheprovider", "-p", "no:unraisableexception",
                        "--import-mode=importlib"])
    return code, capsys.readouterr().out


@pytest.mark.parametrize("name", CORRECT_MODELS)
def test_every_correct_mlp_passes_the_card_s_checks(name, tmp_path, monkeypatch, capsys):
    code, report = run_the_card_s_checks(CORRECT_MODELS[name], tmp_path, monkeypatch, capsys)
    assert code == 0, report[-3000:]
    assert "passed" in report.splitlines()[-1] and "failed" not in report


def test_a_model_that_returns_probabilities_fails_and_is_told_why(tmp_path, monkeypatch,
                                                                   capsys):
    code, report = run_the_card_s_checks(PROBABILITIES_MODEL, tmp_path, monkeypatch, capsys)
    assert code == pytest.ExitCode.TESTS_FAILED
    failed = [line for line in report.splitlines() if line.startswith("FAILED")]
    assert any("test_the_model_returns_logits_not_probabilities" in line for line in failed)
    assert any("test_a_short_run_reduces_the_loss" in line for line in failed)
    assert "the model returns probabilities" in report
    assert "no softmax" in report
