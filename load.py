"""A checkpoint read back: the model rebuilt from its file alone, safely (no code
in a file can run), for evaluate.py, predict.py, draw.py, pictures.py and
train.py --resume.
"""

import os
import re
import warnings

import torch

from checkpoint import CHECKPOINT_FIELDS, CHECKPOINT_FORMAT, CheckpointError
from model import MLP


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
    return model.to(device), checkpoint
