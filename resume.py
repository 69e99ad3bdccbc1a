"""train.py --resume: continue an interrupted run from its checkpoint, with the
run's own flags, exactly as if it had never stopped (on the CPU, bit for bit).
"""

import argparse

import torch

import cli
from load import CheckpointError, load_checkpoint
from train_flags import as_flag


class RefusedFlag(ValueError):
    """A flag given with --resume that would change the stored run, or an output
    of the run that cannot be written any more."""


def resumed_args(args, given, may_change):
    """For --resume: the flags stored in the checkpoint, but for those of
    `may_change` among the `given` ones (where the data is read, the run written
    and computed), and the checkpoint. Raises CheckpointError for a file that
    cannot be resumed, RefusedFlag for a given flag that differs from the run's
    own or an output that cannot be written."""
    _, checkpoint = load_checkpoint(args.resume)
    stored = checkpoint["train_args"]
    if set(stored) != set(vars(args)):
        raise CheckpointError(f"{args.resume}: saved by another version of train.py, whose "
                              f"flags differ from this one's; start the run again")
    for name, value in given.items():
        if name not in may_change and value != stored[name]:
            flag = as_flag(name, value)
            raise RefusedFlag(f"{flag} would change the run in {args.resume} "
                              f"({as_flag(name, stored[name])}), which --resume "
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
