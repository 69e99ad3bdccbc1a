"""Every flag acts: a short run with the flag changed saves other weights, and a
flag that cannot act is named in a note."""


import pytest
import torch
from conftest import (
    run,
)

import cli
import data
import train

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
    *[("--activation", [], ["--activation", activation])
      for activation in ("gelu", "tanh", "sigmoid", "identity")],
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
DATA_AND_OUTPUT = {"dataset", "val_size", "seed", "device", "threads", "data_dir", "out", "log",
                   "resume"}


def test_every_training_flag_has_a_row_in_the_table():
    every_flag = vars(train.parse_args([])[0])
    flags = {cli.as_flag(name, "").split()[0]
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


def test_a_batch_of_every_training_image_is_named_in_a_note_before_training(saved_weights):
    """The small data set's run trains on 500 images (100 held out)."""
    _, printed = saved_weights("--batch-size", "500")
    lines = printed.splitlines()
    notes = [line for line in lines if line.startswith("note:")]
    assert notes == ["note: --batch-size 500 takes all 500 training images in one step: one "
                     "step an epoch, 1 in the run"]
    assert lines.index(notes[0]) < next(i for i, line in enumerate(lines)
                                        if line.startswith("epoch  train loss"))
    _, printed = saved_weights("--batch-size", "499")
    assert "note:" not in printed


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
    assert set(cli.idle_flags(args, everything)) == training | {
        "clean_epochs", "out", "log", "elastic_sigma"}  # (at --elastic-alpha 0)


def test_bf16_without_native_support_is_named_once_and_only_when_it_trains(monkeypatch):
    monkeypatch.setattr(cli, "has_native_bf16", lambda device: False)
    parser = train.make_parser()
    for argv, expected in [
            (["--bf16"], ["cpu has no native bfloat16, so --bf16 runs slower than float32 "
                          "here"]),
            (["--bf16", "--show-augmentation", "a.png"],
             ["--bf16 does nothing in this run: --show-augmentation trains nothing"])]:
        argv += ["--device", "cpu"]
        assert cli.notes(*cli.parse_and_tell_given(parser, argv)) == expected
