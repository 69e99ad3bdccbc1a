"""evaluate.py, and checkpoints read back."""

import json
import subprocess
import sys

import pytest
import torch
from conftest import (
    PROJECT,
    assert_one_line_error,
    job,
    job_result,
    mnist_test_set,
    run,
    run_command,
)
from PIL import Image

import checkpoint as checkpoint_file
import data
import evaluate
import train
from checkpoint import load_checkpoint
from model import MLP, logits_and_labels

# ----------------------------------------------------------------------------
# Checkpoints and evaluate.py

def test_checkpoint_round_trip_keeps_predictions_identical(checkpoint, mnist):
    original = torch.load(checkpoint, weights_only=True)
    model, loaded = load_checkpoint(checkpoint)
    assert loaded["config"]["hidden"] == [64]
    test_loader = data.make_loader(mnist_test_set(mnist), 1000, shuffle=False)
    rebuilt = MLP(**original["config"])
    rebuilt.load_state_dict(original["state_dict"])
    logits, _ = logits_and_labels(model, test_loader)
    expected, _ = logits_and_labels(rebuilt, test_loader)
    assert torch.equal(logits, expected)


def test_evaluate_reports_accuracy_per_class_and_confusion(capsys, checkpoint, mnist, tmp_path):
    metrics_file, errors_file = tmp_path / "metrics.json", tmp_path / "errors.png"
    confusion_file = tmp_path / "confusion.png"
    code, stdout, _ = run(capsys, evaluate, checkpoint, "--data-dir", mnist, "--device", "cpu",
                          "--json", metrics_file, "--errors", errors_file,
                          "--confusion", confusion_file)
    assert code == 0
    metrics = json.loads(metrics_file.read_text())
    assert f"test accuracy  {100 * metrics['test_accuracy']:.2f}%" in stdout
    assert metrics["images"] == 200
    matrix = torch.tensor(metrics["confusion_matrix"])
    assert matrix.shape == (10, 10) and matrix.sum() == 200
    assert matrix.diag().sum() == metrics["correct"]
    assert metrics["test_accuracy"] == pytest.approx(metrics["correct"] / 200)
    assert metrics["per_class_accuracy"][3] == pytest.approx(
        (matrix[3, 3] / matrix[3].sum()).item())
    assert "confusion matrix" in stdout
    assert "the model after epoch 2 of 2" in stdout
    for picture in (errors_file, confusion_file):
        assert Image.open(picture).format == "PNG"


def test_confusion_matrix_counts_true_rows_and_predicted_columns():
    labels = torch.tensor([0, 0, 1, 2])
    predictions = torch.tensor([0, 1, 1, 1])
    matrix = evaluate.confusion_matrix(labels, predictions, num_classes=3)
    assert matrix.tolist() == [[1, 1, 0], [0, 1, 0], [0, 1, 0]]


def test_error_grid_draws_the_test_images_as_stored_with_probabilities(
        pictures, capsys, checkpoint, mnist, tmp_path, monkeypatch):
    real_logits = evaluate.logits_and_labels

    def always_wrong(model, loader):  # every prediction one class off, 70 % sure
        _, labels = real_logits(model, loader)
        logits = torch.zeros(len(labels), 10, device=labels.device)
        logits[torch.arange(len(labels)), (labels + 1) % 10] = torch.tensor(0.7 * 9 / 0.3).log()
        return logits, labels

    drawn = {}
    real_grid = pictures.captioned_digits
    monkeypatch.setattr(evaluate, "logits_and_labels", always_wrong)
    # (the first ten drawn: matplotlib takes seconds for a hundred)
    monkeypatch.setattr(pictures, "captioned_digits", lambda images, captions: drawn.update(
        images=images, captions=captions) or real_grid(images[:10], captions[:10]))
    code, _, _ = run(capsys, evaluate, checkpoint, "--data-dir", mnist, "--errors",
                     tmp_path / "errors.png")
    assert code == 0
    stored, labels = data.load_split(mnist, "mnist", "test")
    assert drawn["images"].dtype == torch.uint8
    assert torch.equal(drawn["images"], stored[:100])  # the first 100 errors, pixel for pixel
    first_true, first_guess = labels[0].item(), (labels[0].item() + 1) % 10
    assert drawn["captions"][0] == f"is {first_true} (3%)\nsaid {first_guess} (70%)"
    assert Image.open(tmp_path / "errors.png").format == "PNG"


@job("test_output_piped_into_a_reader_that_stops_early_ends_quietly", "checkpoint", "mnist")
def evaluate_into_a_closed_pipe(folder, checkpoint, mnist):
    process = subprocess.Popen([sys.executable, "evaluate.py", checkpoint, "--data-dir", mnist],
                               cwd=PROJECT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    process.stdout.close()
    err = process.stderr.read().decode()
    return process.wait(timeout=120), err


def test_output_piped_into_a_reader_that_stops_early_ends_quietly(fresh_interpreters, request):
    """`python evaluate.py model.pt | head -2`, with a reader that reads nothing
    at all: every write finds the pipe closed."""
    code, err = job_result(fresh_interpreters, request)
    assert code == 1
    assert err == ""


@job("test_command_line_train_then_evaluate", "mnist")
def train_then_evaluate(folder, mnist):
    out = folder / "model.pt"
    trained = run_command("train.py", "--data-dir", mnist, "--epochs", 1, "--val-size", 100,
                          "--device", "cpu", "--out", out)
    evaluated = run_command("evaluate.py", out, "--data-dir", mnist, "--json", folder / "m.json")
    return folder, trained, evaluated


def test_command_line_train_then_evaluate(fresh_interpreters, request):
    """The user's path, end to end, in real processes."""
    folder, trained, evaluated = job_result(fresh_interpreters, request)
    assert trained.returncode == 0, trained.stderr
    assert evaluated.returncode == 0, evaluated.stderr
    assert "test accuracy" in evaluated.stdout
    assert json.loads((folder / "m.json").read_text())["images"] == 200


def test_the_activation_is_saved_named_and_rebuilt(capsys, mnist, tmp_path):
    out = tmp_path / "sigmoid.pt"
    code, stdout, err = run(capsys, train, "--data-dir", mnist, "--epochs", 1, "--hidden", 32,
                            "--activation", "sigmoid", "--val-size", 100, "--out", out)
    assert code == 0, err
    assert stdout.startswith("training a [784, 32, 10] sigmoid MLP with adam")
    model, saved = load_checkpoint(out)
    assert saved["config"]["activation"] == "sigmoid"
    assert isinstance(model.activation, torch.nn.Sigmoid)
    code, stdout, _ = run(capsys, evaluate, out, "--data-dir", mnist)
    assert code == 0 and stdout.startswith(f"{out}: a [784, 32, 10] sigmoid MLP trained with adam "
                                           f"on mnist, ")


def test_a_checkpoint_that_model_py_no_longer_reproduces_is_refused(capsys, checkpoint, mnist,
                                                                     monkeypatch):
    """model.py edited after training (its ReLU made a sigmoid, as a homework does):
    the same weights give other logits, and every reader refuses in one line."""
    class EditedMLP(MLP):
        def __init__(self, *args, activation="relu", **kwargs):
            super().__init__(*args, activation="sigmoid", **kwargs)

    monkeypatch.setattr(checkpoint_file, "MLP", EditedMLP)
    code, _, err = run(capsys, evaluate, checkpoint, "--data-dir", mnist)
    assert_one_line_error(code, err, "model.py computes other outputs", "train again")


def test_a_checkpoint_saved_before_activations_were_a_flag_reads_as_relu(checkpoint, tmp_path):
    older = torch.load(checkpoint, weights_only=True)
    del older["probe"], older["config"]["activation"]
    torch.save(older, tmp_path / "older.pt")
    model, _ = load_checkpoint(tmp_path / "older.pt")
    expected, _ = load_checkpoint(checkpoint)
    images = torch.randn(8, 1, 28, 28)
    assert isinstance(model.activation, torch.nn.ReLU)
    assert torch.equal(model.eval()(images), expected.eval()(images))


def test_without_data_dir_the_test_set_is_read_where_the_model_was_trained(capsys, checkpoint):
    """The checkpoint fixture was trained with --data-dir on the small data set."""
    code, stdout, err = run(capsys, evaluate, checkpoint)
    assert code == 0, err
    assert "of 200 images)" in stdout  # the small data set's 200 test images
