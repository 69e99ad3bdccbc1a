"""The checkpoint file, and what a long run needs to survive being stopped.

A checkpoint is self-describing: the model's constructor arguments and weights,
the input normalization, the data set and its class names, train.py's flags and
per-epoch metrics, and, until the run is finished, its training state: what
`python train.py --resume model.pt` needs to continue exactly where it stopped.
It is written atomically and opened safely (no code in it can run).
"""

import argparse
import contextlib
import os
import re
import signal
import warnings

import torch

import cli
import data
from model import MLP

CHECKPOINT_FORMAT = "mnist-mlp-checkpoint/2"
# What a checkpoint holds besides "format", and of what type: the model's
# constructor arguments and weights, the input normalization ({"mean", "std"}),
# the data set and its class names, train.py's flags, its per-epoch metrics,
# and, until the run is finished, what --resume needs to continue it.
CHECKPOINT_FIELDS = {"config": dict, "state_dict": dict, "normalization": dict,
                     "dataset": str, "classes": list, "train_args": dict, "metrics": list,
                     "epochs_completed": int, "training_state": (dict, type(None))}


class CheckpointError(Exception):
    """A checkpoint file that cannot be used; the message says why."""


def model_config(model):
    """An MLP's constructor arguments, read off its layers: what builds it again."""
    first = model.hidden_layers[0] if len(model.hidden_layers) else model.output_layer
    return {"hidden": [layer.out_features for layer in model.hidden_layers],
            "dropout": model.dropout.p, "in_features": first.in_features,
            "num_classes": model.output_layer.out_features}


def save_checkpoint(path, model, normalization, **details):
    """Write a self-describing checkpoint: the model's constructor arguments, its
    weights, the input normalization it was trained with ({"mean": .., "std": ..})
    and the `details` that CHECKPOINT_FIELDS lists (data set, flags, metrics, ...)."""
    checkpoint = {"format": CHECKPOINT_FORMAT, "config": model_config(model),
                  "state_dict": {name: tensor.cpu() for name, tensor in
                                 model.state_dict().items()},
                  "normalization": normalization, **details}
    with cli.replacing(path) as f:
        torch.save(checkpoint, f)


def load_checkpoint(path, device="cpu"):
    """Rebuild the model from a checkpoint file alone. Returns (model, checkpoint).

    weights_only=True restricts unpickling to tensors and plain data, so a
    crafted file cannot run code here; it fails to load instead."""
    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: " + ("is a directory, not a checkpoint file"
                                             if os.path.isdir(path) else "no such file"))
    try:
        with warnings.catch_warnings():  # torch warns about odd pickle protocols
            warnings.simplefilter("ignore")
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # anything at all: this file is not one we can use
        code = re.search(r"Unsupported global: GLOBAL (\S+)", str(error))
        if code:
            raise CheckpointError(f"{path}: refused, it asks to import {code[1]}, which "
                                  f"could run code; a checkpoint holds only tensors and "
                                  f"plain data") from None
        raise CheckpointError(f"{path}: not a readable checkpoint (empty, truncated, "
                              f"corrupt or not a torch file)") from None
    if not isinstance(checkpoint, dict) or not str(checkpoint.get("format")).startswith(
            "mnist-mlp-checkpoint/"):
        raise CheckpointError(f"{path}: a torch file, but not a checkpoint saved by train.py")
    if checkpoint["format"] != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path}: saved by another version of train.py (format "
                              f"{checkpoint['format']}, this one reads {CHECKPOINT_FORMAT}); "
                              f"train the model again")
    invalid = [name for name, kind in CHECKPOINT_FIELDS.items()
               if not isinstance(checkpoint.get(name), kind)]
    if invalid:
        raise CheckpointError(f"{path}: a train.py checkpoint, but its {', '.join(invalid)} "
                              f"{'is' if len(invalid) == 1 else 'are'} missing or invalid")
    normalization = checkpoint["normalization"]
    if not (all(isinstance(normalization.get(key), float) for key in ("mean", "std"))
            and normalization["std"] > 0):
        raise CheckpointError(f"{path}: the input normalization is missing or invalid")
    try:
        # Built on the meta device (shapes only, no memory), then given the stored
        # tensors: a config asking for a huge model allocates nothing, and weights
        # of the wrong shape are refused by load_state_dict.
        with torch.device("meta"):
            model = MLP(**checkpoint["config"])
        model.load_state_dict(checkpoint["state_dict"], assign=True)
    except (KeyError, TypeError, ValueError, RuntimeError) as error:
        reason = str(error).strip().splitlines()[-1].strip()
        raise CheckpointError(f"{path}: the stored weights do not fit the stored model "
                              f"({reason})") from None
    return model.to(device), checkpoint


def save_run(args, model, normalization, history, state):
    """train.py's checkpoint after the last epoch of `history`; `state` is the
    training state for --resume, or None once the run is finished. If the disk
    refuses, CheckpointError, and the earlier file is kept."""
    try:
        save_checkpoint(args.out, model, normalization,
                        dataset=args.dataset, classes=data.DATASETS[args.dataset]["classes"],
                        train_args={**vars(args), "device": str(args.device)},
                        metrics=history, epochs_completed=len(history), training_state=state)
    except OSError as error:
        raise CheckpointError(f"cannot save {args.out}: {error.strerror}; any earlier "
                              f"file there is unchanged") from None


# ----------------------------------------------------------------------------
# Resuming: the flags of the stored run, and the state it left

# What a resumed run may change: where the data is read from, where the run goes
# and what it runs on. Every other flag is the run's own, stored in the checkpoint.
MAY_CHANGE_ON_RESUME = ("data_dir", "device", "out", "log", "resume")


class ChangedFlag(ValueError):
    """A flag given with --resume that would change the stored run."""


def resumed_args(parser, args, given):
    """For --resume: the flags stored in the checkpoint (and those of
    MAY_CHANGE_ON_RESUME among the `given` ones), and the checkpoint. Raises
    CheckpointError for a file that cannot be resumed, ChangedFlag for a given
    flag that differs from the run's own."""
    _, checkpoint = load_checkpoint(args.resume)
    # A flag added since the run was saved takes its default, which does what
    # train.py did before it had the flag.
    stored = {**{name: parser.get_default(name) for name in vars(args)},
              **checkpoint["train_args"]}
    for name, value in given.items():
        if name not in MAY_CHANGE_ON_RESUME and value != stored[name]:
            raise ChangedFlag(f"{cli.as_flag(name, value)} would change the run in "
                              f"{args.resume} ({cli.as_flag(name, stored[name])}), which "
                              f"--resume continues as it was: leave "
                              f"{cli.as_flag(name, value).split()[0]} out")
    device = stored_device_or(args.device, stored["device"])
    args = argparse.Namespace(**{**stored, "device": device, "out": args.resume,
                                 "resume": args.resume, **given})
    return args, checkpoint


def stored_device_or(device, stored):
    """The device a resumed run goes on without --device: its own, if this
    machine has it (a CPU run stays on the CPU where there is a GPU too), else
    --device's default."""
    try:
        return cli.device(stored)
    except argparse.ArgumentTypeError:
        return device


@contextlib.contextmanager
def sigterm_as_ctrl_c():
    """A cluster's time limit or `kill` sends SIGTERM: inside this block it ends
    the run as Ctrl-C does (KeyboardInterrupt), so that the last epoch saved is
    named and nothing is half-written; afterwards the caller's own handler is
    back (a notebook or a test that calls train.main keeps its own)."""
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def training_state(model, averaged, optimizer, scheduler, generators):
    """Everything besides the saved weights that the next epoch depends on: the
    optimizer's moment estimates, the scheduler's step count, the state of every
    random generator and, with --ema, the trained weights (the saved ones are
    their average). Tensors and plain data, as a checkpoint must be."""
    random_states = {name: generator.get_state() for name, generator in generators.items()}
    random_states["torch"] = torch.get_rng_state()  # dropout draws from the global generator
    if torch.cuda.is_available():
        random_states["cuda"] = torch.cuda.get_rng_state_all()
    return {"optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict() if scheduler else None,
            "random": random_states,
            "averaging": None if averaged is None else {"weights": model.state_dict(),
                                                        "steps": averaged.steps}}


def restore_training_state(state, model, averaged, optimizer, scheduler, generators):
    """Undo training_state, `model` holding the saved weights: the next epoch
    then draws the same shuffling, distortions and dropout, from the same
    weights, as it would have in the run never interrupted."""
    if averaged is not None:
        averaged.average.load_state_dict(model.state_dict())
        model.load_state_dict(state["averaging"]["weights"])
        averaged.steps = int(state["averaging"]["steps"])  # a tensor in older checkpoints
    optimizer.load_state_dict(state["optimizer"])
    if scheduler:
        scheduler.load_state_dict(state["scheduler"])
    random_states = state["random"]
    for name, generator in generators.items():  # those of the checkpoint's device
        generator.set_state(random_states[name])
    torch.set_rng_state(random_states["torch"])
    if torch.cuda.is_available() and "cuda" in random_states:
        torch.cuda.set_rng_state_all(random_states["cuda"])


def resume(checkpoint, args, model, averaged, optimizer, scheduler, generators):
    """Put the run back where its checkpoint left it: weights (and their
    average), optimizer, scheduler and random generators. Returns the metrics
    of the epochs done."""
    # A generator's state is only valid on its own kind of device: a run moved
    # from a GPU to the CPU (or back) draws its distortions anew from here.
    moved = str(checkpoint["train_args"]["device"]).split(":")[0] != args.device.type
    restorable = {name: generator for name, generator in generators.items()
                  if not (moved and name == "augmentation")}
    if len(restorable) < len(generators):
        print(f"note: the run moves from {checkpoint['train_args']['device']} to "
              f"{args.device}; its distortions will differ from the run's own")
    try:
        model.load_state_dict(checkpoint["state_dict"])
        restore_training_state(checkpoint["training_state"], model, averaged, optimizer,
                               scheduler, restorable)
    except (KeyError, TypeError, ValueError, RuntimeError):
        raise CheckpointError(f"{args.resume}: its training state does not fit the run its "
                              f"flags describe; nothing was trained") from None
    if args.optimizer == "sgd" and getattr(scheduler, "cycle_momentum", False):
        print("note: this run was begun by an older train.py, whose one-cycle schedule "
              "cycles SGD's momentum (0.95 to 0.85 and back) in place of --momentum; it "
              "goes on as it began")
    return checkpoint["metrics"]
