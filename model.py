"""The multi-layer perceptron, and the checkpoint file that stores it."""

import contextlib
import os
import re
import warnings

import torch
from torch import nn


class MLP(nn.Module):
    """A multi-layer perceptron: linear layers with a pointwise non-linearity in
    between. With one hidden layer it is the lecture's

        h = relu(W1 x + b1)
        y = W2 h + b2

    where x is the image flattened to 784 numbers and y holds one logit (the log
    odds) per class. The predicted class is the index of the largest logit,
    `logits.argmax(dim=1)`. Softmax is not applied here: nn.CrossEntropyLoss does
    it, fused with the log, which is faster and numerically stable.
    """

    def __init__(self, hidden=(512,), dropout=0.0, in_features=28 * 28, num_classes=10):
        super().__init__()
        # Everything needed to build this model again, stored in its checkpoint.
        self.config = {"hidden": list(hidden), "dropout": dropout,
                       "in_features": in_features, "num_classes": num_classes}
        widths = [in_features, *hidden]
        self.flatten = nn.Flatten()  # [B, 1, 28, 28] -> [B, 784]
        self.hidden_layers = nn.ModuleList(
            nn.Linear(n_in, n_out) for n_in, n_out in zip(widths, widths[1:]))
        self.dropout = nn.Dropout(dropout)  # does nothing when dropout=0 or in eval()
        self.output_layer = nn.Linear(widths[-1], num_classes)

    def forward(self, x):
        h = self.flatten(x)
        for linear in self.hidden_layers:
            h = self.dropout(torch.relu(linear(h)))  # h = relu(W x + b)
        return self.output_layer(h)  # y = W h + b: the logits


@torch.no_grad()
def predict(model, loader):
    """The model's logits for every batch of `loader`, and the labels, in order."""
    model.eval()  # no dropout
    logits, labels = zip(*[(model(images), labels) for images, labels in loader])
    return torch.cat(logits), torch.cat(labels)


# ----------------------------------------------------------------------------
# Checkpoints

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


@contextlib.contextmanager
def replacing(path):
    """Open a temporary file in `path`'s folder for writing (binary) and, once
    the block has written it without an error, rename it over `path`. A crash,
    Ctrl-C or full disk midway leaves the previous file at `path` intact and no
    temporary file behind. Checkpoints are written this way, and so are
    evaluate.py's reports."""
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


def save_checkpoint(path, config, state_dict, normalization, **details):
    """Write a self-describing checkpoint: the model's constructor arguments, its
    weights, the input normalization it was trained with ({"mean": .., "std": ..})
    and the `details` that CHECKPOINT_FIELDS lists (data set, flags, metrics, ...)."""
    checkpoint = {"format": CHECKPOINT_FORMAT, "config": config,
                  "state_dict": {name: tensor.cpu() for name, tensor in state_dict.items()},
                  "normalization": normalization, **details}
    with replacing(path) as f:
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
