"""Train a multi-layer perceptron on MNIST (or Fashion-MNIST).

    python train.py --lr 1e-3 --epochs 5 --device cuda
    python train.py --resume model.pt        # continue a run that was interrupted

Prints one line per epoch and saves the model to model.pt (--out) after every
epoch, which evaluate.py reads back. `python train.py --help` lists every
hyperparameter. The lesson is in train_one_epoch: the training loop's six steps.
"""

import argparse
import copy
import csv
import signal
import sys
import time

import torch
import torch.nn.functional as F
from torch import nn

import cli
import data
from model import MLP, CheckpointError, load_checkpoint, predict, save_checkpoint

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
    optim.add_argument("--ema", type=cli.fraction, default=0.0, metavar="DECAY",
                       help="validate and save a moving average of the weights, updated "
                            "after every step with this decay, e.g. 0.999 (0: off)")
    augment = parser.add_argument_group("data augmentation (training images only)")
    augment.add_argument("--augment", action=argparse.BooleanOptionalAction, default=True,
                         help="distort every training image anew each time it is used")
    augment.add_argument("--rotation", type=cli.nonnegative_float, default=5.0,
                         help="random rotation, up to this many degrees either way")
    augment.add_argument("--scale", type=cli.fraction, default=0.05,
                         help="random scaling, up to this fraction either way")
    augment.add_argument("--shear", type=cli.nonnegative_float, default=0.0,
                         help="random horizontal shear, up to this many degrees either way")
    augment.add_argument("--shift", type=cli.nonnegative_float, default=1.0,
                         help="random shift, up to this many pixels either way")
    augment.add_argument("--elastic-alpha", type=cli.nonnegative_float, default=0.0,
                         help="elastic distortion strength in pixels (0: none)")
    augment.add_argument("--elastic-sigma", type=cli.positive_float, default=4.0,
                         help="smoothness of the elastic distortion in pixels")
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
    other.add_argument("--seed", type=cli.seed, default=0,
                       help="seeds the weights, the validation split and the shuffling")
    cli.add_device_and_data_flags(other)
    other.add_argument("--out", type=cli.output_file, default="model.pt",
                       help="where to save the trained model")
    other.add_argument("--log", type=cli.output_file,
                       help="also write the per-epoch metrics to this CSV file")
    other.add_argument("--resume", metavar="CHECKPOINT",
                       help="continue the interrupted run saved in this file, with its flags")
    return parser


# What a resumed run may change: where the data is read from, where the run goes
# and what it runs on. Every other flag is the run's own, stored in the checkpoint.
MAY_CHANGE_ON_RESUME = ("data_dir", "device", "out", "log", "resume")


def parse_args(argv=None):
    """The flags, and None; with --resume, the flags stored in the checkpoint (and
    those of MAY_CHANGE_ON_RESUME that the command line gives), and the checkpoint."""
    parser = make_parser()
    args = parser.parse_args(argv)
    if args.show_augmentation and not args.augment:
        parser.error("argument --show-augmentation: there is nothing to show with --no-augment")
    if args.resume is None:
        if args.clean_epochs and not args.augment:
            parser.error("argument --clean-epochs: with --no-augment every epoch is clean")
        if args.clean_epochs > args.epochs:
            parser.error(f"argument --clean-epochs: {args.clean_epochs} is more than "
                         f"--epochs {args.epochs}")
        return args, None
    try:
        _, checkpoint = load_checkpoint(args.resume)
    except CheckpointError as error:
        sys.exit(f"error: {error}")
    stored = checkpoint["train_args"]
    if set(vars(args)) - set(stored):
        sys.exit(f"error: {args.resume}: its stored flags are not those of this train.py")
    if checkpoint["training_state"] is None:
        print(f"{args.resume} is a finished run ({checkpoint['epochs_completed']} of "
              f"{stored['epochs']} epochs): nothing to resume")
        sys.exit(0)
    # Which flags did the command line give? Parse it again into a namespace that
    # has every attribute already, so that argparse fills in no default.
    unset = object()
    given = parser.parse_args(argv, argparse.Namespace(**dict.fromkeys(vars(args), unset)))
    given = {name: value for name, value in vars(given).items() if value is not unset}
    for name, value in given.items():
        if name not in MAY_CHANGE_ON_RESUME and value != stored[name]:
            parser.error(f"{as_flag(name, value)} would change the run in {args.resume} "
                         f"({as_flag(name, stored[name])}), which --resume continues as it "
                         f"was: leave {as_flag(name, value).split()[0]} out")
    device = stored_device_or(args.device, stored["device"])
    args = argparse.Namespace(**{**stored, "device": device, "out": args.resume,
                                 "resume": args.resume, **given})
    return args, checkpoint


def stored_device_or(device, stored):
    """The device a resumed run goes on without --device: its own, if this
    machine has it (a CPU run stays on the CPU where there is a GPU too), else
    --device's default."""
    try:
        return cli.device(stored)
    except argparse.ArgumentTypeError:
        return device


def as_flag(name, value):
    """How the flag for argparse's `name` reads with `value`: --lr 0.001, --no-augment."""
    flag = "--" + name.replace("_", "-")
    if isinstance(value, bool):
        return flag if value else f"--no-{flag[2:]}"
    return f"{flag} {' '.join(map(str, value)) if isinstance(value, list) else value}"


def make_augmentation(args, normalization):
    """The random distortion of training batches that the flags ask for, or None."""
    if not args.augment:
        return None
    # Its own generator, on the data's device: the same seed, the same distortions.
    generator = torch.Generator(device=args.device).manual_seed(args.seed)
    background = -normalization["mean"] / normalization["std"]  # a black pixel
    return data.RandomDistortion(generator, background, args.rotation, args.scale,
                                 args.shift, args.elastic_alpha, args.elastic_sigma,
                                 args.shear)


def make_optimizer(model, args):
    # fused=True: one kernel updates every parameter, instead of a handful of
    # small operations per tensor; on this small model that saves a lot.
    if args.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=args.lr, momentum=args.momentum,
                               weight_decay=args.weight_decay, fused=True)
    optimizer_class = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}[args.optimizer]
    return optimizer_class(model.parameters(), lr=args.lr, weight_decay=args.weight_decay,
                           fused=True)


class MovingAverage:
    """An exponential moving average of a model's weights: after the first step
    a copy of the weights, after each further step
    average <- decay * average + (1 - decay) * weights.
    Averaging the weights of the last few thousand steps smooths out the noise
    of the single steps.

    Written by hand because torch.optim.swa_utils.AveragedModel, which computes
    the same, copies its step count from the CPU to the GPU at every step, and
    that copy makes the CPU wait for the GPU (measured: level with this one for
    one run alone on a GPU, a fifth slower with six runs sharing it)."""

    def __init__(self, model, decay):
        self.model = copy.deepcopy(model)  # the average, validated and saved
        self.decay = decay
        self.steps = 0  # a Python number, so reading it never waits for a GPU

    @torch.no_grad()
    def update(self, model):
        # Parameters only: an MLP has no buffers (batch norm's running statistics
        # would have to be copied or averaged too).
        for average, weights in zip(self.model.parameters(), model.parameters()):
            if self.steps == 0:
                average.copy_(weights)
            else:
                average.lerp_(weights, 1 - self.decay)
        self.steps += 1


def make_averaged(model, args):
    """The moving average of the weights that --ema asks for, or None."""
    return MovingAverage(model, args.ema) if args.ema else None


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


def show_augmentation(args, train_set, normalization, distortions=7):
    """Draw the first training image of each class, then `distortions` random
    distortions of it as train_set.transform makes them, into the file that
    --show-augmentation names."""
    import pictures  # only here: importing matplotlib takes a second or two

    first_of_each_class = [(train_set.labels == label).nonzero()[0, 0]
                           for label in train_set.labels.unique()]
    originals = train_set.images[torch.stack(first_of_each_class)]
    distorted = torch.stack([train_set.transform(originals) for _ in range(distortions)], 1)
    flags = " ".join(as_flag(name, getattr(args, name)) for name in (
        "rotation", "scale", "shear", "shift", "elastic_alpha", "elastic_sigma"))
    figure = pictures.augmentation_grid(pictures.to_pixels(originals[:, 0], normalization),
                                        pictures.to_pixels(distorted[:, :, 0], normalization),
                                        title=flags)
    pictures.save(figure, args.show_augmentation)
    print(f"wrote {args.show_augmentation}")


# ----------------------------------------------------------------------------
# Training

class Diverged(Exception):
    """The loss blew up: the run cannot recover and should stop."""


# A mean loss above this means the weights have blown up (an untrained model
# scores ln(10) = 2.3 and a working run only goes down from there).
DIVERGED_LOSS = 1000.0


def train_one_epoch(model, train_loader, loss_fn, optimizer, scheduler=None, averaged=None):
    """One pass over the training set. Returns the mean loss and the accuracy.
    `averaged` (a MovingAverage, for --ema) follows the weights after every step.

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
        if averaged is not None:
            averaged.update(model)
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


# ----------------------------------------------------------------------------
# Checkpoints that a run can continue from

def training_state(model, averaged, optimizer, scheduler, generators):
    """Everything besides the saved weights that the next epoch depends on: the
    optimizer's moment estimates, the scheduler's step count, the state of every
    random generator and, with --ema, the trained weights (the saved ones are
    their average). Tensors and plain data, as a checkpoint must be."""
    random_states = {name: generator.get_state() for name, generator in generators.items()}
    random_states["torch"] = torch.get_rng_state()  # dropout draws from the global generator
    if torch.cuda.is_available():
        random_states["cuda"] = torch.cuda.get_rng_state_all()
    return {"optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict() if scheduler else None,
            "random": random_states,
            "averaging": None if averaged is None else {"weights": model.state_dict(),
                                                        "steps": averaged.steps}}


def restore_training_state(state, model, averaged, optimizer, scheduler, generators):
    """Undo training_state, `model` holding the saved weights: the next epoch
    then draws the same shuffling, distortions and dropout, from the same
    weights, as it would have in the run never interrupted."""
    if averaged is not None:
        averaged.model.load_state_dict(model.state_dict())
        model.load_state_dict(state["averaging"]["weights"])
        averaged.steps = int(state["averaging"]["steps"])  # a tensor in older checkpoints
    optimizer.load_state_dict(state["optimizer"])
    if scheduler:
        scheduler.load_state_dict(state["scheduler"])
    random_states = state["random"]
    for name, generator in generators.items():  # those of the checkpoint's device
        generator.set_state(random_states[name])
    torch.set_rng_state(random_states["torch"])
    if torch.cuda.is_available() and "cuda" in random_states:
        torch.cuda.set_rng_state_all(random_states["cuda"])


def resume(checkpoint, args, model, averaged, optimizer, scheduler, generators):
    """Put the run back where its checkpoint left it: weights (and their
    average), optimizer, scheduler and random generators. Returns the metrics
    of the epochs done."""
    # A generator's state is only valid on its own kind of device: a run moved
    # from a GPU to the CPU (or back) draws its distortions anew from here.
    moved = str(checkpoint["train_args"]["device"]).split(":")[0] != args.device.type
    restorable = {name: generator for name, generator in generators.items()
                  if not (moved and name == "augmentation")}
    if len(restorable) < len(generators):
        print(f"note: the run moves from {checkpoint['train_args']['device']} to "
              f"{args.device}; its distortions will differ from the run's own")
    try:
        model.load_state_dict(checkpoint["state_dict"])
        restore_training_state(checkpoint["training_state"], model, averaged, optimizer,
                               scheduler, restorable)
    except (KeyError, TypeError, ValueError, RuntimeError):
        sys.exit(f"error: {args.resume}: its training state does not fit the run its flags "
                 f"describe; nothing was trained")
    return checkpoint["metrics"]


def save(args, model, normalization, history, state):
    """Save the model after the last epoch of `history`; `state` is the training
    state for --resume, or None once the run is finished. One line on stderr, and
    the earlier file kept, if the disk refuses."""
    try:
        save_checkpoint(args.out, model.config, model.state_dict(), normalization,
                        dataset=args.dataset, classes=data.DATASETS[args.dataset]["classes"],
                        train_args={**vars(args), "device": str(args.device)},
                        metrics=history, epochs_completed=len(history), training_state=state)
    except OSError as error:
        sys.exit(f"error: cannot save {args.out}: {error.strerror}; "
                 f"any earlier file there is unchanged")


# ----------------------------------------------------------------------------

def main(argv=None):
    args, checkpoint = parse_args(argv)
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
        show_augmentation(args, train_set, normalization)
        return
    shuffling = torch.Generator().manual_seed(args.seed)
    train_loader = data.make_loader(train_set, args.batch_size, generator=shuffling)
    val_loader = data.make_loader(val_set, batch_size=1000)

    model = MLP(args.hidden, args.dropout).to(args.device)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=args.label_smoothing)
    optimizer = make_optimizer(model, args)
    averaged = make_averaged(model, args)
    # The model that is validated and saved: the trained one, or its average.
    kept_model = model if averaged is None else averaged.model
    scheduler = make_scheduler(optimizer, args, len(train_loader))
    generators = {"shuffling": shuffling}
    if augmentation:
        generators["augmentation"] = augmentation.generator

    history = []  # one dict of metrics per epoch
    if checkpoint:  # --resume: the epochs done so far, and the state they left
        history = resume(checkpoint, args, model, averaged, optimizer, scheduler, generators)
    log_file = open(args.log, "w", newline="") if args.log else None
    log = csv.DictWriter(log_file, fieldnames=METRICS) if log_file else None
    if log:
        log.writeheader()
        log.writerows(history)
    saved_epoch = len(history)  # the epoch whose model is in args.out
    print(f"training a {[28 * 28, *args.hidden, 10]} MLP on {len(train_set):,} {args.dataset} "
          f"images ({len(val_set):,} held out for validation) on {args.device}"
          + (f", resuming after epoch {saved_epoch} of {args.epochs}" if checkpoint else ""))
    print("epoch  train loss  train acc  val loss   val acc     time   images/s")
    # A cluster's time limit or `kill` sends SIGTERM: end the run as Ctrl-C does
    # (until main returns: a notebook or test that calls main keeps its own).
    on_sigterm = signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        for epoch in range(saved_epoch + 1, args.epochs + 1):
            # A distorted digit is not quite a test digit: the last --clean-epochs
            # fit the weights to the images as they are (He et al. 2019, "Data
            # augmentation revisited", refine on less-augmented data).
            if epoch > args.epochs - args.clean_epochs:
                train_set.transform = None
            start = time.perf_counter()
            train_loss, train_accuracy = train_one_epoch(model, train_loader, loss_fn,
                                                         optimizer, scheduler, averaged)
            train_seconds = time.perf_counter() - start
            val_loss, val_accuracy = validate(kept_model, val_loader)
            history.append(dict(zip(METRICS, (
                epoch, train_loss, train_accuracy, val_loss, val_accuracy,
                time.perf_counter() - start, len(train_set) / train_seconds))))
            # Saved every epoch, so that a kill or a power cut loses one epoch at
            # most; the training state is left out of the finished model.
            finished = epoch == args.epochs
            save(args, kept_model, normalization, history, None if finished else
                 training_state(model, averaged, optimizer, scheduler, generators))
            saved_epoch = epoch
            if log:
                log.writerow(history[-1])
                log_file.flush()  # on disk now: a kill loses nothing of this epoch
            print_epoch(history[-1])
    except KeyboardInterrupt:
        if saved_epoch == 0:
            sys.exit("interrupted before the first epoch finished: nothing saved")
        sys.exit(f"interrupted: {args.out} holds the model after epoch {saved_epoch} of "
                 f"{args.epochs}; continue with: python train.py --resume {args.out}")
    except Diverged as where:
        kept = (f"{args.out} holds the model after epoch {saved_epoch}" if saved_epoch
                else "Nothing was saved")
        sys.exit(f"error: training diverged in epoch {epoch}: {where}. The learning rate "
                 f"{args.lr:g} is probably too large: try a smaller --lr. {kept}.")
    finally:
        signal.signal(signal.SIGTERM, on_sigterm)
        if log_file:
            log_file.close()

    val = history[-1]["val_accuracy"]
    print(f"saved {args.out}"
          + (f" (validation accuracy {100 * val:.2f}%)" if val is not None else ""))


if __name__ == "__main__":
    main()
