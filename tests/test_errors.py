"""Bad input: one line on stderr, a non-zero exit, no traceback, no work wasted."""

import errno
import os

import pytest
import torch
from conftest import (
    RunsCode,
    assert_one_line_error,
    checkpoint_files,
    job,
    job_result,
    make_mnist,
    offline,
    run,
    run_command,
    write_idx,
)

import cli
import data
import evaluate
import train
from checkpoint import load_checkpoint

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
    assert stdout.startswith("training a [784, 16, 10] relu MLP with sgd at --lr 0.1 on ")
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
