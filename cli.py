"""The command-line vocabulary the scripts share: a parser whose errors are one
line, flag types that refuse bad values before any work starts, --device,
output files written all or nothing, and a quiet end when output is piped
into `head`.

A value that argparse's `type=` function rejects with ArgumentTypeError becomes
`script: error: argument --lr: must be ...` and exit status 2, so a typo costs
a second, not a training run.
"""

import argparse
import contextlib
import csv
import io
import math
import os
import sys
import tempfile

import torch


class ArgumentParser(argparse.ArgumentParser):
    """argparse, except that a bad flag prints one line, not the usage block."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}\n")


def positive_int(text):
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {text}")
    return value


def nonnegative_int(text):
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must not be negative, got {text}")
    return value


def seed(text):
    """torch would wrap a negative seed around without a word, and fail with an
    overflow on one of 2**64 or more; this keeps to a signed 64-bit integer."""
    value = int(text)
    if not 0 <= value < 2 ** 63:
        raise argparse.ArgumentTypeError(f"must be in [0, 2**63), got {text}")
    return value


def positive_float(text):
    value = float(text)
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a finite number above 0, got {text}")
    return value


def nonnegative_float(text):
    value = float(text)
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"must be a finite number, 0 or more, got {text}")
    return value


def fraction(text):
    value = float(text)
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {text}")
    return value


def device(name):
    """--device: 'auto' picks a GPU when there is one; a named device must exist."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        chosen = torch.device(name)
    except RuntimeError:
        chosen = None
    if chosen is None or chosen.type not in ("cpu", "cuda", "mps"):
        raise argparse.ArgumentTypeError(
            f"unknown device '{name}' (use auto, cpu, cuda, cuda:N or mps)")
    if chosen.type == "cuda" and not torch.cuda.is_available():
        raise argparse.ArgumentTypeError("CUDA is not available on this machine (try --device cpu)")
    if chosen.type == "cuda" and (chosen.index or 0) >= torch.cuda.device_count():
        raise argparse.ArgumentTypeError(
            f"there is no {name}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    if chosen.type == "mps" and not torch.backends.mps.is_available():
        raise argparse.ArgumentTypeError("MPS is not available on this machine (try --device cpu)")
    return chosen


def has_native_bf16(device):
    """Whether `device` computes in bfloat16 natively: NVIDIA GPUs since Ampere,
    CPUs with AVX-512 BF16 or AMX. Elsewhere bfloat16 works, emulated, slower
    than float32. (torch's check of the CPU is private, hence getattr.)"""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    if device.type == "cpu":
        return any(getattr(torch.cpu, check, lambda: False)()
                   for check in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"))
    return True


def output_file(path):
    """An output file flag: its folder must exist and take a new file now, so that
    a typo is found before training, not after it."""
    folder = os.path.dirname(path) or "."
    if os.path.isdir(path):
        raise argparse.ArgumentTypeError(f"{path} is a directory, not a file name")
    if not os.path.exists(folder):
        raise argparse.ArgumentTypeError(f"folder {folder} does not exist")
    if not os.path.isdir(folder):
        raise argparse.ArgumentTypeError(f"{folder} is not a folder")
    try:
        tempfile.TemporaryFile(dir=folder).close()
    except OSError as error:
        raise argparse.ArgumentTypeError(f"cannot write into {folder}: {error.strerror}") from None
    return path


def png_file(path):
    """An output picture: a PNG, whose name should say so."""
    if not path.lower().endswith(".png"):
        raise argparse.ArgumentTypeError(f"{path}: the picture is a PNG; give a file name "
                                         f"ending in .png")
    return output_file(path)


def output_folder(path):
    """An output folder flag: made, with any missing parents, if it does not exist."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise argparse.ArgumentTypeError(f"{path} is a file, not a folder")
    try:
        os.makedirs(path, exist_ok=True)
        tempfile.TemporaryFile(dir=path).close()
    except OSError as error:
        raise argparse.ArgumentTypeError(f"cannot write into {path}: {error.strerror}") from None
    return path


def as_flag(name, value):
    """How the flag for argparse's `name` reads with `value`: --lr 0.001, --no-augment."""
    flag = "--" + name.replace("_", "-")
    if isinstance(value, bool):
        return flag if value else f"--no-{flag[2:]}"
    return f"{flag} {' '.join(map(str, value)) if isinstance(value, list) else value}"


@contextlib.contextmanager
def replacing(path):
    """Open a temporary file in `path`'s folder for writing (binary) and, once
    the block has written it without an error, rename it over `path`. A crash,
    Ctrl-C or full disk midway leaves the previous file at `path` intact and no
    temporary file behind. Checkpoints, reports and pictures are written this way."""
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
    """Call write(file) to fill the output file `path`, all of it or nothing:
    through a temporary file, so that a full disk or Ctrl-C never leaves half a
    report or picture. One line on stderr and exit status 1 if the disk refuses."""
    try:
        with replacing(path) as f:
            write(f)
    except OSError as error:  # its folder was checked at start-up, but disks fill up
        raise SystemExit(f"error: cannot write {path}: {error.strerror}; any earlier "
                         f"file there is unchanged") from None


def write_csv(path, rows, fieldnames):
    """Write the dicts `rows` to `path` as a CSV table, all or nothing (write_file)."""
    text = io.StringIO()
    table = csv.DictWriter(text, fieldnames=fieldnames)
    table.writeheader()
    table.writerows(rows)
    write_file(path, lambda f: f.write(text.getvalue().encode()))


def add_device_and_data_flags(parser):
    parser.add_argument("--device", type=device, default="auto",
                        help="auto, cpu, cuda, cuda:N or mps (auto: a GPU if there is one)")
    parser.add_argument("--data-dir", default="./data",
                        help="the data root: MNIST/raw/ (or FashionMNIST/raw/) is looked for "
                             "there, and downloaded there if missing")


def run(main):
    """Run a script's main(). Output piped into a reader that stops early
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
