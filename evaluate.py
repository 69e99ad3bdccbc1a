"""Evaluate a trained MLP on the 10,000 test images of its data set.

    python evaluate.py model.pt
    python evaluate.py model.pt --confusion confusion.png --errors errors.png --json m.json

The checkpoint carries everything needed to rebuild the model and to read the
right test set (MNIST or Fashion-MNIST), so no other flag is needed. The test
images are used here and nowhere else: hyperparameters are chosen on the
validation split that train.py holds out.
"""

import json
import os
import sys

import torch
import torch.nn.functional as F

import cli
import data
from checkpoint import CheckpointError, load_checkpoint
from model import logits_and_labels


def parse_args(argv=None):
    parser = cli.ArgumentParser(description="Evaluate a trained MLP on the test set of "
                                            "its data set.")
    parser.add_argument("checkpoint", help="a model file written by train.py, e.g. model.pt")
    cli.add_device_and_data_flags(parser, data_dir=None)
    parser.add_argument("--confusion", type=cli.png_file, metavar="PNG",
                        help="draw the confusion matrix as a heat map")
    parser.add_argument("--errors", type=cli.png_file, metavar="PNG",
                        help="draw up to 100 misclassified test images with the model's "
                             "probabilities for its answer and for the true class")
    parser.add_argument("--json", type=cli.output_file, metavar="FILE",
                        help="also write the figures to this JSON file")
    return parser.parse_args(argv)


def confusion_matrix(labels, predictions, num_classes=data.NUM_CLASSES):
    """counts[i, j] = number of test images of class i that were predicted as j."""
    pairs = labels * num_classes + predictions
    return torch.bincount(pairs, minlength=num_classes ** 2).view(num_classes, num_classes)


def print_report(metrics):
    classes = metrics["classes"]
    print(f"test loss      {metrics['test_loss']:.4f}")
    print(f"test accuracy  {100 * metrics['test_accuracy']:.2f}%  "
          f"({metrics['correct']:,} of {metrics['images']:,} images)")
    print("\naccuracy per class")
    for index, accuracy in enumerate(metrics["per_class_accuracy"]):
        print(f"  {index}  {100 * accuracy:6.2f}%" + ("" if classes[index] == str(index)
                                                      else f"  {classes[index]}"))
    print("\nconfusion matrix (rows: true class, columns: predicted class)")
    matrix = metrics["confusion_matrix"]
    width = max(len(str(count)) for row in matrix for count in row) + 1
    print("     " + "".join(f"{index:>{width}}" for index in range(len(matrix))))
    for index, row in enumerate(matrix):
        print(f"  {index}  " + "".join(f"{count:>{width}}" for count in row))


def main(argv=None):
    args = parse_args(argv)
    cli.use_threads(args.threads)
    try:
        model, checkpoint = load_checkpoint(args.checkpoint, args.device)
        if checkpoint["dataset"] not in data.DATASETS:
            raise CheckpointError(f"{args.checkpoint}: unknown data set "
                                  f"{checkpoint['dataset']!r}")
        normalization = checkpoint["normalization"]
        data_dir = args.data_dir
        if data_dir is None:  # where the model was trained, if the files are there; else ./data
            trained_on = checkpoint["train_args"].get("data_dir")
            data_dir = trained_on if trained_on and os.path.isdir(
                data.raw_folder(trained_on, checkpoint["dataset"])) else "./data"
        # The 10,000 test images, normalized as the model's training images were.
        test_set = data.as_dataset(*data.load_split(data_dir, checkpoint["dataset"], "test"),
                                   args.device, normalization)
    except (CheckpointError, data.DataError) as error:
        sys.exit(f"error: {error}")
    classes = checkpoint["classes"]
    epochs = checkpoint["train_args"].get("epochs")
    config = checkpoint["config"]
    widths = [config["in_features"], *config["hidden"], len(classes)]
    print(f"{args.checkpoint}: a {widths} {config.get('activation', 'relu')} MLP trained with "
          f"{checkpoint['train_args']['optimizer']} on {checkpoint['dataset']}, the model "
          f"after epoch {checkpoint['epochs_completed']} of {epochs}"
          + (" (the run is not finished)" if checkpoint["training_state"] else "") + "\n")

    test_loader = data.make_loader(test_set, batch_size=1000, shuffle=False)
    logits, labels = logits_and_labels(model, test_loader)
    predictions = logits.argmax(dim=1)  # the class with the largest logit
    correct = predictions == labels
    counts = confusion_matrix(labels, predictions)
    metrics = {
        "checkpoint": args.checkpoint,
        "dataset": checkpoint["dataset"],
        "classes": classes,
        "epochs_completed": checkpoint["epochs_completed"],
        "images": len(labels),
        "correct": int(correct.sum()),
        "test_loss": F.cross_entropy(logits, labels).item(),
        "test_accuracy": correct.float().mean().item(),
        "per_class_accuracy": (counts.diag() / counts.sum(dim=1).clamp(min=1)).tolist(),
        "confusion_matrix": counts.tolist(),
    }
    print_report(metrics)

    if args.json:
        cli.write_file(args.json, lambda f: f.write(json.dumps(metrics, indent=2).encode()))
        print(f"\nwrote {args.json}")
    if args.confusion or args.errors:
        from lab import pictures  # only now: importing matplotlib takes seconds

    if args.confusion:
        pictures.save(pictures.confusion_heatmap(counts.cpu(), classes), args.confusion)
        print(f"wrote {args.confusion}")
    if args.errors:
        wrong = (~correct).nonzero().squeeze(1)[:100]
        probabilities = logits[wrong].softmax(dim=1)
        captions = [f"is {classes[true]} ({100 * p[true]:.0f}%)\n"
                    f"said {classes[guess]} ({100 * p[guess]:.0f}%)"
                    for p, true, guess in zip(probabilities.tolist(), labels[wrong].tolist(),
                                              predictions[wrong].tolist())]
        images = pictures.to_pixels(test_set.images[wrong, 0], normalization)
        pictures.save(pictures.captioned_digits(images, captions), args.errors)
        print(f"wrote {args.errors} ({len(wrong)} of {len(labels) - metrics['correct']} errors)")


if __name__ == "__main__":
    cli.run(main)
