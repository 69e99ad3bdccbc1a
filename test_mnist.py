"""Tests for the MNIST MLP scripts: python -m pytest (python -m pytest -m lesson, the
lesson's own, which come first).

They need no network and no real MNIST: a small data set in the MNIST file format
is written to a temporary folder and read through the real data.py code. Most
command-line tests call a script's main() in this process, exactly as
`python script.py ...` would; a few run the real command line in a subprocess.
The fixtures, and the helpers that tests share, are in conftest.py.
"""

import re
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import data
import train
from checkpoint import model_config
from conftest import (
    code_of,
    job,
    job_result,
    make_mnist,
    mnist_test_set,
    pasted_alone,
    readme_block,
    readme_section,
    source_of,
)
from model import MLP

# ----------------------------------------------------------------------------
# The three checks of the design, each readable alone: the shapes, the loss's
# dtype handling, and that a short run reduces the loss.

@pytest.mark.lesson
def test_shapes_images_in_one_logit_per_class_out():
    """A batch of images [B, 1, 28, 28] gives logits [B, 10], whatever the hidden
    layers; MLP(512) is the lecture's one hidden layer of 512 units."""
    images = torch.randn(64, 1, 28, 28)
    for model in (MLP(512), MLP([512]), MLP([32, 16])):
        assert model(images).shape == (64, 10)
    assert [layer.out_features for layer in MLP(512).hidden_layers] == [512]
    assert model_config(MLP(512)) == model_config(MLP([512]))
    batch_images, batch_labels = next(iter(torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(images, torch.arange(64) % 10), batch_size=16)))
    assert batch_images.shape == (16, 1, 28, 28) and batch_labels.shape == (16,)


@pytest.mark.lesson
def test_the_loss_takes_float_logits_and_int64_class_labels(mnist):
    """nn.CrossEntropyLoss wants logits [N, C] and integer class indices [N]:
    int64. Other dtypes fail, or mean something else. MNIST stores its labels
    as uint8: data.py's batches bring them as int64, with float32 images."""
    _, stored_labels = data.load_split(mnist, "mnist", "test")
    assert stored_labels.dtype == torch.uint8
    test_set = mnist_test_set(mnist)
    assert torch.equal(test_set.labels, stored_labels.long())
    images, labels = next(iter(data.make_loader(test_set, 64, shuffle=False)))
    assert images.dtype == torch.float32 and labels.dtype == torch.int64
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.0, 3.0, 0.0]])
    labels = torch.tensor([0, 1])  # int64, torch's default for integers
    expected = -(torch.log_softmax(logits, dim=1)[[0, 1], [0, 1]]).mean()
    assert torch.allclose(nn.CrossEntropyLoss()(logits, labels), expected)
    # float or int32 class indices are refused outright (the message differs
    # between torch versions) ...
    for wrong in (labels.float(), labels.int()):
        with pytest.raises(RuntimeError, match="target dtype|expected scalar type Long"):
            F.cross_entropy(logits, wrong)
    # ... and float targets of shape [N, C] are read as class probabilities.
    one_hot = F.one_hot(labels, 3).float()
    assert torch.allclose(F.cross_entropy(logits, one_hot), F.cross_entropy(logits, labels))
    smeared = torch.full((2, 3), 1 / 3)
    assert not torch.allclose(F.cross_entropy(logits, smeared), F.cross_entropy(logits, labels))


@pytest.mark.lesson
def test_a_short_run_reduces_the_loss():
    """Three epochs of train_one_epoch on 600 easy images (ten fixed random
    patterns with noise), with a stock DataLoader, bring the loss from about
    ln(10) = 2.3 to a quarter of that."""
    torch.manual_seed(0)
    patterns = torch.rand(10, 1, 28, 28) > 0.75
    labels = torch.arange(600) % 10
    images = patterns[labels] + 0.2 * torch.randn(600, 1, 28, 28)
    train_loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(images, labels), batch_size=50, shuffle=True)
    model = MLP([64])
    loss_fn = nn.CrossEntropyLoss()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)

    def loss_on_training_set():
        with torch.no_grad():
            return loss_fn(model(images), labels).item()

    before = loss_on_training_set()
    for _ in range(3):
        train.train_one_epoch(model, train_loader, loss_fn, optimizer)
    after = loss_on_training_set()
    assert before > 2.0
    assert after < 0.25 * before


# ----------------------------------------------------------------------------
# Copied into homework: the MLP, the loop and the Dataset each run alone

@pytest.mark.lesson
def test_the_mlp_the_loop_and_the_dataset_each_run_pasted_alone():
    pasted = pasted_alone(("model.py", "MLP"), ("train.py", "train_one_epoch"),
                          ("data.py", "MNISTTensors"))
    torch.manual_seed(0)
    patterns = torch.rand(10, 1, 28, 28) > 0.75
    labels = torch.arange(400) % 10
    images = patterns[labels] + 0.2 * torch.randn(400, 1, 28, 28)
    dataset = pasted["MNISTTensors"](images, labels)
    model = pasted["MLP"](512)
    # The accuracy counts the images seen: drop_last leaves 16 of 400 out.
    in_order = torch.utils.data.DataLoader(dataset, batch_size=64, drop_last=True)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)  # learns nothing: checkable
    loss, accuracy = pasted["train_one_epoch"](model, in_order, nn.CrossEntropyLoss(),
                                               optimizer)
    with torch.no_grad():
        right = (model(images[:384]).argmax(1) == labels[:384]).sum().item()
    assert right > 0 and accuracy == right / 384
    # The stock DataLoader of torch's tutorials, one image at a time.
    train_loader = torch.utils.data.DataLoader(dataset, batch_size=64, shuffle=True)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(3):
        loss, accuracy = pasted["train_one_epoch"](model, train_loader,
                                                   nn.CrossEntropyLoss(), optimizer)
    assert loss < 0.5 and accuracy > 0.9


@job("test_the_readme_s_own_code_block_is_made_of_the_pieces_and_runs")
def run_the_readme_block_as_homework(folder):
    """The block pasted into a homework folder whose data/ torchvision finds (no
    download), run there."""
    make_mnist(folder / "data", train_count=1000, test_count=100)
    (folder / "homework.py").write_text(readme_block("Use it in your own code"))
    return subprocess.run([sys.executable, "homework.py"], cwd=folder, capture_output=True,
                          text=True, timeout=120)


@pytest.mark.lesson
def test_the_readme_s_own_code_block_is_made_of_the_pieces_and_runs(fresh_interpreters,
                                                                      request):
    block = readme_block("Use it in your own code")
    assert len(block.splitlines()) <= 70
    for path, name in (("model.py", "MLP"), ("train.py", "train_one_epoch"),
                       ("model.py", "logits_and_labels")):
        assert code_of(block, name) == code_of(source_of(path, name), name), name
    result = job_result(fresh_interpreters, request)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert [line.split(":")[0] for line in lines[:3]] == ["epoch 1", "epoch 2", "epoch 3"]
    assert float(lines[2].split()[-1].rstrip("%")) > 90  # training accuracy
    # Then the number the homework asks for: the test images, predicted with argmax.
    assert len(lines) == 4 and re.fullmatch(r"test accuracy \d+\.\d\d%", lines[3])
    assert float(lines[3].split()[-1].rstrip("%")) > 90


@job("test_the_readme_s_block_changed_as_homework_changes_it_still_runs")
def run_the_changed_block_as_homework(folder):
    """The block with the homework's changes: two hidden layers, and SGD at the
    rate the README gives for it."""
    make_mnist(folder / "data", train_count=1000, test_count=100)
    block = readme_block("Use it in your own code")
    sgd = re.search(r"`(torch\.optim\.SGD\(model\.parameters\(\), [^`]*\))`",
                    readme_section("Use it in your own code"))[1]
    block = block.replace("model = MLP(1024)", "model = MLP([512, 256])")
    block = block.replace("optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)",
                          f"optimizer = {sgd}")
    assert "MLP([512, 256])" in block and "optim.SGD" in block
    (folder / "homework.py").write_text(block)
    return subprocess.run([sys.executable, "homework.py"], cwd=folder, capture_output=True,
                          text=True, timeout=120)


def test_the_readme_s_block_changed_as_homework_changes_it_still_runs(fresh_interpreters,
                                                                     request):
    result = job_result(fresh_interpreters, request)
    assert result.returncode == 0, result.stderr
    assert float(result.stdout.splitlines()[-1].split()[-1].rstrip("%")) > 90


def test_the_reading_order_s_line_counts_are_today_s():
    import ast

    def lines_of(path, name):
        with open(os.path.join(HERE, path)) as f:
            tree = ast.parse(f.read())
        node = next(node for node in tree.body if getattr(node, "name", None) == name)
        first = node.decorator_list[0] if node.decorator_list else node
        return node.end_lineno - first.lineno + 1

    def lines_in(*paths):
        return sum(len(open(os.path.join(HERE, path)).readlines()) for path in paths)

    order = readme_section("Reading order")
    said = [int(count) for count in re.findall(r"\((\d+) lines\)", order)]
    assert said == [lines_of("model.py", "MLP"), lines_of("train.py", "train_one_epoch"),
                    lines_of("train.py", "validate"), lines_of("train.py", "main"),
                    sum(lines_of("data.py", name)
                        for name in ("MNISTTensors", "BatchIndices", "make_loader")),
                    lines_in("evaluate.py")]
    path = lines_in("train.py", "model.py", "data.py", "cli.py", "checkpoint.py")
    assert f"A default run reads five files, {path} lines" in order


@job("test_a_default_run_reads_five_files_of_at_most_900_lines")
def modules_of_a_default_run(folder):
    """The project's modules that a default run (its 5,000 validation images
    held out of 5,100) has loaded when it ends."""
    make_mnist(folder / "data", train_count=5100, test_count=10)
    code = ("import os, sys, train; train.main(sys.argv[1:]); print(sorted(m.__file__ for m in "
            "list(sys.modules.values()) if os.path.dirname(getattr(m, '__file__', None) or '') "
            "== os.getcwd()))")
    return run_command("-c", code, "--data-dir", folder / "data", "--out", folder / "m.pt",
                       "--log", folder / "log.csv")


def test_a_default_run_reads_five_files_of_at_most_900_lines(fresh_interpreters, request):
    result = job_result(fresh_interpreters, request)
    assert result.returncode == 0, result.stderr
    files = [os.path.basename(path) for path in eval(result.stdout.splitlines()[-1])]
    assert sorted(files) == ["checkpoint.py", "cli.py", "data.py", "model.py", "train.py"]
    lines = {name: len(open(os.path.join(HERE, name)).readlines()) for name in files}
    assert lines["train.py"] <= 280 and sum(lines.values()) <= 900, lines


@pytest.mark.lesson
def test_one_width_is_the_default_everywhere():
    """The lecture's MLP has one hidden layer: MLP's own default, train.py's
    --hidden and the README's block use the same width."""
    hidden = train.make_parser().parse_args([]).hidden
    assert len(hidden) == 1
    assert [layer.out_features for layer in MLP().hidden_layers] == hidden
    assert f"model = MLP({hidden[0]})" in readme_block("Use it in your own code")


@pytest.mark.lesson
def test_the_loop_pasted_alone_stops_a_diverging_run_at_the_step():
    pasted = pasted_alone(("model.py", "MLP"), ("train.py", "train_one_epoch"))
    images, labels = torch.randn(256, 1, 28, 28), torch.arange(256) % 10
    train_loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(images, labels), batch_size=64)
    model = pasted["MLP"]([32])
    optimizer = torch.optim.SGD(model.parameters(), lr=1e6)
    with pytest.raises(FloatingPointError, match=r"the loss reached \S+ at step \d of 4"):
        pasted["train_one_epoch"](model, train_loader, nn.CrossEntropyLoss(), optimizer)


# ----------------------------------------------------------------------------
# The rest of the suite's imports: below the lesson, with which the file opens

import base64
import csv
import errno
import http.client
import json
import math
import os
import random
import shutil
import signal
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from io import BytesIO

from PIL import Image, ImageDraw, ImageOps

import benchmark
import cli
import crowd
import draw
import evaluate
import predict
import segment
import train_flags
import zipcodes
from averaging import MovingAverage
from checkpoint import CHECKPOINT_FIELDS, save_checkpoint
from cli import replacing
from conftest import (
    CPU,
    HERE,
    RESUMABLE_RUN,
    THREADS_OF_A_TRAINING_PROCESS,
    arc,
    assert_one_line_error,
    drawing,
    grey_levels,
    in_progress_checkpoint,
    pen_strokes,
    png,
    posix_signals,
    row_strokes,
    run,
    run_command,
    split,
    start_command,
    threads_of_a_training_process,
    write_idx,
)
from load import load_checkpoint
from model import logits_and_labels

# ----------------------------------------------------------------------------
# The model and the data set

def test_the_lecture_mlp_is_relu_of_w1_x_plus_b1_then_w2_h_plus_b2():
    model = MLP([16])
    x = torch.randn(3, 1, 28, 28)
    first, second = model.hidden_layers[0], model.output_layer
    h = torch.relu(x.flatten(1) @ first.weight.T + first.bias)
    assert torch.allclose(model(x), h @ second.weight.T + second.bias, atol=1e-6)


def test_batches_are_of_the_batch_size_and_each_epoch_has_every_image(mnist):
    train_set, val_set = split(mnist, 100)
    assert (len(train_set), len(val_set)) == (500, 100)
    batches = list(data.make_loader(train_set, 64, shuffle=True,
                                    generator=torch.Generator().manual_seed(0)))
    assert [len(labels) for _, labels in batches] == [64] * 7 + [52]
    images, labels = batches[0]
    assert images.shape == (64, 1, 28, 28) and labels.shape == (64,)
    assert labels.min() >= 0 and labels.max() <= 9
    # Every image exactly once per epoch, in a new order each epoch.
    loader = data.make_loader(train_set, 64, shuffle=True,
                              generator=torch.Generator().manual_seed(0))
    epoch_labels = [torch.cat([labels for _, labels in loader]) for _ in range(2)]
    assert sorted(epoch_labels[0].tolist()) == sorted(train_set.labels.tolist())


def test_the_dataset_answers_one_index_or_a_batch_of_indices(mnist):
    train_set, _ = split(mnist, 100)
    image, label = train_set[3]
    assert image.shape == (1, 28, 28) and label.shape == () and label.dtype == torch.int64
    batch_images, batch_labels = train_set[torch.tensor([3, 5])]
    assert torch.equal(batch_images[0], image) and torch.equal(batch_labels[0], label)
    # torch's stock DataLoader, one image at a time ...
    stock = torch.utils.data.DataLoader(train_set, batch_size=64, shuffle=True)
    images, labels = next(iter(stock))
    assert images.shape == (64, 1, 28, 28) and labels.shape == (64,)
    assert labels.dtype == torch.int64
    # ... and the batch sampler given as a batch_sampler, also one at a time.
    sampler = data.BatchIndices(len(train_set), 64, CPU, shuffle=False)
    images, labels = next(iter(torch.utils.data.DataLoader(train_set, batch_sampler=sampler)))
    assert torch.equal(images, train_set.images[:64])
    assert torch.equal(labels, train_set.labels[:64])


def test_shuffling_changes_each_epoch_and_evaluation_is_in_order(mnist):
    train_set, _ = split(mnist, 0)
    shuffled = data.make_loader(train_set, 600, shuffle=True,
                                generator=torch.Generator().manual_seed(0))
    first, second = (next(iter(shuffled))[1] for _ in range(2))
    assert not torch.equal(first, second)
    assert sorted(first.tolist()) == sorted(second.tolist())
    in_order = data.make_loader(train_set, 600, shuffle=False)
    assert torch.equal(next(iter(in_order))[1], train_set.labels)


def test_images_are_normalized_by_the_training_pixels_statistics(mnist):
    pixels = torch.zeros(2, 28, 28, dtype=torch.uint8)
    pixels[0, :, 7:] = 255  # three quarters white, a quarter black, over both images
    pixels[1] = 255
    statistics = data.pixel_statistics(pixels)
    assert statistics["mean"] == pytest.approx(0.875)
    assert statistics["std"] == pytest.approx(
        torch.tensor([0.0] * 196 + [1.0] * 1372).std().item(), rel=1e-6)
    images = data.normalize(pixels, statistics)
    assert images.shape == (2, 1, 28, 28)
    assert images.mean().item() == pytest.approx(0, abs=1e-6)
    assert images.std().item() == pytest.approx(1, rel=1e-5)
    # train.py: the statistics of the training images only, not the validation ones.
    images, _ = data.load_split(mnist, "mnist", "train")
    train_set, val_set, normalization = data.train_val_sets(mnist, "mnist", 100, 0, CPU)
    assert train_set.images.mean().item() == pytest.approx(0, abs=1e-5)
    assert normalization != data.pixel_statistics(images)


def test_validation_split_is_chosen_by_the_seed_and_disjoint(mnist):
    def labels_and_images(seed):
        train_set, val_set = split(mnist, 100, seed)
        return train_set.images, val_set.images

    train_a, val_a = labels_and_images(0)
    train_b, val_b = labels_and_images(1)
    assert torch.equal(val_a, labels_and_images(0)[1])
    assert not torch.equal(val_a, val_b)
    # No validation image is also a training image.
    flat_train, flat_val = train_a.flatten(1), val_a.flatten(1)
    assert not (flat_val[:, None, :] == flat_train[None, :, :]).all(dim=2).any()


# ----------------------------------------------------------------------------
# Training

def test_train_prints_one_line_per_epoch_and_saves(capsys, mnist, tmp_path):
    out, log = tmp_path / "m.pt", tmp_path / "log.csv"
    code, stdout, _ = run(capsys, train, "--data-dir", mnist, "--epochs", 3, "--hidden", 32,
                          "--val-size", 100, "--device", "cpu", "--out", out, "--log", log)
    assert code == 0
    lines = stdout.splitlines()
    assert lines[1:3] == cli.what_the_columns_measure(vars(train.parse_args(
        ["--data-dir", str(mnist), "--epochs", "3", "--hidden", "32", "--val-size", "100"])[0]))
    assert lines[3].split() == ["epoch", "train", "loss", "train", "acc", "val", "loss", "val",
                                "acc", "time", "images/s", "lr", "momentum"]
    epoch_lines = [line.split() for line in stdout.splitlines() if line.split()[0].isdigit()]
    assert [line[0] for line in epoch_lines] == ["1", "2", "3"]
    assert f"saved {out}" in stdout
    rows = list(csv.DictReader(log.open()))
    assert list(rows[0]) == [
        "epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "seconds",
        "images_per_second", "lr", "momentum"]
    assert len(rows) == 3
    checkpoint = torch.load(out, weights_only=True)
    assert checkpoint["epochs_completed"] == 3 and checkpoint["training_state"] is None
    assert checkpoint["metrics"] == [{name: pytest.approx(float(value)) for name, value in
                                      row.items()} for row in rows]
    for line, row in zip(epoch_lines, rows):  # the line shows the CSV's rate and momentum
        assert line[-2:] == [f"{float(row['lr']):.2e}", f"{float(row['momentum']):.3f}"]
    assert checkpoint["train_args"]["hidden"] == [32]


def test_the_lines_above_the_epoch_table_say_how_train_and_val_are_measured():
    default = vars(train.parse_args([])[0])
    assert cli.what_the_columns_measure(default) == [
        "train: distorted batches, averaged over the epoch while learning; "
        "loss label-smoothed by 0.1 (at best 0.50)",
        "val:   5,000 held-out images as they are, after the epoch; plain cross-entropy"]
    # "at best": the loss of a model that predicts the smoothed target exactly
    for smoothing in (0.1, 0.3):
        target = torch.full((1, 10), smoothing / 10)
        target[0, 3] += 1 - smoothing
        lowest = F.cross_entropy(target.log(), torch.tensor([3]), label_smoothing=smoothing)
        line = cli.what_the_columns_measure({**default, "label_smoothing": smoothing})[0]
        assert line.endswith(f"(at best {lowest:.2f})")
    other = cli.what_the_columns_measure({**default, "augment": False, "label_smoothing": 0,
                                            "dropout": 0.2, "ema": 0.999})
    assert other == ["train: the batches, averaged over the epoch while learning, dropout on",
                     "val:   5,000 held-out images as they are, after the epoch, by the "
                     "weights' moving average; plain cross-entropy"]
    clean = cli.what_the_columns_measure({**default, "clean_epochs": 2, "val_size": 0})
    assert clean == ["train: distorted batches (undistorted in the last 2 epochs), averaged "
                     "over the epoch while learning; loss label-smoothed by 0.1 (at best 0.50)",
                     "val:   none (--val-size 0)"]


def rates_and_momenta(capsys, mnist, tmp_path, *flags):
    """Each epoch's learning rate and momentum, as the checkpoint stores them,
    of a 3-epoch run of 50 steps an epoch at --lr 0.01."""
    out = tmp_path / "m.pt"
    code, _, err = run(capsys, train, "--data-dir", mnist, "--epochs", 3, "--hidden", 16,
                       "--val-size", 100, "--batch-size", 10, "--lr", "0.01", "--out", out,
                       *flags)
    assert code == 0, err
    metrics = torch.load(out, weights_only=True)["metrics"]
    return [row["lr"] for row in metrics], [row["momentum"] for row in metrics]


def test_each_epoch_shows_the_rate_and_momentum_the_schedule_left(capsys, mnist, tmp_path):
    # Adam under one-cycle: the rate up to --lr and down to almost 0, beta1
    # against it, 0.95 at the ends and 0.85 at the peak (torch's own)
    rates, momenta = rates_and_momenta(capsys, mnist, tmp_path)
    assert 0.005 < rates[0] <= 0.01 and rates[1] < rates[0] and rates[2] < 1e-4
    assert 0.85 < momenta[0] < momenta[1] < momenta[2] == pytest.approx(0.95, abs=1e-3)
    # SGD: the same rates, and its momentum is --momentum's
    sgd = rates_and_momenta(capsys, mnist, tmp_path, "--optimizer", "sgd", "--momentum", "0.5")
    assert sgd == (rates, [0.5, 0.5, 0.5])
    assert rates_and_momenta(capsys, mnist, tmp_path, "--optimizer", "sgd", "--scheduler", "step",
                             "--gamma", "0.5") == ([0.005, 0.0025, 0.00125], [0.9, 0.9, 0.9])
    assert rates_and_momenta(capsys, mnist, tmp_path, "--scheduler", "none") == (
        [0.01, 0.01, 0.01], [0.9, 0.9, 0.9])  # Adam's beta1, torch's default


@pytest.mark.parametrize("flags", [
    ["--optimizer", "sgd", "--lr", "0.05", "--scheduler", "step"],
    ["--optimizer", "adamw", "--weight-decay", "0.01", "--scheduler", "cosine"],
    ["--scheduler", "onecycle", "--label-smoothing", "0.1", "--dropout", "0.2"],
    ["--augment", "--elastic-alpha", "8", "--hidden", "32", "16"],
])
def test_every_optimizer_scheduler_and_option_trains(capsys, mnist, tmp_path, flags):
    out = tmp_path / "m.pt"
    code, _, err = run(capsys, train, "--data-dir", mnist, "--epochs", 2, "--val-size", 100,
                       "--device", "cpu", "--out", out, *flags)
    assert code == 0, err
    metrics = torch.load(out, weights_only=True)["metrics"]
    assert metrics[-1]["train_loss"] < metrics[0]["train_loss"]


def test_a_bf16_run_reduces_the_loss_saves_float32_weights_and_repeats(capsys, mnist,
                                                                        tmp_path):
    def train_run(name, *flags):
        code, stdout, err = run(capsys, train, "--data-dir", mnist, "--epochs", 2,
                                "--hidden", 32, "--batch-size", 50, "--val-size", 100,
                                "--device", "cpu", "--out", tmp_path / name, *flags)
        assert code == 0, err
        return stdout, load_checkpoint(tmp_path / name)[1]

    stdout, bf16 = train_run("bf16.pt", "--bf16")
    assert all(tensor.dtype == torch.float32 for tensor in bf16["state_dict"].values())
    assert bf16["train_args"]["bf16"] is True
    losses = [row["train_loss"] for row in bf16["metrics"]]
    assert losses[1] < losses[0] and bf16["metrics"][-1]["val_loss"] < 2.0  # untrained: 2.3
    assert ("no native bfloat16" in stdout) == (not train_flags.has_native_bf16(CPU))
    _, again = train_run("again.pt", "--bf16")
    assert all(torch.equal(again["state_dict"][name], tensor)
               for name, tensor in bf16["state_dict"].items())
    # It did run in bfloat16: in float32 the same run learns other numbers.
    _, float32 = train_run("float32.pt")
    assert float32["metrics"][0]["train_loss"] != bf16["metrics"][0]["train_loss"]


def test_under_bf16_the_layers_compute_in_bfloat16_and_the_loss_in_float32():
    """What --bf16's help and the README say: torch.autocast, as the loop uses it."""
    model, images = MLP([32, 16]), torch.randn(8, 1, 28, 28)
    seen = []
    for layer in [*model.hidden_layers, model.output_layer]:
        layer.register_forward_hook(lambda _, __, output: seen.append(output.dtype))
    with torch.autocast("cpu", torch.bfloat16):
        logits = model(images)
        loss = nn.CrossEntropyLoss(label_smoothing=0.1)(logits, torch.zeros(8, dtype=torch.long))
    assert seen == [torch.bfloat16] * 3 and logits.dtype == torch.bfloat16
    assert loss.dtype == torch.float32
    loss.backward()
    assert all(p.grad.dtype == torch.float32 for p in model.parameters())


def test_validation_loss_is_plain_cross_entropy_whatever_the_smoothing(capsys, mnist,
                                                                      tmp_path):
    out = tmp_path / "m.pt"
    code, _, _ = run(capsys, train, "--data-dir", mnist, "--epochs", 1, "--val-size", 100,
                     "--label-smoothing", 0.5, "--device", "cpu", "--out", out)
    assert code == 0
    model, checkpoint = load_checkpoint(out)
    _, val_set = split(mnist, 100, 0)
    logits, labels = logits_and_labels(model, data.make_loader(val_set, 1000, shuffle=False))
    plain = F.cross_entropy(logits, labels).item()
    assert checkpoint["metrics"][0]["val_loss"] == pytest.approx(plain)
    smoothed = F.cross_entropy(logits, labels, label_smoothing=0.5).item()
    assert abs(smoothed - plain) > 0.1  # the test can tell the two apart


def test_val_size_zero_trains_on_everything(capsys, mnist, tmp_path):
    code, stdout, _ = run(capsys, train, "--data-dir", mnist, "--epochs", 1, "--val-size", 0,
                          "--device", "cpu", "--out", tmp_path / "m.pt")
    assert code == 0
    assert "on 600 mnist images" in stdout
    assert torch.load(tmp_path / "m.pt", weights_only=True)["metrics"][0]["val_accuracy"] is None


def test_the_same_seed_gives_identical_metrics_and_weights(capsys, mnist, tmp_path):
    def train_once(name, seed):
        out = tmp_path / name
        run(capsys, train, "--data-dir", mnist, "--epochs", 2, "--val-size", 100, "--seed", seed,
            "--augment", "--dropout", "0.1", "--device", "cpu", "--out", out)
        checkpoint = torch.load(out, weights_only=True)
        timeless = [{k: v for k, v in m.items() if k not in ("seconds", "images_per_second")}
                    for m in checkpoint["metrics"]]
        return timeless, checkpoint["state_dict"]

    metrics_a, weights_a = train_once("a.pt", 0)
    metrics_b, weights_b = train_once("b.pt", 0)
    metrics_c, weights_c = train_once("c.pt", 1)
    assert metrics_a == metrics_b
    assert all(torch.equal(weights_a[name], weights_b[name]) for name in weights_a)
    assert not torch.equal(weights_a["output_layer.weight"], weights_c["output_layer.weight"])


# ----------------------------------------------------------------------------
# Every flag acts: a short run with the flag changed saves other weights, and a
# flag that cannot act in a run is named in a note and changes nothing
# (the runs' weights: the saved_weights fixture, in conftest.py)

# (flag, the rest of the run it acts in, the change): the change's flag is the first
ACTING = [
    ("--hidden", [], ["--hidden", "24"]),
    ("--dropout", [], ["--dropout", "0.3"]),
    ("--optimizer", [], ["--optimizer", "sgd"]),
    ("--optimizer", ["--weight-decay", "0.1"], ["--optimizer", "adamw"]),
    ("--lr", [], ["--lr", "0.005"]),
    *[("--momentum", ["--optimizer", "sgd", "--scheduler", scheduler], ["--momentum", "0.5"])
      for scheduler in ("none", "step", "cosine", "onecycle")],
    *[("--weight-decay", ["--optimizer", optimizer], ["--weight-decay", "0.1"])
      for optimizer in ("adam", "adamw", "sgd")],
    *[("--scheduler", [], ["--scheduler", scheduler]) for scheduler in ("none", "step", "cosine")],
    ("--gamma", ["--scheduler", "step", "--epochs", "2"], ["--gamma", "0.5"]),
    ("--batch-size", [], ["--batch-size", "25"]),
    ("--epochs", [], ["--epochs", "2"]),
    ("--label-smoothing", [], ["--label-smoothing", "0.2"]),
    ("--ema", [], ["--ema", "0.5"]),  # the saved weights are the average
    ("--bf16", [], ["--bf16"]),
    ("--augment", [], ["--no-augment"]),
    ("--rotation", [], ["--rotation", "15"]),
    ("--scale", [], ["--scale", "0.2"]),
    ("--shear", [], ["--shear", "10"]),
    ("--shift", [], ["--shift", "3"]),
    ("--elastic-alpha", [], ["--elastic-alpha", "20"]),
    ("--elastic-sigma", ["--elastic-alpha", "20"], ["--elastic-sigma", "2"]),
    ("--clean-epochs", ["--epochs", "2"], ["--clean-epochs", "1"]),
]
# A flag of those groups that trains nothing, and the test that shows what it does.
NOT_TRAINING = {"--show-augmentation": "test_show_augmentation_draws_each_class_and_trains_nothing"}
# (the flag that cannot act, the rest of the run, the reason the note gives)
IDLE = [
    (["--momentum", "0.5"], [], "it acts with --optimizer sgd only"),
    (["--momentum", "0.5"], ["--optimizer", "adamw"], "it acts with --optimizer sgd only"),
    *[(["--gamma", "0.5"], ["--scheduler", scheduler], "--scheduler step")
      for scheduler in ("none", "cosine", "onecycle")],
    *[([flag, value], ["--no-augment"], "--no-augment distorts nothing")
      for flag, value in (("--rotation", "15"), ("--scale", "0.2"), ("--shear", "10"),
                          ("--shift", "3"), ("--elastic-alpha", "20"), ("--elastic-sigma", "2"))],
    (["--elastic-sigma", "2"], [], "no elastic distortion at --elastic-alpha 0"),
    (["--gamma", "0.5"], ["--scheduler", "step"], "there is one"),  # (one epoch)
    *[(flag, ["--clean-epochs", "1"], "with --clean-epochs 1 every epoch is clean")
      for flag in (["--rotation", "15"], ["--elastic-alpha", "20"], ["--augment"])],
]


def same_weights(first, second):
    return first.keys() == second.keys() and all(
        first[name].shape == second[name].shape and torch.equal(first[name], second[name])
        for name in first)


# The flags of the "data and output" group: the others shape the training.
DATA_AND_OUTPUT = {"dataset", "val_size", "seed", "device", "data_dir", "out", "log", "resume"}


def test_every_training_flag_has_a_row_in_the_table():
    every_flag = vars(train.parse_args([])[0])
    flags = {train_flags.as_flag(name, "").split()[0]
             for name in every_flag.keys() - DATA_AND_OUTPUT}
    assert flags == {flag for flag, _, _ in ACTING} | set(NOT_TRAINING)


@pytest.mark.parametrize("flag, run_flags, change", ACTING,
                         ids=[" ".join([*change, *rest]) for _, rest, change in ACTING])
def test_each_flag_changes_the_weights_a_run_saves(saved_weights, flag, run_flags, change):
    without, _ = saved_weights(*run_flags)
    with_it, printed = saved_weights(*run_flags, *change)
    assert not same_weights(without, with_it), f"{flag} changed nothing"
    assert "does nothing in this run" not in printed  # (a CPU without bf16 has a note)


@pytest.mark.parametrize("idle, run_flags, reason", IDLE,
                         ids=[" ".join([*idle, *rest]) for idle, rest, _ in IDLE])
def test_a_flag_that_cannot_act_is_named_in_a_note_and_changes_nothing(
        saved_weights, idle, run_flags, reason):
    without, _ = saved_weights(*run_flags)
    with_it, printed = saved_weights(*run_flags, *idle)
    notes = [line for line in printed.splitlines() if line.startswith("note:")]
    assert len(notes) == 1 and notes[0].startswith(f"note: {idle[0]} ") and reason in notes[0]
    assert same_weights(without, with_it)


def test_with_show_augmentation_every_training_flag_is_named(pictures, capsys, mnist, tmp_path,
                                                            monkeypatch):
    # (one digit drawn: what is drawn is another test's, and matplotlib takes seconds)
    real_grid = pictures.augmentation_grid
    monkeypatch.setattr(pictures, "augmentation_grid", lambda originals, distortions, title:
                        real_grid(originals[:1], distortions[:1, :1], title))
    picture = tmp_path / "a.png"
    code, stdout, err = run(capsys, train, "--data-dir", mnist, "--show-augmentation", picture,
                            "--val-size", 100, "--lr", "0.01", "--epochs", "3", "--rotation", 20)
    assert code == 0, err
    notes = [line for line in stdout.splitlines() if line.startswith("note:")]
    assert notes == [f"note: {flag} does nothing in this run: --show-augmentation trains "
                     f"nothing" for flag in ("--lr 0.01", "--epochs 3")]
    assert picture.exists()
    # and so is every flag of the model and optimization groups, and the outputs
    args, _ = train.parse_args(["--show-augmentation", str(picture)])
    augmentation = {"augment", *data.DISTORTION_DEFAULTS, "clean_epochs", "show_augmentation"}
    training = vars(args).keys() - DATA_AND_OUTPUT - augmentation
    everything = dict.fromkeys(vars(args))
    assert set(train_flags.idle_flags(args, everything)) == training | {
        "clean_epochs", "out", "log", "elastic_sigma"}  # (at --elastic-alpha 0)


def test_bf16_without_native_support_is_named_once_and_only_when_it_trains(monkeypatch):
    monkeypatch.setattr(train_flags, "has_native_bf16", lambda device: False)
    parser = train.make_parser()
    for argv, expected in [
            (["--bf16"], ["cpu has no native bfloat16, so --bf16 runs slower than float32 "
                          "here"]),
            (["--bf16", "--show-augmentation", "a.png"],
             ["--bf16 does nothing in this run: --show-augmentation trains nothing"])]:
        argv += ["--device", "cpu"]
        assert train_flags.notes(*cli.parse_and_tell_given(parser, argv)) == expected


# ----------------------------------------------------------------------------
# Denormal floats are flushed to zero in every thread torch trains with

# Denormal floats made from their bits (1000: 1.4e-42), multiplied by 1.0 by
# torch's threads, each taking its part of the 4 M: a thread that flushes makes
# its part 0. The count of the products' nonzero bits is printed.
COUNT_UNFLUSHED = """
def count_unflushed():
    denormals = torch.full((1 << 22,), 1000, dtype=torch.int32).view(torch.float32)
    return int(((denormals * 1.0).view(torch.int32) != 0).sum())
"""
IN_TRAINING = COUNT_UNFLUSHED + """
def first_epoch(*args, **kwargs):  # the data is read: torch's threads have started
    print("unflushed", count_unflushed(), "threads", torch.get_num_threads())
    raise SystemExit(0)

train.train_one_epoch = first_epoch
train.main(sys.argv[1:])
"""


@job("test_every_thread_of_a_training_process_flushes_denormals", "mnist")
def count_unflushed_threads(folder, mnist):
    training = start_command("-c", "import sys, torch, train\n" + IN_TRAINING, "--data-dir",
                             mnist, "--val-size", 100, "--device", "cpu")
    # ... while, in another process at once, the count sees a thread that does not flush:
    late = start_command("-c", "import torch\n" + COUNT_UNFLUSHED + (
        "torch.ones(1 << 22).mul(2).sum()\n"  # the threads start, unflushed
        "torch.set_flush_denormal(True)\n"  # then this one flushes, they do not
        "print(count_unflushed())"))
    (out, err), (late_out, late_err) = training.communicate(120), late.communicate(120)
    return training.returncode, out, err, late_out, late_err


def test_every_thread_of_a_training_process_flushes_denormals(fresh_interpreters, request):
    code, out, err, late_out, late_err = job_result(fresh_interpreters, request)
    assert code == 0, err
    _, unflushed, _, threads = out.splitlines()[-1].split()
    assert unflushed == "0" and int(threads) == THREADS_OF_A_TRAINING_PROCESS
    if THREADS_OF_A_TRAINING_PROCESS > 1:
        assert 0 < int(late_out) < 1 << 22, late_err


def test_the_tests_own_threads_flush_as_a_training_process_s_do():
    """The tests run training in this process and compare it with runs in new
    ones: train.py, imported before this process computed anything, set the
    mode before torch started its threads here too."""
    namespace = {"torch": torch}
    exec(COUNT_UNFLUSHED, namespace)
    with threads_of_a_training_process():
        assert namespace["count_unflushed"]() == 0


# ----------------------------------------------------------------------------
# Every OS collects every test: those that need what Windows lacks skip there

# Windows' standard library, as far as these tests can tell: no POSIX signals
# or process calls, and none of the Unix-only modules.
WINDOWS_STDLIB = """
import os, signal, sys
for name in ("SIGKILL", "SIGHUP", "SIGQUIT", "SIGALRM", "SIGUSR1", "SIGUSR2", "SIGCHLD",
             "SIGPIPE", "SIGCONT", "SIGSTOP", "SIGTSTP", "alarm", "setitimer", "getitimer",
             "pause", "pthread_kill", "pthread_sigmask", "siginterrupt", "sigpending", "sigwait"):
    if hasattr(signal, name):
        delattr(signal, name)
for name in ("fork", "forkpty", "getuid", "geteuid", "getgid", "getegid", "getgroups", "setsid",
             "setpgid", "getpgid", "killpg", "setuid", "setgid", "nice", "wait3", "wait4", "sync",
             "getloadavg", "sched_getaffinity"):
    if hasattr(os, name):
        delattr(os, name)
for name in ("resource", "fcntl", "termios", "pwd", "grp"):
    sys.modules[name] = None  # import refused
import pytest
sys.exit(pytest.main(["--collect-only", "-q", "-p", "no:cacheprovider", "test_mnist.py"]))
"""


class Collected:
    """A pytest plugin that counts the tests a session collects."""

    def pytest_collection_finish(self, session):
        self.count = len(session.items)


@job("test_every_test_is_collected_with_windows_standard_library")
def collect_with_windows_standard_library(folder):
    return run_command("-c", WINDOWS_STDLIB)


def test_every_test_is_collected_with_windows_standard_library(capsys, fresh_interpreters,
                                                              request):
    here = Collected()
    pytest.main(["--collect-only", "-q", "-p", "no:cacheprovider", __file__], plugins=[here])
    capsys.readouterr()
    assert here.count > 200
    windows = job_result(fresh_interpreters, request)
    assert windows.returncode == 0, windows.stdout[-2000:] + windows.stderr
    assert f"{here.count} tests collected" in windows.stdout.splitlines()[-1]


# ----------------------------------------------------------------------------
# The lesson itself: each step of the loop, and train() / eval()

class Batches(list):
    """A list of (images, labels) batches that train_one_epoch can take as its
    loader: it has the .dataset whose length is the number of images."""

    def __init__(self, batches):
        super().__init__(batches)
        self.dataset = range(sum(len(labels) for _, labels in batches))


def two_batch_loader(mnist):
    train_set, _ = split(mnist, 0)
    return Batches([(train_set.images[:50], train_set.labels[:50]),
                    (train_set.images[50:100], train_set.labels[50:100])])


def test_each_step_updates_with_that_batch_s_gradient_alone(mnist):
    """Plain SGD, two batches: w1 = w0 - lr g(w0, batch 1), w2 = w1 - lr g(w1,
    batch 2). Without step 2 (zero_grad) the second update would use the sum of
    both batches' gradients; without step 6 nothing would change."""
    torch.manual_seed(0)
    model = MLP([16])
    expected = MLP([16])
    expected.load_state_dict(model.state_dict())
    loss_fn = torch.nn.CrossEntropyLoss()
    lr = 0.5
    loader = two_batch_loader(mnist)
    for images, labels in loader:
        gradients = torch.autograd.grad(loss_fn(expected(images), labels),
                                        list(expected.parameters()))
        with torch.no_grad():
            for parameter, gradient in zip(expected.parameters(), gradients):
                parameter -= lr * gradient
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    train.train_one_epoch(model, loader, loss_fn, optimizer)
    for name, parameter in model.named_parameters():
        assert torch.allclose(parameter, dict(expected.named_parameters())[name], atol=1e-6), name


def test_train_one_epoch_returns_the_mean_loss_and_accuracy_of_its_batches(mnist):
    torch.manual_seed(0)
    model = MLP([16])
    loader = two_batch_loader(mnist)
    loss_fn = torch.nn.CrossEntropyLoss()
    # Nothing learns at lr 0, so the figures are those of the model as it is.
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    logits = [model(images) for images, _ in loader]
    losses = [loss_fn(out, labels).item() for out, (_, labels) in zip(logits, loader)]
    right = sum((out.argmax(1) == labels).sum().item() for out, (_, labels) in zip(logits, loader))
    loss, accuracy = train.train_one_epoch(model, loader, loss_fn, optimizer)
    assert loss == pytest.approx(sum(losses) / 2, rel=1e-5)
    assert accuracy == pytest.approx(right / 100)


def test_the_scheduler_steps_once_per_batch(mnist):
    model = MLP([16])
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
    train.train_one_epoch(model, two_batch_loader(mnist),
                          torch.nn.CrossEntropyLoss(), optimizer, scheduler)
    assert optimizer.param_groups[0]["lr"] == 0.25


def test_ema_averages_the_weights_after_every_step(mnist):
    """--ema d: the average starts at the weights after the first step, then
    a <- d a + (1 - d) w after each further step; the trained weights go on
    as they would without it."""
    torch.manual_seed(0)
    model, plain = MLP([16]), MLP([16])
    plain.load_state_dict(model.state_dict())
    loader, loss_fn = two_batch_loader(mnist), torch.nn.CrossEntropyLoss()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    averaged = MovingAverage(model, 0.9, optimizer)
    after_each_step = []
    real_step = optimizer.step
    optimizer.step = lambda: (real_step(), after_each_step.append(
        [parameter.detach().clone() for parameter in model.parameters()]))
    train.train_one_epoch(model, loader, loss_fn, optimizer)
    train.train_one_epoch(plain, loader, loss_fn, torch.optim.SGD(plain.parameters(), lr=0.5))
    first, second = after_each_step
    for average, w1, w2 in zip(averaged.average.parameters(), first, second):
        assert torch.allclose(average, 0.9 * w1 + 0.1 * w2, atol=1e-6)
    for trained, without in zip(model.parameters(), plain.parameters()):
        assert torch.equal(trained, without)


def test_ema_is_bit_identical_to_torchs_averaged_model(mnist):
    """The hand-written average computes exactly what
    swa_utils.AveragedModel with get_ema_multi_avg_fn computes (the runs
    measured before it was written by hand stay reproducible)."""
    torch.manual_seed(0)
    model = MLP([32, 16])
    swa_utils = torch.optim.swa_utils
    torchs = swa_utils.AveragedModel(model, multi_avg_fn=swa_utils.get_ema_multi_avg_fn(0.99))
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    ours = MovingAverage(model, 0.99, optimizer)  # updated by optimizer.step()
    loss_fn = torch.nn.CrossEntropyLoss()
    for _ in range(3):
        for images, labels in two_batch_loader(mnist):
            optimizer.zero_grad()
            loss_fn(model(images), labels).backward()
            optimizer.step()
            torchs.update_parameters(model)
    assert ours.steps == int(torchs.n_averaged) == 6
    for a, b in zip(ours.average.parameters(), torchs.module.parameters()):
        assert torch.equal(a, b)


def test_ema_run_validates_and_saves_the_average(capsys, mnist, tmp_path, monkeypatch):
    out = in_progress_checkpoint(mnist, tmp_path, monkeypatch, capsys, "--ema", 0.5)
    model, checkpoint = load_checkpoint(out)
    trained = checkpoint["training_state"]["averaging"]["weights"]
    assert any(not torch.equal(trained[name], weights)
               for name, weights in checkpoint["state_dict"].items())
    _, val_set, _ = data.train_val_sets(mnist, "mnist", 100, 0, torch.device("cpu"))
    val_loader = data.make_loader(val_set, 1000, shuffle=False)
    assert train.validate(model, val_loader) == pytest.approx(
        (checkpoint["metrics"][-1]["val_loss"], checkpoint["metrics"][-1]["val_accuracy"]))


def test_ema_run_resumes_from_a_checkpoint_that_counts_its_steps_in_a_tensor(
        capsys, mnist, tmp_path, monkeypatch):
    """Checkpoints written while --ema used AveragedModel hold the step count
    as a tensor; they resume as those written now, with a number."""
    out = in_progress_checkpoint(mnist, tmp_path, monkeypatch, capsys, "--ema", 0.5)
    checkpoint = torch.load(out, weights_only=True)
    steps = checkpoint["training_state"]["averaging"]["steps"]
    assert isinstance(steps, int) and steps > 0
    checkpoint["training_state"]["averaging"]["steps"] = torch.tensor(steps)
    older = tmp_path / "older.pt"
    torch.save(checkpoint, older)
    for path in (out, older):
        code, _, err = run(capsys, train, "--resume", path, "--data-dir", mnist)
        assert code == 0, err
    current, resumed_older = (torch.load(path, weights_only=True)["state_dict"]
                              for path in (out, older))
    for name, weights in current.items():
        assert torch.equal(resumed_older[name], weights), name


def test_training_switches_dropout_back_on_after_evaluation(mnist):
    """logits_and_labels() (validation) puts the model in eval mode; the next epoch must
    train with dropout again: its loss is then not the eval-mode loss."""
    torch.manual_seed(0)
    model = MLP([256], dropout=0.5)
    loader = two_batch_loader(mnist)
    loss_fn = torch.nn.CrossEntropyLoss()
    logits_and_labels(model, loader)  # as validate() does after every epoch
    assert not model.training
    eval_loss = sum(loss_fn(model(images), labels).item() for images, labels in loader) / 2
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    train_loss, _ = train.train_one_epoch(model, loader, loss_fn, optimizer)
    assert abs(train_loss - eval_loss) > 1e-3


def test_prediction_is_deterministic_and_without_dropout(mnist):
    torch.manual_seed(0)
    model = MLP([256], dropout=0.5)
    model.train()  # as training leaves it
    without_dropout = MLP([256], dropout=0.0)
    without_dropout.load_state_dict(model.state_dict())
    loader = two_batch_loader(mnist)
    first, _ = logits_and_labels(model, loader)
    second, _ = logits_and_labels(model, loader)
    assert torch.equal(first, second)
    assert torch.allclose(first, logits_and_labels(without_dropout, loader)[0])


def test_validation_uses_the_model_without_dropout(mnist):
    torch.manual_seed(0)
    model = MLP([256], dropout=0.5)
    model.train()
    _, val_set = split(mnist, 100)
    val_loader = data.make_loader(val_set, 1000, shuffle=False)
    without_dropout = MLP([256], dropout=0.0)
    without_dropout.load_state_dict(model.state_dict())
    assert train.validate(model, val_loader) == train.validate(without_dropout, val_loader)
    logits, labels = logits_and_labels(without_dropout, val_loader)
    accuracy = (logits.argmax(1) == labels).float().mean().item()
    assert train.validate(model, val_loader)[1] == accuracy


# ----------------------------------------------------------------------------
# Data augmentation

def distortion(seed=0, background=0.0, **strengths):
    """train.py's distortion, by default of its default strengths, for images whose
    black pixels are `background`."""
    return data.RandomDistortion(seed, "cpu", {"mean": -background, "std": 1.0},
                                 **{**data.DISTORTION_DEFAULTS, **strengths})


def test_augmentation_keeps_shape_and_dtype_and_changes_the_images(mnist):
    images = mnist_test_set(mnist).images[:32]
    augmented = distortion(background=images.min().item(), elastic_alpha=8.0)(images)
    assert augmented.shape == images.shape and augmented.dtype == torch.float32
    assert not torch.allclose(augmented, images, atol=1e-3)
    # Background stays background: nothing darker than black appears.
    assert augmented.min() >= images.min() - 1e-5


def test_each_image_gets_its_own_random_transform():
    one_image = torch.zeros(1, 1, 28, 28)
    one_image[..., 10:18, 12:16] = 2.0
    batch = one_image.repeat(8, 1, 1, 1)
    for strengths in (dict(), dict(rotation=0, scale=0, shift=0, elastic_alpha=8.0)):
        augmented = distortion(**strengths)(batch)
        differences = (augmented[1:] - augmented[0]).abs().flatten(1).amax(dim=1)
        assert (differences > 1e-3).all(), strengths


def test_shear_leans_vertical_strokes_and_nothing_else():
    """A vertical line, sheared alone, becomes a straight line that leans by up
    to --shear degrees, each image its own way; its middle row stays put."""
    line = torch.zeros(64, 1, 28, 28)
    line[..., 4:24, 13:15] = 1.0
    sheared = distortion(rotation=0, scale=0, shift=0, shear=30)(line)
    rows = torch.arange(4, 24, dtype=torch.float32)
    ink = sheared[:, 0, 4:24]  # [64, 20 rows, 28 columns]
    columns = (ink * torch.arange(28.0)).sum(2) / ink.sum(2)  # where each row's ink is
    slope = ((rows - rows.mean()) * (columns - columns.mean(1, keepdim=True))).sum(1) / (
        (rows - rows.mean()) ** 2).sum()
    straight = columns - columns.mean(1, keepdim=True) - slope[:, None] * (rows - rows.mean())
    assert (columns.mean(1) - 13.5).abs().max() < 0.1  # through the middle, as before ...
    assert straight.abs().max() < 0.1  # still a straight line ...
    assert slope.abs().max() <= math.tan(math.radians(30)) + 0.01  # ... leaning at most 30 degrees
    assert (slope > 0.3).any() and (slope < -0.3).any()  # both ways
    assert torch.allclose(sheared.sum((1, 2, 3)), line.sum((1, 2, 3)), rtol=0.02)


def test_without_shear_the_distortions_draw_the_same_random_numbers():
    """--shear 0 draws nothing for it: the rest of the distortion, and the
    generator's state after it, are those of a run with no shear at all."""
    no_shear = distortion(shear=0.0)
    no_shear(torch.randn(8, 1, 28, 28))
    draws = torch.Generator().manual_seed(0)
    for shape in ((8,), (8,), (2, 8)):  # angle, zoom, then the x and y shifts
        torch.rand(*shape, generator=draws)
    assert torch.equal(no_shear.generator.get_state(), draws.get_state())
    sheared = distortion(shear=10.0)  # where the shear's own draw would show
    sheared(torch.randn(8, 1, 28, 28))
    assert not torch.equal(sheared.generator.get_state(), draws.get_state())


@pytest.mark.parametrize("alpha, sigma, pixels", [(34, 5, 1.2), (20, 4, 0.9)])
def test_elastic_alpha_moves_a_pixel_as_far_as_the_help_says(alpha, sigma, pixels):
    """The recipes' settings: alpha is not pixels; after the smoothing, alpha 34
    with sigma 5 moves a pixel 1.2 pixels on average (its help, the README)."""
    field = distortion(elastic_alpha=alpha, elastic_sigma=sigma).elastic_field(4000)
    moved = (field * data.IMAGE_SIZE / 2).norm(dim=1)  # grid_sample's units to pixels
    assert moved.mean().item() == pytest.approx(pixels, abs=0.05)


def test_zero_strength_is_the_identity():
    images = torch.randn(16, 1, 28, 28)
    unchanged = distortion(rotation=0, scale=0, shift=0, elastic_alpha=0)(images)
    assert torch.allclose(unchanged, images, atol=1e-5)


def test_augmentation_is_seeded():
    images = torch.randn(4, 1, 28, 28)
    assert torch.equal(distortion(seed=3)(images), distortion(seed=3)(images))
    assert not torch.equal(distortion(seed=3)(images), distortion(seed=4)(images))


def test_evaluation_and_validation_are_never_augmented(mnist, monkeypatch, tmp_path):
    calls = []
    monkeypatch.setattr(data.RandomDistortion, "__call__",
                        lambda self, images: calls.append(len(images)) or images)
    train.main(["--data-dir", mnist, "--epochs", "1", "--val-size", "100", "--augment",
                "--batch-size", "100", "--device", "cpu", "--out", str(tmp_path / "m.pt")])
    assert calls == [100] * 5  # the five training batches, and nothing else
    assert split(mnist, 100)[1].transform is None
    assert mnist_test_set(mnist).transform is None


def test_clean_epochs_end_the_run_on_undistorted_images(capsys, mnist, tmp_path):
    def train_three_epochs(name, *flags):
        out = tmp_path / name
        code, _, err = run(capsys, train, "--data-dir", mnist, "--epochs", 3, "--val-size", 100,
                           "--elastic-alpha", 8, "--device", "cpu", "--out", out, *flags)
        assert code == 0, err
        checkpoint = torch.load(out, weights_only=True)
        return timeless(checkpoint["metrics"]), checkpoint["state_dict"]

    distorted, _ = train_three_epochs("distorted.pt")
    last_clean, _ = train_three_epochs("last_clean.pt", "--clean-epochs", 1)
    assert last_clean[:2] == distorted[:2] and last_clean[2] != distorted[2]
    all_clean, weights = train_three_epochs("all_clean.pt", "--clean-epochs", 3)
    never_distorted, expected = train_three_epochs("never.pt", "--no-augment")
    assert all_clean == never_distorted
    assert all(torch.equal(weights[name], expected[name]) for name in expected)


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
                               cwd=HERE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
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


# ----------------------------------------------------------------------------
# Bad input: one line on stderr, a non-zero exit, no traceback, no work wasted

@pytest.mark.parametrize("flags, message", [
    (["--lr", "0"], "--lr"),
    (["--lr", "-1e-3"], "--lr"),
    (["--lr", "nan"], "--lr"),
    (["--lr", "inf"], "--lr"),
    (["--lr", "fast"], "--lr"),
    (["--epochs", "0"], "--epochs"),
    (["--batch-size", "0"], "--batch-size"),
    (["--hidden", "512", "0"], "--hidden"),
    (["--dropout", "1"], "--dropout"),
    (["--dropout", "-0.1"], "--dropout"),
    (["--val-size", "-1"], "--val-size"),
    (["--seed", str(2 ** 64)], "--seed"),
    (["--seed", "-1"], "--seed"),
    (["--optimizer", "rmsprop"], "--optimizer"),
    (["--scheduler", "warmup"], "--scheduler"),
    (["--clean-epochs", "-1"], "--clean-epochs"),
    (["--clean-epochs", "6", "--epochs", "5"], "--clean-epochs"),
    (["--clean-epochs", "1", "--no-augment"], "--clean-epochs"),
    (["--device", "gpu"], "unknown device"),
    (["--device", "tpu:0"], "unknown device"),
    (["--unknown-flag"], "unrecognized"),
    (["--epochs", "2.5"], "--epochs: must be a whole number, 1 or more, got 2.5"),
    (["--hidden", "256,128"], "(several are separated by spaces: 256 128)"),
])
def test_bad_flags_are_one_clear_line(capsys, flags, message, tmp_path):
    # The data folder does not exist: a bad flag must be found before the data.
    code, _, err = run(capsys, train, "--data-dir", tmp_path / "nowhere", *flags)
    assert code == 2
    assert_one_line_error(code, err, message)
    # argparse's own "invalid positive_int value" would name a function of the code
    assert "invalid" not in err or "invalid choice" in err
    assert not os.path.exists(tmp_path / "nowhere")


def test_the_learning_rate_without_lr_is_the_optimizer_s_and_the_printout_says_it(
        capsys, mnist, tmp_path):
    for optimizer, rate in train.LEARNING_RATES.items():
        assert train.parse_args(["--optimizer", optimizer])[0].lr == rate
        assert train.parse_args(["--optimizer", optimizer.upper()])[0].optimizer == optimizer
        assert train.parse_args(["--optimizer", optimizer, "--lr", "0.02"])[0].lr == 0.02
    assert "(default: 0.001 with adam and adamw, 0.1 with sgd)" in " ".join(
        train.make_parser().format_help().split())
    code, stdout, err = run(capsys, train, "--data-dir", mnist, "--optimizer", "sgd",
                            "--epochs", 1, "--hidden", 16, "--val-size", 100,
                            "--out", tmp_path / "m.pt")
    assert code == 0, err
    assert stdout.startswith("training a [784, 16, 10] MLP with sgd at --lr 0.1 on ")
    assert load_checkpoint(tmp_path / "m.pt")[1]["train_args"]["lr"] == 0.1


def pretend_one_accelerator(monkeypatch, kind):
    """This machine, as torch.accelerator sees it, with one `kind` device (None: none)."""
    monkeypatch.setattr(torch.accelerator, "current_accelerator", lambda check_available=False:
                        None if kind is None else torch.device(kind))
    monkeypatch.setattr(torch.accelerator, "device_count", lambda: int(kind is not None))


@pytest.mark.parametrize("accelerator", [None, "cuda", "mps"])
def test_auto_takes_the_machine_s_accelerator_or_the_cpu(monkeypatch, accelerator):
    pretend_one_accelerator(monkeypatch, accelerator)
    assert cli.device("auto") == torch.device(accelerator or "cpu")
    assert cli.device("cpu") == torch.device("cpu")


@pytest.mark.parametrize("accelerator, device", [
    (None, "cuda"), (None, "cuda:1"), (None, "mps"), ("cuda", "mps"), ("mps", "cuda"),
    ("cuda", "cuda:1")])  # (one GPU, whose index is 0)
def test_a_device_the_machine_lacks_is_one_line(capsys, tmp_path, monkeypatch, accelerator,
                                                device):
    pretend_one_accelerator(monkeypatch, accelerator)
    code, _, err = run(capsys, train, "--device", device, "--data-dir", tmp_path / "nowhere")
    assert_one_line_error(code, err, f"there is no {device} on this machine")


@job("test_unavailable_device_on_the_real_command_line")
def train_on_a_device_this_machine_lacks(folder):
    device = "mps" if torch.cuda.is_available() else "cuda"
    if torch.cuda.is_available() and torch.backends.mps.is_available():
        device = f"cuda:{torch.cuda.device_count()}"
    return run_command("train.py", "--device", device, "--data-dir", folder)


def test_unavailable_device_on_the_real_command_line(fresh_interpreters, request):
    result = job_result(fresh_interpreters, request)
    assert_one_line_error(result.returncode, result.stderr, "error")


def test_validation_split_as_large_as_the_data(capsys, mnist, tmp_path):
    code, _, err = run(capsys, train, "--data-dir", mnist, "--val-size", 600,
                       "--out", tmp_path / "m.pt")
    assert_one_line_error(code, err, "--val-size 600", "600")
    assert not os.path.exists(tmp_path / "m.pt")


def offline(monkeypatch):
    """Any download goes through a proxy that refuses connections: offline, fast."""
    for name in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY"):
        monkeypatch.setenv(name, "http://127.0.0.1:9")
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.delenv("NO_PROXY", raising=False)


@pytest.mark.parametrize("dataset, folder", [("mnist", "MNIST"),
                                             ("fashion-mnist", "FashionMNIST")])
def test_missing_data_and_no_download(capsys, tmp_path, monkeypatch, dataset, folder):
    offline(monkeypatch)
    empty = tmp_path / "empty"
    code, _, err = run(capsys, train, "--data-dir", empty, "--out", tmp_path / "m.pt",
                       "--dataset", dataset)
    assert_one_line_error(code, err, f"{dataset}'s files are not in",
                          os.path.join(str(empty), folder, "raw"), "downloading them failed",
                          "train-images-idx3-ubyte", "t10k-labels-idx1-ubyte", "--data-dir")
    assert not os.path.exists(tmp_path / "m.pt")
    # torchvision made <empty>/<folder>/raw before its download failed: removed.
    assert not empty.exists()


def test_a_data_dir_one_folder_too_deep_is_told_the_folder_above(capsys, mnist, tmp_path):
    too_deep = os.path.join(mnist, "MNIST")  # the folder that holds raw/, not the root
    code, _, err = run(capsys, train, "--data-dir", too_deep, "--out", tmp_path / "m.pt")
    assert_one_line_error(code, err, "is the MNIST folder itself",
                          f"give --data-dir the folder that holds it, {mnist}")


def test_a_failed_download_leaves_nothing_in_the_user_s_folder(capsys, tmp_path, monkeypatch):
    offline(monkeypatch)
    mine = tmp_path / "mine"
    (mine / "MNIST").mkdir(parents=True)
    (mine / "notes.txt").write_text("mine")
    code, _, err = run(capsys, evaluate, tmp_path / "no.pt", "--data-dir", mine)
    assert_one_line_error(code, err, "no such file")  # the checkpoint is checked first
    code, _, err = run(capsys, train, "--data-dir", mine, "--out", tmp_path / "m.pt")
    assert_one_line_error(code, err, "mnist's files are not in")
    assert sorted(os.listdir(mine)) == ["MNIST", "notes.txt"]
    assert os.listdir(mine / "MNIST") == []


def images_with_statistics(count, mean, std, generator):
    """Images whose pixels are black, mid-grey or white, in the proportions that
    give this mean and standard deviation (in [0, 1])."""
    second_moment = std ** 2 + mean ** 2
    grey = 4 * (mean - second_moment)  # levels 0, 1/2, 1: mean = w + g/2, E[x^2] = w + g/4
    white = mean - grey / 2
    draw = torch.rand(count, 28, 28, generator=generator)
    return torch.where(draw < white, 255, torch.where(draw < white + grey, 128, 0))


@pytest.mark.parametrize("files_of, dataset", [("mnist", "fashion-mnist"),
                                               ("fashion-mnist", "mnist")])
def test_one_data_set_in_the_other_s_folder_is_named_before_training(
        capsys, tmp_path, files_of, dataset):
    generator = torch.Generator().manual_seed(0)
    raw = data.raw_folder(tmp_path, dataset)
    os.makedirs(raw)
    for split_name, count in (("train", 600), ("test", 200)):
        images = images_with_statistics(count, **data.DATASETS[files_of]["pixels"],
                                        generator=generator)
        write_idx(os.path.join(raw, data.FILES[split_name][0]), images)
        write_idx(os.path.join(raw, data.FILES[split_name][1]), torch.arange(count) % 10)
    code, _, err = run(capsys, train, "--data-dir", tmp_path, "--dataset", dataset,
                       "--out", tmp_path / "m.pt")
    assert_one_line_error(code, err, f"holds {files_of}'s images, not {dataset}'s",
                          f"--dataset {files_of}")
    assert not (tmp_path / "m.pt").exists()


def corrupt_copy(mnist, tmp_path, name, edit):
    root = make_mnist(tmp_path / "corrupt")
    path = os.path.join(data.raw_folder(root), name)
    with open(path, "rb") as f:
        content = f.read()
    with open(path, "wb") as f:
        f.write(edit(content))
    return root, path


@pytest.mark.parametrize("name, edit, message", [
    ("train-images-idx3-ubyte", lambda b: b"\x00\x00\x08\x01" + b[4:], "wrong magic number"),
    ("train-images-idx3-ubyte", lambda b: b[:len(b) // 2], "truncated"),
    ("train-images-idx3-ubyte", lambda b: b[:2], "truncated"),
    ("train-labels-idx1-ubyte", lambda b: b[:-10], "truncated"),
    ("train-images-idx3-ubyte",  # 600 images of 28x28 declared as 2400 of 14x14
     lambda b: b[:4] + (2400).to_bytes(4, "big") + (14).to_bytes(4, "big") * 2 + b[16:],
     "expected 28x28"),
    ("train-labels-idx1-ubyte", lambda b: b[:8] + b"\x0c" + b[9:], "not a class 0-9"),
    ("train-labels-idx1-ubyte", lambda b: b[:4] + (599).to_bytes(4, "big") + b[8:-1],
     "600 images but"),
])
def test_corrupt_data_files_are_named(capsys, mnist, tmp_path, name, edit, message):
    root, path = corrupt_copy(mnist, tmp_path, name, edit)
    code, _, err = run(capsys, train, "--data-dir", root, "--out", tmp_path / "m.pt")
    assert_one_line_error(code, err, message)
    assert name in err
    assert not os.path.exists(tmp_path / "m.pt")


@pytest.mark.parametrize("flag", ["--out", "--log"])
def test_train_output_in_a_missing_folder_is_found_before_training(capsys, tmp_path, flag):
    code, _, err = run(capsys, train, flag, tmp_path / "missing" / "file",
                       "--data-dir", tmp_path / "nowhere")
    assert code == 2
    assert_one_line_error(code, err, flag, "does not exist")


def test_train_output_that_is_a_directory_or_under_a_file(capsys, tmp_path):
    code, _, err = run(capsys, train, "--out", tmp_path, "--data-dir", tmp_path / "nowhere")
    assert_one_line_error(code, err, "is a directory")
    (tmp_path / "file").write_text("")
    code, _, err = run(capsys, train, "--out", tmp_path / "file" / "m.pt",
                       "--data-dir", tmp_path / "nowhere")
    assert_one_line_error(code, err, "--out")


@pytest.mark.parametrize("flag, name", [("--errors", "errors.png"), ("--json", "metrics.json")])
def test_evaluate_output_in_a_missing_folder_is_found_first(capsys, checkpoint, tmp_path, flag,
                                                            name):
    code, _, err = run(capsys, evaluate, checkpoint, flag, tmp_path / "missing" / name,
                       "--data-dir", tmp_path / "nowhere")
    assert_one_line_error(code, err, flag, "does not exist")


def test_the_error_picture_must_be_named_png(capsys, checkpoint, tmp_path):
    code, _, err = run(capsys, evaluate, checkpoint, "--errors", tmp_path / "errors.txt",
                       "--data-dir", tmp_path / "nowhere")
    assert_one_line_error(code, err, "--errors", "ending in .png")


@pytest.mark.parametrize("flag, name", [("--json", "metrics.json"), ("--errors", "errors.png")])
def test_evaluate_output_that_cannot_be_written_is_one_line(
        capsys, checkpoint, mnist, tmp_path, monkeypatch, flag, name):
    output = tmp_path / name
    output.write_bytes(b"the previous report")

    def disk_full(fd):  # where a full disk shows up at the latest
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)
    code, stdout, err = run(capsys, evaluate, checkpoint, "--data-dir", mnist, flag, output)
    assert_one_line_error(code, err, f"cannot write {output}", "No space left on device")
    assert "test accuracy" in stdout  # the report itself is not lost
    assert output.read_bytes() == b"the previous report"  # nor the earlier file
    assert os.listdir(tmp_path) == [name]  # and no temporary file is left behind


class RunsCode:
    """Unpickling this calls open(), creating a file: proof that code ran."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return open, (self.marker, "w")


def checkpoint_files(tmp_path, good_checkpoint):
    """Bad files a student might be handed, by name."""
    good = open(good_checkpoint, "rb").read()
    files = {"missing": None, "a directory": None, "empty": b"", "truncated": good[:len(good) // 2],
             "random bytes": os.urandom(4096)}
    paths = {name: tmp_path / name.replace(" ", "_") for name in files}
    os.mkdir(paths["a directory"])
    for name, content in files.items():
        if content is not None:
            paths[name].write_bytes(content)
    paths["not ours"] = tmp_path / "not_ours.pt"
    torch.save({"weights": torch.zeros(3)}, paths["not ours"])
    wrong_shape = torch.load(good_checkpoint, weights_only=True)
    wrong_shape["config"]["hidden"] = [65]
    paths["wrong shape"] = tmp_path / "wrong_shape.pt"
    torch.save(wrong_shape, paths["wrong shape"])
    no_normalization = torch.load(good_checkpoint, weights_only=True)
    del no_normalization["normalization"]
    paths["no normalization"] = tmp_path / "no_normalization.pt"
    torch.save(no_normalization, paths["no normalization"])
    older = torch.load(good_checkpoint, weights_only=True)
    older["format"] = "mnist-mlp-checkpoint/1"
    paths["older format"] = tmp_path / "older.pt"
    torch.save(older, paths["older format"])
    foreign_state = torch.load(good_checkpoint, weights_only=True)
    foreign_state["training_state"] = {"optimizer": {"state": {}, "param_groups": []},
                                       "scheduler": None, "random": {}}
    paths["foreign training state"] = tmp_path / "foreign_state.pt"
    torch.save(foreign_state, paths["foreign training state"])
    return paths


@pytest.mark.parametrize("case, message", [
    ("missing", "no such file"),
    ("a directory", "is a directory"),
    ("empty", "not a readable checkpoint"),
    ("truncated", "not a readable checkpoint"),
    ("random bytes", "not a readable checkpoint"),
    ("not ours", "not a checkpoint saved by train.py"),
    ("wrong shape", "do not fit the stored model"),
    ("no normalization", "normalization"),
    ("older format", "another version of train.py"),
])
def test_bad_checkpoints_are_one_clear_line(capsys, checkpoint, tmp_path, mnist, case, message):
    path = checkpoint_files(tmp_path, checkpoint)[case]
    code, _, err = run(capsys, evaluate, path, "--data-dir", mnist)
    assert_one_line_error(code, err, str(path), message)


@pytest.mark.parametrize("legacy_format", [False, True])
def test_a_checkpoint_crafted_to_run_code_is_refused_without_running_it(
        capsys, checkpoint, tmp_path, mnist, monkeypatch, legacy_format):
    marker = tmp_path / "code_ran"
    crafted = torch.load(checkpoint, weights_only=True)
    crafted["train_args"] = RunsCode(str(marker))
    path = tmp_path / "crafted.pt"
    torch.save(crafted, path, _use_new_zipfile_serialization=not legacy_format)
    # Even the switch that makes torch.load unsafe by default must not matter.
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    code, _, err = run(capsys, evaluate, path, "--data-dir", mnist)
    assert_one_line_error(code, err, str(path))
    assert not marker.exists()
    assert "refused" in err or "not a readable checkpoint" in err


def test_the_crafted_checkpoint_would_run_code_if_loaded_unsafely(checkpoint, tmp_path):
    """The test above is meaningful: loading that file unsafely does run its code."""
    marker = tmp_path / "code_ran"
    crafted = torch.load(checkpoint, weights_only=True)
    crafted["train_args"] = RunsCode(str(marker))
    torch.save(crafted, tmp_path / "crafted.pt")
    torch.load(tmp_path / "crafted.pt", weights_only=False)
    assert marker.exists()


# ----------------------------------------------------------------------------
# Interruption and failure: nothing lost

def test_ctrl_c_saves_the_weights_of_the_completed_epoch_not_the_partial_one(
        capsys, mnist, tmp_path, monkeypatch):
    real_epoch = train.train_one_epoch
    weights_after = []

    def epoch_then_interrupt(model, *args, **kwargs):
        if len(weights_after) == 2:
            real_epoch(model, *args, **kwargs)  # the third epoch changes the weights...
            raise KeyboardInterrupt  # ... and is interrupted before it returns
        result = real_epoch(model, *args, **kwargs)
        weights_after.append(model.output_layer.weight.detach().clone())
        return result

    monkeypatch.setattr(train, "train_one_epoch", epoch_then_interrupt)
    code, _, err = run(capsys, train, "--data-dir", mnist, "--epochs", 5, "--val-size", 100,
                       "--device", "cpu", "--out", tmp_path / "m.pt")
    assert_one_line_error(code, err, "interrupted", "after epoch 2 of 5")
    saved = torch.load(tmp_path / "m.pt", weights_only=True)
    assert saved["epochs_completed"] == 2 and saved["training_state"] is not None
    assert torch.equal(saved["state_dict"]["output_layer.weight"], weights_after[1])


def test_ctrl_c_while_a_checkpoint_is_written_keeps_the_one_before(
        capsys, mnist, tmp_path, monkeypatch):
    """A signal that lands inside torch.save stops it midway, and its zip writer
    then fails with a RuntimeError of its own (seen with SIGTERM on a 190 MB
    checkpoint): one line, and the previous epoch's file, whole."""
    import checkpoint

    real_save, saves = torch.save, []

    def interrupted_on_the_second(obj, f):
        saves.append(obj["epochs_completed"])
        if len(saves) < 2:
            return real_save(obj, f)
        f.write(b"half a checkpoint")
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt as interrupt:  # (torch's own error is chained as this one)
            raise RuntimeError("[enforce fail at inline_container.cc:672]") from interrupt

    monkeypatch.setattr(checkpoint.torch, "save", interrupted_on_the_second)
    code, _, err = run(capsys, train, "--data-dir", mnist, "--epochs", 3, "--hidden", 16,
                       "--val-size", 100, "--device", "cpu", "--out", tmp_path / "m.pt")
    assert_one_line_error(code, err, "interrupted", "after epoch 1 of 3")
    monkeypatch.undo()
    assert torch.load(tmp_path / "m.pt", weights_only=True)["epochs_completed"] == 1
    assert os.listdir(tmp_path) == ["m.pt"]  # no temporary file left


def test_ctrl_c_in_the_first_epoch_keeps_the_previous_checkpoint(
        capsys, checkpoint, mnist, tmp_path, monkeypatch):
    out = tmp_path / "m.pt"
    out.write_bytes(previous := open(checkpoint, "rb").read())

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(train, "train_one_epoch", interrupted)
    code, _, err = run(capsys, train, "--data-dir", mnist, "--val-size", 100, "--device", "cpu",
                       "--out", out)
    assert_one_line_error(code, err, "nothing saved")
    assert out.read_bytes() == previous


@pytest.mark.parametrize("flags", [["--lr", "1e6", "--optimizer", "sgd"],
                                   ["--lr", "1000"]])
def test_a_diverging_run_stops_and_keeps_the_previous_checkpoint(
        capsys, checkpoint, mnist, tmp_path, flags):
    out = tmp_path / "m.pt"
    out.write_bytes(previous := open(checkpoint, "rb").read())
    code, stdout, err = run(capsys, train, "--data-dir", mnist, "--epochs", 3, "--val-size", 100,
                            "--device", "cpu", "--out", out, *flags)
    # The first step's loss is that of the untrained model; the update it makes
    # blows the weights up, and the second step's loss shows it.
    assert_one_line_error(code, err, "diverged in epoch 1", "at step 2 of 4", "smaller --lr",
                          "Nothing was saved")
    assert out.read_bytes() == previous
    assert "nan" not in stdout.lower()  # no epoch line with a NaN loss was printed


def test_a_failing_save_is_one_line_and_keeps_the_previous_checkpoint(
        capsys, checkpoint, mnist, tmp_path, monkeypatch):
    out = tmp_path / "m.pt"
    out.write_bytes(previous := open(checkpoint, "rb").read())

    def disk_full(obj, f):
        f.write(b"half a checkpoint")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", disk_full)
    code, _, err = run(capsys, train, "--data-dir", mnist, "--epochs", 1, "--val-size", 100,
                       "--device", "cpu", "--out", out)
    assert_one_line_error(code, err, f"cannot save {out}", "No space left on device")
    assert out.read_bytes() == previous
    assert os.listdir(tmp_path) == ["m.pt"]


def test_the_whole_file_is_on_disk_before_it_is_renamed(tmp_path, monkeypatch):
    """fsync makes the data durable; it must see all of it, not what Python's
    write buffer has passed on so far."""
    sizes = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: sizes.append(os.fstat(fd).st_size)
                        or real_fsync(fd))
    with replacing(tmp_path / "report") as f:
        for _ in range(1000):
            f.write(b"0123456789")  # small writes, as torch.save and json make
    assert sizes == [10000]
    assert (tmp_path / "report").read_bytes() == b"0123456789" * 1000


def test_saving_is_atomic(checkpoint, tmp_path, monkeypatch):
    out = tmp_path / "m.pt"
    out.write_bytes(previous := open(checkpoint, "rb").read())
    model, saved = load_checkpoint(checkpoint)
    details = {name: saved[name] for name in CHECKPOINT_FIELDS
               if name not in ("config", "state_dict", "normalization")}
    real_save = torch.save

    def crash_half_way(obj, f):
        real_save(obj, f)
        f.truncate(100)
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crash_half_way)
    with pytest.raises(OSError):
        save_checkpoint(out, model, saved["normalization"], **details)
    assert out.read_bytes() == previous
    assert os.listdir(tmp_path) == ["m.pt"]
    monkeypatch.setattr(torch, "save", real_save)
    save_checkpoint(out, model, saved["normalization"], **details)
    assert model_config(load_checkpoint(out)[0]) == model_config(model)


# ----------------------------------------------------------------------------
# A checkpoint every epoch, SIGTERM and SIGKILL, --resume
# (the runs to resume: RESUMABLE_RUN, in_progress_checkpoint and interrupted_run, in
# conftest.py)

def start_training(mnist, out, *flags):
    return start_command("train.py", "--data-dir", mnist, "--out", out, *RESUMABLE_RUN, *flags)


def stop_after_epoch(process, epoch, signal_number):
    """Send the signal as soon as `epoch` is printed: its checkpoint is saved
    before its line is, so the run is then in the next epoch."""
    for line in process.stdout:
        if line.split()[:1] == [str(epoch)]:
            break
    process.send_signal(signal_number)
    return process.communicate(timeout=60)


def timeless(metrics):
    return [{k: v for k, v in row.items() if k not in ("seconds", "images_per_second")}
            for row in metrics]


# Each signal stops a real process (with a flag that keeps more state); the run
# it leaves is then resumed here, to the weights of one never interrupted.
STOPPED_RUNS = [("SIGINT", []), ("SIGTERM", ["--ema", "0.5"]),
                ("SIGKILL", ["--clean-epochs", "1", "--bf16"])]  # resumed at the clean one


def stop_a_run_in_its_third_epoch(signal_name, flags):
    def stop(folder, mnist):
        process = start_training(mnist, folder / "m.pt", "--epochs", 3, "--log",
                                 folder / "log.csv", *flags)
        _, err = stop_after_epoch(process, 2, getattr(signal, signal_name))
        return folder, process.returncode, err
    return stop


if hasattr(signal, "SIGKILL"):  # posix_signals skips the test elsewhere
    for signal_name, flags in STOPPED_RUNS:
        job("test_a_run_stopped_in_its_third_epoch_leaves_the_second_and_resumes_bit_identical",
            "mnist", key=signal_name)(stop_a_run_in_its_third_epoch(signal_name, flags))


@posix_signals
@pytest.mark.parametrize("signal_name, flags", STOPPED_RUNS)
def test_a_run_stopped_in_its_third_epoch_leaves_the_second_and_resumes_bit_identical(
        capsys, mnist, fresh_interpreters, request, signal_name, flags):
    tmp_path, returncode, err = job_result(fresh_interpreters, request, key=signal_name)
    straight, out, log = tmp_path / "straight.pt", tmp_path / "m.pt", tmp_path / "log.csv"
    with threads_of_a_training_process():
        code, _, run_err = run(capsys, train, "--data-dir", mnist, "--out", straight,
                               *RESUMABLE_RUN, "--epochs", 3, *flags)
    assert code == 0, run_err
    signal_number = getattr(signal, signal_name)
    if signal_number == signal.SIGKILL:
        assert returncode == -signal.SIGKILL and err == ""  # no chance to say a word
    else:  # Ctrl-C, or a cluster's time limit
        assert_one_line_error(returncode, err, "interrupted", "after epoch 2 of 3",
                              f"python train.py --resume {out}")
    saved = torch.load(out, weights_only=True)
    assert saved["epochs_completed"] == 2 and len(saved["metrics"]) == 2
    assert saved["training_state"] is not None  # not finished: it can be resumed
    assert sorted(os.listdir(tmp_path)) == ["log.csv", "m.pt", "straight.pt"]  # no temporary
    assert len(log.read_text().splitlines()) == 3  # the header and both epochs
    code, stdout, _ = run(capsys, evaluate, out, "--data-dir", mnist)
    assert code == 0 and "the model after epoch 2 of 3 (the run is not finished)" in stdout

    with threads_of_a_training_process():
        code, stdout, err = run(capsys, train, "--resume", out, "--data-dir", mnist,
                                "--log", tmp_path / "resumed.csv")
    assert code == 0, err
    assert "resuming after epoch 2 of 3" in stdout
    expected, got = (torch.load(path, weights_only=True) for path in (straight, out))
    assert got["epochs_completed"] == 3 and got["training_state"] is None
    assert timeless(got["metrics"]) == timeless(expected["metrics"])
    for name, weights in expected["state_dict"].items():
        assert torch.equal(got["state_dict"][name], weights), name
    # The log of the resumed run has every epoch, the first two included.
    assert [row.split(",")[0] for row in (tmp_path / "resumed.csv").read_text().split()] == [
        "epoch", "1", "2", "3"]


# --hidden 384 256 is the default, not the run's own --hidden 32: given, it is a change.
@pytest.mark.parametrize("flags", [["--lr", "0.01"], ["--epochs", "10"], ["--no-augment"],
                                   ["--dataset", "fashion-mnist"], ["--seed", "1"], ["--bf16"],
                                   ["--hidden", "384", "256"]])
def test_resume_refuses_a_flag_that_would_change_the_run(capsys, mnist, tmp_path,
                                                         interrupted_run, flags):
    out = tmp_path / "run.pt"
    shutil.copy(interrupted_run, out)
    before = out.read_bytes()
    code, stdout, err = run(capsys, train, "--resume", out, "--data-dir", mnist, *flags)
    assert_one_line_error(code, err, flags[0], "leave")
    assert out.read_bytes() == before and "epoch  train loss" not in stdout


def test_resume_may_change_where_the_data_and_the_output_are(capsys, mnist, tmp_path,
                                                            monkeypatch):
    out = in_progress_checkpoint(mnist, tmp_path, monkeypatch, capsys)
    elsewhere = tmp_path / "elsewhere.pt"
    code, _, err = run(capsys, train, "--resume", out, "--data-dir", mnist, "--device", "cpu",
                       "--out", elsewhere, "--hidden", 32)  # the run's own value is no change
    assert code == 0, err
    assert torch.load(elsewhere, weights_only=True)["epochs_completed"] == 3
    assert torch.load(out, weights_only=True)["epochs_completed"] == 1  # left as it was


def test_a_resumed_run_whose_log_folder_is_gone_is_refused_before_it_trains(
        capsys, mnist, tmp_path, monkeypatch):
    logs = tmp_path / "logs"
    logs.mkdir()
    out = in_progress_checkpoint(mnist, tmp_path, monkeypatch, capsys, "--log", logs / "log.csv")
    shutil.rmtree(logs)
    before = out.read_bytes()
    code, stdout, err = run(capsys, train, "--resume", out, "--data-dir", mnist)
    assert code == 2
    assert_one_line_error(code, err, "argument --log", f"folder {logs} does not exist", str(out))
    assert out.read_bytes() == before and "epoch  train loss" not in stdout
    # and where the checkpoint itself can no longer be written (a --log given elsewhere)
    logs.mkdir()
    real_probe = cli.tempfile.TemporaryFile

    def read_only(dir):
        if dir == str(out.parent):
            raise PermissionError(errno.EACCES, "Permission denied")
        return real_probe(dir=dir)

    monkeypatch.setattr(cli.tempfile, "TemporaryFile", read_only)
    code, stdout, err = run(capsys, train, "--resume", out, "--data-dir", mnist, "--log",
                            logs / "log.csv")
    assert_one_line_error(code, err, "argument --resume", "Permission denied")
    assert out.read_bytes() == before and "epoch  train loss" not in stdout


def test_a_default_the_command_line_replaces_is_never_checked(tmp_path, monkeypatch):
    """A check that writes a probe file into an output's folder, or asks for the
    machine's GPU, runs for the values given, never for the defaults they replace
    (--out model.pt in the working folder, --device auto)."""
    probed, devices = [], []
    real_probe, real_device = cli.tempfile.TemporaryFile, cli.device
    monkeypatch.setattr(cli.tempfile, "TemporaryFile",
                        lambda dir: probed.append(dir) or real_probe(dir=dir))
    monkeypatch.setattr(cli, "device", lambda name: devices.append(name) or real_device(name))
    (tmp_path / "logs").mkdir()
    train.parse_args(["--out", str(tmp_path / "m.pt"), "--log", str(tmp_path / "logs" / "l.csv"),
                      "--device", "cpu"])
    assert set(probed) == {str(tmp_path), str(tmp_path / "logs")} and set(devices) == {"cpu"}
    probed.clear(), devices.clear()
    monkeypatch.chdir(tmp_path)
    train.parse_args([])  # --out model.pt and --device auto, the defaults
    assert probed == ["."] and devices == ["auto"]


def test_main_gives_sigterm_back_to_its_caller(capsys, mnist, tmp_path):
    """Inside the run SIGTERM stops it as Ctrl-C does; after main returns, the
    calling process (a notebook, these tests) has its own handler back."""
    before = signal.getsignal(signal.SIGTERM)
    code, _, err = run(capsys, train, "--data-dir", mnist, "--out", tmp_path / "m.pt",
                       *RESUMABLE_RUN, "--epochs", 1)
    assert code == 0, err
    assert signal.getsignal(signal.SIGTERM) is before


def test_resume_stays_on_the_runs_own_device_unless_told(capsys, mnist, tmp_path,
                                                         monkeypatch):
    """A CPU run resumed where there is a GPU stays on the CPU (where --device's
    default would pick the GPU); a GPU run resumed where there is none goes on
    the CPU."""
    out = in_progress_checkpoint(mnist, tmp_path, monkeypatch, capsys)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert train.parse_args(["--resume", str(out)])[0].device == torch.device("cpu")
    assert train.parse_args(["--resume", str(out), "--device", "cuda"])[0].device == \
        torch.device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    from_a_gpu = torch.load(out, weights_only=True)
    from_a_gpu["train_args"]["device"] = "cuda:0"
    torch.save(from_a_gpu, out)
    assert train.parse_args(["--resume", str(out)])[0].device == cli.device("auto")


def test_a_run_moved_from_a_gpu_to_the_cpu_resumes(capsys, mnist, tmp_path, monkeypatch):
    """A CUDA generator's state (16 bytes of Philox) cannot be set on a CPU
    generator: the distortions continue from a fresh draw, and the run goes on."""
    out = in_progress_checkpoint(mnist, tmp_path, monkeypatch, capsys)
    from_a_gpu = torch.load(out, weights_only=True)
    from_a_gpu["train_args"]["device"] = "cuda:0"
    from_a_gpu["training_state"]["random"]["augmentation"] = torch.zeros(16, dtype=torch.uint8)
    torch.save(from_a_gpu, out)
    code, stdout, err = run(capsys, train, "--resume", out, "--data-dir", mnist, "--device", "cpu")
    assert code == 0, err
    assert "moves from cuda:0 to cpu" in stdout
    assert torch.load(out, weights_only=True)["epochs_completed"] == 3


def test_resuming_a_finished_run_says_so(capsys, checkpoint, mnist):
    before = open(checkpoint, "rb").read()
    code, stdout, _ = run(capsys, train, "--resume", checkpoint, "--data-dir", mnist)
    assert code == 0 and "a finished run (2 of 2 epochs): nothing to resume" in stdout
    assert open(checkpoint, "rb").read() == before


@pytest.mark.parametrize("case, message", [
    ("missing", "no such file"),
    ("truncated", "not a readable checkpoint"),
    ("not ours", "not a checkpoint saved by train.py"),
    ("older format", "another version of train.py"),
    ("foreign training state", "training state does not fit"),
])
def test_resume_of_a_bad_checkpoint_is_one_line_and_trains_nothing(
        capsys, mnist, tmp_path, monkeypatch, case, message):
    good = in_progress_checkpoint(mnist, tmp_path, monkeypatch, capsys)
    path = checkpoint_files(tmp_path, good)[case]
    before = path.read_bytes() if path.exists() else None
    code, stdout, err = run(capsys, train, "--resume", path, "--data-dir", mnist)
    assert_one_line_error(code, err, str(path), message)
    assert "epoch  train loss" not in stdout
    assert (path.read_bytes() if path.exists() else None) == before


def test_a_crafted_checkpoint_given_to_resume_runs_no_code(capsys, checkpoint, mnist, tmp_path):
    marker = tmp_path / "code_ran"
    crafted = torch.load(checkpoint, weights_only=True)
    crafted["training_state"] = {"optimizer": RunsCode(str(marker))}
    torch.save(crafted, tmp_path / "crafted.pt")
    code, _, err = run(capsys, train, "--resume", tmp_path / "crafted.pt", "--data-dir", mnist)
    assert_one_line_error(code, err, "refused")
    assert not marker.exists()


# ----------------------------------------------------------------------------
# Pictures

def test_learning_curves_plot_the_stored_metrics(pictures, checkpoint):
    metrics = torch.load(checkpoint, weights_only=True)["metrics"]
    figure = pictures.learning_curves({"model.pt": metrics},
                                      ["train: a caption", "val:   its second line"])
    loss_axes, accuracy_axes = figure.axes
    train_loss, val_loss = loss_axes.lines
    assert list(train_loss.get_xdata()) == [1, 2]
    assert list(train_loss.get_ydata()) == [row["train_loss"] for row in metrics]
    assert list(val_loss.get_ydata()) == [row["val_loss"] for row in metrics]
    assert list(accuracy_axes.lines[1].get_ydata()) == [100 * row["val_accuracy"]
                                                        for row in metrics]


def test_each_weight_tile_is_that_unit_s_weights_rescaled(pictures):
    weight = torch.randn(12, 784)
    figure = pictures.first_layer_weights(weight)
    mosaic = torch.from_numpy(figure.axes[0].images[0].get_array().filled(float("nan")))
    assert mosaic.shape == (2 * 29 + 1, 10 * 29 + 1)  # 12 tiles, 10 a row, 1-pixel lines
    for unit in (0, 5, 11):
        row, column = divmod(unit, 10)
        tile = mosaic[1 + 29 * row:29 * (row + 1), 1 + 29 * column:29 * (column + 1)]
        expected = weight[unit].view(28, 28) / weight[unit].abs().max()
        assert torch.allclose(tile.float(), expected, atol=1e-6)
    assert mosaic[0].isnan().all()  # the lines between tiles are no weight
    assert figure.axes[0].images[0].norm.vmin == -1 and figure.axes[0].images[0].norm.vmax == 1


def test_the_heat_map_shows_the_confusion_matrix(pictures):
    counts = torch.randint(0, 50, (10, 10))
    classes = data.DATASETS["fashion-mnist"]["classes"]
    figure = pictures.confusion_heatmap(counts, classes)
    axes = figure.axes[0]
    assert torch.equal(torch.from_numpy(axes.images[0].get_array().data), counts)
    written = {(text.get_position()[1], text.get_position()[0]): int(text.get_text())
               for text in axes.texts}
    assert written == {(i, j): counts[i, j].item() for i in range(10) for j in range(10)}
    assert [label.get_text() for label in axes.get_yticklabels()] == classes


def test_pictures_draws_curves_and_weights_from_a_checkpoint(pictures, capsys, checkpoint,
                                                             tmp_path):
    curves, weights = tmp_path / "curves.png", tmp_path / "weights.png"
    code, stdout, _ = run(capsys, pictures, checkpoint, "--curves", curves, "--weights", weights)
    assert code == 0
    assert "(1 run)" in stdout and "(64 of 64 units)" in stdout
    for picture in (curves, weights):
        assert Image.open(picture).format == "PNG"


def test_pictures_draws_only_what_a_flag_asks_for(pictures, capsys, checkpoint, tmp_path,
                                                  monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, _, err = run(capsys, pictures, checkpoint)
    assert_one_line_error(code, err, "--curves PNG", "--weights PNG", "--against-time PNG")
    code, _, _ = run(capsys, pictures, checkpoint, "--curves", "c.png")
    assert code == 0 and sorted(os.listdir(tmp_path)) == ["c.png"]
    code, _, err = run(capsys, pictures, checkpoint, checkpoint, "--weights", "w.png")
    assert_one_line_error(code, err, "--weights", "one checkpoint")


def test_runs_compared_by_epoch_are_labelled_by_the_flags_they_differ_in(
        pictures, capsys, mnist, tmp_path):
    """The homework's comparison: two runs' curves on one figure, each named by
    the flags in which the runs differ, every point inside the axes."""
    runs = {"sgd.pt": ["--optimizer", "sgd", "--lr", "0.05"], "adam.pt": []}
    for name, flags in runs.items():
        code, _, err = run(capsys, train, "--data-dir", mnist, "--epochs", 3, "--hidden", 16,
                           "--val-size", 100, "--device", "cpu", "--out", tmp_path / name,
                           *flags)
        assert code == 0, err
    checkpoints = {name: load_checkpoint(tmp_path / name)[1] for name in runs}
    labels = pictures.run_labels(checkpoints)
    assert labels == {"sgd.pt": "--optimizer sgd --lr 0.05",
                      "adam.pt": "--optimizer adam --lr 0.001"}
    same = {"a.pt": checkpoints["adam.pt"], "b.pt": checkpoints["adam.pt"]}
    assert pictures.run_labels(same) == {"a.pt": "a.pt", "b.pt": "b.pt"}  # nothing differs
    figure = pictures.learning_curves({labels[name]: checkpoint["metrics"]
                                       for name, checkpoint in checkpoints.items()})
    loss_axes, accuracy_axes = figure.axes
    assert len(loss_axes.lines) == len(accuracy_axes.lines) == 4  # train and val of each
    for axes in (loss_axes, accuracy_axes):
        bottom, top = axes.get_ylim()
        for line in axes.lines:
            assert list(line.get_xdata()) == [1, 2, 3]
            assert all(bottom <= y <= top for y in line.get_ydata())
    legend = [text.get_text() for text in figure.legends[0].get_texts()]
    assert "--optimizer sgd --lr 0.05, validation" in legend
    figure.canvas.draw()  # (the ticks are chosen when drawn)
    assert all(tick == int(tick) for tick in loss_axes.get_xticks())  # whole epochs
    picture = tmp_path / "compare.png"
    code, stdout, _ = run(capsys, pictures, tmp_path / "sgd.pt", tmp_path / "adam.pt",
                          "--curves", picture)
    assert code == 0 and "(2 runs)" in stdout and Image.open(picture).format == "PNG"


def test_accuracy_against_time_draws_each_run_at_its_cumulative_minutes(pictures):
    fast = [{"seconds": 6.0, "val_accuracy": 0.97}, {"seconds": 6.0, "val_accuracy": 0.98}]
    slow = [{"seconds": 60.0, "val_accuracy": 0.95 + i / 100} for i in range(4)]
    figure = pictures.accuracy_against_time({"fast": fast, "slow": slow})
    axes = figure.axes[0]
    (fast_line, slow_line) = axes.lines
    assert list(fast_line.get_xdata()) == pytest.approx([0.1, 0.2])
    assert list(fast_line.get_ydata()) == pytest.approx([97, 98])
    assert list(slow_line.get_xdata()) == pytest.approx([1, 2, 3, 4])
    assert list(slow_line.get_ydata()) == pytest.approx([95, 96, 97, 98])
    assert [text.get_text() for text in axes.get_legend().get_texts()] == ["fast", "slow"]
    assert axes.get_xscale() == "log"
    bottom, top = axes.get_ylim()  # no run's point is cut off
    assert bottom <= 95 and top >= 98


def test_pictures_against_time_compares_checkpoints(pictures, capsys, checkpoint, tmp_path):
    picture, other = tmp_path / "time.png", tmp_path / "other.pt"
    other.write_bytes(open(checkpoint, "rb").read())
    code, stdout, _ = run(capsys, pictures, "--against-time", picture, checkpoint, other)
    assert code == 0 and "(2 runs)" in stdout and Image.open(picture).format == "PNG"
    unvalidated = torch.load(other, weights_only=True)
    unvalidated["metrics"][-1]["val_accuracy"] = None  # as after --val-size 0
    torch.save(unvalidated, other)
    code, _, err = run(capsys, pictures, "--against-time", picture, checkpoint, other)
    assert_one_line_error(code, err, "other.pt", "no validation accuracy")


def test_pictures_of_a_bad_checkpoint_is_one_line(pictures, capsys, tmp_path):
    code, _, err = run(capsys, pictures, tmp_path / "missing.pt", "--curves", tmp_path / "c.png")
    assert_one_line_error(code, err, "no such file",
                          f"(python train.py --out {tmp_path / 'missing.pt'} trains one)")


def test_show_augmentation_draws_each_class_and_trains_nothing(pictures, capsys, mnist, tmp_path,
                                                               monkeypatch):
    drawn = {}
    real_grid = pictures.augmentation_grid
    # (three digits drawn: matplotlib takes a second for the ten)
    monkeypatch.setattr(pictures, "augmentation_grid", lambda originals, distortions, title:
                        drawn.update(originals=originals, distortions=distortions, title=title)
                        or real_grid(originals[:3], distortions[:3], title))
    picture = tmp_path / "augmentation.png"
    code, stdout, _ = run(capsys, train, "--data-dir", mnist, "--val-size", 0, "--rotation", 30,
                          "--device", "cpu", "--out", tmp_path / "m.pt",
                          "--show-augmentation", picture)
    assert code == 0 and f"wrote {picture}" in stdout
    assert Image.open(picture).format == "PNG"
    assert not (tmp_path / "m.pt").exists() and "epoch" not in stdout
    stored, labels = data.load_split(mnist, "mnist", "train")
    order = torch.randperm(600, generator=torch.Generator().manual_seed(0))  # the split's
    first_of_each = [(labels[order] == digit).nonzero()[0, 0] for digit in range(10)]
    assert torch.equal(drawn["originals"], stored[order][torch.stack(first_of_each)])
    assert drawn["distortions"].shape == (10, 7, 28, 28)
    assert drawn["title"].startswith("--rotation 30.0 --scale 0.05")
    assert not torch.equal(drawn["distortions"][:, 0], drawn["distortions"][:, 1])


def test_show_augmentation_without_augmentation_is_one_line(capsys, tmp_path):
    code, _, err = run(capsys, train, "--no-augment", "--show-augmentation", tmp_path / "a.png")
    assert_one_line_error(code, err, "--show-augmentation", "--no-augment")


# ----------------------------------------------------------------------------
# predict.py: your own images

def digit_drawings():
    """The ten digits drawn in a font: the 28 x 28 images the model is asked
    about, and the large drawings (white ink on black, 400 pixels high) they
    were made from."""
    from matplotlib import font_manager
    from PIL import ImageDraw, ImageFont

    font = ImageFont.truetype(font_manager.findfont("DejaVu Sans"), 360)
    drawings = []
    for digit in range(10):
        drawing = Image.new("L", (300, 420), 0)
        ImageDraw.Draw(drawing).text((20, 0), str(digit), font=font, fill=255)
        drawings.append(drawing)
    return drawings


def as_photo(drawing, path):
    """A drawing as a photo of paper: dark ink on a light page, off-centre."""
    from PIL import ImageOps

    page = Image.new("L", (900, 700), 230)
    page.paste(ImageOps.invert(drawing).point(lambda v: 30 + v * 200 // 255), (520, 230))
    page.convert("RGB").save(path, quality=90)


def test_digits_on_paper_are_read_as_their_28_x_28_forms(capsys, checkpoint, tmp_path):
    model, saved = load_checkpoint(checkpoint)
    normalization = saved["normalization"]
    small_forms = []
    for large in digit_drawings():  # (not `drawing`: conftest's, imported above)
        pixels = torch.frombuffer(bytearray(large.tobytes()), dtype=torch.uint8)
        small_forms.append(predict.prepare(pixels.view(420, 300).float() / 255))
    with torch.no_grad():
        inputs = (torch.stack(small_forms)[:, None] - normalization["mean"]) / normalization["std"]
        expected = model(inputs).argmax(dim=1).tolist()
    paths = []
    for digit, large in enumerate(digit_drawings()):
        for extension in ("png", "jpg"):
            paths.append(tmp_path / f"digit{digit}.{extension}")
            as_photo(large, paths[-1])
    code, stdout, err = run(capsys, predict, checkpoint, *paths)
    assert code == 0, err
    lines = stdout.splitlines()
    answers = [line.split()[1] for line in lines]
    agree = sum(answer == str(expected[i // 2]) for i, answer in enumerate(answers))
    assert len(answers) == 20 and agree >= 18
    assert all(len(line.split("%")) == 4 for line in stdout.splitlines())  # three guesses
    # --show draws what the model saw of each image (matplotlib: two are enough)
    code, stdout, err = run(capsys, predict, checkpoint, *paths[6:8], "--show", tmp_path / "seen")
    assert code == 0, err
    assert stdout.splitlines() == lines[6:8]
    assert Image.open(tmp_path / "seen" / "digit3.png").format == "PNG"


def test_the_preparation_is_mnist_s(tmp_path):
    """Longer side 20 pixels, centre of mass in the middle, ink white on black,
    whatever the size, place and polarity of the digit in the image."""
    drawing = digit_drawings()[7]
    as_photo(drawing, tmp_path / "seven.png")
    gray, _ = predict.read_image(tmp_path / "seven.png")
    digit = predict.prepare(gray)
    assert digit.shape == (28, 28) and digit.max() == 1 and digit[0].sum() == 0
    rows, columns = digit.sum(dim=1).nonzero(), digit.sum(dim=0).nonzero()
    assert max(rows[-1] - rows[0] + 1, columns[-1] - columns[0] + 1) == 20
    mass = digit.sum()
    centre_y = (digit.sum(dim=1) * (torch.arange(28) + 0.5)).sum() / mass
    centre_x = (digit.sum(dim=0) * (torch.arange(28) + 0.5)).sum() / mass
    assert abs(centre_y - 14) <= 0.5 and abs(centre_x - 14) <= 0.5


def huge_png(path, width, height):
    """A PNG whose header claims width x height grey pixels, without the pixels."""
    import struct
    import zlib

    def chunk(kind, body):
        return (struct.pack(">I", len(body)) + kind + body
                + struct.pack(">I", zlib.crc32(kind + body)))

    path.write_bytes(b"\x89PNG\r\n\x1a\n"
                     + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(b"\0" * 100)) + chunk(b"IEND", b""))


def test_an_image_given_without_the_model_is_told_to_come_after_it(capsys, checkpoint,
                                                                     tmp_path):
    code, _, err = run(capsys, predict, "photo.jpg")
    assert_one_line_error(code, err, "give the model file first",
                          "python predict.py model.pt photo.jpg")
    as_photo(digit_drawings()[4], tmp_path / "photo.jpg")  # the two swapped
    code, _, err = run(capsys, predict, tmp_path / "photo.jpg", checkpoint)
    assert_one_line_error(code, err, "not a readable checkpoint", "the model file comes first: "
                          f"python predict.py model.pt {tmp_path / 'photo.jpg'}")


def test_bad_images_are_one_line_each_and_the_good_ones_still_answered(
        capsys, checkpoint, tmp_path):
    good = tmp_path / "good.png"
    as_photo(digit_drawings()[4], good)
    (tmp_path / "text.png").write_bytes(b"not an image at all")
    as_photo(digit_drawings()[1], tmp_path / "whole.jpg")
    whole = (tmp_path / "whole.jpg").read_bytes()
    (tmp_path / "truncated.jpg").write_bytes(whole[:len(whole) // 3])
    Image.new("RGB", (640, 480), (235, 235, 230)).save(tmp_path / "blank.jpg")
    huge_png(tmp_path / "huge.png", 20000, 20000)  # refused by PIL itself
    huge_png(tmp_path / "large.png", 12000, 10000)  # by predict.py
    paths = [tmp_path / name for name in ("missing.png", "text.png", "truncated.jpg")] + [
        good] + [tmp_path / name for name in ("blank.jpg", "huge.png", "large.png")]
    code, stdout, err = run(capsys, predict, checkpoint, *paths)
    assert code == 1 and "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 6
    for line, expected in zip(lines, ["No such file", "not an image", "truncated",
                                      "no ink found", "too large", "too large"]):
        assert expected in line and line.startswith("error: ")
    assert stdout.startswith(f"{good}: ")  # answered all the same


# ----------------------------------------------------------------------------
# Fashion-MNIST: the same scripts with --dataset
# (the data set: the fashion fixture, in conftest.py)

def test_each_data_set_has_its_folder_and_torchvision_s_class_names():
    import torchvision.datasets

    for name, dataset in data.DATASETS.items():
        assert dataset["classes"] == [c.split(" - ")[0] for c in
                                      getattr(torchvision.datasets, dataset["folder"]).classes]
        assert data.raw_folder("root", name) == os.path.join("root", dataset["folder"], "raw")


def test_fashion_mnist_trains_and_evaluates_without_flags(capsys, fashion, tmp_path):
    out = tmp_path / "fashion.pt"
    code, stdout, err = run(capsys, train, "--dataset", "fashion-mnist", "--data-dir", fashion,
                            "--epochs", 1, "--val-size", 100, "--device", "cpu", "--out", out)
    assert code == 0, err
    assert "fashion-mnist images" in stdout
    saved = torch.load(out, weights_only=True)
    assert saved["dataset"] == "fashion-mnist"
    assert saved["classes"][6] == "Shirt"
    images, _ = data.load_split(fashion, "fashion-mnist", "train")
    order = torch.randperm(600, generator=torch.Generator().manual_seed(0))
    assert saved["normalization"] == data.pixel_statistics(images[order[100:]])
    code, stdout, err = run(capsys, evaluate, out, "--data-dir", fashion, "--confusion",
                            tmp_path / "confusion.png")
    assert code == 0, err
    assert "fashion-mnist" in stdout and "  6  " in stdout and "Shirt" in stdout


def test_a_fashion_model_looks_for_fashion_mnist_s_folder(capsys, fashion, mnist, tmp_path,
                                                          monkeypatch):
    out = tmp_path / "fashion.pt"
    run(capsys, train, "--dataset", "fashion-mnist", "--data-dir", fashion, "--epochs", 1,
        "--val-size", 100, "--device", "cpu", "--out", out)
    offline(monkeypatch)
    code, _, err = run(capsys, evaluate, out, "--data-dir", mnist)  # MNIST's folder only
    assert_one_line_error(code, err, "fashion-mnist's files are not in",
                          os.path.join(mnist, "FashionMNIST", "raw"))


# ----------------------------------------------------------------------------
# benchmark.py

def measured_in_this_process(monkeypatch):
    """benchmark.py's Adam step on denormals, without the two new processes it
    takes (seconds each; the test after next runs them)."""
    monkeypatch.setattr(benchmark, "adam_on_denormals_in_a_new_process",
                        lambda hidden, flush: (0.1, 0.0) if flush else (0.2, 1.0))


def test_benchmark_prints_all_five_rows(capsys, mnist, monkeypatch):
    measured_in_this_process(monkeypatch)
    code, stdout, _ = run(capsys, benchmark, "--data-dir", mnist, "--epochs", 1,
                          "--hidden", 32, "--batch-size", 100, "--device", "cpu")
    assert code == 0
    rows = {line[:15].strip(): line[15:].split() for line in stdout.splitlines()}
    for name in ("ours", "ours, no aug.", "ours, bf16", "conventional", "floor"):
        seconds, images_per_second = rows[name]
        # A fast machine runs the floor of this tiny model's 600 images in under
        # half a millisecond, which prints as 0.000: the rate shows it was timed.
        assert float(seconds) >= 0 and float(images_per_second.replace(",", "")) > 0
    # Epochs of 600 images take milliseconds: a busy moment may make them
    # disagree, which the benchmark then says instead of comparing them.
    assert ("ours / floor" in stdout) != ("cannot be trusted" in stdout)
    assert "peak memory" in stdout
    assert f"torch {torch.__version__}" in stdout
    assert "Adam's step on denormal moment estimates" in stdout
    assert "denormals are not flushed" not in stdout


@job("test_benchmark_s_adam_step_flushes_as_train_py_does_or_not_at_all")
def adam_on_denormals_flushed_and_not(folder):
    with ThreadPoolExecutor(2) as both:  # the two processes at once: their times are not read
        return list(both.map(benchmark.adam_on_denormals_in_a_new_process, [[32], [32]],
                             [True, False]))


def test_benchmark_s_adam_step_flushes_as_train_py_does_or_not_at_all(fresh_interpreters,
                                                                     request):
    (flushed, left), (unflushed, stayed) = job_result(fresh_interpreters, request)
    assert flushed > 0 and unflushed > 0
    assert (left, stayed) == (0, 1)  # each moment estimate flushed to 0, or none


def test_benchmark_says_when_its_figures_cannot_be_trusted(capsys, mnist, monkeypatch):
    assert benchmark.doubts({"ours": [1.0, 1.2], "floor": [0.5, 0.6]}) == []
    reasons = benchmark.doubts({"ours": [1.0, 2.0], "floor": [0.5, 0.5]})
    assert reasons == ["the ours epochs took 1.000 to 2.000 s"]
    reasons = benchmark.doubts({"ours": [1.0, 1.0], "floor": [1.5, 1.5]})
    assert reasons == ["the floor was slower than ours, which does its work and more"]
    # A busy machine's figures are printed, but not compared as results.
    measured_in_this_process(monkeypatch)
    monkeypatch.setattr(benchmark, "epoch_seconds", lambda runs, epochs, device: {
        name: [3.0, 3.1] if name == "floor" else [1.0, 1.1] for name in runs})
    code, stdout, _ = run(capsys, benchmark, "--data-dir", mnist, "--epochs", 2,
                          "--hidden", 32, "--device", "cpu")
    assert code == 0
    assert "these figures cannot be trusted: the floor was slower than ours" in stdout
    assert "ours / floor" not in stdout and "conventional / ours" not in stdout


def test_benchmark_s_peak_memory_is_in_mib_on_linux_and_macos_and_absent_on_windows(
        monkeypatch):
    class Resource:  # 1 GiB: 2**20 KiB on Linux, 2**30 bytes on macOS
        RUSAGE_SELF = 0

        def __init__(self, peak):
            self.peak = peak

        def getrusage(self, who):
            return type("Usage", (), {"ru_maxrss": self.peak})

    for platform, peak in (("linux", 2**20), ("darwin", 2**30)):
        monkeypatch.setattr(sys, "platform", platform)
        monkeypatch.setitem(sys.modules, "resource", Resource(peak))
        assert benchmark.peak_memory_mib() == 1024
    monkeypatch.setitem(sys.modules, "resource", None)  # import resource: ImportError
    assert benchmark.peak_memory_mib() is None


def test_benchmark_random_data_is_valid_mnist(tmp_path):
    """Without MNIST the benchmark writes random data in its format, which the
    real reader accepts."""
    assert not benchmark.has_mnist(tmp_path)
    benchmark.write_random_mnist(str(tmp_path), train_images=100, test_images=20)
    assert benchmark.has_mnist(tmp_path)
    images, labels = data.load_split(str(tmp_path), "mnist", "train")
    assert images.shape == (100, 28, 28) and labels.shape == (100,)
    assert len(data.load_split(str(tmp_path), "mnist", "test")[1]) == 20


# ----------------------------------------------------------------------------
# draw.py: a digit drawn in the browser, and predict.py's widening of thin strokes
#
# The model trained on the blobs above cannot read drawn digits, so these tests
# train their own in a few seconds on digits drawn as pen strokes: each of the
# ten as a few lines and arcs, at random places, sizes, slants and pen widths
# (the drawn digits, their model and the server: in conftest.py).
# The browser test needs Chromium, its driver and selenium (.ci/run installs them):
# apt-get install chromium chromium-driver; pip install selenium

def request(server, method, path, body=None):
    """(status, the answer's JSON or the page's text)."""
    connection = http.client.HTTPConnection(*server, timeout=30)
    connection.request(method, path, body=body)
    response = connection.getresponse()
    text = response.read().decode()
    connection.close()
    if response.getheader("Content-Type") == "application/json":
        return response.status, json.loads(text)
    return response.status, text


def assert_one_line_of_json(status, answer, code, text):
    assert status == code and list(answer) == ["error"] and text in answer["error"]
    assert "\n" not in answer["error"]


# ----------------------------------------------------------------------------
# The server, without a browser

def model_description(page):
    """What the page is told about the model: the JSON that draw.py writes into it."""
    return json.loads(page.split("const model = ")[1].split(";\n")[0])


def test_the_page_describes_the_model_and_nothing_else_is_served(server):
    status, page = request(server, "GET", "/")
    assert status == 200
    about = model_description(page)
    assert about["dataset"] == "mnist" and about["classes"] == list("0123456789")
    assert 0.9 < about["val_accuracy"] <= 1 and about["hidden"] == [64]
    assert "http://" not in page and "https://" not in page  # nothing fetched from elsewhere
    for path in ("/../README.md", "/draw.html", "/draw.py", "/predict.py", "/index.html",
                 "/?", "//etc/passwd"):
        assert_one_line_of_json(*request(server, "GET", path), 404, "no page")
    assert_one_line_of_json(*request(server, "POST", "/", b"x"), 404, "no page")
    for method in ("PUT", "DELETE", "PATCH"):
        assert_one_line_of_json(*request(server, method, "/predict", b"x"), 405, "not served")


def test_a_fashion_mnist_model_is_described_with_its_own_classes(drawn_digit_model):
    _, checkpoint = load_checkpoint(drawn_digit_model)
    classes = data.DATASETS["fashion-mnist"]["classes"][:9] + ["</script><b>boot"]
    page = draw.page({**checkpoint, "dataset": "fashion-mnist", "classes": classes,
                      "metrics": [{"epoch": 1, "val_accuracy": None}]}).decode()
    about = model_description(page)
    assert about["dataset"] == "fashion-mnist" and about["classes"][6] == "Shirt"
    assert about["classes"][9] == "</script><b>boot" and about["val_accuracy"] is None
    assert page.count("</script>") == 1  # a class name cannot end the page's script


def test_bad_drawings_are_one_line_of_json_and_the_server_goes_on(server):
    assert_one_line_of_json(*request(server, "POST", "/predict", b"not a picture"),
                            400, "not an image")
    blank = png(Image.new("RGB", (400, 400), "white"))
    assert_one_line_of_json(*request(server, "POST", "/predict", blank), 400,
                            "draw a digit first")
    transparent = png(Image.new("RGBA", (400, 400), (0, 0, 0, 0)))  # an unpainted canvas
    assert_one_line_of_json(*request(server, "POST", "/predict", transparent), 400,
                            "draw a digit first")
    assert_one_line_of_json(*request(server, "POST", "/predict", b""), 400, "send a PNG")
    # A body said to be too large is refused before any of it is read.
    with socket.create_connection(server) as connection:
        connection.sendall(b"POST /predict HTTP/1.1\r\nContent-Length: 50000000\r\n\r\n")
        answer = connection.makefile("rb").read().decode()  # and the connection is closed
    assert answer.startswith("HTTP/1.1 413") and '"error": "send a PNG of 1 to' in answer
    with socket.create_connection(server) as connection:
        connection.sendall(b"POST /predict HTTP/1.0\r\n\r\n")
        assert connection.makefile("rb").read().startswith(b"HTTP/1.1 411")
    seven = png(drawing(pen_strokes(7, random.Random(1), 400), 20, 400))
    status, answer = request(server, "POST", "/predict", seven)
    assert status == 200 and max(range(10), key=answer["probabilities"].__getitem__) == 7


def test_the_answer_is_predict_py_s(capsys, server, drawn_digit_model, tmp_path):
    for digit in (2, 5, 8):
        path = tmp_path / f"{digit}.png"
        drawing(pen_strokes(digit, random.Random(digit), 400), 6, 400).save(path)
        status, answer = request(server, "POST", "/predict", path.read_bytes())
        assert status == 200
        code, out, _ = run(capsys, predict, drawn_digit_model, path)
        ranking = sorted(zip(answer["probabilities"], "0123456789"), reverse=True)[:3]
        assert code == 0 and out == f"{path}: {digit}   (" + ", ".join(
            f"{name} {100 * p:.1f}%" for p, name in ranking) + ")\n"
        seen = predict.prepare(predict.read_image(str(path))[0])
        assert answer["seen"] == (seen * 255).round().int().flatten().tolist()


def test_several_tabs_drawing_at_once_are_all_answered(server):
    drawings = [png(drawing(pen_strokes(digit, random.Random(digit), 400), 12, 400))
                for digit in range(8)]
    alone = [request(server, "POST", "/predict", body)[1] for body in drawings]
    together = [None] * 8
    start = threading.Barrier(8)

    def ask(i):
        start.wait()
        together[i] = request(server, "POST", "/predict", drawings[i])

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert together == [(200, answer) for answer in alone]
    assert [max(range(10), key=a["probabilities"].__getitem__) for a in alone] == [
        0, 1, 2, 3, 4, 5, 6, 7]


def serve_until_ctrl_c(capsys, monkeypatch, *argv):
    """draw.py's main(argv) in this process, its server answering in a thread
    until Ctrl-C: stopped (KeyboardInterrupt, where serve_forever waits) once a
    page has been asked of the address its start line names. Returns (exit code,
    that line, the page's status, what followed the line, stderr)."""
    asked = {}

    def serve_then_ctrl_c(server):
        thread = threading.Thread(target=draw.ThreadingHTTPServer.serve_forever,
                                  args=(server, 0.01))
        thread.start()
        try:
            asked["line"] = capsys.readouterr().out
            address = asked["line"].split("http://")[1].split("/")[0]
            host, port = address.rsplit(":", 1)
            asked["status"] = request((host, int(port)), "GET", "/")[0]
        finally:
            server.shutdown()
            thread.join()
        raise KeyboardInterrupt

    monkeypatch.setattr(draw.Server, "serve_forever", serve_then_ctrl_c)
    try:
        code, out, err = run(capsys, draw, *argv)
    except KeyboardInterrupt:  # (which would stop pytest itself)
        pytest.fail("Ctrl-C ended draw.py with a traceback, not its one line")
    return code, asked["line"], asked["status"], out, err


def test_ctrl_c_stops_the_server_with_one_line(capsys, monkeypatch, drawn_digit_model):
    code, line, status, out, err = serve_until_ctrl_c(capsys, monkeypatch, drawn_digit_model,
                                                      "--port", 0)
    assert line.startswith("draw at http://127.0.0.1:") and status == 200
    assert (code, out, err) == (0, "stopped\n", "")


def test_a_bad_checkpoint_port_or_address_is_one_line(capsys, server, drawn_digit_model,
                                                      tmp_path):
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    assert_one_line_error(*run(capsys, draw, tmp_path / "junk.pt")[::2], "not a readable")
    assert_one_line_error(*run(capsys, draw, tmp_path / "missing.pt")[::2], "no such file")
    good = drawn_digit_model
    assert_one_line_error(*run(capsys, draw, good, "--port", server[1])[::2],
                          f"cannot serve on 127.0.0.1:{server[1]}", "in use",
                          "--port 0 picks a free one")
    assert_one_line_error(*run(capsys, draw, good, "--port", 70000)[::2], "--port")
    assert_one_line_error(*run(capsys, draw, good, "--port", "http")[::2], "--port")
    assert_one_line_error(*run(capsys, draw, good, "--host", "192.0.2.1")[::2],  # not ours
                          "cannot serve on 192.0.2.1:8000")


# ----------------------------------------------------------------------------
# A class drawing at once

def test_a_crowd_of_drawers_is_all_answered_a_core_s_worth_at_a_time(server, monkeypatch):
    answering, most = set(), []
    answer = draw.answer

    def counted(*args):
        answering.add(threading.get_ident())
        most.append(len(answering))
        try:
            return answer(*args)
        finally:
            answering.discard(threading.get_ident())

    monkeypatch.setattr(draw, "answer", counted)
    for new_connections in (False, True):  # keep-alive, as browsers; a new one each time
        seconds, failures, _ = crowd.draw_at_once(server[1], 30, 3, new_connections)
        assert failures == [] and len(seconds) == 90
    assert len(most) == 180 and max(most) <= (os.cpu_count() or 1)


# http.server's listen queue was 5; draw.py asks for 1,024, which the kernel may
# cap: at 128 on macOS (somaxconn), as Python's socket.SOMAXCONN says there.
CLASS_AT_ONCE = min(150, socket.SOMAXCONN)


def test_a_class_connecting_at_once_is_held_until_the_server_accepts(drawn_digit_model,
                                                                     open_files):
    """A class's connections (150, or as many as the listen queue holds) made
    before the server accepts any: the kernel keeps them waiting (http.server's
    own queue of 5 made it refuse the rest)."""
    open_files(2 * CLASS_AT_ONCE)  # both ends of each connection are in this process
    model, checkpoint = load_checkpoint(drawn_digit_model)
    httpd = draw.Server(("127.0.0.1", 0), draw.handler(model, checkpoint))
    try:
        connections = [socket.create_connection(httpd.server_address, timeout=2)
                       for _ in range(CLASS_AT_ONCE)]
        thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.01})
        thread.start()
        blank = png(Image.new("RGB", (400, 400), "white"))
        for connection in connections[::10]:
            connection.sendall(b"POST /predict HTTP/1.1\r\nContent-Length: %d\r\n\r\n%s"
                               % (len(blank), blank))
            reply = b""
            while not reply.endswith(b"}"):  # the headers, then the JSON
                reply += connection.recv(4096)
            assert b"draw a digit first" in reply
        for connection in connections:
            connection.close()
        httpd.shutdown()
        thread.join()
    finally:
        httpd.server_close()


def test_drawings_on_one_connection_are_answered_on_it_without_delay(server):
    seven = png(drawing(pen_strokes(7, random.Random(1), 400), 20, 400))

    def seconds_per_answer(keep_alive):
        times, sockets = [], set()
        connection = http.client.HTTPConnection(*server, timeout=30)
        for _ in range(7):
            began = time.perf_counter()
            connection.request("POST", "/predict", seven)
            response = connection.getresponse()
            assert response.status == 200 and response.read()
            times.append(time.perf_counter() - began)
            sockets.add(connection.sock)
            if not keep_alive:
                connection.close()
        connection.close()
        assert len(sockets) == (1 if keep_alive else 7)  # kept open, or one per drawing
        return sorted(times)[3]

    # Nagle's algorithm would hold each answer's body back for the client's
    # delayed acknowledgement, 40 ms, on a connection kept open.
    assert seconds_per_answer(keep_alive=True) < seconds_per_answer(keep_alive=False) + 0.02


def big_png(width, height):
    """A PNG of a blank page this size: a few KB, whatever the size."""
    return png(Image.new("1", (width, height), 1))


def test_a_png_larger_than_the_page_s_is_refused_from_its_header(server, monkeypatch):
    decoded = []
    monkeypatch.setattr(predict, "read_image",
                        lambda source: decoded.append(source) or (_ for _ in ()).throw(
                            AssertionError("decoded")))
    huge = big_png(9000, 9000)  # 81 megapixels: 300 ms and 100 MB to decode
    assert len(huge) < draw.MAX_BODY
    began = time.perf_counter()
    status, answer = request(server, "POST", "/predict", huge)
    assert time.perf_counter() - began < 0.1
    assert_one_line_of_json(status, answer, 400, "9,000 x 9,000 pixels is not a drawing")
    for width, height in [(1025, 400), (400, 1025)]:
        assert_one_line_of_json(*request(server, "POST", "/predict", big_png(width, height)),
                                400, "at most 1,024 a side")
    jpeg = BytesIO()
    Image.new("RGB", (400, 400), "white").save(jpeg, format="JPEG")
    assert_one_line_of_json(*request(server, "POST", "/predict", jpeg.getvalue()), 400,
                            "a JPEG image: the page sends PNG")
    assert decoded == []
    # the largest side allowed is decoded and answered
    monkeypatch.undo()
    status, answer = request(server, "POST", "/predict",
                             png(drawing(pen_strokes(3, random.Random(3), 1024), 40, 1024)))
    assert status == 200 and len(answer["probabilities"]) == 10


def test_stalled_connections_do_not_hold_up_a_drawing(capsys, server, open_files):
    open_files(2 * 100 + 10)  # both ends of each, in this process
    stalled = []
    for i in range(100):  # each stops halfway through its request, and waits
        connection = socket.create_connection(server, timeout=30)
        connection.sendall(b"POST /predict HTTP/1.1\r\nContent-Length: 20000\r\n\r\n"
                           if i % 2 else b"POST /predi")
        stalled.append(connection)
    seven = png(drawing(pen_strokes(7, random.Random(1), 400), 20, 400))
    began = time.perf_counter()
    status, answer = request(server, "POST", "/predict", seven)
    assert status == 200 and time.perf_counter() - began < 5  # they wait for 10 s
    for connection in stalled:  # and leave: the server says nothing of it
        connection.close()
    time.sleep(0.5)
    assert request(server, "POST", "/predict", seven)[0] == 200
    assert capsys.readouterr().err == ""


@pytest.mark.skipif(sys.platform in ("win32", "darwin"), reason="needs to listen on every "
                    "address (0.0.0.0), which Windows and macOS answer with a firewall prompt")
def test_on_a_network_address_the_start_line_names_one_others_can_open(
        capsys, monkeypatch, drawn_digit_model):
    code, line, status, out, err = serve_until_ctrl_c(capsys, monkeypatch, drawn_digit_model,
                                                      "--host", "0.0.0.0", "--port", 0)
    host = line.split("http://")[1].split(":")[0]
    assert host != "0.0.0.0" and "anyone who can reach this address may draw" in line
    assert status == 200  # an address of this machine
    assert (code, out, err) == (0, "stopped\n", "")
    assert draw.address_for_others("10.1.2.3") == "10.1.2.3"  # a given address, as it is


@job("test_crowd_py_reports_a_crowd_s_answers", "drawn_digit_model")
def a_crowd_of_four(folder, drawn_digit_model):
    return run_command("crowd.py", drawn_digit_model, "--drawers", 4, "--requests", 3)


def test_crowd_py_reports_a_crowd_s_answers(capsys, fresh_interpreters, request, tmp_path):
    result = job_result(fresh_interpreters, request)
    code, stdout, err = result.returncode, result.stdout, result.stderr
    assert code == 0, err
    header, row = stdout.splitlines()
    assert header.split()[:6] == ["drawers", "requests", "answers/s", "p50", "p99", "failed"]
    assert row.split()[:2] == ["4", "12"] and row.split()[5] == "0"  # none failed
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    code, stdout, err = run(capsys, crowd, tmp_path / "junk.pt")
    assert_one_line_error(code, err, "not a readable")
    assert stdout == ""  # no table begun


# ----------------------------------------------------------------------------
# Thin strokes: a fine pen or a mouse is read as a thick pen is

def test_thin_strokes_are_prepared_and_read_as_thick_ones(drawn_digit_model, monkeypatch):
    """The same strokes, with a 2-4 pixel pen and a 20-28 pixel one on a 400 x
    400 page: once prepared, the digits have about the same ink and shape, far
    closer than without the widening, and the model reads both the same."""
    model, checkpoint = load_checkpoint(drawn_digit_model)
    normalization = checkpoint["normalization"]

    def prepared(pen_widths):
        rng = random.Random(0)
        images = []
        for digit in range(10):
            for _ in range(3):
                strokes = pen_strokes(digit, rng, 400)
                images.append(predict.prepare(grey_levels(drawing(strokes, rng.choice(
                    pen_widths), 400))))
        return torch.stack(images)

    thin, thick = prepared([2, 3, 4]), prepared([20, 24, 28])
    similarity = F.cosine_similarity(thin.flatten(1), thick.flatten(1))
    ink = thin.sum(dim=(1, 2)) / thick.sum(dim=(1, 2))
    assert similarity.mean() > 0.93 and ((0.7 < ink) & (ink < 1.3)).all()
    with torch.no_grad():
        read_thin, read_thick = (model(((images - normalization["mean"])
                                        / normalization["std"])[:, None]).argmax(dim=1)
                                 for images in (thin, thick))
    digits = torch.arange(10).repeat_interleave(3)
    assert (read_thin == read_thick).float().mean() >= 0.9
    assert (read_thin == digits).float().mean() >= 0.9

    monkeypatch.setattr(predict, "thicken", lambda ink: ink)  # as predict.py was
    thin_unwidened = prepared([2, 3, 4])
    assert (F.cosine_similarity(thin_unwidened.flatten(1), thick.flatten(1)) < similarity).all()
    assert (thin_unwidened.sum(dim=(1, 2)) / thick.sum(dim=(1, 2))).mean() < 0.6


def test_a_digit_drawn_on_transparent_paper_is_read_as_on_white():
    strokes = pen_strokes(4, random.Random(4), 400)
    on_white = drawing(strokes, 12, 400)
    on_transparent = Image.new("RGBA", (400, 400), (0, 0, 0, 0))
    on_transparent.putalpha(ImageOps.invert(on_white))  # the ink opaque black, the rest clear
    for image in (on_transparent, on_transparent.convert("LA")):
        gray, _ = predict.read_image(png(image))
        assert torch.equal(predict.prepare(gray),
                           predict.prepare(grey_levels(on_white)))


def test_a_16_bit_grey_scan_is_read_as_its_8_bit_form():
    on_paper = drawing(pen_strokes(7, random.Random(7), 400), 12, 400).point(
        lambda value: 30 + value * 200 // 255)  # grey ink on grey paper, as scanned
    sixteen_bit = on_paper.convert("I").point(lambda value: value * 257).convert("I;16")
    assert Image.open(BytesIO(png(sixteen_bit))).mode == "I;16"
    gray, _ = predict.read_image(png(sixteen_bit))
    assert torch.equal(gray, grey_levels(on_paper))


def test_show_keeps_each_of_two_images_of_one_name(capsys, checkpoint, tmp_path, pictures,
                                                   monkeypatch):
    for folder in ("monday", "tuesday"):
        (tmp_path / folder).mkdir()
        as_photo(digit_drawings()[3], tmp_path / folder / "digit.jpg")
    saved = []
    monkeypatch.setattr(pictures, "save", lambda figure, path: saved.append(path))
    code, _, err = run(capsys, predict, checkpoint, tmp_path / "monday" / "digit.jpg",
                       tmp_path / "tuesday" / "digit.jpg", "--show", tmp_path / "seen")
    assert code == 0, err
    assert saved == [os.path.join(tmp_path / "seen", name) for name in ("digit.png",
                                                                        "digit-2.png")]


def test_the_stroke_width_is_the_pen_s():
    for pen in (3, 10, 30):
        page = Image.new("L", (400, 400), 0)
        ImageDraw.Draw(page).line([(50, 200), (350, 200)], fill=255, width=pen)
        assert predict.stroke_width(grey_levels(page)) == pytest.approx(pen, rel=0.1)


# ----------------------------------------------------------------------------
# A row of digits (a ZIP code): segment.py finds the digits, predict.py reads
# each as it reads one alone, zipcodes.py measures on rows of test digits

def row_image(digits, gaps, rng, photographed=False, pen=9, height=100):
    """A row of drawn digits as a PNG's bytes, or photographed-looking: a JPEG's."""
    strokes, size = row_strokes(digits, rng, height, gaps)
    page = drawing(strokes, pen, size)
    if photographed:
        return zipcodes.as_photographed(1 - grey_levels(page), rng)[0]
    return png(page)


def read_row(image, model_file, count=None):
    """predict.py's reading of a row: the digits it found, a ? for an uncertain one."""
    model, checkpoint = load_checkpoint(model_file)
    gray, _ = predict.read_image(image)
    return "".join("?" if uncertain else checkpoint["classes"][p.argmax()]
                   for _, p, uncertain in predict.read_digits(gray, model, checkpoint, count))


def test_strokes_are_labelled_as_a_flood_fill_labels_them():
    generator = torch.Generator().manual_seed(0)
    for density in (0.3, 0.45, 0.6):  # few strokes, many, and one that winds through all
        mask = torch.rand(30, 50, generator=generator) < density
        labels = segment.label_strokes(mask)
        unvisited = {(y, x) for y, x in mask.nonzero().tolist()}
        while unvisited:  # a flood fill, pixel by pixel, from each pixel not yet reached
            stroke, todo = set(), [unvisited.pop()]
            while todo:
                y, x = todo.pop()
                stroke.add((y, x))
                for near in [(y + dy, x + dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)]:
                    if near in unvisited:
                        unvisited.remove(near)
                        todo.append(near)
            assert {labels[y, x].item() for y, x in stroke} == {min(50 * y + x for y, x in stroke)}
        assert (labels[~mask] == mask.numel()).all()


def test_the_paper_is_found_under_uneven_light_and_noise():
    strokes, size = row_strokes([3, 8], random.Random(0), 100, [0.3])
    ink = 1 - grey_levels(drawing(strokes, 9, size))
    light = torch.linspace(1, 0.5, size[0]).expand(size[1], -1)  # dimmer to the right
    noise = 0.03 * torch.randn(ink.shape, generator=torch.Generator().manual_seed(0))
    gray = ((0.9 - 0.7 * ink) * light + noise).clamp(0, 1)
    paper = F.max_pool2d(ink[None], 9, stride=1, padding=4)[0] == 0  # far from any stroke
    found = segment.ink_on_black(gray)
    inked = found >= segment.INK * predict.brightest_3x3_average(found)
    assert inked[paper].float().mean() < 0.01 and inked[ink == 1].float().mean() > 0.95
    # prepare()'s way, one level of paper for the whole page, takes the shadow for ink
    border = torch.cat([gray[0], gray[-1], gray[:, 0], gray[:, -1]])
    above_paper = (border.median() - gray).clamp(min=0)
    inked = above_paper >= segment.INK * predict.brightest_3x3_average(above_paper)
    assert inked[paper].float().mean() > 0.1


def test_the_cut_crosses_the_least_ink():
    mask = torch.zeros(40, 60, dtype=torch.bool)
    mask[5:35, 5:25] = mask[5:35, 35:55] = True  # two blocks
    mask[20:22, 20:40] = True  # joined by a bridge two pixels thick
    paths, ink = segment.cut_paths(mask, [29, 15], band=8)  # the second: within a block
    assert ink.tolist() == [2, 30] and ((25 <= paths[0]) & (paths[0] < 35)).all()
    assert (paths[:, 1:] - paths[:, :-1]).abs().max() <= 1  # a column a row at most


def test_a_row_of_digits_is_read_digit_by_digit(capsys, drawn_digit_model, tmp_path, pictures,
                                                monkeypatch):
    rng = random.Random(1)
    paths, truths = [], []
    for n in range(8):  # drawn and photographed-looking, apart
        digits = [rng.randrange(10) for _ in range(5)]
        path = tmp_path / f"row{n}.{'jpg' if n % 2 else 'png'}"
        path.write_bytes(row_image(digits, [rng.uniform(0.1, 0.4) for _ in range(4)], rng,
                                   photographed=n % 2))
        paths.append(path)
        truths.append("".join(map(str, digits)))
    strokes, size = row_strokes([2, 0, 2, 6], rng, 100, [0.3] * 3)  # white ink on black
    paths.append(tmp_path / "light_on_dark.png")
    ImageOps.invert(drawing(strokes, 9, size)).save(paths[-1])
    truths.append("2026")
    code, stdout, err = run(capsys, predict, drawn_digit_model, *paths)
    assert code == 0, err
    lines = stdout.splitlines()
    assert [line.split(": ")[0] for line in lines] == list(map(str, paths))
    assert sum(line.split()[1] == truth for line, truth in zip(lines, truths)) >= 8
    assert lines[-1].split()[1] == "2026"
    for line in lines:  # each digit's likeliest, in order
        each = re.findall(r"(\d)\?? \d+\.\d%", line)
        assert "".join(each) == line.split()[1].replace("?", "") or "?" in line
        assert len(each) == len(line.split()[1])
    figures = []
    monkeypatch.setattr(pictures, "save", lambda figure, path: figures.append(figure))
    code, _, err = run(capsys, predict, drawn_digit_model, paths[0], "--show", tmp_path / "seen")
    assert code == 0, err
    assert len(figures[0].axes) == 1 + len(lines[0].split()[1])  # the image, and each digit


def test_a_digit_of_two_strokes_is_one_and_a_hyphen_is_left_out(drawn_digit_model):
    five = [[(0.6, 0.0), (0.24, 0.0)],  # the bar apart from the rest
            [(0.1, 0.08), (0.06, 0.45)] + arc(0.28, 0.7, 0.3, 0.28, -120, 150, 16)]
    strokes, size = row_strokes([3, five, 1], random.Random(0), 100, [0.3, 0.3])
    page = drawing(strokes, 9, size)
    assert segment.label_strokes(grey_levels(page) < 0.5).unique().numel() == 4 + 1
    assert read_row(png(page), drawn_digit_model) == "351"
    hyphen = [[(0.05, 0.5), (0.4, 0.5)]]
    strokes, size = row_strokes([9, 4, 1, hyphen, 1, 0], random.Random(0), 100, [0.3] * 5)
    assert read_row(png(drawing(strokes, 9, size)), drawn_digit_model) == "94110"


def test_touching_digits_are_cut_or_said_to_be_uncertain(drawn_digit_model):
    for digits in ([0, 7], [3, 2], [4, 6], [8, 1, 5]):
        gap = 0.2
        while True:  # the digits moved closer until their ink is one cluster
            strokes, size = row_strokes(digits, random.Random(2), 100, [gap] * (len(digits) - 1))
            page = drawing(strokes, 12, size)
            if segment.label_strokes(grey_levels(page) < 0.5).unique().numel() == 1 + 1:
                break
            gap -= 0.01
        truth = "".join(map(str, digits))
        read = read_row(png(page), drawn_digit_model)
        assert read == truth or "?" in read, (truth, read)
        told = read_row(png(page), drawn_digit_model, count=len(digits))
        assert len(told) == len(digits)


def test_a_faint_digit_beside_a_dark_one_is_read_too(drawn_digit_model):
    strokes, size = row_strokes([0, 1], random.Random(5), 100, [0.4])
    zero = len(strokes) - 1  # the 1 is one stroke
    pencil = 1 - grey_levels(drawing(strokes[:zero], 9, size))
    fainter = 1 - grey_levels(drawing(strokes[zero:], 9, size))
    gray = 1 - torch.maximum(0.35 * pencil, 0.15 * fainter)  # the 1 under 0.2 of contrast
    model, checkpoint = load_checkpoint(drawn_digit_model)
    digits = predict.read_digits(gray, model, checkpoint)
    assert predict.answer(digits, checkpoint["classes"], None)[0] == "01"


def test_a_row_cut_into_more_than_the_most_digits_is_too_many():
    height = 60
    ink = torch.zeros(2 * height, 10 * height)
    for cluster in range(2):  # two clusters of three blocks joined by thin bridges
        left = round((0.5 + 2.5 * cluster) * height)
        for block in range(3):
            x = left + round(0.7 * height) * block
            ink[30:90, x:x + 36] = 1
            if block:
                ink[59:61, x - 6:x] = 1

    def read(masks):  # every piece read as sure as a model gets
        return F.one_hot(torch.zeros(len(masks), dtype=torch.long), 10).float()

    assert len(segment.find_digits(ink, 1.0, read, 1.0, 6)) == 6
    with pytest.raises(segment.TooManyDigits):
        segment.find_digits(ink, 1.0, read, 1.0, 5)  # two clusters, cut into six


def test_a_row_of_class_names_is_answered_name_by_name():
    digits = [(None, torch.tensor([0.9, 0.1]), False), (None, torch.tensor([0.2, 0.8]), True)]
    assert predict.answer(digits, ["Coat", "Bag"], None) == ("Coat ?", "Coat 90.0%, Bag? 80.0%")
    assert predict.answer(digits, ["0", "1"], None)[0] == "0?"


def test_one_digit_alone_is_prepared_and_answered_as_ever(checkpoint, tmp_path):
    model, saved = load_checkpoint(checkpoint)
    for large in digit_drawings():
        as_photo(large, tmp_path / "digit.jpg")
        gray, _ = predict.read_image(tmp_path / "digit.jpg")
        [(prepared, probabilities, uncertain)] = predict.read_digits(gray, model, saved)
        assert torch.equal(prepared, predict.prepare(gray)) and not uncertain
        assert torch.equal(probabilities, predict.class_probabilities(
            model, predict.prepare(gray)[None], saved["normalization"])[0])


def test_a_page_of_digits_and_a_count_not_found_are_told(capsys, drawn_digit_model, tmp_path):
    rng = random.Random(3)
    (tmp_path / "page.png").write_bytes(row_image([1, 7] * 11, [0.3] * 21, rng, height=40))
    (tmp_path / "three.png").write_bytes(row_image([3, 0, 7], [0.3, 0.3], rng))
    code, stdout, err = run(capsys, predict, drawn_digit_model, tmp_path / "page.png",
                            tmp_path / "three.png", "--digits", 5)
    assert_one_line_error(code, err, "page.png: more than 20 digits: a row of at most 20 is read")
    assert stdout.startswith(f"{tmp_path / 'three.png'}: 307") and stdout.rstrip().endswith(
        "; 3 digits found, not 5)")
    code, _, err = run(capsys, predict, drawn_digit_model, tmp_path / "three.png", "--digits", 21)
    assert_one_line_error(code, err, "--digits", "a whole number in [1, 20]")


def test_zipcodes_py_reads_rows_of_test_digits_and_measures(capsys, checkpoint, mnist,
                                                             tmp_path, monkeypatch):
    rng = random.Random(0)
    # digits of one stroke each, white on black, 28 x 28 as MNIST's
    images = torch.stack([255 - (255 * grey_levels(drawing(pen_strokes(digit, rng, 28), 2, 28)))
                          .round().byte() for digit in (3, 1, 4, 1, 5)])
    monkeypatch.setattr(zipcodes, "GAPS", ["touching"])
    page, gaps = zipcodes.make_row(images[:5], rng)
    assert gaps == ["touching"] * 4
    strokes = segment.label_strokes(page > 0.3)
    assert strokes.unique().numel() == 1 + 1  # one cluster of ink, and the paper
    monkeypatch.setattr(zipcodes, "GAPS", ["apart"])
    page, gaps = zipcodes.make_row(images[:5], rng)
    columns = (page > 0).any(dim=0).int()
    assert (columns[1:] - columns[:-1] == 1).sum() == 5  # five inked stretches
    monkeypatch.undo()
    code, stdout, err = run(capsys, zipcodes, checkpoint, "--data-dir", mnist, "--rows", 4,
                            "--save", tmp_path / "rows")
    assert code == 0, err
    assert stdout.startswith(f"4 rows of 5 test digits, read by {checkpoint}")
    assert re.search(r"rows read right: +\d+\.\d% +\(the digits alone, to the fifth power: "
                     r"\d+\.\d%\)", stdout)
    assert re.search(r"digits read right: +\d+\.\d%", stdout)
    saved = sorted(os.listdir(tmp_path / "rows"))
    assert len(saved) == 4 and re.fullmatch(r"row0-\d{5}-read-[\d_]*\.png", saved[0])
    assert re.fullmatch(r"row1-\d{5}-read-[\d_]*\.jpg", saved[1])
    code, _, err = run(capsys, zipcodes, checkpoint, "--data-dir", mnist, "--split", "val",
                       "--rows", 1)
    assert code == 0, err
    monkeypatch.setattr(predict, "read_digits", lambda *_: (_ for _ in ()).throw(
        predict.NoInk("no ink found")))
    code, stdout, err = run(capsys, zipcodes, checkpoint, "--data-dir", mnist, "--rows", 1)
    assert code == 0 and re.search(r"row 0 \(\d{5}\): no ink found", stdout), err
    assert re.search(r"rows read right: +0\.0%", stdout)
    monkeypatch.undo()
    assert zipcodes.edit_distance("94110", "9410") == 1
    assert zipcodes.edit_distance("94110", "94?10") == 1
    assert zipcodes.edit_distance("94110", "19411") == 2


def test_the_server_reads_a_row_drawn(server, drawn_digit_model):
    rng = random.Random(4)
    image = row_image([2, 8, 0], [0.3, 0.3], rng, pen=14, height=120)
    status, answer = request(server, "POST", "/row", image)
    assert status == 200 and len(answer["digits"]) == 3
    model, checkpoint = load_checkpoint(drawn_digit_model)
    gray, _ = predict.read_image(image)
    for sent, (digit, probabilities, uncertain) in zip(
            answer["digits"], predict.read_digits(gray, model, checkpoint)):
        assert sent["probabilities"] == probabilities.tolist()
        assert sent["seen"] == (digit * 255).round().int().flatten().tolist()
        assert sent["uncertain"] == uncertain
    status, answer = request(server, "POST", "/row", png(Image.new("L", (1000, 300), 255)))
    assert_one_line_of_json(status, answer, 400, "draw a digit first")


# ----------------------------------------------------------------------------
# The page in a real browser: headless Chromium, driven by selenium
# (the browser fixture: in conftest.py)

def draw_on_the_canvas(driver, digit):
    """Digit `digit`'s strokes drawn with the pointer, as a hand would, then
    wait until the page has the answer to the finished drawing."""
    draw_strokes(driver, pen_strokes(digit, random.Random(digit), 400), 400, 400)


def draw_strokes(driver, strokes, width, height):
    """Strokes in the canvas's own pixels (width x height) drawn with the
    pointer, then wait until the page has the answer to the finished drawing."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.support.ui import WebDriverWait

    canvas = driver.find_element("id", "canvas")
    scale = canvas.size["width"] / width
    for stroke in strokes:
        # selenium's pointer offsets are whole pixels from the canvas's centre
        points = [(round((x - width / 2) * scale), round((y - height / 2) * scale))
                  for x, y in stroke]
        hand = ActionChains(driver, duration=10).move_to_element_with_offset(canvas, *points[0])
        hand.click_and_hold()
        for (x0, y0), (x1, y1) in zip(points, points[1:]):
            hand.move_by_offset(x1 - x0, y1 - y0)
        hand.release().perform()
    # Chrome hands pointer moves to the page with its next frame: two frames on,
    # all have arrived; then wait for the page to have no request on its way.
    driver.execute_async_script("requestAnimationFrame(() => requestAnimationFrame(arguments[0]))")
    WebDriverWait(driver, 30, poll_frequency=0.05).until(
        lambda driver: driver.execute_script("return !asking && !changed"))


def bars(driver):
    """The bars as the page shows them: [(class name, percent text, is on top)]."""
    return [tuple(row) for row in driver.execute_script(
        "return [...document.querySelectorAll('#bars li')].map(row => ["
        "row.querySelector('.name').textContent, row.querySelector('.percent').textContent,"
        "row.classList.contains('top')])")]


def seen(driver):
    """The grey levels of the page's 28 x 28 image of what the model saw."""
    return driver.execute_script(
        "const pixels = document.getElementById('seen').getContext('2d')"
        ".getImageData(0, 0, 28, 28).data;"
        "return [...pixels.filter((_, i) => i % 4 === 0)]")


def canvas_png(driver):
    """The drawing on the page's canvas, as a PNG."""
    url = driver.execute_script("return document.getElementById('canvas').toDataURL()")
    return base64.b64decode(url.split(",")[1])


def test_digits_drawn_in_the_browser_are_answered_as_they_are_drawn(browser, server, tmp_path):
    browser.get(f"http://{server[0]}:{server[1]}/")
    about = browser.find_element("id", "about").text
    assert "(784-64-10) trained on MNIST" in about and "accuracy" in about
    assert [name for name, _, _ in bars(browser)] == list("0123456789")
    for digit in (1, 7, 0):
        draw_on_the_canvas(browser, digit)
        shown = bars(browser)
        percents = [float(percent.rstrip("%")) for _, percent, _ in shown]
        top = max(range(10), key=percents.__getitem__)
        assert shown[top][0] == str(digit) and shown[top][2] and percents[top] > 50
        assert sum(percents) == pytest.approx(100, abs=1)
        # The page shows the server's answer to its canvas, pixel for pixel.
        _, answer = request(server, "POST", "/predict", canvas_png(browser))
        assert [f"{100 * p:.1f}%" for p in answer["probabilities"]] == [p for _, p, _ in shown]
        assert seen(browser) == answer["seen"] and sum(answer["seen"]) > 20 * 255
        browser.save_screenshot(str(tmp_path / f"drawn_{digit}.png"))
        browser.find_element("id", "clear").click()
        assert all(percent == "" and not top for _, percent, top in bars(browser))
        assert not any(seen(browser))


def test_a_row_drawn_in_the_browser_is_read_digit_by_digit(browser, server, tmp_path):
    browser.get(f"http://{server[0]}:{server[1]}/")
    browser.find_element("id", "row").click()  # the row mode: a wider canvas
    canvas = browser.find_element("id", "canvas")
    assert (canvas.get_attribute("width"), canvas.get_attribute("height")) == ("1000", "300")
    assert canvas.size["width"] > 2 * canvas.size["height"]
    strokes, _ = row_strokes([1, 7, 0], random.Random(0), 120, [0.35, 0.35])
    draw_strokes(browser, strokes, 1000, 300)
    text = browser.find_element("id", "text").text
    # The page shows the server's answer to its canvas: the digits read, and each one's card.
    _, answer = request(server, "POST", "/row", canvas_png(browser))
    classes = [str(digit) for digit in range(10)]
    assert text == "".join("?" if digit["uncertain"] else classes[max(
        range(10), key=digit["probabilities"].__getitem__)] for digit in answer["digits"])
    assert text == "170"
    cards = browser.execute_script(
        "return [...document.querySelectorAll('#cards .card')].map(card => ["
        "card.querySelectorAll('.bar').length, card.querySelector('.top').textContent,"
        "[...card.querySelector('canvas').getContext('2d').getImageData(0, 0, 28, 28).data]"
        ".filter((_, i) => i % 4 === 0)])")
    assert [(bars, top) for bars, top, _ in cards] == [(10, "1"), (10, "7"), (10, "0")]
    assert [seen for _, _, seen in cards] == [digit["seen"] for digit in answer["digits"]]
    assert not browser.find_element("id", "bars").is_displayed()  # the single answer hidden
    browser.save_screenshot(str(tmp_path / "row.png"))
    browser.find_element("id", "clear").click()
    assert browser.find_element("id", "text").text == ""
    assert not browser.find_elements("css selector", "#cards .card")
    browser.find_element("id", "row").click()  # back to one digit
    assert canvas.get_attribute("width") == "400" and browser.find_element(
        "id", "bars").is_displayed()
