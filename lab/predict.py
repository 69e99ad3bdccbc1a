"""Ask a trained model about your own images: a photo or a scan of a digit
written on paper, any size, in pencil or any pen, on plain, ruled or squared
paper, dark ink on light paper or light on dark, or of a row of digits side by
side (a ZIP code, a phone number: segment.py finds them).

    python -m lab.predict model.pt photo.jpg [more.png ...]
    python -m lab.predict model.pt photo.jpg --show seen/    # what the model saw
    python -m lab.predict model.pt zip.jpg --digits 5        # a row of 5 digits

Each image is prepared as the MNIST digits were (LeCun et al.): grey levels,
background black and ink white (the ink measured against the paper's own level
where it lies, printed lines taken away), cropped to the ink, scaled so that its longer
side is 20 pixels, and placed in a 28 x 28 frame with its centre of mass in the
middle. Strokes thinner than MNIST's (a fine pen, a mouse) are widened to
MNIST's width for the digit's size first. (Fashion-MNIST's pictures were
prepared differently, the item filling the frame, so for a model trained on
them this preparation is only a rough fit.)
"""

import sys

if not __package__:  # python lab/predict.py: Python would look for cli.py and the rest in lab/
    sys.exit("run it from the project's folder as a module: python -m lab.predict "
             + " ".join(sys.argv[1:]))

import argparse
import io
import os
import tempfile
import warnings

import torch
import torch.nn.functional as F
from PIL import Image, ImageOps, UnidentifiedImageError

import cli
from checkpoint import CheckpointError, load_checkpoint
from lab import segment

# 100 megapixels (say 11,500 x 8,700) is more than a phone photo; anything larger
# is not a photo of a digit, and decoding it could take gigabytes. (PIL itself
# refuses images of more than about 179 megapixels.)
MAX_PIXELS = 100_000_000
# The longest side an image is analysed at: plenty for a 20-pixel digit, and
# a 50-megapixel photo is then as quick to prepare as a small one.
WORKING_SIZE = 1024
# How much brighter than the background (in [0, 1]) the ink must be: below it,
# the image is a blank page or noise.
MIN_INK_CONTRAST = 0.2
# MNIST's strokes are about a tenth as wide as the digit is long: the median
# over its training digits, measured with stroke_width below, is 0.0975.
MNIST_STROKE_WIDTH = 0.1
# More digits than this in one image is a page, not a row: crop it first.
MAX_DIGITS = 20


class ImageError(Exception):
    """An image that cannot be read or holds no digit; the message says why."""


class NoInk(ImageError):
    """An image with nothing written or drawn on it."""


def output_folder(path):
    """--show's folder: made, with any missing parents, if it does not exist."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise argparse.ArgumentTypeError(f"{path} is a file, not a folder")
    try:
        os.makedirs(path, exist_ok=True)
        tempfile.TemporaryFile(dir=path).close()
    except OSError as error:
        raise argparse.ArgumentTypeError(f"cannot write into {path}: {error.strerror}") from None
    return path


def parse_args(argv=None):
    parser = cli.ArgumentParser(
        prog="python -m lab.predict",
        description="Classify your own images of digits (PNG or JPEG).")
    parser.add_argument("checkpoint", help="a model file written by train.py, e.g. model.pt")
    parser.add_argument("images", nargs="*", help="PNG or JPEG files, any size")
    parser.add_argument("--device", type=cli.device, default="cpu",
                        help="cpu (the default, not auto: a few images are answered there "
                             "before a GPU would have started), auto, cuda, cuda:N, mps, ...")
    parser.add_argument("--show", metavar="FOLDER", type=output_folder,
                        help="save, for each image, the image beside the 28 x 28 digits the "
                             "model saw, as FOLDER/<name>.png (<name>-2.png for a second "
                             "image of that name)")
    parser.add_argument("--digits", type=cli.number(int, lambda n: 1 <= n <= MAX_DIGITS,
                                                    f"a whole number in [1, {MAX_DIGITS}]"),
                        help="how many digits each image holds (a ZIP code: 5), so that "
                             "touching digits are cut into that many; by default as many as "
                             "the ink and the model make out")
    args = parser.parse_args(argv)
    if not args.images:  # `python -m lab.predict photo.jpg`: the photo was taken for the model
        parser.error(f"give the model file first, then the images: python -m lab.predict "
                     f"model.pt {args.checkpoint}")
    return args


def read_image(source):
    """The image in `source`, a file's path or the file's bytes, as grey levels
    in [0, 1], [height, width], upright, at most WORKING_SIZE pixels on its
    longer side; and the image itself."""
    try:
        with warnings.catch_warnings():  # PIL warns of large images; we decide below
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(source) if isinstance(source, bytes) else source)
        if image.width * image.height > MAX_PIXELS:
            raise ImageError(f"{image.width:,} x {image.height:,} pixels is too large for a "
                             f"photo of a digit; crop it first")
        image.draft("L", (WORKING_SIZE, WORKING_SIZE))  # JPEG: decode at a reduced size
        image = ImageOps.exif_transpose(image)  # phones store rotation apart
        if image.mode.startswith("I;16"):  # a scanner's 16-bit grey: 0-65535
            image = image.convert("I").point(lambda value: value / 257)  # convert("L") clips
        if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
            image = image.convert("RGBA")
            if image.getchannel("A").getextrema()[0] < 255:  # (a canvas is opaque)
                # A drawing app's transparent paper: white, where convert("L") makes it black.
                paper = Image.new("RGBA", image.size, "white")
                image = Image.alpha_composite(paper, image)
        image = image.convert("L")
        image.thumbnail((WORKING_SIZE, WORKING_SIZE))  # keeps the aspect ratio
    except Image.DecompressionBombError:
        raise ImageError("too large for a photo of a digit; crop it first") from None
    except UnidentifiedImageError:
        raise ImageError("not an image (PNG or JPEG expected)") from None
    except (OSError, SyntaxError, ValueError) as error:  # missing, unreadable, truncated
        reason = getattr(error, "strerror", None) or str(error)
        raise ImageError(f"cannot be read ({reason})") from None
    pixels = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8)
    return pixels.view(image.height, image.width).float() / 255, image


def average_3x3(image):
    """F.avg_pool2d(image[None, None], 3, stride=1, padding=1)[0, 0], the same
    sums in the same order, so the same numbers; but avg_pool2d's CPU kernel
    takes a single channel four times as long as these nine shifted sums."""
    height, width = image.shape
    padded = F.pad(image, (1, 1, 1, 1))
    sums = torch.zeros_like(image)
    for dy in range(3):
        for dx in range(3):
            sums += padded[dy:dy + height, dx:dx + width]
    return sums / 9


def brightest_3x3_average(image):
    """How bright the brightest 3 x 3 square of `image` is on average."""
    return average_3x3(image).max()


def stroke_width(ink):
    """The strokes' typical width in pixels: the ink's area over half its
    outline's length, as a stroke w wide and l long has area w l and an
    outline about 2 l long."""
    inked = F.pad(ink > 0.5, (1, 1, 1, 1))  # so that ink at the edge has an outline there
    outline = (inked[1:] != inked[:-1]).sum() + (inked[:, 1:] != inked[:, :-1]).sum()
    return 2 * inked.sum().item() / outline.item()


def thicken(ink):
    """The cropped ink with strokes thinner than MNIST's widened to MNIST's
    width for the digit's size: each pixel takes the brightest value within a
    square around it (a dilation; max-pooling with stride 1)."""
    # A dilation widens strokes and digit alike by 2 r, so r solves
    # (width + 2 r) / (longer side + 2 r) = MNIST_STROKE_WIDTH.
    target = MNIST_STROKE_WIDTH
    radius = round((target * max(ink.shape) - stroke_width(ink)) / (2 * (1 - target)))
    if radius < 1:
        return ink
    ink = F.pad(ink, (radius, radius, radius, radius))  # room to grow
    # A square of 2 r + 1 pixels as two passes: along each row, then each
    # column, with the rows (columns) as a batch, which torch runs much faster.
    ink = F.max_pool1d(ink[:, None], 2 * radius + 1, stride=1, padding=radius)[:, 0]
    return F.max_pool1d(ink.T[:, None], 2 * radius + 1, stride=1, padding=radius)[:, 0].T


def ink_of(gray):
    """Grey levels [H, W] in [0, 1] -> the ink, white on black, over the paper's
    own level where it lies (segment.ink_on_black: shadows, uneven light and
    printed lines taken away), and its 3 x 3 averages, both scaled so that the
    brightest strokes are 1: pencil, coloured and grey ink read as a dark pen
    does. NoInk if the brightest 3 x 3 average, which a lone speck of noise
    cannot reach, is too faint to be writing."""
    ink = segment.ink_on_black(gray)
    around = average_3x3(ink)
    level = around.max()
    if level < MIN_INK_CONTRAST:
        raise NoInk("no ink found: the image looks blank (or the digit is too faint)")
    return ink / level, around / level


def centred(ink):
    """The ink [H, W], white on black, its strokes 1 -> a 28 x 28 digit as
    MNIST's were: faint shadows dropped, cropped, longer side 20 pixels,
    centred by mass."""
    inked = ink >= segment.INK
    rows, columns = inked.any(dim=1).nonzero(), inked.any(dim=0).nonzero()
    crop = (slice(rows[0], rows[-1] + 1), slice(columns[0], columns[-1] + 1))
    ink = thicken(torch.where(inked[crop], ink[crop].clamp(max=1), 0))  # cropped to the ink
    height, width = ink.shape
    scale = 20 / max(height, width)
    size = (max(1, round(height * scale)), max(1, round(width * scale)))
    digit = F.interpolate(ink[None, None], size=size, mode="bilinear", antialias=True)[0, 0]
    digit = digit / digit.max()  # thin strokes lose brightness in the shrinking
    # Centre of mass, in pixel centres, moved to the frame's centre (14, 14).
    mass = digit.sum()
    centre_y = (digit.sum(dim=1) * (torch.arange(size[0]) + 0.5)).sum() / mass
    centre_x = (digit.sum(dim=0) * (torch.arange(size[1]) + 0.5)).sum() / mass
    top = min(max(round(14 - centre_y.item()), 0), 28 - size[0])
    left = min(max(round(14 - centre_x.item()), 0), 28 - size[1])
    frame = torch.zeros(28, 28)
    frame[top:top + size[0], left:left + size[1]] = digit
    return frame


def alone(ink, around):
    """The ink of an image of one digit and its 3 x 3 averages, as ink_of gives
    them -> the 28 x 28 digit, specks of noise left out (ink is a quarter as
    bright as the strokes over a 3 x 3 square too; a speck is not), so that
    they do not widen the crop."""
    return centred(torch.where(around < segment.INK, 0, ink))


def prepare(gray):
    """Grey levels [H, W] in [0, 1] -> the 28 x 28 digit the model reads."""
    return alone(*ink_of(gray))


@torch.no_grad()  # per thread: draw.py's server asks from several at once
def class_probabilities(model, digits, normalization):
    """The model's probability of each class [N, classes] for prepared 28 x 28
    digits [N, 28, 28], normalized as the model's training images were."""
    normalized = (digits - normalization["mean"]) / normalization["std"]
    device = next(model.parameters()).device
    return model(normalized[:, None].to(device)).softmax(dim=1).cpu()


def read_digits(gray, model, checkpoint, count=None):
    """The digits in an image, left to right: [(28 x 28 digit, probabilities,
    uncertain)]. One digit alone is the whole image's ink prepared, specks left
    out (alone); in a row, each digit is its own ink under its mask (the mask
    already leaves specks out), prepared the same way otherwise."""
    ink, around = ink_of(gray)
    normalization = checkpoint["normalization"]

    def prepared(mask):  # the mask widened by a pixel, for the strokes' soft edges; each
        # digit scaled to its own brightest strokes, so a faint one beside a dark one is ink too
        piece = ink * F.max_pool2d(mask[None].float(), 3, stride=1, padding=1)[0]
        return centred(piece / brightest_3x3_average(piece))

    def read(masks):
        return class_probabilities(model, torch.stack([prepared(m) for m in masks]),
                                   normalization)

    # The probability training aimed the right class at: 1, less with label
    # smoothing (0.91 at the default 0.1; a clear digit may still get more).
    smoothing = checkpoint["train_args"]["label_smoothing"]
    sure = 1 - smoothing + smoothing / len(checkpoint["classes"])
    try:
        found = segment.find_digits(ink, read, sure, MAX_DIGITS, count)
    except segment.TooManyDigits:
        raise ImageError(f"more than {MAX_DIGITS} digits: a row of at most {MAX_DIGITS} "
                         f"is read") from None
    digits = [alone(ink, around)] if len(found) == 1 else [prepared(mask) for mask, _ in found]
    probabilities = class_probabilities(model, torch.stack(digits), normalization)
    return [(digit, p, uncertain and len(found) > 1)
            for digit, p, (_, uncertain) in zip(digits, probabilities, found)]


def answer(digits, classes, count):
    """The answer and its details: for one digit, `4` and `4 95.2%, 1 1.1%, 9 1.0%`
    (its three likeliest); for a row, `941?0` and `9 91.0%, 4 88.2%, 1 90.3%, 1?
    45.1%, 0 90.5%`: each digit's likeliest, a ? where the model or the cut is unsure."""
    if len(digits) == 1 and count in (None, 1):
        top = digits[0][1].topk(3)
        return classes[top.indices[0]], ", ".join(
            f"{classes[i]} {100 * p:.1f}%" for p, i in zip(top.values.tolist(),
                                                           top.indices.tolist()))
    apart = " " if any(len(name) > 1 for name in classes) else ""  # Fashion-MNIST's names
    text = apart.join("?" if uncertain else classes[p.argmax()] for _, p, uncertain in digits)
    each = ", ".join(f"{classes[p.argmax()]}{'?' if uncertain else ''} {100 * p.max():.1f}%"
                     for _, p, uncertain in digits)
    found = f"{len(digits)} digit{'s' if len(digits) > 1 else ''}"
    return text, each + (f"; {found} found, not {count}" if count not in (None, len(digits))
                         else "")


def main(argv=None):
    args = parse_args(argv)
    try:
        model, checkpoint = load_checkpoint(args.checkpoint, args.device)
    except CheckpointError as error:
        swapped = os.path.splitext(args.checkpoint)[1].lower() in (".png", ".jpg", ".jpeg")
        sys.exit(f"error: {error}" + (f"; the model file comes first: python -m lab.predict "
                                      f"model.pt {args.checkpoint}" if swapped else ""))
    model.eval()
    classes = checkpoint["classes"]
    failed = 0
    shown = set()  # --show's file names so far
    for path in args.images:
        try:
            gray, original = read_image(path)
            digits = read_digits(gray, model, checkpoint, args.digits)
        except ImageError as error:  # one line, and on to the next image
            print(f"error: {path}: {error}", file=sys.stderr)
            failed += 1
            continue
        read, details = answer(digits, classes, args.digits)
        print(f"{path}: {read}   ({details})")
        if args.show:
            from lab import pictures  # only here: importing matplotlib takes seconds

            stem = os.path.splitext(os.path.basename(path))[0]
            name, copy = stem + ".png", 1
            while name in shown:  # photos of one name from two folders: both kept
                copy += 1
                name = f"{stem}-{copy}.png"
            shown.add(name)
            caption = f"{os.path.basename(path)}: " + (
                details if len(digits) == 1 else f"{read}   ({details})")
            figure = pictures.what_the_model_saw(
                original, [(digit * 255).round().byte() for digit, _, _ in digits], caption)
            pictures.save(figure, os.path.join(args.show, name))
    if failed:
        sys.exit(1)


if __name__ == "__main__":
    cli.run(main)
