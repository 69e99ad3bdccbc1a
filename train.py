"""Train a multi-layer perceptron on MNIST (or Fashion-MNIST).

    python train.py --lr 1e-3 --epochs 5
    python train.py --resume model.pt        # continue a run that was interrupted

Prints one line per epoch and saves the model to model.pt (--out) after every
epoch, which evaluate.py reads back. `python train.py --help` lists every
hyperparameter. The lesson is train_one_epoch: the training loop's six steps.
"""

import argparse
import sys
import time

import torch
import torch.nn.functional as F
from torch import nn

import checkpoint
import cli
import data
import train_flags
from averaging import MovingAverage
from model import MLP, logits_and_labels

# Before torch starts its threads, which copy this setting: floats below 1e-38
# become 0, which CPUs compute on faster (docs/speed.md, "Denormal numbers").
torch.set_flush_denormal(True)

# ----------------------------------------------------------------------------
# The training loop

def train_one_epoch(model, train_loader, loss_fn, optimizer, scheduler=None, bf16=False):
    """One pass over any DataLoader of (images, labels): the mean loss and the
    accuracy. `scheduler`, one of torch's, steps after every batch. With bf16,
    autocast runs the layers' matrix products in bfloat16, the loss in float32.

    The running totals stay on the model's device and are read once, at the end:
    reading a GPU's number at every step would make the CPU wait. An untrained
    model scores ln(10) = 2.3: a loss above 1000 means the weights blew up."""
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


def validate(model, val_loader):
    """Mean loss and accuracy on the validation set, or None without one. The
    loss is the plain cross-entropy, without training's label smoothing (which
    keeps a loss above 0.5): the figure evaluate.py reports on the test set."""
    if len(val_loader.dataset) == 0:
        return None, None
    logits, labels = logits_and_labels(model, val_loader)
    return (F.cross_entropy(logits, labels).item(),
            (logits.argmax(dim=1) == labels).float().mean().item())


# ----------------------------------------------------------------------------
# Hyperparameters

def make_parser():
    parser = cli.ArgumentParser(description="Train an MLP on MNIST or Fashion-MNIST.",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    model = parser.add_argument_group("model")
    model.add_argument("--hidden", type=cli.positive_int, nargs="+", default=[384, 256],
                       help="width of each hidden layer, e.g. --hidden 1024 1024")
    model.add_argument("--dropout", type=cli.fraction, default=0.0,
                       help="dropout probability after each hidden layer")
    optim = parser.add_argument_group("optimization")
    optim.add_argument("--optimizer", choices=["adam", "adamw", "sgd"], default="adam",
                       help="how the gradients update the weights")
    optim.add_argument("--lr", type=cli.positive_float, default=1e-3,
                       help="learning rate (the peak one if a scheduler varies it)")
    optim.add_argument("--momentum", type=cli.fraction, default=0.9, help="sgd's momentum, "
                       "under every schedule (adam's beta1: 0.9, cycled 0.95-0.85 by onecycle)")
    optim.add_argument("--weight-decay", type=cli.nonnegative_float, default=0.0,
                       help="L2 penalty (decoupled for adamw)")
    optim.add_argument("--scheduler", choices=["none", "step", "cosine", "onecycle"],
                       default="onecycle", help="learning-rate schedule over the run "
                       "(onecycle: up to --lr in the first 30%% of the steps, then down)")
    optim.add_argument("--gamma", type=cli.positive_float, default=0.7,
                       help="with --scheduler step: multiply the rate by this each epoch")
    optim.add_argument("--batch-size", type=cli.positive_int, default=128,
                       help="images per gradient step")
    optim.add_argument("--epochs", type=cli.positive_int, default=5,
                       help="passes over the training images")
    optim.add_argument("--label-smoothing", type=cli.fraction, default=0.1,
                       help="spread this much of each target over the other classes")
    optim.add_argument("--ema", type=cli.fraction, default=0.0, metavar="DECAY",
                       help="validate and save the weights' moving average, this decay a "
                            "step, e.g. 0.999 (0: off)")
    optim.add_argument("--bf16", action="store_true", help="mixed precision: the layers' "
                       "matrix products in bfloat16, the loss, weights and checkpoint float32")
    augment = parser.add_argument_group("data augmentation (training images only)",
                                        "The distortion flags act with --augment, the "
                                        "default; --elastic-sigma with --elastic-alpha.")
    augment.add_argument("--augment", action=argparse.BooleanOptionalAction, default=True,
                         help="distort every training image anew each time it is used")
    augment.add_argument("--rotation", type=cli.nonnegative_float,
                         help="random rotation, up to this many degrees either way")
    augment.add_argument("--scale", type=cli.fraction,
                         help="random scaling, up to this fraction either way")
    augment.add_argument("--shear", type=cli.nonnegative_float,
                         help="random horizontal shear, up to this many degrees either way")
    augment.add_argument("--shift", type=cli.nonnegative_float,
                         help="random shift, up to this many pixels either way")
    augment.add_argument("--elastic-alpha", type=cli.nonnegative_float,
                         help="elastic distortion: Simard et al.'s alpha, the scale of a "
                              "smoothed random field (34, sigma 5: 1.2 px on average; 0: off)")
    augment.add_argument("--elastic-sigma", type=cli.positive_float,
                         help="the elastic field's smoothness in pixels")
    augment.set_defaults(**data.DISTORTION_DEFAULTS)  # the distortion's defaults, in one place
    augment.add_argument("--clean-epochs", type=cli.nonnegative_int, default=0, metavar="N",
                         help="train the last N epochs on the images as they are, "
                              "undistorted (0: distort to the end)")
    augment.add_argument("--show-augmentation", type=cli.png_file, metavar="PNG",
                         help="draw a training image of each class beside random "
                              "distortions of it by these flags, then stop: no training")
    other = parser.add_argument_group("data and output")
    other.add_argument("--dataset", choices=list(data.DATASETS), default="mnist",
                       help="handwritten digits, or Fashion-MNIST's pictures of clothes")
    other.add_argument("--val-size", type=cli.nonnegative_int, default=5000,
                       help="training images held out for validation (0: train on all)")
    other.add_argument("--seed", type=cli.seed, default=0, help="seeds the weights, the "
                       "validation split, the shuffling, dropout and the augmentation")
    cli.add_device_and_data_flags(other)
    other.add_argument("--out", type=cli.output_file, default="model.pt",
                       help="where to save the trained model")
    other.add_argument("--log", type=cli.output_file,
                       help="also write the per-epoch metrics to this CSV file")
    other.add_argument("--resume", metavar="CHECKPOINT",
                       help="continue the interrupted run saved in this file, with its flags")
    return parser


def parse_args(argv=None):
    """The flags, the checkpoint with --resume (else None), and the flags that
    the command line gave, which may be idle."""
    parser = make_parser()
    args, given = train_flags.parse(parser, argv)
    resumed = None
    if args.resume is not None:  # the run's own flags, stored in its checkpoint
        try:
            args, resumed = checkpoint.resumed_args(parser, args, given)
        except checkpoint.ChangedFlag as error:
            parser.error(str(error))
        except checkpoint.CheckpointError as error:
            sys.exit(f"error: {error}")
        if resumed["training_state"] is None:
            print(f"{args.resume} is a finished run ({resumed['epochs_completed']} of "
                  f"{args.epochs} epochs): nothing to resume")
            sys.exit(0)
        unwritable = train_flags.unwritable_stored_output(args, given)
        if unwritable:
            parser.error(unwritable)
    conflict = train_flags.conflicting_flags(args)
    if conflict:
        parser.error(conflict)
    return args, resumed, given


def make_augmentation(args, normalization):
    """The random distortion of training batches that the flags ask for, or None."""
    if not args.augment:
        return None
    # Its own generator, on the data's device: the same seed, the same distortions.
    generator = torch.Generator(device=args.device).manual_seed(args.seed)
    background = -normalization["mean"] / normalization["std"]  # a black pixel
    return data.RandomDistortion(generator, background, **{
        name: getattr(args, name) for name in data.DISTORTION_DEFAULTS})


def make_optimizer(model, args):
    # fused=True: one kernel updates every parameter, instead of a handful of
    # small operations per tensor; on this small model that saves a lot.
    if args.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=args.lr, momentum=args.momentum,
                               weight_decay=args.weight_decay, fused=True)
    optimizer_class = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}[args.optimizer]
    return optimizer_class(model.parameters(), lr=args.lr, weight_decay=args.weight_decay,
                           fused=True)


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


# ----------------------------------------------------------------------------

# The columns of --log's CSV file, in order: the keys of each epoch's metrics.
METRICS = ["epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "seconds",
           "images_per_second", "lr", "momentum"]


def rate_and_momentum(optimizer):
    """The learning rate and momentum of the next step, as the schedule left them:
    SGD's momentum, or its counterpart in Adam, beta1."""
    settings = optimizer.param_groups[0]
    if "momentum" in settings:  # SGD
        return settings["lr"], settings["momentum"]
    return settings["lr"], settings["betas"][0]  # Adam, AdamW


def print_epoch(metrics):
    def show(name, form):  # the validation figures are None without a validation set
        return "-" if metrics[name] is None else format(metrics[name], form)

    print(f"{metrics['epoch']:5d}  {show('train_loss', '.4f'):>10}  "
          f"{show('train_accuracy', '.2%'):>9}  {show('val_loss', '.4f'):>8}  "
          f"{show('val_accuracy', '.2%'):>8}  {metrics['seconds']:6.1f}s  "
          f"{metrics['images_per_second']:9,.0f}  {metrics['lr']:8.2e}  "
          f"{metrics['momentum']:8.3f}", flush=True)


def main(argv=None):
    args, resumed, given = parse_args(argv)
    for note in train_flags.notes(args, given):
        print(f"note: {note}")
    torch.manual_seed(args.seed)  # the initial weights and dropout
    try:
        train_set, val_set, normalization = data.train_val_sets(
            args.data_dir, args.dataset, args.val_size, args.seed, args.device)
    except data.DataError as error:
        sys.exit(f"error: {error}")
    # The distortion has to know which value is black after normalization.
    augmentation = make_augmentation(args, normalization)
    train_set.transform = augmentation
    if args.show_augmentation:
        import pictures  # only here: importing matplotlib takes seconds

        return pictures.show_augmentation(args, train_set, normalization)
    shuffling = torch.Generator().manual_seed(args.seed)
    train_loader = data.make_loader(train_set, args.batch_size, shuffle=True,
                                    generator=shuffling)
    val_loader = data.make_loader(val_set, batch_size=1000, shuffle=False)

    model = MLP(args.hidden, args.dropout).to(args.device)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=args.label_smoothing)
    optimizer = make_optimizer(model, args)
    averaged = MovingAverage(model, args.ema, optimizer) if args.ema else None
    # The model that is validated and saved: the trained one, or its average.
    kept_model = model if averaged is None else averaged.average
    scheduler = make_scheduler(optimizer, args, len(train_loader))
    generators = {"shuffling": shuffling}
    if augmentation:
        generators["augmentation"] = augmentation.generator

    history = []  # one dict of metrics per epoch
    if resumed:  # --resume: the epochs done so far, and the state they left
        try:
            history = checkpoint.resume(resumed, args, model, averaged, optimizer, scheduler,
                                         generators)
        except checkpoint.CheckpointError as error:
            sys.exit(f"error: {error}")
    saved_epoch = len(history)  # the epoch whose model is in args.out
    print(f"training a {[28 * 28, *args.hidden, 10]} MLP on {len(train_set):,} {args.dataset} "
          f"images ({len(val_set):,} held out for validation) on {args.device}"
          + (f", resuming after epoch {saved_epoch} of {args.epochs}" if resumed else ""))
    print("\n".join(train_flags.what_the_columns_measure(vars(args))))
    print("epoch  train loss  train acc  val loss   val acc     time   images/s        lr"
          "  momentum")
    try:
        with checkpoint.sigterm_as_ctrl_c():
            for epoch in range(saved_epoch + 1, args.epochs + 1):
                # A distorted digit is not quite a test digit: the last --clean-epochs
                # fit the weights to the images as they are (He et al. 2019, "Data
                # augmentation revisited", refine on less-augmented data).
                if epoch > args.epochs - args.clean_epochs:
                    train_set.transform = None
                start = time.perf_counter()
                train_loss, train_accuracy = train_one_epoch(model, train_loader, loss_fn,
                                                             optimizer, scheduler, args.bf16)
                train_seconds = time.perf_counter() - start
                val_loss, val_accuracy = validate(kept_model, val_loader)
                lr, momentum = rate_and_momentum(optimizer)
                history.append({"epoch": epoch, "train_loss": train_loss,
                                "train_accuracy": train_accuracy, "val_loss": val_loss,
                                "val_accuracy": val_accuracy,
                                "seconds": time.perf_counter() - start,
                                "images_per_second": len(train_set) / train_seconds,
                                "lr": lr, "momentum": momentum})
                # Saved every epoch, so that a kill or a power cut loses one epoch at
                # most; the training state is left out of the finished model.
                finished = epoch == args.epochs
                checkpoint.save_run(args, kept_model, normalization, history,
                                    None if finished else checkpoint.training_state(
                                        model, averaged, optimizer, scheduler, generators))
                saved_epoch = epoch
                if args.log:  # the whole file anew: a kill never leaves half a line
                    cli.write_csv(args.log, history, METRICS)
                print_epoch(history[-1])
    except checkpoint.CheckpointError as error:  # the disk refused the checkpoint
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
