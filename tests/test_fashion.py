"""Fashion-MNIST: the same scripts with --dataset."""

import os

import torch
from conftest import (
    assert_one_line_error,
    offline,
    run,
)

import data
import evaluate
import train

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
