"""The checkpoint file, in one place: train.py saves it after every epoch
(save_run), every script reads it back safely (load_checkpoint), and
train.py --resume continues the run it holds (resumed_args, restore).

Self-describing: the model's constructor arguments and weights, the input
normalization, the data set and its classes, train.py's flags and per-epoch
metrics, and until the run is finished the state --resume continues from.
"""

import argparse
import os
import re
import warnings

import torch

import cli
import data
from model import MLP

CHECKPOINT_FORMAT = "mnist-mlp-checkpoint/2"
# What a checkpoint holds besides "format", and of what type.
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
            "num_classes": model.output_layer.out_features,
            "activation": type(model.activation).__name__.lower()}  # nn.GELU: "gelu"


@torch.no_grad()
def probe(model):
    """The model's logits for two fixed inputs, on the CPU, in evaluation mode:
    saved with the weights, so that a reader whose model.py computes something
    else from them (another non-linearity, say) finds out."""
    was_training = model.training
    model.eval()
    inputs = torch.linspace(-2, 2, 2 * model_config(model)["in_features"]).view(2, -1)
    logits = model(inputs.to(next(model.parameters()).device)).float().cpu()
    model.train(was_training)
    return logits


def save_checkpoint(path, model, normalization, **details):
    """Write a checkpoint, all of it or nothing: the model, the normalization of
    its inputs ({"mean": .., "std": ..}), its probe and the `details`
    CHECKPOINT_FIELDS lists."""
    checkpoint = {"format": CHECKPOINT_FORMAT, "config": model_config(model),
                  "state_dict": {name: tensor.cpu() for name, tensor in
                                 model.state_dict().items()},
                  "normalization": normalization, "probe": probe(model), **details}
    with cli.replacing(path) as f:
        try:
            torch.save(checkpoint, f)
        except RuntimeError as error:  # Ctrl-C or SIGTERM stopped it, and its writer failed
            if isinstance(error.__context__, KeyboardInterrupt):
                raise KeyboardInterrupt from None
            raise


def save_run(args, model, normalization, history, state):
    """train.py's checkpoint after the last epoch of `history`, with the training
    `state` (None once the run is finished); CheckpointError if the disk refuses."""
    try:
        save_checkpoint(args.out, model, normalization,
                        dataset=args.dataset, classes=data.DATASETS[args.dataset]["classes"],
                        train_args={**vars(args), "device": str(args.device)},
                        metrics=history, epochs_completed=len(history), training_state=state)
    except OSError as error:
        raise CheckpointError(f"cannot save {args.out}: {error.strerror}; any earlier "
                              f"file there is unchanged") from None


def training_state(model, averaged, optimizer, scheduler, generators):
    """Everything besides the saved weights that the next epoch depends on: the
    optimizer's moments, the scheduler's step, every random generator's state
    and, with --ema, the trained weights (the saved ones are their average)."""
    random_states = {name: generator.get_state() for name, generator in generators.items()}
    random_states["torch"] = torch.get_rng_state()  # dropout draws from the global generator
    if torch.cuda.is_available():
        random_states["cuda"] = torch.cuda.get_rng_state_all()
    return {"optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict() if scheduler else None,
            "random": random_states,
            "averaging": None if averaged is None else {"weights": model.state_dict(),
                                                        "steps": averaged.steps}}


# ----------------------------------------------------------------------------
# Reading it back: the model rebuilt from the file alone, no code in it run

def load_checkpoint(path, device="cpu"):
    """Rebuild the model from a checkpoint file alone. Returns (model, checkpoint).

    weights_only=True restricts unpickling to tensors and plain data, so a
    crafted file cannot run code here; it fails to load instead."""
    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: " + ("is a directory, not a checkpoint file"
                                             if os.path.isdir(path) else "no such file (python "
                                             f"train.py --out {path} trains one)"))
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
    # Saved before --activation existed: no probe, and the model was ReLU's, the default.
    if "probe" in checkpoint and not (
            isinstance(checkpoint["probe"], torch.Tensor)
            and checkpoint["probe"].shape == (2, model.output_layer.out_features)
            and torch.allclose(probe(model), checkpoint["probe"], rtol=1e-3, atol=1e-4)):
        raise CheckpointError(f"{path}: model.py computes other outputs from these weights "
                              f"than the model that was saved: it was changed since; put "
                              f"it back as it was, or train again")
    return model.to(device), checkpoint


# ----------------------------------------------------------------------------
# Continuing the run it holds: train.py --resume

class RefusedFlag(ValueError):
    """A flag given with --resume that would change the stored run, or an output
    of the run that cannot be written any more."""


def resumed_args(args, given):
    """For --resume: the flags stored in the checkpoint, but for those of
    cli.WHERE_FLAGS among the `given` ones (where the data is read, the run written
    and computed), and the checkpoint. Raises CheckpointError for a file that
    cannot be resumed, RefusedFlag for a given flag that differs from the run's
    own or an output that cannot be written."""
    _, checkpoint = load_checkpoint(args.resume)
    stored = checkpoint["train_args"]
    if set(stored) != set(vars(args)):
        raise CheckpointError(f"{args.resume}: saved by another version of train.py, whose "
                              f"flags differ from this one's; start the run again")
    for name, value in given.items():
        if name not in cli.WHERE_FLAGS and value != stored[name]:
            flag = cli.as_flag(name, value)
            raise RefusedFlag(f"{flag} would change the run in {args.resume} "
                              f"({cli.as_flag(name, stored[name])}), which --resume "
                              f"continues as it was: leave {flag.split()[0]} out")
    # Without --device, the run's own device if this machine has it (a CPU run
    # stays on the CPU where there is a GPU too), else --device's default.
    device = args.device
    if "device" not in given:
        try:
            device = cli.device(stored["device"])
        except argparse.ArgumentTypeError:
            pass
    args = argparse.Namespace(**{**stored, "device": device, "out": args.resume,
                                 "resume": args.resume, **given})
    if "threads" not in given and "OMP_NUM_THREADS" in os.environ:
        args.threads = None  # the user's own count wins, as in a fresh run
    # Its outputs, checked as a fresh run's are: a folder removed since fails now,
    # not after an epoch has trained.
    for name, flag in (("out", "--resume"), ("log", "--log")):
        if getattr(args, name) is not None and name not in given:
            try:
                cli.output_file(getattr(args, name))
            except argparse.ArgumentTypeError as error:
                raise RefusedFlag(f"argument {flag}: {error}, where the run in "
                                  f"{args.resume} writes") from None
    return args, checkpoint


def restore(checkpoint, args, model, averaged, optimizer, scheduler, generators):
    """Put the run back where its checkpoint left it: weights (and their
    average), optimizer, scheduler and random generators, so that the next epoch
    draws the same shuffling, distortions and dropout, from the same weights, as
    it would have in the run never interrupted. Returns the metrics so far."""
    # A generator's state is only valid on its own kind of device: a run moved
    # from a GPU to the CPU (or back) draws its distortions anew from here.
    if (str(checkpoint["train_args"]["device"]).split(":")[0] != args.device.type
            and "augmentation" in generators):
        generators = {name: generators[name] for name in generators if name != "augmentation"}
        print(f"note: the run moves from {checkpoint['train_args']['device']} to "
              f"{args.device}; its distortions will differ from the run's own")
    if args.device.type == "cpu" and args.threads != checkpoint["train_args"]["threads"]:
        print(f"note: the run continues on {args.threads} CPU threads, not its own "
              f"{checkpoint['train_args']['threads']}: its sums, and so its weights, will "
              f"differ a little from the run's own")
    state = checkpoint["training_state"]
    try:
        model.load_state_dict(checkpoint["state_dict"])
        if averaged is not None:  # the saved weights are the average
            averaged.average.load_state_dict(model.state_dict())
            model.load_state_dict(state["averaging"]["weights"])
            averaged.steps = state["averaging"]["steps"]
        optimizer.load_state_dict(state["optimizer"])
        if scheduler:
            scheduler.load_state_dict(state["scheduler"])
        for name, generator in generators.items():
            generator.set_state(state["random"][name])
        torch.set_rng_state(state["random"]["torch"])
        if torch.cuda.is_available() and "cuda" in state["random"]:
            torch.cuda.set_rng_state_all(state["random"]["cuda"])
    except (KeyError, TypeError, ValueError, RuntimeError):
        raise CheckpointError(f"{args.resume}: its training state does not fit the run its "
                              f"flags describe; nothing was trained") from None
    return checkpoint["metrics"]
