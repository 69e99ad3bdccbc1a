"""train.py's flags beyond what argparse checks: which ones the command line
gave (a resumed run refuses those that would change it, and a flag that can do
nothing is named), which contradict each other, and what is said before a run.
"""

import argparse
import math

import cli
import data


def parse(parser, argv):
    """The flags of the command line `argv`, parsed once, and those that it
    gives, as {argparse name: value}: argparse itself does not tell them from
    the defaults. It parses into a namespace that has every flag already, so it
    fills in no default; the defaults are filled in after, each checked as
    argparse checks one (--out's folder, --device's GPU), and only those."""
    unset = object()
    names = [action.dest for action in parser._actions if action.dest != argparse.SUPPRESS]
    parsed = parser.parse_args(argv, argparse.Namespace(**dict.fromkeys(names, unset)))
    given = {name: value for name, value in vars(parsed).items() if value is not unset}
    return parser.parse_args([], argparse.Namespace(**given)), given


def conflicting_flags(args):
    """Flags that contradict each other, as argparse's message for the refusal,
    or None."""
    if args.show_augmentation and not args.augment:
        return "argument --show-augmentation: there is nothing to show with --no-augment"
    if args.clean_epochs and not args.augment:
        return "argument --clean-epochs: with --no-augment every epoch is clean"
    if args.clean_epochs > args.epochs:
        return (f"argument --clean-epochs: {args.clean_epochs} is more than "
                f"--epochs {args.epochs}")
    return None


def unwritable_stored_output(args, given):
    """For --resume: what the run writes where the command line does not say
    otherwise (its checkpoint, and the log the checkpoint names), checked as a
    fresh run's outputs are, so that a folder removed since fails now, not after
    an epoch has trained. argparse's message for the refusal, or None."""
    for name, flag in (("out", "--resume"), ("log", "--log")):
        if getattr(args, name) is not None and name not in given:
            try:
                cli.output_file(getattr(args, name))
            except argparse.ArgumentTypeError as error:
                return f"argument {flag}: {error}, where the run in {args.resume} writes"
    return None


def idle_flags(args, given):
    """The flags among `given` that no value of could change the run, each with
    why. They are named in a note, not refused: a sweep may pass one set of
    flags to runs that use different parts of it."""
    idle = {}
    if args.optimizer != "sgd":
        idle["momentum"] = f"it is sgd's ({args.optimizer}'s beta1 is torch's)"
    if args.scheduler != "step":
        idle["gamma"] = "it belongs to --scheduler step"
    elif args.epochs == 1:
        idle["gamma"] = "the rate steps after each epoch, and there is one"
    if not args.augment:
        idle.update(dict.fromkeys(data.DISTORTION_DEFAULTS, "--no-augment distorts nothing"))
    elif args.clean_epochs >= args.epochs and not args.show_augmentation:
        idle.update(dict.fromkeys(["augment", *data.DISTORTION_DEFAULTS],
                                  f"with --clean-epochs {args.clean_epochs} every epoch is "
                                  f"clean"))
    elif args.elastic_alpha == 0:
        idle["elastic_sigma"] = "there is no elastic distortion at --elastic-alpha 0"
    if args.show_augmentation:
        training = ["hidden", "dropout", "optimizer", "lr", "momentum", "weight_decay",
                    "scheduler", "gamma", "batch_size", "epochs", "label_smoothing", "ema",
                    "bf16", "clean_epochs", "out", "log"]
        idle.update(dict.fromkeys(training, "--show-augmentation trains nothing"))
    return {name: why for name, why in idle.items() if name in given}


def notes(args, given):
    """What train.py says before it starts: each idle flag among `given`, and
    a --bf16 that will run slower than float32."""
    idle = idle_flags(args, given)
    notes = [f"{cli.as_flag(name, getattr(args, name))} does nothing in this run: {why}"
             for name, why in idle.items()]
    if args.bf16 and "bf16" not in idle and not cli.has_native_bf16(args.device):
        notes.append(f"{args.device} has no native bfloat16, so --bf16 runs slower than "
                     f"float32 here")
    return notes


def what_the_columns_measure(flags):
    """The two lines above the epoch table (and under the learning curves), for
    train.py's flags as a dict: the train and val columns are not measured alike,
    so the train loss can stay well above the val loss without under-fitting."""
    train = "distorted batches" if flags["augment"] else "the batches"
    if flags["augment"] and flags.get("clean_epochs"):
        train += f" (undistorted in the last {flags['clean_epochs']} epochs)"
    train += ", averaged over the epoch while learning"
    if flags["dropout"]:
        train += ", dropout on"
    smoothing = flags["label_smoothing"]
    if smoothing:
        # The smoothed target's own entropy, the lowest loss any model can reach.
        kept, spread = 1 - smoothing + smoothing / 10, smoothing / 10
        floor = -(kept * math.log(kept) + 9 * spread * math.log(spread))
        train += f"; loss label-smoothed by {smoothing:g} (at best {floor:.2f})"
    if flags["val_size"]:
        val = (f"{flags['val_size']:,} held-out images as they are, after the epoch"
               + (", by the weights' moving average" if flags.get("ema") else "")
               + "; plain cross-entropy")
    else:
        val = "none (--val-size 0)"
    return [f"train: {train}", f"val:   {val}"]
