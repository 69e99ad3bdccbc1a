"""The scripts' command line: flag types that refuse a bad value in one line
before any work starts (argparse turns their ArgumentTypeError into `script:
error: argument --lr: must be ...`, exit status 2), --device, what train.py
checks of its flags together, output files written all or nothing, and the
lines of train.py's epoch table.
"""

import argparse
import contextlib
import csv
import io
import math
import os
import signal
import sys
import tempfile

import torch

import data


class ArgumentParser(argparse.ArgumentParser):
    """argparse, except that a bad flag prints one line, not the usage block."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}\n")


def number(kind, allowed, what):
    """A flag type: the flag's text as an int or a float for which allowed(value)
    holds, or the error that says `what` it must be."""
    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            value = None
        if value is None or not allowed(value):
            hint = ""
            if "," in text:  # --hidden 256,128
                hint = f" (several are separated by spaces: {text.replace(',', ' ')})"
            raise argparse.ArgumentTypeError(f"must be {what}, got {text}{hint}")
        return value
    return parse


positive_int = number(int, lambda value: value >= 1, "a whole number, 1 or more")
nonnegative_int = number(int, lambda value: value >= 0, "a whole number, 0 or more")
# torch wraps a negative seed around without a word, and overflows at 2**64.
seed = number(int, lambda value: 0 <= value < 2 ** 63, "a whole number in [0, 2**63)")
positive_float = number(float, lambda value: math.isfinite(value) and value > 0,
                        "a finite number above 0")
nonnegative_float = number(float, lambda value: math.isfinite(value) and value >= 0,
                           "a finite number, 0 or more")
fraction = number(float, lambda value: 0 <= value < 1, "a number in [0, 1)")


def device(name):
    """--device: 'auto' takes the machine's accelerator (an NVIDIA or AMD GPU,
    Apple's MPS, ...) when torch finds one, else the CPU; a named one must exist."""
    accelerator = torch.accelerator.current_accelerator(check_available=True)
    if name == "auto":
        return accelerator or torch.device("cpu")
    try:
        chosen = torch.device(name)
    except RuntimeError:
        raise argparse.ArgumentTypeError(
            f"unknown device '{name}' (use auto, cpu, cuda, cuda:N or mps)") from None
    if chosen.type != "cpu" and (accelerator is None or accelerator.type != chosen.type
                                 or (chosen.index or 0) >= torch.accelerator.device_count()):
        raise argparse.ArgumentTypeError(f"there is no {name} on this machine (try --device "
                                         f"auto, which takes the CPU where there is no GPU)")
    return chosen


def add_device_and_data_flags(group, data_dir="./data"):
    """--device, --data-dir (its default `data_dir`; None: the folder the model
    was trained on, for a script that reads a checkpoint) and --threads."""
    group.add_argument("--device", type=device, default="auto", help="auto, cpu, cuda, cuda:N, "
                       "mps, ... (auto: the machine's GPU if torch finds one, else the CPU)")
    group.add_argument("--data-dir", default=data_dir, help="the folder with MNIST/raw/ (or "
                       "FashionMNIST/raw/), downloaded there if missing" + (
                           "" if data_dir else " (default: the one the model was trained on)"))
    group.add_argument("--threads", type=positive_int, help="CPU threads torch computes with "
                       "(default: OMP_NUM_THREADS if set, else one per core)")


def use_threads(threads):
    """Compute with `threads` CPU threads, or where None with torch's own choice
    (the user's OMP_NUM_THREADS, else one per core): the same on a machine
    whatever its load, as it must be, since the number changes the order of
    sums and so the weights. Returns the number."""
    if threads is not None:
        torch.set_num_threads(threads)
    return torch.get_num_threads()


def output_file(path):
    """An output file: its folder must take a new file now, so that a typo is
    found before training, not after it."""
    folder = os.path.dirname(path) or "."
    if os.path.isdir(path):
        raise argparse.ArgumentTypeError(f"{path} is a directory, not a file name")
    if not os.path.isdir(folder):
        raise argparse.ArgumentTypeError(f"{folder} is not a folder" if os.path.exists(folder)
                                         else f"folder {folder} does not exist")
    try:
        tempfile.TemporaryFile(dir=folder).close()
    except OSError as error:
        raise argparse.ArgumentTypeError(f"cannot write into {folder}: {error.strerror}") from None
    return path


def png_file(path):
    if not path.lower().endswith(".png"):
        raise argparse.ArgumentTypeError(f"{path}: the picture is a PNG; give a file name "
                                         f"ending in .png")
    return output_file(path)


def parse_and_tell_given(parser, argv):
    """The flags of the command line `argv`, and those it gives, {name: value}."""
    args = parser.parse_args(argv)
    # Parsed again into a namespace that has every flag already: argparse fills
    # in no default, so what is not None was given.
    given = parser.parse_args(argv, argparse.Namespace(**dict.fromkeys(vars(args))))
    return args, {name: value for name, value in vars(given).items() if value is not None}


# ----------------------------------------------------------------------------
# train.py's flags together: which contradict each other (refused), and which
# cannot act in the run (named in a note, not refused: a sweep may give one set
# of flags to every run)

# Where a run reads, writes and computes, not what it learns: --resume may change
# these; alone, none can idle; the pictures leave them out of a run's label.
WHERE_FLAGS = ("data_dir", "device", "threads", "out", "log", "resume")


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
            "hidden", "activation", "dropout", "optimizer", "lr", "momentum", "weight_decay",
            "scheduler", "gamma", "batch_size", "epochs", "label_smoothing", "ema", "bf16",
            "clean_epochs", "out", "log"], "--show-augmentation trains nothing"))
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


# ----------------------------------------------------------------------------
# train.py's epoch table

def what_the_columns_measure(flags):
    """The two lines above the epoch table (and under the learning curves), for
    train.py's flags as a dict: train and val are not measured alike, so the
    train loss can stay above the val loss without under-fitting."""
    train = "distorted batches" if flags["augment"] else "the batches"
    if flags["augment"] and flags["clean_epochs"]:
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
    val = "none (--val-size 0)"
    if flags["val_size"]:
        val = (f"{flags['val_size']:,} held-out images as they are, after the epoch"
               + (", by the weights' moving average" if flags["ema"] else "")
               + "; plain cross-entropy")
    return [f"train: {train}", f"val:   {val}"]


TABLE_HEADER = ("epoch  train loss  train acc  val loss   val acc     time   images/s"
                "        lr  momentum")


def print_epoch(row):
    def show(name, form):  # the validation figures are None without a validation set
        return "-" if row[name] is None else format(row[name], form)

    print(f"{row['epoch']:5d}  {show('train_loss', '.4f'):>10}  "
          f"{show('train_accuracy', '.2%'):>9}  {show('val_loss', '.4f'):>8}  "
          f"{show('val_accuracy', '.2%'):>8}  {row['seconds']:6.1f}s  "
          f"{row['images_per_second']:9,.0f}  {row['lr']:8.2e}  {row['momentum']:8.3f}",
          flush=True)


# ----------------------------------------------------------------------------
# Output files, Ctrl-C and SIGTERM

@contextlib.contextmanager
def replacing(path):
    """A temporary file in `path`'s folder to write (binary), renamed over `path`
    once the block has written it without an error: a crash, Ctrl-C or full disk
    midway leaves the previous file whole and no temporary file behind."""
    temporary = f"{path}.{os.getpid()}.tmp"
    try:
        with open(temporary, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())  # on disk before the rename makes it visible
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)


def write_file(path, write):
    """Fill the output file `path` by write(file), all of it or nothing; one line
    on stderr and exit status 1 if the disk refuses."""
    try:
        with replacing(path) as f:
            write(f)
    except OSError as error:  # its folder was checked at start-up, but disks fill up
        raise SystemExit(f"error: cannot write {path}: {error.strerror}; any earlier "
                         f"file there is unchanged") from None


def write_csv(path, rows):
    """The dicts `rows` as a CSV table, the whole file anew: a kill never leaves
    half a line."""
    text = io.StringIO()
    table = csv.DictWriter(text, fieldnames=list(rows[0]))
    table.writeheader()
    table.writerows(rows)
    write_file(path, lambda f: f.write(text.getvalue().encode()))


@contextlib.contextmanager
def sigterm_as_ctrl_c():
    """Inside this block SIGTERM (`kill`, a cluster's time limit) ends the run as
    Ctrl-C does, with KeyboardInterrupt; afterwards the caller's own handler is
    back (a notebook or a test that calls train.main keeps its own)."""
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run(main):
    """Run a script's main(): output piped into a reader that stops early
    (`python evaluate.py model.pt | head -2`) ends quietly, as Unix tools do, and
    Ctrl-C before a script has anything to save ends in one line."""
    try:
        main()
        sys.stdout.flush()  # a closed pipe shows here, not at exit where it cannot be caught
    except BrokenPipeError:
        # Python's own advice: point stdout at /dev/null, or the interpreter's
        # flush at exit hits the closed pipe again and prints a traceback.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit("interrupted")
