"""Train a multi-layer perceptron on MNIST: `python train.py --lr 1e-3 --epochs 5`.

Prints one line per epoch and saves the model to model.pt (--out) after every
epoch, for evaluate.py; `--resume model.pt` continues an interrupted run. The
lesson is train_one_epoch: the training loop's six steps.
"""

import argparse
import copy
import os
import sys
import time

# torch's threads, between two computations, spin only briefly (300 turns, a few
# microseconds) and then sleep: a spinning thread takes the core its partner
# needs on a machine that runs anything else, and each step then waits for it
# (docs/speed.md, "A shared machine"). GOMP_SPINCOUNT is Linux's OpenMP's; the
# others know only PASSIVE, sleeping at once. Set before torch is imported, which
# starts the threads; a user's own settings win.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("GOMP_SPINCOUNT", "300")

import torch
import torch.nn.functional as F
from torch import nn

import checkpoint
import cli
import data
from model import MLP, logits_and_labels

# Before torch starts its threads, which copy this setting: floats below 1e-38
# become 0, which CPUs compute on faster (docs/speed.md, "Denormal numbers").
torch.set_flush_denormal(True)

# ----------------------------------------------------------------------------
# The training loop

def train_one_epoch(model, train_loader, loss_fn, optimizer, scheduler=None, bf16=False):
    """One pass over any DataLoader of (images, labels): the mean loss and the
    accuracy. With bf16, the layers' matrix products run in bfloat16. The totals
    stay on the device, read once at the end: reading a GPU's number at every
    step would make the CPU wait. A loss above 1000 means the weights blew up."""
    model.train()  # dropout on
    device = next(model.parameters()).device
    step_losses, correct, seen = [], 0, 0
    for images, labels in train_loader:                       # 1. fetch the next batch
        images, labels = images.to(device), labels.to(device)  # (free if there already)
        optimizer.zero_grad()                                 # 2. reset gradients
        with torch.autocast(device.type, torch.bfloat16, enabled=bf16):  # (mixed precision)
            logits = model(images)                            # 3. compute model outputs
            loss = loss_fn(logits, labels)                    # 4. compute the loss
        loss.backward()                                       # 5. backpropagate gradients
        optimizer.step()                                      # 6. gradient descent step
        # (train.py's --ema averages the weights here, in a hook of optimizer.step)
        if scheduler is not None:
            scheduler.step()
        step_losses.append(loss.detach())
        correct += (logits.argmax(dim=1) == labels).sum()
        seen += len(labels)
    step_losses = torch.stack(step_losses)
    diverged = step_losses.isnan() | (step_losses > 1000)
    if diverged.any():
        step = diverged.nonzero()[0].item()  # the first step that diverged, from 0
        raise FloatingPointError(f"the loss reached {step_losses[step]:.3g} at step "
                                 f"{step + 1} of {len(step_losses)}")
    return step_losses.mean().item(), correct.item() / seen


class MovingAverage:
    """An exponential moving average of a model's weights (--ema): after the
    first step a copy of the weights, after each further step
    average <- decay * average + (1 - decay) * weights.
    Averaging the weights of the last few thousand steps smooths out the noise
    of the single steps.

    Written by hand because torch.optim.swa_utils.AveragedModel, which computes
    the same, copies its step count from the CPU to the GPU at every step, and
    that copy makes the CPU wait for the GPU (measured: level with this one for
    one run alone on a GPU, a fifth slower with six runs sharing it)."""

    def __init__(self, model, decay, optimizer):
        self.average = copy.deepcopy(model)  # the averaged model, validated and saved
        self.decay = decay
        self.steps = 0  # a Python number, so reading it never waits for a GPU
        # Updated after every optimizer.step() by torch's own hook for it: the
        # training loop needs no line for the average.
        optimizer.register_step_post_hook(lambda *_: self.update(model))

    @torch.no_grad()
    def update(self, model):
        # Parameters only: an MLP has no buffers (batch norm's running statistics
        # would have to be copied or averaged too).
        for average, weights in zip(self.average.parameters(), model.parameters()):
            if self.steps == 0:
                average.copy_(weights)
            else:
                average.lerp_(weights, 1 - self.decay)
        self.steps += 1


def validate(model, val_loader):
    """Mean cross-entropy (not smoothed) and accuracy on the validation set, or None."""
    if len(val_loader.dataset) == 0:
        return None, None
    logits, labels = logits_and_labels(model, val_loader)
    return (F.cross_entropy(logits, labels).item(),
            (logits.argmax(dim=1) == labels).float().mean().item())


# ----------------------------------------------------------------------------
# Hyperparameters

# Without --lr: the card's 1e-3; SGD's steps, not scaled weight by weight, want more.
LEARNING_RATES = {"adam": 1e-3, "adamw": 1e-3, "sgd": 0.1}


def make_parser():
    parser = cli.ArgumentParser(description="Train an MLP on MNIST or Fashion-MNIST.",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add = parser.add_argument_group("model").add_argument
    add("--hidden", type=cli.positive_int, nargs="+", default=[1024],
        help="width of each hidden layer (one: the lecture's MLP)")
    add("--activation", choices=["relu", "gelu", "tanh", "sigmoid", "identity"], default="relu",
        help="the non-linearity after each hidden layer (identity: none)")
    add("--dropout", type=cli.fraction, default=0.0, help="dropout after each hidden layer")
    add = parser.add_argument_group("optimization").add_argument
    add("--optimizer", type=str.lower, choices=["adam", "adamw", "sgd"], default="adam",
        help="the update rule")
    add("--lr", type=cli.positive_float, default=argparse.SUPPRESS, help="learning rate, the "
        f"peak if scheduled (default: {LEARNING_RATES['adam']:g} with adam and adamw, "
        f"{LEARNING_RATES['sgd']:g} with sgd)")
    add("--momentum", type=cli.fraction, default=0.9, help="sgd's momentum, under every schedule")
    add("--weight-decay", type=cli.nonnegative_float, default=0.0, help="L2 (adamw: decoupled)")
    add("--scheduler", choices=["none", "step", "cosine", "onecycle"], default="onecycle",
        help="learning-rate schedule (onecycle: up to --lr in the first 30%% of steps, then down)")
    add("--gamma", type=cli.positive_float, default=0.7, help="--scheduler step's factor an epoch")
    add("--batch-size", type=cli.positive_int, default=128, help="images per gradient step")
    add("--epochs", type=cli.positive_int, default=5, help="passes over the training images")
    add("--label-smoothing", type=cli.fraction, default=0.1,
        help="spread this much of each target over the other classes")
    add("--ema", type=cli.fraction, default=0.0, metavar="DECAY",
        help="keep a moving average of the weights, this decay a step (0: off)")
    add("--bf16", action="store_true",
        help="the layers' matrix products in bfloat16; the loss, weights and checkpoint float32")
    group = parser.add_argument_group("data augmentation (training images only)")
    group.set_defaults(**data.DISTORTION_DEFAULTS)  # the distortion's defaults, in one place
    add = group.add_argument
    add("--augment", action=argparse.BooleanOptionalAction, default=True,
        help="distort every training image anew each time it is used")
    add("--rotation", type=cli.nonnegative_float, help="up to this many degrees either way")
    add("--scale", type=cli.fraction, help="scaling, up to this fraction either way")
    add("--shear", type=cli.nonnegative_float, help="horizontal, up to this many degrees")
    add("--shift", type=cli.nonnegative_float, help="up to this many pixels either way")
    add("--elastic-alpha", type=cli.nonnegative_float,
        help="elastic distortion's strength (34, sigma 5: 1.2 px on average; 0: off)")
    add("--elastic-sigma", type=cli.positive_float, help="its smoothness, in pixels")
    add("--clean-epochs", type=cli.nonnegative_int, default=0, metavar="N",
        help="train the last N epochs on the images as they are")
    add("--show-augmentation", type=cli.png_file, metavar="PNG",
        help="draw what these flags do to a digit of each class, then stop")
    group = parser.add_argument_group("data and output")
    add = group.add_argument
    add("--dataset", choices=list(data.DATASETS), default="mnist", help="digits, or clothes")
    add("--val-size", type=cli.nonnegative_int, default=5000,
        help="training images held out for validation (0: train on all)")
    add("--seed", type=cli.seed, default=0,
        help="seeds the weights, the validation split, shuffling, dropout and augmentation")
    cli.add_device_and_data_flags(group)
    add("--out", type=cli.output_file, default="model.pt", help="where to save the model")
    add("--log", type=cli.output_file, help="also write the per-epoch metrics to this CSV file")
    add("--resume", metavar="CHECKPOINT",
        help="continue the interrupted run saved in this file, with its flags")
    return parser


def parse_args(argv=None):
    """The flags, and the checkpoint with --resume (else None)."""
    parser = make_parser()
    args, given = cli.parse_and_tell_given(parser, argv)
    args.lr = given.get("lr", LEARNING_RATES[args.optimizer])
    resumed = None
    if args.resume is not None:
        try:
            args, resumed = checkpoint.resumed_args(args, given)
        except checkpoint.RefusedFlag as error:
            parser.error(str(error))
        except checkpoint.CheckpointError as error:
            sys.exit(f"error: {error}")
        if resumed["training_state"] is None:  # not an error: nothing is left to do
            print(f"{args.resume} is a finished run ({resumed['epochs_completed']} of "
                  f"{args.epochs} epochs): nothing to resume")
            sys.exit(0)
    if resumed or set(given) - set(cli.WHERE_FLAGS):  # the run's own flags, checked together
        cli.refuse_conflicting_flags(parser, args)
        for note in cli.notes(args, given):
            print(f"note: {note}")
    return args, resumed


def make_optimizer(model, args):
    # fused=True: one kernel updates every parameter, instead of a handful of
    # small operations per tensor; on this small model that saves a lot.
    if args.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=args.lr, momentum=args.momentum,
                               weight_decay=args.weight_decay, fused=True)
    adam = torch.optim.Adam if args.optimizer == "adam" else torch.optim.AdamW
    return adam(model.parameters(), lr=args.lr, weight_decay=args.weight_decay, fused=True)


def make_scheduler(optimizer, args, steps_per_epoch):
    """torch's own schedulers, stepped after every batch (None: a constant rate)."""
    total_steps = args.epochs * steps_per_epoch
    schedulers = torch.optim.lr_scheduler
    if args.scheduler == "step":
        return schedulers.StepLR(optimizer, step_size=steps_per_epoch, gamma=args.gamma)
    if args.scheduler == "cosine":
        return schedulers.CosineAnnealingLR(optimizer, T_max=total_steps)
    if args.scheduler == "onecycle":
        # torch's one-cycle moves the momentum against the rate, 0.95 to 0.85 and
        # back: Adam's beta1 so, but SGD's momentum is --momentum, as it says.
        return schedulers.OneCycleLR(optimizer, max_lr=args.lr, total_steps=total_steps,
                                     cycle_momentum=args.optimizer != "sgd")
    return None


def main(argv=None):
    args, resumed = parse_args(argv)
    args.threads = cli.use_threads(args.threads)  # recorded: the count changes the sums
    torch.manual_seed(args.seed)  # the initial weights and dropout
    try:
        train_set, val_set, normalization = data.train_val_sets(
            args.data_dir, args.dataset, args.val_size, args.seed, args.device)
    except data.DataError as error:
        sys.exit(f"error: {error}")
    augmentation = None  # the random distortion of the training batches
    if args.augment:  # (it has to know which value is black after normalization)
        augmentation = data.RandomDistortion(args.seed, args.device, normalization, **{
            name: getattr(args, name) for name in data.DISTORTION_DEFAULTS})
    train_set.transform = augmentation
    if args.show_augmentation:
        from lab import pictures  # only here: importing matplotlib takes seconds
        return pictures.show_augmentation(args, train_set, normalization)
    if args.batch_size >= len(train_set):  # known once the data is read, as a note
        print(f"note: --batch-size {args.batch_size} takes all {len(train_set):,} training "
              f"images in one step: one step an epoch, {args.epochs} in the run")
    shuffling = torch.Generator().manual_seed(args.seed)
    train_loader = data.make_loader(train_set, args.batch_size, shuffle=True, generator=shuffling)
    val_loader = data.make_loader(val_set, batch_size=1000, shuffle=False)

    model = MLP(args.hidden, args.dropout, activation=args.activation).to(args.device)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=args.label_smoothing)
    optimizer = make_optimizer(model, args)
    scheduler = make_scheduler(optimizer, args, len(train_loader))
    averaged = None  # with --ema, the weights' moving average: validated and saved
    if args.ema:
        averaged = MovingAverage(model, args.ema, optimizer)
    kept_model = model if averaged is None else averaged.average
    generators = {"shuffling": shuffling}
    if augmentation:
        generators["augmentation"] = augmentation.generator
    history, saved_epoch = [], 0  # one dict of metrics per epoch; the epoch in args.out
    try:
        if resumed:  # the epochs done so far, and the state they left
            history = checkpoint.restore(resumed, args, model, averaged, optimizer, scheduler,
                                     generators)
            saved_epoch = len(history)
        print(f"training a {[28 * 28, *args.hidden, 10]} {args.activation} MLP with "
              f"{args.optimizer} at --lr "
              f"{args.lr:g} on {len(train_set):,} {args.dataset} images ({len(val_set):,} held "
              f"out for validation) on {args.device}" + (
                  f", resuming after epoch {saved_epoch} of {args.epochs}" if resumed else ""))
        print("\n".join([*cli.what_the_columns_measure(vars(args)), cli.TABLE_HEADER]))
        with cli.sigterm_as_ctrl_c():
            for epoch in range(saved_epoch + 1, args.epochs + 1):
                # A distorted digit is not a test digit: the last --clean-epochs fit the
                # weights to the images as they are (He et al. 2019, "Data augmentation
                # revisited": refine on less-augmented data).
                if epoch > args.epochs - args.clean_epochs:
                    train_set.transform = None
                start = time.perf_counter()
                train_loss, train_accuracy = train_one_epoch(model, train_loader, loss_fn,
                                                             optimizer, scheduler, args.bf16)
                train_seconds = time.perf_counter() - start
                val_loss, val_accuracy = validate(kept_model, val_loader)
                settings = optimizer.param_groups[0]  # as the schedule left them
                history.append({
                    "epoch": epoch, "train_loss": train_loss, "train_accuracy": train_accuracy,
                    "val_loss": val_loss, "val_accuracy": val_accuracy,
                    "seconds": time.perf_counter() - start,
                    "images_per_second": len(train_set) / train_seconds, "lr": settings["lr"],
                    # SGD's momentum, or its counterpart in Adam and AdamW: the first beta
                    "momentum": settings["betas"][0] if "betas" in settings
                    else settings["momentum"]})
                # Saved every epoch, so that a kill or a power cut loses one epoch at
                # most; the training state is left out of the finished model.
                state = None if epoch == args.epochs else checkpoint.training_state(
                    model, averaged, optimizer, scheduler, generators)
                checkpoint.save_run(args, kept_model, normalization, history, state)
                saved_epoch = epoch
                if args.log:
                    cli.write_csv(args.log, history)
                cli.print_epoch(history[-1])
    except checkpoint.CheckpointError as error:  # a state that does not fit, a full disk
        sys.exit(f"error: {error}")
    except KeyboardInterrupt:
        if saved_epoch == 0:
            sys.exit("interrupted before the first epoch finished: nothing saved")
        sys.exit(f"interrupted: {args.out} holds the model after epoch {saved_epoch} of "
                 f"{args.epochs}; continue with: python train.py --resume {args.out}")
    except FloatingPointError as where:  # train_one_epoch: the loss blew up
        kept = (f"{args.out} holds the model after epoch {saved_epoch}" if saved_epoch
                else "Nothing was saved")
        sys.exit(f"error: training diverged in epoch {epoch}: {where}. The learning rate "
                 f"{args.lr:g} is probably too large: try a smaller --lr. {kept}.")
    val = history[-1]["val_accuracy"]
    print(f"saved {args.out}"
          + (f" (validation accuracy {100 * val:.2f}%)" if val is not None else ""))


if __name__ == "__main__":
    cli.run(main)
