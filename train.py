"""Train a multi-layer perceptron on MNIST.

    python train.py --lr 1e-3 --epochs 5 --device cuda

Prints one line per epoch and saves the trained model to model.pt (--out), which
evaluate.py reads back. `python train.py --help` lists every hyperparameter.
"""

import argparse
import csv
import sys
import time

import torch
import torch.nn.functional as F
from torch import nn

import cli
import data
from model import MLP, predict, save_checkpoint

# ----------------------------------------------------------------------------
# Hyperparameters

def parse_args(argv=None):
    parser = cli.ArgumentParser(description="Train an MLP on MNIST.",
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
    optim.add_argument("--momentum", type=cli.fraction, default=0.9, help="for sgd")
    optim.add_argument("--weight-decay", type=cli.nonnegative_float, default=0.0,
                       help="L2 penalty (decoupled for adamw)")
    optim.add_argument("--scheduler", choices=["none", "step", "cosine", "onecycle"],
                       default="onecycle", help="learning-rate schedule over the run")
    optim.add_argument("--gamma", type=cli.positive_float, default=0.7,
                       help="for the step scheduler: multiply the rate by this each epoch")
    optim.add_argument("--batch-size", type=cli.positive_int, default=128,
                       help="images per gradient step")
    optim.add_argument("--epochs", type=cli.positive_int, default=5,
                       help="passes over the training images")
    optim.add_argument("--label-smoothing", type=cli.fraction, default=0.1,
                       help="spread this much of each target over the other classes")
    augment = parser.add_argument_group("data augmentation (training images only)")
    augment.add_argument("--augment", action=argparse.BooleanOptionalAction, default=True,
                         help="distort every training image anew each time it is used")
    augment.add_argument("--rotation", type=cli.nonnegative_float, default=5.0,
                         help="random rotation, up to this many degrees either way")
    augment.add_argument("--scale", type=cli.fraction, default=0.05,
                         help="random scaling, up to this fraction either way")
    augment.add_argument("--shift", type=cli.nonnegative_float, default=1.0,
                         help="random shift, up to this many pixels either way")
    augment.add_argument("--elastic-alpha", type=cli.nonnegative_float, default=0.0,
                         help="elastic distortion strength in pixels (0: none)")
    augment.add_argument("--elastic-sigma", type=cli.positive_float, default=4.0,
                         help="smoothness of the elastic distortion in pixels")
    other = parser.add_argument_group("data and output")
    other.add_argument("--val-size", type=cli.nonnegative_int, default=5000,
                       help="training images held out for validation (0: train on all)")
    other.add_argument("--seed", type=cli.seed, default=0,
                       help="seeds the weights, the validation split and the shuffling")
    cli.add_device_and_data_flags(other)
    other.add_argument("--out", type=cli.output_file, default="model.pt",
                       help="where to save the trained model")
    other.add_argument("--log", type=cli.output_file,
                       help="also write the per-epoch metrics to this CSV file")
    return parser.parse_args(argv)


def make_augmentation(args):
    """The random distortion of training batches that the flags ask for, or None."""
    if not args.augment:
        return None
    # Its own generator, on the data's device: the same seed, the same distortions.
    generator = torch.Generator(device=args.device).manual_seed(args.seed)
    return data.RandomDistortion(generator, args.rotation, args.scale, args.shift,
                                 args.elastic_alpha, args.elastic_sigma)


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
        return schedulers.OneCycleLR(optimizer, max_lr=args.lr, total_steps=total_steps)
    return None


# ----------------------------------------------------------------------------
# Training

class Diverged(Exception):
    """The loss blew up: the run cannot recover and should stop."""


# A mean loss above this means the weights have blown up (an untrained model
# scores ln(10) = 2.3 and a working run only goes down from there).
DIVERGED_LOSS = 1000.0


def train_one_epoch(model, train_loader, loss_fn, optimizer, scheduler=None):
    """One pass over the training set. Returns the mean loss and the accuracy.

    The running totals stay on the device and are read once, at the end: reading
    a number from a GPU at every step would make the CPU wait for it each time."""
    model.train()  # dropout on
    device = next(model.parameters()).device
    step_losses = torch.zeros(len(train_loader), device=device)
    correct = torch.zeros((), dtype=torch.long, device=device)
    for step, (images, labels) in enumerate(train_loader):  # 1. fetch the next batch
        optimizer.zero_grad()                                 # 2. reset gradients
        logits = model(images)                                # 3. compute model outputs
        loss = loss_fn(logits, labels)                        # 4. compute the loss
        loss.backward()                                       # 5. backpropagate gradients
        optimizer.step()                                      # 6. gradient descent step
        if scheduler is not None:
            scheduler.step()
        step_losses[step] = loss.detach()
        correct += (logits.argmax(dim=1) == labels).sum()
    blown_up = (~(step_losses < DIVERGED_LOSS)).nonzero()  # NaN < x is False: caught too
    if len(blown_up):
        step = int(blown_up[0])
        raise Diverged(f"the loss reached {step_losses[step]:.3g} at step {step + 1} "
                       f"of {len(train_loader)}")
    return step_losses.mean().item(), correct.item() / len(train_loader.dataset)


def validate(model, val_loader):
    """Mean loss and accuracy on the validation set, or None without one.

    The loss is the plain cross-entropy, without the label smoothing of
    training: the figure evaluate.py reports on the test set, and one that a
    model can bring towards 0 (smoothing 0.1 over 10 classes keeps the training
    loss above 0.5)."""
    if len(val_loader.dataset) == 0:
        return None, None
    logits, labels = predict(model, val_loader)
    return (F.cross_entropy(logits, labels).item(),
            (logits.argmax(dim=1) == labels).float().mean().item())


METRICS = ["epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "seconds",
           "images_per_second"]


def print_epoch(metrics):
    def percent(value):
        return "     -" if value is None else f"{100 * value:6.2f}%"

    def number(value):
        return "     -" if value is None else f"{value:6.4f}"

    print(f"{metrics['epoch']:5d}  {number(metrics['train_loss']):>10}  "
          f"{percent(metrics['train_accuracy']):>9}  {number(metrics['val_loss']):>8}  "
          f"{percent(metrics['val_accuracy']):>8}  {metrics['seconds']:6.1f}s  "
          f"{metrics['images_per_second']:9,.0f}", flush=True)


def save(args, model, state, **details):
    """save_checkpoint, ending in one line on stderr if the disk refuses."""
    try:
        save_checkpoint(args.out, model.config, state,
                        normalization={"mean": data.MNIST_MEAN, "std": data.MNIST_STD},
                        train_args={**vars(args), "device": str(args.device)}, **details)
    except OSError as error:
        sys.exit(f"error: cannot save {args.out}: {error.strerror}; "
                 f"any earlier file there is unchanged")


def main(argv=None):
    args = parse_args(argv)
    torch.manual_seed(args.seed)  # the initial weights and dropout
    try:
        train_set, val_set = data.train_val_sets(args.data_dir, args.val_size, args.seed,
                                                 args.device, make_augmentation(args))
    except data.DataError as error:
        sys.exit(f"error: {error}")
    train_loader = data.make_loader(train_set, args.batch_size,
                                    generator=torch.Generator().manual_seed(args.seed))
    val_loader = data.make_loader(val_set, batch_size=1000)

    model = MLP(args.hidden, args.dropout).to(args.device)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=args.label_smoothing)
    optimizer = make_optimizer(model, args)
    scheduler = make_scheduler(optimizer, args, len(train_loader))

    log_file = open(args.log, "w", newline="") if args.log else None
    log = csv.DictWriter(log_file, fieldnames=METRICS) if log_file else None
    if log:
        log.writeheader()
    history = []  # one dict of metrics per epoch
    finished = (0, None)  # (epoch, the weights at its end) of the last completed epoch
    print(f"training a {[28 * 28, *args.hidden, 10]} MLP on {len(train_set):,} images "
          f"({len(val_set):,} held out for validation) on {args.device}")
    print("epoch  train loss  train acc  val loss   val acc     time   images/s")
    try:
        for epoch in range(1, args.epochs + 1):
            start = time.perf_counter()
            train_loss, train_accuracy = train_one_epoch(model, train_loader, loss_fn,
                                                         optimizer, scheduler)
            train_seconds = time.perf_counter() - start
            val_loss, val_accuracy = validate(model, val_loader)
            history.append(dict(zip(METRICS, (
                epoch, train_loss, train_accuracy, val_loss, val_accuracy,
                time.perf_counter() - start, len(train_set) / train_seconds))))
            # One assignment, so that Ctrl-C never sees the weights of one epoch
            # paired with another.
            finished = (epoch, {name: t.detach().clone() for name, t in model.state_dict().items()})
            print_epoch(history[-1])
            if log:
                log.writerow(history[-1])
                log_file.flush()
    except KeyboardInterrupt:
        epochs_done, state = finished
        if state is None:
            sys.exit("interrupted before the first epoch finished: nothing saved")
        save(args, model, state, metrics=history[:epochs_done],
             epochs_completed=epochs_done, interrupted=True)
        sys.exit(f"interrupted: saved the model after epoch {epochs_done} of {args.epochs} "
                 f"to {args.out}, marked as interrupted")
    except Diverged as where:
        sys.exit(f"error: training diverged in epoch {epoch}: {where}. The learning rate "
                 f"{args.lr:g} is probably too large: try a smaller --lr. Nothing was saved.")
    finally:
        if log_file:
            log_file.close()

    save(args, model, finished[1], metrics=history, epochs_completed=args.epochs,
         interrupted=False)
    val = history[-1]["val_accuracy"]
    print(f"saved {args.out}"
          + (f" (validation accuracy {100 * val:.2f}%)" if val is not None else ""))


if __name__ == "__main__":
    main()
