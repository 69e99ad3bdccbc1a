"""Pictures of what a trained network learned, drawn with matplotlib.

    python -m lab.pictures model.pt --curves curves.png --weights weights.png
    python -m lab.pictures sgd.pt adam.pt --curves compare.png    # several runs, by epoch
    python -m lab.pictures default.pt quick.pt --against-time time.png

This file makes the pictures that need only checkpoints: the learning curves
from runs' per-epoch metrics, the first layer's weights, and the validation
accuracy of several runs against their training time. The others are drawn
where their data is: `evaluate.py --confusion` and `--errors` (the test set),
`train.py --show-augmentation` (the distortion flags) and `predict.py --show`
(your own images); their drawing functions are here too.

Each function returns a matplotlib Figure, so that a test (or a notebook) can
look at what was drawn; `save` writes one to a PNG file. They build Figure
objects directly rather than through pyplot: no window and no display are
involved, so they work the same on a laptop and on a headless server. The
scripts import this module only when they draw, so that training does not pay
for importing matplotlib.
"""

import sys

if not __package__:  # python lab/pictures.py: Python would look for cli.py and the rest in lab/
    sys.exit("run it from the project's folder as a module: python -m lab.pictures "
             + " ".join(sys.argv[1:]))

import math

import matplotlib
import torch
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from torchvision.utils import make_grid

import cli
from checkpoint import CheckpointError, load_checkpoint


def save(figure, path):
    """Write `figure` to the PNG file `path`, all of it or nothing."""
    cli.write_file(path, lambda f: figure.savefig(f, format="png", dpi=100,
                                                  bbox_inches="tight"))


def learning_curves(runs, caption=()):
    """Loss and accuracy per epoch, on the training batches (solid) and on the
    validation set (dashed), from the metrics checkpoints store; `runs` maps a
    label to a run's metrics, one colour each; `caption`, lines under them. The
    axes take in every point of every run."""
    figure = Figure(figsize=(10, 3.8 if len(runs) == 1 else 4.6))
    loss_axes, accuracy_axes = figure.subplots(1, 2)
    for index, (label, metrics) in enumerate(runs.items()):
        epochs = [row["epoch"] for row in metrics]
        for split, style in (("train", "-"), ("val", "--")):
            if not metrics or metrics[0][f"{split}_loss"] is None:  # no validation split
                continue
            name = {"train": "training batches", "val": "validation"}[split]
            name = name if len(runs) == 1 else f"{label}, {name}"
            loss_axes.plot(epochs, [row[f"{split}_loss"] for row in metrics], style,
                           color=f"C{index}", marker=".", label=name)
            accuracy_axes.plot(epochs, [100 * row[f"{split}_accuracy"] for row in metrics],
                               style, color=f"C{index}", marker=".", label=name)
    loss_axes.set(title="loss (log scale)", xlabel="epoch", yscale="log")
    # Down to the power of ten below the lowest loss, which has a labelled tick
    # (the axis would otherwise end between 0.1 and 0.2, labelled from 0.2 up).
    loss_axes.set_ylim(bottom=10 ** math.floor(math.log10(loss_axes.get_ylim()[0])))
    for ticks in (loss_axes.yaxis.set_major_formatter, loss_axes.yaxis.set_minor_formatter):
        ticks("{x:g}")  # 0.6, not 6 x 10^-1
    accuracy_axes.set(title="accuracy (%)", xlabel="epoch")
    for axes in (loss_axes, accuracy_axes):
        axes.grid(alpha=0.3)
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))  # whole epochs only
    caption_top = -0.02  # in figure heights, below the axes
    if len(runs) == 1:
        accuracy_axes.legend()
    else:  # below the axes, where it hides no curve: a row for each run, its
        # training curve, then its validation curve (the legend fills column by column)
        handles, labels = loss_axes.get_legend_handles_labels()
        by_split = sorted(zip(handles, labels), key=lambda entry: entry[1].endswith("validation"))
        both = len(labels) == 2 * len(runs)
        figure.legend(*zip(*by_split) if both else (handles, labels), loc="upper center",
                      bbox_to_anchor=(0.5, caption_top), ncols=2 if both else 1, fontsize=8)
        caption_top -= 0.045 * len(runs) + 0.03
    figure.text(0.07, caption_top, "\n".join(caption), ha="left", va="top", fontsize=8)
    return figure


def accuracy_against_time(runs):
    """Validation accuracy after each epoch against the minutes trained so far,
    one line per run; `runs` maps a label to a checkpoint's metrics. The time is
    the sum of the epochs' own seconds (training and validating), on a log scale:
    a 10-second run and a half-hour one side by side."""
    figure = Figure(figsize=(8, 4.5))
    axes = figure.subplots()
    for label, metrics in runs.items():
        minutes, elapsed = [], 0.0
        for row in metrics:
            elapsed += row["seconds"]
            minutes.append(elapsed / 60)
        accuracy = [100 * row["val_accuracy"] for row in metrics]
        axes.plot(minutes, accuracy, marker="." if len(metrics) < 30 else None, label=label)
    axes.set(xscale="log", xlabel="minutes of training (log scale)",
             ylabel="validation accuracy (%)", title="validation accuracy against training time")
    axes.xaxis.set_major_formatter("{x:g}")  # 0.1, 1, 10 rather than powers of ten
    axes.grid(alpha=0.3, which="both")
    axes.legend(loc="upper left", fontsize=8)
    return figure


def first_layer_weights(weight, count=100):
    """What the first hidden units look for: each unit's 784 incoming weights as
    a 28 x 28 tile, red where a bright pixel raises the unit's input, blue where
    it lowers it. Each tile is scaled by its own largest |weight| (so the colour
    map is centred on 0 and weak units are visible too); grey lines part them."""
    tiles = weight[:count].detach().float().cpu().view(-1, 1, 28, 28)
    tiles = tiles / tiles.abs().amax(dim=(1, 2, 3), keepdim=True).clamp(min=1e-12)
    # NaN between the tiles, drawn in the colour map's "bad" colour, grey.
    mosaic = make_grid(tiles, nrow=10, padding=1, pad_value=float("nan"))[0]
    colours = matplotlib.colormaps["RdBu_r"].with_extremes(bad="0.6")
    figure = Figure(figsize=(8, 8 * mosaic.shape[0] / mosaic.shape[1] + 0.6))
    axes = figure.subplots()
    image = axes.imshow(mosaic.numpy(), cmap=colours, vmin=-1, vmax=1,
                        interpolation="nearest")
    axes.set_axis_off()
    axes.set_title(f"incoming weights of the first {len(tiles)} of {len(weight)} "
                   f"first-layer units")
    figure.colorbar(image, ax=axes, shrink=0.6, label="weight / largest |weight| of the unit")
    return figure


def confusion_heatmap(counts, classes):
    """counts[i, j]: test images of class i predicted as j, as a heat map with
    the counts written in; the diagonal holds the correct answers."""
    size = len(classes)
    figure = Figure(figsize=(2.5 + 0.6 * size, 1.5 + 0.6 * size))
    axes = figure.subplots()
    # A logarithmic colour scale: the few errors stand out beside the diagonal.
    axes.imshow(counts.numpy(), cmap="Blues", norm="symlog")
    brightest = counts.max().item()
    for true in range(size):
        for predicted in range(size):
            count = counts[true, predicted].item()
            axes.text(predicted, true, str(count), ha="center", va="center", fontsize=8,
                      color="white" if count > brightest ** 0.5 else "black")
    axes.set_xticks(range(size), classes, rotation=45 if len(classes[0]) > 1 else 0,
                    ha="right" if len(classes[0]) > 1 else "center")
    axes.set_yticks(range(size), classes)
    axes.set(xlabel="predicted", ylabel="true", title="confusion matrix (test set)")
    return figure


def captioned_digits(images, captions, columns=10):
    """A grid of 28 x 28 images (uint8, white on black), each captioned; for the
    misclassified test images, with the model's probability for the true class
    and for the one it said."""
    rows = max(1, -(-len(images) // columns))
    figure = Figure(figsize=(1.3 * columns, 1.55 * rows))
    grid = figure.subplots(rows, columns, squeeze=False)
    for axes in grid.flat:
        axes.set_axis_off()
    for axes, image, caption in zip(grid.flat, images, captions):
        axes.imshow(image.numpy(), cmap="gray", vmin=0, vmax=255)
        axes.set_title(caption, fontsize=7)
    return figure


def augmentation_grid(originals, distortions, title=""):
    """Each row: a training image (uint8, 28 x 28), then random distortions of it."""
    rows, count = distortions.shape[:2]
    figure = Figure(figsize=(1.2 * (count + 1), 1.25 * rows))
    grid = figure.subplots(rows, count + 1, squeeze=False)
    for row in range(rows):
        for column, image in enumerate([originals[row], *distortions[row]]):
            axes = grid[row, column]
            axes.imshow(image.numpy(), cmap="gray", vmin=0, vmax=255)
            axes.set_axis_off()
    grid[0, 0].set_title("original", fontsize=8)
    for column in range(1, count + 1):
        grid[0, column].set_title(f"random {column}", fontsize=8)
    figure.suptitle(title, fontsize=9)
    return figure


def show_augmentation(args, train_set, normalization, distortions=7):
    """train.py --show-augmentation: the first training image of each class,
    then `distortions` random distortions of it as train_set.transform makes
    them, drawn into the file that the flag names."""
    first_of_each_class = [(train_set.labels == label).nonzero()[0, 0]
                           for label in train_set.labels.unique()]
    originals = train_set.images[torch.stack(first_of_each_class)]
    distorted = torch.stack([train_set.transform(originals) for _ in range(distortions)], 1)
    flags = " ".join(cli.as_flag(name, getattr(args, name)) for name in (
        "rotation", "scale", "shear", "shift", "elastic_alpha", "elastic_sigma"))
    figure = augmentation_grid(to_pixels(originals[:, 0], normalization),
                               to_pixels(distorted[:, :, 0], normalization), title=flags)
    save(figure, args.show_augmentation)
    print(f"wrote {args.show_augmentation}")


def what_the_model_saw(original, prepared, caption):
    """An image as given (a PIL image) beside the 28 x 28 digits the model read
    (uint8 tensors); several, from a row, in a row under it."""
    if len(prepared) == 1:
        figure = Figure(figsize=(7, 3.6))
        left, right = figure.subplots(1, 2)
        digits = [right]
        left.set_title("as given", fontsize=9)
        right.set_title("28 x 28, as the model sees it", fontsize=9)
    else:  # the image under the caption, the digits under it
        figure = Figure(figsize=(max(7, 1.1 * len(prepared)), 4.4))
        top, bottom = figure.subfigures(2, 1, height_ratios=[2.4, 1])
        left = top.subplots()
        digits = bottom.subplots(1, len(prepared))
        bottom.suptitle("each digit found, 28 x 28, as the model sees it", fontsize=9)
    left.imshow(original, cmap="gray" if original.mode in ("L", "1") else None)
    for axes, digit in zip(digits, prepared):
        axes.imshow(digit.numpy(), cmap="gray", vmin=0, vmax=255)
    for axes in (left, *digits):
        axes.set_axis_off()
    figure.suptitle(caption, fontsize=10)
    return figure


def to_pixels(images, normalization):
    """Normalized images [..., 28, 28] back to uint8 pixels, for drawing."""
    pixels = images * normalization["std"] + normalization["mean"]
    return (pixels * 255).round().clamp(0, 255).byte().cpu()


# ----------------------------------------------------------------------------
# Runs compared: each named by the flags it differs in

def run_labels(checkpoints):
    """{path: label} for runs compared in one picture: the flags in which they
    differ (--optimizer sgd --lr 0.05), or their file names where none differ."""
    flags = {path: checkpoint["train_args"] for path, checkpoint in checkpoints.items()}
    names = dict.fromkeys(name for run in flags.values() for name in run)  # in train.py's order
    differing = [name for name in names if name not in cli.WHERE_FLAGS
                 and len({repr(run.get(name)) for run in flags.values()}) > 1]
    if not differing:
        return {path: path for path in checkpoints}
    return {path: " ".join(cli.as_flag(name, run[name])
                           for name in differing if name in run)
            for path, run in flags.items()}


def run_label(path, checkpoint):
    """How accuracy_against_time names a run: file, net, epochs, minutes, result."""
    metrics = checkpoint["metrics"]
    minutes = sum(row["seconds"] for row in metrics) / 60
    return (f"{path}: {checkpoint['config']['hidden']}, {len(metrics)} epochs, "
            f"{minutes:.1f} min, {100 * metrics[-1]['val_accuracy']:.2f}%")


def main(argv=None):
    parser = cli.ArgumentParser(
        prog="python -m lab.pictures",
        description="Draw a run's learning curves and first-layer "
                    "weights, or compare several runs.")
    parser.add_argument("checkpoints", nargs="+", metavar="checkpoint",
                        help="a model file written by train.py, e.g. model.pt; several "
                             "with --curves or --against-time to compare them")
    parser.add_argument("--curves", type=cli.png_file, metavar="PNG",
                        help="draw the loss and accuracy per epoch, of every run given")
    parser.add_argument("--weights", type=cli.png_file, metavar="PNG",
                        help="draw the first layer's weights (one run)")
    parser.add_argument("--against-time", type=cli.png_file, metavar="PNG",
                        help="draw the validation accuracy of every run given against its "
                             "training time")
    args = parser.parse_args(argv)
    if not (args.curves or args.weights or args.against_time):
        parser.error("say which picture to draw, and where: --curves PNG, --weights PNG "
                     "or --against-time PNG")
    if args.weights and len(args.checkpoints) > 1:
        parser.error("argument --weights: it draws one run's weights; give one checkpoint")
    try:
        loaded = {path: load_checkpoint(path) for path in args.checkpoints}
    except CheckpointError as error:
        sys.exit(f"error: {error}")
    checkpoints = {path: checkpoint for path, (_, checkpoint) in loaded.items()}
    if args.curves:
        labels = run_labels(checkpoints)
        first = checkpoints[args.checkpoints[0]]
        # The caption says how train and val are measured, where the runs agree on it.
        captions = {tuple(cli.what_the_columns_measure(checkpoint["train_args"]))
                    for checkpoint in checkpoints.values()}
        caption = cli.what_the_columns_measure(first["train_args"]) if len(captions) == 1 else [
            "train: the batches as each run trained on them, averaged over the epoch while "
            "learning", "val:   the held-out images as they are, after the epoch"]
        save(learning_curves({labels[path]: checkpoint["metrics"]
                              for path, checkpoint in checkpoints.items()}, caption),
             args.curves)
        print(f"wrote {args.curves} ({len(checkpoints)} run{'s' * (len(checkpoints) > 1)})")
    if args.weights:
        weight = loaded[args.checkpoints[0]][0].hidden_layers[0].weight  # [units, 784]
        save(first_layer_weights(weight), args.weights)
        print(f"wrote {args.weights} ({min(100, len(weight))} of {len(weight)} units)")
    if args.against_time:
        unvalidated = [path for path, checkpoint in checkpoints.items()
                       if not checkpoint["metrics"]
                       or checkpoint["metrics"][-1]["val_accuracy"] is None]
        if unvalidated:
            sys.exit(f"error: {unvalidated[0]}: trained without a validation split "
                     f"(--val-size 0), so there is no validation accuracy to draw")
        save(accuracy_against_time({run_label(path, checkpoint): checkpoint["metrics"]
                                    for path, checkpoint in checkpoints.items()}),
             args.against_time)
        print(f"wrote {args.against_time} ({len(loaded)} run{'s' * (len(loaded) > 1)})")


if __name__ == "__main__":
    cli.run(main)
