"""How well a model reads rows of digits it never saw: ZIP codes made of
MNIST's test digits, read as predict.py reads a photo.

    python -m lab.zipcodes model.pt                 # 2,000 rows: every test digit once
    python -m lab.zipcodes model.pt --digits        # told that each row holds 5
    python -m lab.zipcodes model.pt --save rows/    # also the first 20 rows, and their readings

Each row is 5 test digits side by side, each enlarged 2.4 to 3.75 times (so
heights differ by up to half), its baseline moved by up to an eighth of the
height, after a gap that is apart (half the gaps), none (the digits' boxes
meet: a quarter) or touching (the next digit moved left until its ink meets
the last one's: a quarter, less the few that cannot meet without overlapping
by half, which stay box to box). Half the rows are drawn (black on white), half
photographed-looking: grey paper and ink, light falling off across the page,
noise, JPEG. The model's accuracy on the same digits alone, to the fifth
power, is what perfect cutting would give. `--split val` reads the model's
own validation digits instead: segment.py's constants were chosen there.
"""

import sys

if not __package__:  # python lab/zipcodes.py: Python would look for cli.py and the rest in lab/
    sys.exit("run it from the project's folder as a module: python -m lab.zipcodes "
             + " ".join(sys.argv[1:]))

import io
import math
import random

import torch
import torch.nn.functional as F
from PIL import Image

import cli
import data
from checkpoint import CheckpointError, load_checkpoint
from lab import predict

DIGITS_PER_ROW = 5
GAPS = ["apart", "apart", "none", "touching"]  # drawn from evenly


def parse_args(argv=None):
    parser = cli.ArgumentParser(
        prog="python -m lab.zipcodes",
        description="Read rows of 5 test digits (ZIP codes) as "
                    "predict.py reads a photo, and measure.")
    parser.add_argument("checkpoint", help="a model file written by train.py, e.g. model.pt")
    parser.add_argument("--data-dir", default="./data", help="the folder with MNIST/raw/")
    parser.add_argument("--rows", type=cli.number(int, lambda n: n >= 1, "a whole number, 1 "
                                                  "or more"), default=2000,
                        help="how many rows (default 2,000: every test digit once)")
    parser.add_argument("--digits", action="store_const", const=DIGITS_PER_ROW,
                        help="tell the reader that each row holds 5 digits "
                             "(predict.py --digits 5)")
    parser.add_argument("--split", choices=["test", "val"], default="test",
                        help="whose digits: the test set's (default) or the model's own "
                             "validation digits, held out of its training")
    parser.add_argument("--seed", type=int, default=0, help="the rows' random choices")
    parser.add_argument("--save", metavar="FOLDER", type=predict.output_folder,
                        help="also save the first 20 rows as FOLDER/row<N>-<digits>-read-"
                             "<reading>.png or .jpg (a ? in the reading as _)")
    return parser.parse_args(argv)


def enlarged(image, scale):
    """A 28 x 28 digit (uint8) cropped to its ink and enlarged: ink in [0, 1]."""
    ink = image.float() / 255
    rows, columns = ink.sum(dim=1).nonzero(), ink.sum(dim=0).nonzero()
    ink = ink[rows[0]:rows[-1] + 1, columns[0]:columns[-1] + 1]
    size = (max(1, round(ink.shape[0] * scale)), max(1, round(ink.shape[1] * scale)))
    return F.interpolate(ink[None, None], size=size, mode="bilinear")[0, 0].clamp(0, 1)


def touches(page, digit, top, left):
    """Whether `digit` at (top, left) on `page` meets ink there (8 neighbours)."""
    height, width = digit.shape
    y0, x0 = max(top - 1, 0), max(left - 1, 0)
    near = F.max_pool2d((page[y0:top + height + 1, x0:left + width + 1] > 0.3)[None].float(),
                        3, stride=1, padding=1)[0] > 0
    return bool((near[top - y0:top - y0 + height, left - x0:left - x0 + width].bool()
                 & (digit > 0.3)).any())


def make_row(images, rng):
    """The digits (uint8, N x 28 x 28) side by side, white ink on black [H, W],
    and the kinds of the gaps between them."""
    digits = [enlarged(image, 3 * rng.uniform(0.8, 1.25)) for image in images]
    height = max(digit.shape[0] for digit in digits)
    margin = height // 2
    page = torch.zeros(2 * height + 2 * margin,
                       sum(digit.shape[1] for digit in digits) + (len(digits) + 1) * height)
    gaps, right = [], margin
    for n, digit in enumerate(digits):
        top = margin + height // 2 + height - digit.shape[0] + round(
            rng.uniform(-0.125, 0.125) * height)
        left = right
        if n:
            gaps.append(rng.choice(GAPS))
            if gaps[-1] == "apart":
                left += round(rng.uniform(0.08, 0.4) * height)
            elif gaps[-1] == "touching":
                while left > right - digit.shape[1] // 2 and not touches(page, digit, top, left):
                    left -= 1
                if not touches(page, digit, top, left):  # cannot meet without overlapping
                    left, gaps[-1] = right, "none"
        region = page[top:top + digit.shape[0], left:left + digit.shape[1]]
        torch.maximum(region, digit, out=region)
        right = left + digit.shape[1]
    rows = page.sum(dim=1).nonzero()
    return page[max(rows[0] - margin, 0):rows[-1] + margin, :right + margin], gaps


def as_drawn(page):
    """Black ink on white, as a PNG's bytes."""
    image = Image.fromarray(((1 - page) * 255).round().byte().numpy())
    file = io.BytesIO()
    image.save(file, format="PNG")
    return file.getvalue(), "png"


def as_photographed(page, rng):
    """Grey ink on grey paper, the light falling off across the page in a
    random direction (to 60-90 %), noise, and JPEG's loss: a JPEG's bytes."""
    height, width = page.shape
    paper, ink = rng.uniform(0.75, 0.95), rng.uniform(0.05, 0.3)
    gray = paper - (paper - ink) * page
    angle = rng.uniform(0, 2 * math.pi)
    ys, xs = torch.meshgrid(torch.linspace(-1, 1, height), torch.linspace(-1, 1, width),
                            indexing="ij")
    dim = rng.uniform(0.6, 0.9)
    gray = gray * (dim + (1 - dim) * ((xs * math.cos(angle) + ys * math.sin(angle)) / 2 + 0.5))
    noise = torch.randn(height, width, generator=torch.Generator().manual_seed(
        rng.randrange(2**31)))
    gray = (gray + rng.uniform(0.01, 0.04) * noise).clamp(0, 1)
    file = io.BytesIO()
    Image.fromarray((gray * 255).round().byte().numpy()).convert("RGB").save(
        file, format="JPEG", quality=rng.randint(40, 90))
    return file.getvalue(), "jpg"


def edit_distance(a, b):
    """The fewest digits added, dropped or changed that turn string a into b."""
    distances = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        diagonal, distances[0] = distances[0], i
        for j, y in enumerate(b, 1):
            diagonal, distances[j] = distances[j], min(distances[j] + 1, distances[j - 1] + 1,
                                                       diagonal + (x != y))
    return distances[-1]


def model_and_digits(args, what):
    """The model (to be asked, not trained), its checkpoint, and the images and
    labels that `what` ("rows of digits") are made of: the test set's, or the
    model's own validation digits as train.py held them out."""
    model, checkpoint = load_checkpoint(args.checkpoint)
    if checkpoint["dataset"] != "mnist":
        raise CheckpointError(f"{args.checkpoint}: a {checkpoint['dataset']} model; "
                              f"{what} need an MNIST one")
    if args.split == "test":
        return model.eval(), checkpoint, *data.load_split(args.data_dir, "mnist", "test")
    train_args = checkpoint["train_args"]
    if not train_args["val_size"]:
        raise data.DataError(f"{args.checkpoint} held out no validation digits "
                             f"(trained with --val-size 0): use --split test")
    images, labels = data.load_split(args.data_dir, "mnist", "train")
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(
        train_args["seed"]))[:train_args["val_size"]]  # as train.py split them
    return model.eval(), checkpoint, images[order], labels[order]


def main(argv=None):
    args = parse_args(argv)
    try:
        model, checkpoint, images, labels = model_and_digits(args, "rows of digits")
    except (CheckpointError, data.DataError) as error:
        sys.exit(f"error: {error}")
    rng = random.Random(args.seed)
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(args.seed))
    order = order.repeat(-(-args.rows * DIGITS_PER_ROW // len(labels)))  # more rows than digits
    print(f"{args.rows:,} rows of {DIGITS_PER_ROW} {args.split} digits, read by "
          f"{args.checkpoint}" + (", told each holds 5" if args.digits else ""))
    strings_right, digits_right, flagged_and_right = 0, 0, []
    by_gaps = {"apart": [], "touching": []}  # rows with no digit moved to touch, and with
    used = order[:args.rows * DIGITS_PER_ROW]
    for row in range(args.rows):
        chosen = used[row * DIGITS_PER_ROW:(row + 1) * DIGITS_PER_ROW]
        truth = "".join(checkpoint["classes"][i] for i in labels[chosen].tolist())
        page, gaps = make_row(images[chosen], rng)
        image, kind = as_photographed(page, rng) if row % 2 else as_drawn(page)
        try:
            digits = predict.read_digits(predict.read_image(image)[0], model, checkpoint,
                                         args.digits)
            read, _ = predict.answer(digits, checkpoint["classes"], args.digits)
        except predict.ImageError as error:  # read as nothing: wrong, and said
            print(f"  row {row} ({truth}): {error}")
            read = ""
        strings_right += read == truth
        digits_right += DIGITS_PER_ROW - min(edit_distance(read, truth), DIGITS_PER_ROW)
        flagged_and_right.append(("?" in read, read == truth))
        by_gaps["touching" if "touching" in gaps else "apart"].append(read == truth)
        if args.save and row < 20:  # (a ? as _: Windows allows no ? in a file name)
            with open(f"{args.save}/row{row}-{truth}-read-{read.replace('?', '_')}.{kind}",
                      "wb") as f:
                f.write(image)
        if (row + 1) % 200 == 0:
            print(f"  {row + 1:,} rows: {100 * strings_right / (row + 1):.1f}% read right",
                  flush=True)
    alone = predict.class_probabilities(model, images[used].float() / 255,
                                        checkpoint["normalization"]).argmax(dim=1)
    single = (alone == labels[used]).float().mean().item()
    right_unflagged = [right for flagged, right in flagged_and_right if not flagged]
    print(f"\nrows read right:   {100 * strings_right / args.rows:5.1f}%   (the digits alone, "
          f"to the fifth power: {100 * single ** DIGITS_PER_ROW:.1f}%)")
    print(f"digits read right: {100 * digits_right / DIGITS_PER_ROW / args.rows:5.1f}%   "
          f"(1 - edit distance / 5; the digits alone: {100 * single:.2f}%)")
    for name, rights in (("no digits moved to touch", by_gaps["apart"]),
                         ("digits moved to touch", by_gaps["touching"])):
        if rights:
            print(f"  rows with {name}: {100 * sum(rights) / len(rights):.1f}% of "
                  f"{len(rights):,}")
    flagged = len(flagged_and_right) - len(right_unflagged)
    print(f"rows with a ? (a digit the reader is unsure of): {flagged:,}; of the others, "
          f"{100 * sum(right_unflagged) / max(1, len(right_unflagged)):.1f}% read right")


if __name__ == "__main__":
    cli.run(main)
