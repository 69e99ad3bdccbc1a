"""Evaluate a trained MLP on the 10,000 MNIST test images.

    python evaluate.py model.pt
    python evaluate.py model.pt --errors errors.png --json metrics.json

The checkpoint carries everything needed to rebuild the model, so no other flag
is needed. The test images are used here and nowhere else: hyperparameters are
chosen on the validation split that train.py holds out.
"""

import json
import sys

import torch
import torch.nn.functional as F

import cli
import data
from model import CheckpointError, load_checkpoint, predict, replacing


def parse_args(argv=None):
    parser = cli.ArgumentParser(description="Evaluate a trained MLP on the MNIST test set.")
    parser.add_argument("checkpoint", help="a model file written by train.py, e.g. model.pt")
    cli.add_device_and_data_flags(parser)
    parser.add_argument("--errors", type=cli.png_file, metavar="PNG",
                        help="save a grid of misclassified test digits, labelled true->predicted")
    parser.add_argument("--json", type=cli.output_file, metavar="FILE",
                        help="also write the figures to this JSON file")
    return parser.parse_args(argv)


def confusion_matrix(labels, predictions, num_classes=data.NUM_CLASSES):
    """counts[i, j] = number of test images of digit i that were predicted as j."""
    pairs = labels * num_classes + predictions
    return torch.bincount(pairs, minlength=num_classes ** 2).view(num_classes, num_classes)


def print_report(metrics):
    print(f"test loss      {metrics['test_loss']:.4f}")
    print(f"test accuracy  {100 * metrics['test_accuracy']:.2f}%  "
          f"({metrics['correct']:,} of {metrics['images']:,} images)")
    print("\naccuracy per digit")
    for digit, accuracy in enumerate(metrics["per_class_accuracy"]):
        print(f"  {digit}  {100 * accuracy:6.2f}%")
    print("\nconfusion matrix (rows: true digit, columns: predicted digit)")
    matrix = metrics["confusion_matrix"]
    width = max(len(str(count)) for row in matrix for count in row) + 1
    print("     " + "".join(f"{digit:>{width}}" for digit in range(len(matrix))))
    for digit, row in enumerate(matrix):
        print(f"  {digit}  " + "".join(f"{count:>{width}}" for count in row))


def save_error_grid(file, images, labels, predictions, columns=10, scale=2):
    """A PNG grid of (up to 100) misclassified digits, each captioned true->predicted,
    written to `file` (a path or a binary file)."""
    from PIL import Image, ImageDraw  # Pillow comes with torchvision

    tile, caption = 28 * scale, 14
    rows = max(1, -(-len(images) // columns))
    grid = Image.new("L", (columns * tile, rows * (tile + caption)), color=255)
    draw = ImageDraw.Draw(grid)
    for i, (image, label, predicted) in enumerate(zip(images, labels, predictions)):
        x, y = (i % columns) * tile, (i // columns) * (tile + caption)
        digit = Image.fromarray(image.numpy()).resize((tile, tile), Image.NEAREST)
        grid.paste(digit, (x, y))
        draw.text((x + 2, y + tile), f"{label}->{predicted}", fill=0)
    grid.save(file, format="PNG")


def write_output(path, write):
    """Call write(file) to fill `path`, all of it or nothing: through a temporary
    file, so that a full disk or Ctrl-C never leaves half a report."""
    try:
        with replacing(path) as f:
            write(f)
    except OSError as error:  # its folder was checked before evaluating, but disks fill up
        sys.exit(f"error: cannot write {path}: {error.strerror}; any earlier file there "
                 f"is unchanged")


def main(argv=None):
    args = parse_args(argv)
    try:
        model, checkpoint = load_checkpoint(args.checkpoint, args.device)
        normalization = checkpoint["normalization"]
        test_set = data.test_set(args.data_dir, args.device,
                                 normalization["mean"], normalization["std"])
    except (CheckpointError, data.DataError) as error:
        sys.exit(f"error: {error}")

    logits, labels = predict(model, data.make_loader(test_set, batch_size=1000))
    predictions = logits.argmax(dim=1)  # the class with the largest logit
    correct = predictions == labels
    counts = confusion_matrix(labels, predictions)
    metrics = {
        "checkpoint": args.checkpoint,
        "images": len(labels),
        "correct": int(correct.sum()),
        "test_loss": F.cross_entropy(logits, labels).item(),
        "test_accuracy": correct.float().mean().item(),
        "per_class_accuracy": (counts.diag() / counts.sum(dim=1).clamp(min=1)).tolist(),
        "confusion_matrix": counts.tolist(),
    }
    print_report(metrics)

    if args.json:
        write_output(args.json, lambda f: f.write(json.dumps(metrics, indent=2).encode()))
        print(f"\nwrote {args.json}")
    if args.errors:
        wrong = (~correct).nonzero().squeeze(1)[:100]
        # Undo the normalization to draw the digits as 0-255 pixels.
        pixels = test_set.images[wrong, 0] * normalization["std"] + normalization["mean"]
        images = (pixels * 255).round().byte().cpu()
        write_output(args.errors, lambda f: save_error_grid(
            f, images, labels[wrong].tolist(), predictions[wrong].tolist()))
        print(f"wrote {args.errors} ({len(wrong)} of {len(labels) - metrics['correct']} errors)")


if __name__ == "__main__":
    main()
