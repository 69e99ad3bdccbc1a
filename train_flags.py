"""train.py's flags beyond what argparse checks: which ones the command line
gave (a resumed run refuses those that would change it, and a flag that can do
nothing is named), which contradict each other, and what is said before a run.
"""

import argparse

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
