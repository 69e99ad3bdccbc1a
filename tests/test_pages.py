"""Your own digits on a real page: pencil, coloured pens, dim light, ruled and
squared paper, a digit in pieces (lab/predict.py, lab/segment.py), and
lab/pages.py, which measures on such pages."""

import functools
import math
import os
import random
import re
from io import BytesIO

import pytest
import torch
import torch.nn.functional as F
from conftest import arc, drawing, grey_levels, pen_strokes, png, row_strokes, run
from PIL import Image, ImageDraw

from checkpoint import load_checkpoint
from lab import draw, pages, predict, segment

BLUE_BLACK, RULED_LINE, MARGIN = (25, 35, 90), (150, 195, 235), (225, 85, 90)


def jpeg(gray=None, rgb=None, quality=90):
    """Grey levels [H, W] or colours [3, H, W] in [0, 1] as a JPEG's bytes."""
    pixels = (gray[None].expand(3, -1, -1) if rgb is None else rgb).clamp(0, 1)
    file = BytesIO()
    Image.fromarray((pixels * 255).round().byte().permute(1, 2, 0).numpy()).save(
        file, format="JPEG", quality=quality)
    return file.getvalue()


@functools.cache
def loaded(model_file):
    return load_checkpoint(model_file)


def read(image, model_file):
    """predict.py's answer for an image's bytes, or "" for no ink found."""
    model, checkpoint = loaded(model_file)
    try:
        digits = predict.read_digits(predict.read_image(image)[0], model, checkpoint)
    except predict.NoInk:
        return ""
    return predict.answer(digits, checkpoint["classes"], None)[0]


def written(digit, colour, paper, size=400, pen=12, seed=None):
    """Digit `digit`'s strokes in `colour` (RGB, 0-255) on paper of colour
    `paper`: a PIL image, size x size."""
    page = Image.new("RGB", (size, size), paper)
    strokes = pen_strokes(digit, random.Random(digit if seed is None else seed), size)
    ink = drawing(strokes, pen, size)  # black on white: the pen's cover
    return Image.composite(page, Image.new("RGB", page.size, colour), ink)


def as_rgb(image):
    return torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8).view(
        image.height, image.width, 3).permute(2, 0, 1).float() / 255


def uneven(rgb, low=0.8):
    """Light falling to `low` of itself across the page, left to right."""
    return rgb * torch.linspace(1, low, rgb.shape[-1])


# ----------------------------------------------------------------------------
# One measure of ink: the ink over the paper's own level, wherever it lies


@pytest.fixture(scope="module")
def blank_pages():
    """Pages with nothing written on them that must stay `no ink found`: each
    answered so by the code before the ink was measured against the paper's own
    level, too (a test that lab/predict.py's older preparation, the border's
    level taken for the paper's, found no ink in any)."""
    height, width = 480, 640
    generator = torch.Generator().manual_seed(0)
    ys, xs = torch.meshgrid(torch.linspace(0, 1, height), torch.linspace(0, 1, width),
                            indexing="ij")
    fibres = F.avg_pool2d(torch.randn(1, height, width, generator=generator), 5, stride=1,
                          padding=2)[0]
    # a pen held over the page: a soft band along a diagonal, 12 % darker
    along = (xs - 0.2) * math.cos(0.6) + (ys - 0.3) * math.sin(0.6)
    across = -(xs - 0.2) * math.sin(0.6) + (ys - 0.3) * math.cos(0.6)
    pen = torch.exp(-(across / 0.03) ** 2) * ((along > 0) & (along < 0.6))
    return {
        "blank": jpeg(torch.full((height, width), 0.9)),
        "paper texture": jpeg(0.88 + 0.1 * fibres),
        "soft shadow": jpeg(0.9 - 0.16 * torch.exp(-((xs - 0.4) ** 2 + (ys - 0.5) ** 2) / 0.08)),
        "hard shadow": jpeg(torch.where(xs < 0.4, 0.74, 0.9)),
        "a pen's shadow": jpeg(0.9 * (1 - 0.12 * F.avg_pool2d(pen[None], 9, stride=1,
                                                               padding=4)[0])),
        "JPEG noise at quality 40": jpeg(0.88 + 0.05 * torch.randn(height, width,
                                                                   generator=generator),
                                                        quality=40),
    }


def test_pages_with_nothing_written_are_still_blank(blank_pages, drawn_digit_model):
    for name, image in blank_pages.items():
        assert read(image, drawn_digit_model) == "", name
        gray = predict.read_image(image)[0]
        # the border's level taken for the paper's, as a lone digit was once prepared
        border = torch.cat([gray[0], gray[-1], gray[:, 0], gray[:, -1]]).median()
        once = ((1 - gray) - (1 - border).clamp(max=0.5)).clamp(min=0)
        assert predict.brightest_3x3_average(once) < predict.MIN_INK_CONTRAST, name
    # a hard shadow twice as deep was ink to the border's level; to the paper's own, not
    xs = torch.linspace(0, 1, 640).expand(480, -1)
    assert read(jpeg(torch.where(xs < 0.4, 0.6, 0.9)), drawn_digit_model) == ""


def test_pencil_coloured_pens_and_dim_light_read_as_a_dark_pen(drawn_digit_model):
    generator = torch.Generator().manual_seed(0)
    for digit in range(10):
        dark_pen = read(png(written(digit, (0, 0, 0), (255, 255, 255))), drawn_digit_model)
        assert dark_pen == str(digit)
        noise = 0.02 * torch.randn(1, 400, 400, generator=generator)
        pencil = uneven(as_rgb(written(digit, (135, 135, 135), (220, 220, 220)))) + noise
        kinds = {
            "pencil, 85 levels darker than the paper": jpeg(pencil.mean(dim=0)),
            **{f"{name} pen": jpeg(rgb=as_rgb(written(digit, colour, (245, 245, 240))))
               for name, colour in [("red", (205, 35, 45)), ("green", (25, 135, 65)),
                                    ("blue", (30, 55, 170))]},
            "a black pen in dim light": jpeg(rgb=0.45 * uneven(as_rgb(written(
                digit, (25, 25, 35), (235, 235, 230)))) + noise),
        }
        for kind, image in kinds.items():
            assert read(image, drawn_digit_model) == dark_pen, (digit, kind)


def test_the_faintest_ink_is_51_grey_levels_darker_than_the_paper():
    """MIN_INK_CONTRAST, 0.2 of the range from white to black, whatever the paper's level."""
    for darker, found in ((60, True), (45, False)):
        gray = grey_levels(drawing(pen_strokes(3, random.Random(0), 300), 12, 300))
        page = 0.85 - darker / 255 * (1 - gray)
        if found:
            assert predict.prepare(page).max() == 1
        else:
            with pytest.raises(predict.NoInk):
                predict.prepare(page)


# ----------------------------------------------------------------------------
# Printed lines are paper: ruled and squared paper, a margin


LINE_SPACING = 44  # pixels, on a 400-pixel page: the lines at 30 + 44 k


def notebook(digit, squared=False, tilt=0.0, bar_on_a_line=False, size=400):
    """Digit `digit` in blue-black pen on ruled paper with a red margin (or on
    squared paper), tilted `tilt` degrees: a JPEG's bytes."""
    large = round(size * 1.2)
    inset = (large - size) // 2
    page = Image.new("RGB", (large, large), (245, 245, 240))
    lines = ImageDraw.Draw(page)
    spacing = LINE_SPACING
    first = inset + 30
    for at in range(first % spacing, large, spacing if not squared else spacing // 2):
        lines.line([(0, at), (large, at)], fill=RULED_LINE, width=2)
        if squared:
            lines.line([(at, 0), (at, large)], fill=RULED_LINE, width=2)
    if not squared:
        lines.line([(inset + 40, 0), (inset + 40, large)], fill=MARGIN, width=3)
    strokes = pen_strokes(digit, random.Random(digit), size)
    shift = [inset, inset]
    if bar_on_a_line:  # the 7's bar (its first stroke's first point) moved onto a line
        shift[1] += first + 2 * spacing - (inset + round(strokes[0][0][1]))
    strokes = [[(x + shift[0], y + shift[1]) for x, y in stroke] for stroke in strokes]
    ink = drawing(strokes, 8, (large, large))
    page = Image.composite(page, Image.new("RGB", page.size, BLUE_BLACK), ink)
    page = page.rotate(tilt, resample=Image.BICUBIC).crop((inset, inset, inset + size,
                                                          inset + size))
    file = BytesIO()
    page.save(file, format="JPEG", quality=90)
    return file.getvalue()


def test_ruled_and_squared_paper_s_lines_and_its_margin_are_not_digits(drawn_digit_model):
    for digit in range(10):
        plain = read(png(written(digit, (0, 0, 0), (255, 255, 255), pen=8)), drawn_digit_model)
        assert plain == str(digit)
        for page in ("ruled", "squared"):
            tilt = (-3, 0, 3)[digit % 3]
            image = notebook(digit, squared=page == "squared", tilt=tilt)
            assert read(image, drawn_digit_model) == plain, (digit, page, tilt)


def test_a_7_whose_bar_lies_on_a_line_keeps_its_bar(drawn_digit_model):
    image = notebook(7, bar_on_a_line=True)
    gray = predict.read_image(image)[0]
    bar = 30 + 2 * LINE_SPACING  # the third line
    ink, _ = predict.ink_of(gray)
    assert ink[bar - 6:bar + 6].amax(dim=0).gt(0.5).sum() > 50  # the bar, along the line
    assert ink[bar + LINE_SPACING - 6:bar + LINE_SPACING + 6].amax(dim=0).gt(0.2).sum() < 20
    assert read(image, drawn_digit_model) == "7"


def test_a_1_filling_the_photo_is_not_a_line(drawn_digit_model):
    for height, pen in ((400, 24), (400, 5), (1000, 60), (1000, 12)):  # thick and fine pens
        # the ink from 5 % of the height to 95 %
        top, bottom = 0.05 * height + pen / 2, 0.95 * height - pen / 2
        image = png(drawing([[(0.52 * height, top), (0.48 * height, bottom)]], pen,
                            (height, height)))
        assert read(image, drawn_digit_model) == "1"
        ink = segment.ink_on_black(predict.read_image(image)[0])
        assert ink.amax(dim=1).gt(0.5).sum() >= 0.89 * height


def test_images_too_small_for_a_line_s_margin_are_read(drawn_digit_model):
    model, checkpoint = loaded(drawn_digit_model)
    for height, width in ((3, 3), (12, 5), (30, 4)):  # 5 % of the width: under a pixel
        gray = torch.ones(height, width)
        gray[:, width // 2] = 0  # a 1, down the middle
        digits = predict.read_digits(gray, model, checkpoint)
        assert predict.answer(digits, checkpoint["classes"], None)[0] == "1"


# ----------------------------------------------------------------------------
# A digit's pieces stay one digit


def italic_8(shift):
    """An 8 of two loops that do not meet, the upper one `shift` to the right."""
    return [arc(0.3 + shift, 0.2, 0.2, 0.19, 90, 450), arc(0.3, 0.73, 0.27, 0.26, -90, 270)]


def found(strokes, size, read_masks=None):
    """segment.find_digits' digits in a drawing: their masks' boxes."""
    ink = 1 - grey_levels(drawing(strokes, 10, size))

    def every_piece_sure(masks):
        return F.one_hot(torch.zeros(len(masks), dtype=torch.long), 10).float()

    digits = segment.find_digits(ink, read_masks or every_piece_sure, 1.0, 20)
    return [(mask.any(dim=0).nonzero()[[0, -1], 0].tolist()) for mask, _ in digits]


def test_pieces_one_above_the_other_are_one_digit():
    for shift in (0.1, 0.3, 0.35):  # from upright to loops whose widths overlap by 0.05
        strokes, size = row_strokes([italic_8(shift)], random.Random(0), 150, [])
        assert segment.label_strokes(grey_levels(drawing(strokes, 10, size)) < 0.5).unique(
        ).numel() == 2 + 1  # two loops apart, and the paper
        assert len(found(strokes, size)) == 1
        strokes, size = row_strokes([1, italic_8(shift), 3, 1, 1], random.Random(0), 150,
                                    [0.4] * 4)
        assert len(found(strokes, size)) == 5  # and "11" still two digits


def test_pieces_side_by_side_join_where_the_model_reads_them_more_surely_joined():
    four = [[(0.3, 0.0), (0.0, 0.65), (0.34, 0.65)], [(0.45, 0.3), (0.45, 1.0)]]
    strokes, size = row_strokes([four], random.Random(0), 150, [])
    apart = found(strokes, size)
    assert len(apart) == 2  # (clusters() alone does not join them: they do not overlap)

    def surer_joined(masks):  # the wider the piece, the surer the model
        widths = torch.tensor([float(m.any(dim=0).sum()) for m in masks])
        surety = (widths / 80).clamp(0.1, 1)
        return torch.stack([surety, 1 - surety], dim=1)

    assert len(found(strokes, size, surer_joined)) == 1


# ----------------------------------------------------------------------------
# The drawing page reads as it did


def test_drawings_on_the_page_are_answered_as_before(drawn_digit_model):
    """100 drawings on the page's white canvas: the same answers as the
    preparation before the ink was measured against the paper's own level (the
    canvas inverted, the border's level taken away), and the same 28 x 28."""
    model, checkpoint = load_checkpoint(drawn_digit_model)
    rng = random.Random(1)
    for n in range(100):
        canvas = drawing(pen_strokes(n % 10, rng, 400), rng.randint(2, 24), 400)
        answer = draw.answer(model, checkpoint, png(canvas))
        ink = 1 - grey_levels(canvas)
        before = predict.centred(ink / predict.brightest_3x3_average(ink))
        probabilities = predict.class_probabilities(model, before[None],
                                                    checkpoint["normalization"])[0]
        assert torch.tensor(answer["probabilities"]).argmax() == probabilities.argmax()
        assert (torch.tensor(answer["seen"]) - (before * 255).round().flatten()).abs().max() <= 2


# ----------------------------------------------------------------------------
# lab/pages.py


def test_pages_py_draws_each_kind_of_page_and_measures(capsys, checkpoint, mnist, tmp_path,
                                                       monkeypatch):
    counts = {name: 2 if name == "pencil" else 1 for name in pages.KINDS}  # pencil 2: a PNG
    monkeypatch.setattr(pages, "KINDS", {name: {**kind, "count": counts[name]}
                                         for name, kind in pages.KINDS.items()})
    code, stdout, err = run(capsys, pages, checkpoint, "--data-dir", mnist, "--save",
                            tmp_path / "pages")
    assert code == 0, err
    rows = re.findall(r"^\| ([^|]+) \| (\d) \| (\d) \| (\d) \| (\d) \| (\d) \|$", stdout,
                      re.M)
    assert [name for name, *_ in rows] == list(pages.KINDS)
    assert all(int(count) == counts[name] == sum(map(int, each))
               for name, count, *each in rows)
    saved = os.listdir(tmp_path / "pages")
    assert len(saved) == sum(counts.values())
    assert any(re.fullmatch(r"ruled-paper-0-\d-read-\w+\.jpg", name) for name in saved)
    assert any(name.endswith(".png") for name in saved)  # half the pencil pages: scanned
