"""What train.py checks of the flags that shape a run, beyond what argparse
checks: which contradict each other (refused), and which cannot act in the run
(named in a note, not refused: a sweep may give one set of flags to every run).
"""

import torch

import data


def as_flag(name, value):
    """How the flag for argparse's `name` reads with `value`: --lr 0.001, --no-augment."""
    flag = "--" + name.replace("_", "-")
    if isinstance(value, bool):
        return flag if value else f"--no-{flag[2:]}"
    return f"{flag} {' '.join(map(str, value)) if isinstance(value, list) else value}"


def refuse_conflicting_flags(parser, args):
    if args.show_augmentation and not args.augment:
        parser.error("argument --show-augmentation: there is nothing to show with --no-augment")
    if args.clean_epochs and not args.augment:
        parser.error("argument --clean-epochs: with --no-augment every epoch is clean")
    if args.clean_epochs > args.epochs:
        parser.error(f"argument --clean-epochs: {args.clean_epochs} is more than "
                     f"--epochs {args.epochs}")


def idle_flags(args, given):
    """The flags among `given` that cannot act in this run, each with why."""
    distortions = list(data.DISTORTION_DEFAULTS)
    idle = {}
    if args.optimizer != "sgd":
        idle["momentum"] = (f"it acts with --optimizer sgd only ({args.optimizer}'s "
                            f"counterpart, its first beta, is not a flag)")
    if args.scheduler != "step":
        idle["gamma"] = "it belongs to --scheduler step"
    elif args.epochs == 1:
        idle["gamma"] = "the rate steps after each epoch, and there is one"
    if not args.augment:
        idle.update(dict.fromkeys(distortions, "--no-augment distorts nothing"))
    elif args.clean_epochs >= args.epochs and not args.show_augmentation:
        idle.update(dict.fromkeys(["augment", *distortions], f"with --clean-epochs "
                                  f"{args.clean_epochs} every epoch is clean"))
    elif args.elastic_alpha == 0:
        idle["elastic_sigma"] = "there is no elastic distortion at --elastic-alpha 0"
    if args.show_augmentation:
        idle.update(dict.fromkeys([
            "hidden", "dropout", "optimizer", "lr", "momentum", "weight_decay", "scheduler",
            "gamma", "batch_size", "epochs", "label_smoothing", "ema", "bf16", "clean_epochs",
            "out", "log"], "--show-augmentation trains nothing"))
    return {name: why for name, why in idle.items() if name in given}


def notes(args, given):
    """A note on each flag among `given` that cannot act in this run, saying why,
    and on a --bf16 that will run slower than float32."""
    notes = [f"{as_flag(name, getattr(args, name))} does nothing in this run: {why}"
             for name, why in idle_flags(args, given).items()]
    if args.bf16 and not args.show_augmentation and not has_native_bf16(args.device):
        notes.append(f"{args.device} has no native bfloat16, so --bf16 runs slower than "
                     f"float32 here")
    return notes


def has_native_bf16(device):
    """Whether `device` computes in bfloat16 natively (NVIDIA GPUs since Ampere,
    CPUs with AVX-512 BF16 or AMX), not emulated, slower than float32. torch's
    check of the CPU is private, hence getattr."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    if device.type == "cpu":
        return any(getattr(torch.cpu, check, lambda: False)()
                   for check in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"))
    return True
