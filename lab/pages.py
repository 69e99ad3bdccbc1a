"""How well a model reads digits written on real pages: MNIST digits drawn as a
pencil or a pen would draw them, on white, ruled and squared paper, in even,
uneven and dim light, some tilted, photographed (JPEG) or scanned (PNG), each
alone on its page and read as predict.py reads a photo.

    python -m lab.pages model.pt                 # the test digits: read once, at the end
    python -m lab.pages model.pt --split val     # the model's validation digits: for choosing
    python -m lab.pages model.pt --save pages/   # also the first two pages of each kind

Each kind of page below names its parameters; the digits are enlarged 6 to 9
times, so a page is about what a phone's photo of one digit is once predict.py
has shrunk it. Every kind uses digits of its own.
"""

import sys

if not __package__:  # python lab/pages.py: Python would look for cli.py and the rest in lab/
    sys.exit("run it from the project's folder as a module: python -m lab.pages "
             + " ".join(sys.argv[1:]))

import io
import math
import os
import random

import torch
import torch.nn.functional as F
from PIL import Image

import cli
import data
from checkpoint import CheckpointError
from lab import predict, zipcodes

SIZE = 400  # the page, pixels a side
# Pens as RGB (0-255); a pencil is grey, drawn `darker` levels below the paper.
PENS = {"black": (25, 25, 35), "blue": (30, 55, 170), "red": (205, 35, 45),
        "green": (25, 135, 65), "blue-black": (25, 35, 90)}
COLOURS = ["black", "blue", "red", "green"]  # the pens' turns, page by page
RULED_LINE, MARGIN, SQUARES = (150, 195, 235), (225, 85, 90), (160, 175, 200)
# name: how many digits, and how they are drawn (ranges are drawn from evenly):
#   pen: a PENS colour, "colours" (COLOURS in turn) or "pencil" (`darker` levels);
#   stroke: "ballpoint" (thinner than MNIST's, 80-95 % ink), "felt" (wider, full
#   ink), "pencil" (grainy: the paper's tooth shows through) or "even" (MNIST's
#   own); paper: "white", "ruled" (light-blue lines and a red margin) or
#   "squared"; paper_level: the paper's grey, 0-255; light: "even", "uneven"
#   (falling to 70-90 % across the page) or "dim" (40-55 % of it, and noisier);
#   tilt: degrees either way; jpeg: the quality (half the pencil and grey-ink
#   pages are PNG instead, as a scanner saves them).
KINDS = {
    "pencil": dict(count=40, pen="pencil", darker=(70, 110), stroke="pencil", paper="white",
                   paper_level=(205, 235), light="uneven", tilt=0, jpeg=85),
    "faint pencil": dict(count=40, pen="pencil", darker=(40, 70), stroke="pencil",
                         paper="white", paper_level=(205, 235), light="uneven", tilt=0,
                         jpeg=85),
    "ballpoint pens": dict(count=40, pen="colours", stroke="ballpoint", paper="white",
                           paper_level=(235, 250), light="even", tilt=0, jpeg=(70, 95)),
    "felt pens": dict(count=40, pen="colours", stroke="felt", paper="white",
                      paper_level=(235, 250), light="uneven", tilt=0, jpeg=(70, 95)),
    "ruled paper": dict(count=20, pen="blue-black", stroke="ballpoint", paper="ruled",
                        paper_level=(235, 250), light="even", tilt=0, jpeg=(70, 95)),
    "ruled, tilted": dict(count=20, pen="blue-black", stroke="ballpoint", paper="ruled",
                          paper_level=(225, 250), light="uneven", tilt=3, jpeg=(70, 95)),
    "squared paper": dict(count=20, pen="blue", stroke="ballpoint", paper="squared",
                          paper_level=(235, 250), light="uneven", tilt=2, jpeg=(70, 95)),
    "dim light": dict(count=40, pen="colours", stroke="felt", paper="white",
                      paper_level=(220, 245), light="dim", tilt=0, jpeg=(70, 90)),
    "low JPEG quality": dict(count=40, pen="black", stroke="ballpoint", paper="white",
                             paper_level=(220, 245), light="uneven", tilt=0, jpeg=(25, 45)),
    "grey ink": dict(count=40, pen="pencil", darker=(70, 110), stroke="even", paper="white",
                     paper_level=(205, 235), light="uneven", tilt=0, jpeg=85),
}


def parse_args(argv=None):
    parser = cli.ArgumentParser(
        prog="python -m lab.pages",
        description="Read digits written on kinds of real pages as predict.py reads a "
                    "photo, and measure, kind by kind.")
    parser.add_argument("checkpoint", help="a model file written by train.py, e.g. model.pt")
    parser.add_argument("--data-dir", default="./data", help="the folder with MNIST/raw/")
    parser.add_argument("--split", choices=["test", "val"], default="test",
                        help="whose digits: the test set's (default) or the model's own "
                             "validation digits, held out of its training")
    parser.add_argument("--seed", type=int, default=0, help="the pages' random choices")
    parser.add_argument("--save", metavar="FOLDER", type=predict.output_folder,
                        help="also save the first two pages of each kind as "
                             "FOLDER/<kind>-<N>-<digit>-read-<reading>.png or .jpg")
    return parser.parse_args(argv)


def uniform(value, rng):
    return rng.uniform(*value) if isinstance(value, tuple) else value


def paper_lines(kind, rng, size, inset):
    """The paper's printed lines on a sheet `size` pixels a side, of which the
    page is what lies `inset` pixels in from each edge: how much of their
    colour each pixel takes [size, size] in [0, 1], and the colour of each
    pixel's line [3, size, size]."""
    cover = torch.zeros(size, size)
    colour = torch.tensor(RULED_LINE, dtype=torch.float)[:, None, None].repeat(1, size, size)
    if kind == "ruled":
        spacing = rng.uniform(0.09, 0.13) * size  # 7-9 mm lines on a 7 cm wide photo
        for y in torch.arange(rng.uniform(0, spacing), size, spacing).tolist():
            cover[round(y):round(y) + 2] = rng.uniform(0.6, 0.9)
        margin = inset + round(rng.uniform(0.05, 0.12) * SIZE)
        cover[:, margin:margin + 3] = 0.9
        colour[:, :, margin:margin + 3] = torch.tensor(MARGIN, dtype=torch.float)[:, None, None]
    elif kind == "squared":
        spacing = rng.uniform(0.05, 0.07) * size
        colour[:] = torch.tensor(SQUARES, dtype=torch.float)[:, None, None]
        for at in torch.arange(rng.uniform(0, spacing), size, spacing).tolist():
            cover[round(at)] = cover[:, round(at)] = rng.uniform(0.6, 0.9)
    return cover, colour


def page(image, kind, index, rng):
    """One digit (uint8, 28 x 28) on a page of `kind`: the image's bytes and its
    extension."""
    settings = KINDS[kind]
    big = round(SIZE * 1.25)  # drawn larger, then tilted and cropped to SIZE
    scale = rng.uniform(6, 9)
    ink = F.interpolate(image[None, None].float() / 255, scale_factor=scale, mode="bilinear")[0, 0]
    if settings["stroke"] == "ballpoint":  # thinner than MNIST's strokes, and lighter
        ink = ((ink - 0.35) / 0.65).clamp(0, 1) * rng.uniform(0.8, 0.95)
    elif settings["stroke"] == "felt":
        ink = (ink * 1.6).clamp(0, 1)
    elif settings["stroke"] == "pencil":  # its grain
        grain = torch.rand(ink.shape, generator=torch.Generator().manual_seed(rng.randrange(2**31)))
        ink = ink * F.avg_pool2d((0.55 + 0.45 * grain)[None], 3, stride=1, padding=1)[0]
    paper_level = uniform(settings["paper_level"], rng)
    paper = torch.tensor([paper_level + 6, paper_level + 3, paper_level - 4]).clamp(0, 255)
    pen = settings["pen"]
    if pen == "pencil":
        pen_rgb = (paper - uniform(settings["darker"], rng)).clamp(min=0)
    else:
        pen_rgb = torch.tensor(PENS[COLOURS[index % len(COLOURS)] if pen == "colours" else pen],
                               dtype=torch.float)
    rgb = paper[:, None, None].expand(3, big, big).clone()
    inner = (big - SIZE) // 2
    cover, line_colour = paper_lines(settings["paper"], rng, big, inner)
    rgb = rgb * (1 - cover) + line_colour * cover
    # the digit somewhere in the page's middle, right of a ruled page's margin
    top = inner + rng.randint(round(0.05 * SIZE), SIZE - ink.shape[0] - round(0.05 * SIZE))
    left = inner + rng.randint(round(0.17 * SIZE), SIZE - ink.shape[1] - round(0.05 * SIZE))
    alpha = torch.zeros(big, big)
    alpha[top:top + ink.shape[0], left:left + ink.shape[1]] = ink
    rgb = rgb * (1 - alpha) + pen_rgb[:, None, None] * alpha
    picture = Image.fromarray(rgb.round().clamp(0, 255).byte().permute(1, 2, 0).numpy())
    if settings["tilt"]:
        angle = rng.choice([-1, 1]) * rng.uniform(1, settings["tilt"])
        picture = picture.rotate(angle, resample=Image.BICUBIC)
    picture = picture.crop((inner, inner, inner + SIZE, inner + SIZE))
    rgb = torch.frombuffer(bytearray(picture.tobytes()), dtype=torch.uint8).view(
        SIZE, SIZE, 3).permute(2, 0, 1).float() / 255
    ys, xs = torch.meshgrid(torch.linspace(-1, 1, SIZE), torch.linspace(-1, 1, SIZE),
                            indexing="ij")
    angle = rng.uniform(0, 2 * math.pi)
    across = (xs * math.cos(angle) + ys * math.sin(angle)) / 2 + 0.5
    noise = 0.015
    if settings["light"] != "even":
        low = rng.uniform(0.7, 0.9)
        rgb = rgb * (low + (1 - low) * across)
    if settings["light"] == "dim":
        rgb, noise = rgb * rng.uniform(0.4, 0.55), 0.03
    generator = torch.Generator().manual_seed(rng.randrange(2**31))
    rgb = rgb + noise * torch.randn(1, SIZE, SIZE, generator=generator)  # the sensor's
    picture = Image.fromarray((rgb.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy())
    if pen == "pencil":
        picture = picture.convert("L")
    file = io.BytesIO()
    jpeg = settings["jpeg"]
    if pen == "pencil" and index % 2:  # scanned
        picture.save(file, format="PNG")
        return file.getvalue(), "png"
    picture.save(file, format="JPEG", quality=round(uniform(jpeg, rng)))
    return file.getvalue(), "jpg"


def main(argv=None):
    args = parse_args(argv)
    try:
        model, checkpoint, images, labels = zipcodes.model_and_digits(args, "pages of digits")
    except (CheckpointError, data.DataError) as error:
        sys.exit(f"error: {error}")
    rng = random.Random(args.seed)
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(args.seed))
    classes = checkpoint["classes"]
    print(f"{args.split} digits alone on pages, read by {args.checkpoint}\n")
    print("| page | digits | read right | no ink found | read as another digit | "
          "read as several |")
    print("|---|---:|---:|---:|---:|---:|")
    used = 0
    for kind, settings in KINDS.items():
        right = blank = several = 0
        for index in range(settings["count"]):
            j = order[used].item()
            used += 1
            truth = classes[labels[j]]
            image, extension = page(images[j], kind, index, rng)
            try:
                digits = predict.read_digits(predict.read_image(image)[0], model, checkpoint)
                read = predict.answer(digits, classes, None)[0]
            except predict.NoInk:
                read = ""
            except predict.ImageError:  # more than 20 digits: the page's lines, say
                read = "many"
            right += read == truth
            blank += read == ""
            several += len(read) > 1
            if args.save and index < 2:
                name = f"{kind.replace(' ', '-').replace(',', '')}-{index}-{truth}-read-" \
                       f"{read.replace('?', '_') or 'nothing'}.{extension}"
                with open(os.path.join(args.save, name), "wb") as f:
                    f.write(image)
        count = settings["count"]
        print(f"| {kind} | {count} | {right} | {blank} | {count - right - blank - several} | "
              f"{several} |", flush=True)


if __name__ == "__main__":
    cli.run(main)
