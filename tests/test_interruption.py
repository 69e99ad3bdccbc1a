"""Interruption and failure: nothing lost."""

import errno
import os

import pytest
import torch
from conftest import (
    assert_one_line_error,
    run,
)

import train
from checkpoint import CHECKPOINT_FIELDS, load_checkpoint, model_config, save_checkpoint
from cli import replacing

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
