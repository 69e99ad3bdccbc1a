"""The lesson beyond the card's checks: the MLP, the loop and the Dataset each
pasted alone into homework, the README's own-code block, the reading order's
counts, and what a default run reads."""

import ast
import json
import os
import re
import subprocess
import sys

import pytest
import torch
from conftest import (
    PROJECT,
    code_of,
    job,
    job_result,
    make_mnist,
    pasted_alone,
    readme_block,
    readme_section,
    run,
    run_command,
    source_of,
    write_idx,
)
from torch import nn

import data
import evaluate
import train
from checkpoint import load_checkpoint
from model import MLP, logits_and_labels

# ----------------------------------------------------------------------------
# Copied into homework: the MLP, the loop and the Dataset each run alone

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


def test_the_readme_s_own_code_block_is_made_of_the_pieces_and_runs(fresh_interpreters,
                                                                      request):
    block = readme_block("Use it in your own code")
    assert len(block.splitlines()) <= 75
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
    block = block.replace("model = MLP(1024, ", "model = MLP([512, 256], ")
    block = block.replace("optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)",
                          f"optimizer = {sgd}")
    assert "MLP([512, 256], " in block and "optim.SGD" in block
    (folder / "homework.py").write_text(block)
    return subprocess.run([sys.executable, "homework.py"], cwd=folder, capture_output=True,
                          text=True, timeout=120)


def test_the_readme_s_block_changed_as_homework_changes_it_still_runs(fresh_interpreters,
                                                                     request):
    result = job_result(fresh_interpreters, request)
    assert result.returncode == 0, result.stderr
    assert float(result.stdout.splitlines()[-1].split()[-1].rstrip("%")) > 90


def test_the_reading_order_s_line_counts_are_today_s():
    def lines_of(path, name):
        with open(os.path.join(PROJECT, path)) as f:
            tree = ast.parse(f.read())
        node = next(node for node in tree.body if getattr(node, "name", None) == name)
        first = node.decorator_list[0] if node.decorator_list else node
        return node.end_lineno - first.lineno + 1

    def lines_in(*paths):
        return sum(len(open(os.path.join(PROJECT, path)).readlines()) for path in paths)

    order = readme_section("Reading order")
    said = [int(count) for count in re.findall(r"\((\d+) lines\)", order)]
    assert said == [lines_of("model.py", "MLP"), lines_of("train.py", "train_one_epoch"),
                    lines_of("train.py", "validate"), lines_of("train.py", "main"),
                    sum(lines_of("data.py", name)
                        for name in ("MNISTTensors", "BatchIndices", "make_loader")),
                    lines_in("evaluate.py")]


@job("test_a_run_with_the_card_s_flags_reads_the_root_s_five_modules")
def modules_of_a_run_with_the_card_s_flags(folder):
    """The project's modules, as paths from its folder, that a run with the
    card's flags (its 5,000 validation images held out of 5,100) has loaded when
    it ends. A default run loads no more: these flags add the checks of
    cli.py, which it loads anyway."""
    make_mnist(folder / "data", train_count=5100, test_count=10)
    code = ("import os, sys, train; train.main(sys.argv[1:]); files = [getattr(m, '__file__', "
            "None) or '' for m in list(sys.modules.values())]; print(sorted(os.path.relpath(f) "
            "for f in files if os.path.isabs(f) and f.startswith(os.getcwd() + os.sep)))")
    return run_command("-c", code, "--lr", "1e-3", "--epochs", "5", "--data-dir",
                       folder / "data", "--out", folder / "m.pt", "--log", folder / "log.csv")


def test_a_run_with_the_card_s_flags_reads_the_root_s_five_modules(fresh_interpreters,
                                                                    request):
    result = job_result(fresh_interpreters, request)
    assert result.returncode == 0, result.stderr
    files = eval(result.stdout.splitlines()[-1])
    assert files == ["checkpoint.py", "cli.py", "data.py", "model.py", "train.py"]
    lines = sum(len(open(os.path.join(PROJECT, name)).readlines()) for name in files)
    assert f"read five files, {lines:,} lines" in " ".join(readme_section("Reading order").split())


def test_one_width_is_the_default_everywhere():
    """The lecture's MLP has one hidden layer: MLP's own default, train.py's
    --hidden and the README's block use the same width."""
    hidden = train.make_parser().parse_args([]).hidden
    assert len(hidden) == 1
    assert [layer.out_features for layer in MLP().hidden_layers] == hidden
    assert f"model = MLP({hidden[0]}, activation=" in readme_block("Use it in your own code")


def test_the_loop_pasted_alone_stops_a_diverging_run_at_the_step():
    pasted = pasted_alone(("model.py", "MLP"), ("train.py", "train_one_epoch"))
    images, labels = torch.randn(256, 1, 28, 28), torch.arange(256) % 10
    train_loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(images, labels), batch_size=64)
    model = pasted["MLP"]([32])
    optimizer = torch.optim.SGD(model.parameters(), lr=1e6)
    with pytest.raises(FloatingPointError, match=r"the loss reached \S+ at step \d of 4"):
        pasted["train_one_epoch"](model, train_loader, nn.CrossEntropyLoss(), optimizer)


def digits_with_mnist_s_pixel_statistics(count, generator):
    """Ten fixed random patterns of ink (level 218) on black, with noise: each
    pixel of a pattern's ink left out with probability 0.3, and as much ink
    added at random elsewhere. The pixels' mean and standard deviation are then
    MNIST's, 0.1307 and 0.3081, to a few thousandths; and the digits are hard
    enough that inputs scaled otherwise than in training are read worse."""
    patterns = torch.rand(10, 28, 28, generator=torch.Generator().manual_seed(1)) < 0.1525
    labels = torch.arange(count) % 10
    noise = torch.rand(count, 28, 28, generator=generator)
    ink = torch.where(patterns[labels], noise >= 0.3, noise < 0.3 * 0.1525 / 0.8475)
    return (ink * 218).to(torch.uint8), labels.to(torch.uint8)


def test_the_readme_s_block_reads_a_model_pt_as_evaluate_py_does(capsys, tmp_path):
    """The block's inputs are normalized as train.py's: a model.pt that
    train.py trained on digits with MNIST's pixel statistics reads the test
    digits through the block's pipeline (torchvision, its to_inputs) within 0.1
    point of evaluate.py."""
    from torchvision import datasets, transforms  # only here: importing it takes seconds

    raw = data.raw_folder(tmp_path, "mnist")
    os.makedirs(raw)
    generator = torch.Generator().manual_seed(0)
    for split, count in (("train", 2000), ("test", 1000)):
        images, labels = digits_with_mnist_s_pixel_statistics(count, generator)
        write_idx(os.path.join(raw, data.FILES[split][0]), images)
        write_idx(os.path.join(raw, data.FILES[split][1]), labels)
    code, _, err = run(capsys, train, "--data-dir", tmp_path, "--epochs", 1, "--hidden", 64,
                       "--val-size", 100, "--out", tmp_path / "model.pt")
    assert code == 0, err
    code, _, err = run(capsys, evaluate, tmp_path / "model.pt", "--data-dir", tmp_path,
                       "--json", tmp_path / "m.json")
    assert code == 0, err
    by_evaluate = json.loads((tmp_path / "m.json").read_text())["test_accuracy"]

    block = readme_block("Use it in your own code")
    to_inputs_line = next(line for line in block.splitlines() if line.startswith("to_inputs ="))
    namespace = {"transforms": transforms}
    exec(to_inputs_line, namespace)
    test_set = datasets.MNIST(tmp_path, train=False, transform=namespace["to_inputs"])
    model, _ = load_checkpoint(tmp_path / "model.pt")
    logits, labels = logits_and_labels(model, torch.utils.data.DataLoader(test_set, 1000))
    by_the_block = (logits.argmax(dim=1) == labels).float().mean().item()
    assert 0.5 < by_evaluate < 0.99  # hard enough for the scaling to matter
    assert abs(by_the_block - by_evaluate) <= 0.001, (by_the_block, by_evaluate)
    # The same pipeline without the normalization reads worse: the test can tell.
    plain = datasets.MNIST(tmp_path, train=False, transform=transforms.ToTensor())
    logits, _ = logits_and_labels(model, torch.utils.data.DataLoader(plain, 1000))
    assert (logits.argmax(dim=1) == labels).float().mean().item() < by_evaluate - 0.02
