"""The checkpoint train.py saves after every epoch, self-describing (load.py
reads it back): the model's constructor arguments and weights, the input
normalization, the data set and its classes, train.py's flags and per-epoch
metrics, and until the run is finished the state --resume continues from.
"""

import torch

import cli
import data

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
            "num_classes": model.output_layer.out_features}


def save_checkpoint(path, model, normalization, **details):
    """Write a checkpoint, all of it or nothing: the model, the normalization of
    its inputs ({"mean": .., "std": ..}) and the `details` CHECKPOINT_FIELDS lists."""
    checkpoint = {"format": CHECKPOINT_FORMAT, "config": model_config(model),
                  "state_dict": {name: tensor.cpu() for name, tensor in
                                 model.state_dict().items()},
                  "normalization": normalization, **details}
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
