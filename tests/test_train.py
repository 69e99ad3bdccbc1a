"""train.py: its printout, optimizers, schedules, bf16, seeds; denormal floats
flushed in every thread."""

import csv

import pytest
import torch
import torch.nn.functional as F
from conftest import (
    CPU,
    THREADS_OF_A_TRAINING_PROCESS,
    job,
    job_result,
    run,
    split,
    start_command,
    threads_of_a_training_process,
)
from torch import nn

import cli
import data
import train
from checkpoint import load_checkpoint
from model import MLP, logits_and_labels

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
    assert ("no native bfloat16" in stdout) == (not cli.has_native_bf16(CPU))
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
