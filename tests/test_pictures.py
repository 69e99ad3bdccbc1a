"""lab/pictures.py, and the pictures train.py and evaluate.py draw."""

import os

import pytest
import torch
from conftest import (
    assert_one_line_error,
    run,
)
from PIL import Image

import data
import train
from checkpoint import load_checkpoint

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


def test_runs_compared_have_a_legend_row_each_and_a_labelled_lowest_tick(pictures):
    """Three runs: the legend fills column by column, so each row is one run's
    training curve and its validation curve; the loss axis reaches down to the
    power of ten below the lowest loss, a labelled tick."""
    def metrics(loss):
        return [{"epoch": epoch, "train_loss": loss * 4, "val_loss": loss / epoch,
                 "train_accuracy": 0.9, "val_accuracy": 0.9} for epoch in (1, 2)]

    figure = pictures.learning_curves({"a": metrics(0.3), "b": metrics(0.25), "c": metrics(0.4)})
    texts = [text.get_text() for text in figure.legends[0].get_texts()]
    assert texts == ["a, training batches", "b, training batches", "c, training batches",
                     "a, validation", "b, validation", "c, validation"]
    assert figure.axes[0].get_ylim()[0] == pytest.approx(0.1)  # the lowest loss is 0.125


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
