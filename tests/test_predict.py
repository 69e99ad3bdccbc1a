"""lab/predict.py: your own digits, photographed, scanned or drawn."""

import os
import random
import struct
import zlib
from io import BytesIO

import pytest
import torch
import torch.nn.functional as F
from conftest import (
    as_photo,
    assert_one_line_error,
    digit_drawings,
    drawing,
    grey_levels,
    pen_strokes,
    png,
    run,
)
from PIL import Image, ImageDraw, ImageOps

from checkpoint import load_checkpoint
from lab import predict

# ----------------------------------------------------------------------------
# predict.py: your own images


def test_digits_on_paper_are_read_as_their_28_x_28_forms(capsys, checkpoint, tmp_path):
    model, saved = load_checkpoint(checkpoint)
    normalization = saved["normalization"]
    small_forms = []
    for large in digit_drawings():  # (not `drawing`: conftest's, imported above)
        pixels = torch.frombuffer(bytearray(large.tobytes()), dtype=torch.uint8)
        small_forms.append(predict.prepare(pixels.view(420, 300).float() / 255))
    with torch.no_grad():
        inputs = (torch.stack(small_forms)[:, None] - normalization["mean"]) / normalization["std"]
        expected = model(inputs).argmax(dim=1).tolist()
    paths = []
    for digit, large in enumerate(digit_drawings()):
        for extension in ("png", "jpg"):
            paths.append(tmp_path / f"digit{digit}.{extension}")
            as_photo(large, paths[-1])
    code, stdout, err = run(capsys, predict, checkpoint, *paths)
    assert code == 0, err
    lines = stdout.splitlines()
    answers = [line.split()[1] for line in lines]
    agree = sum(answer == str(expected[i // 2]) for i, answer in enumerate(answers))
    assert len(answers) == 20 and agree >= 18
    assert all(len(line.split("%")) == 4 for line in stdout.splitlines())  # three guesses
    # --show draws what the model saw of each image (matplotlib: two are enough)
    code, stdout, err = run(capsys, predict, checkpoint, *paths[6:8], "--show", tmp_path / "seen")
    assert code == 0, err
    assert stdout.splitlines() == lines[6:8]
    assert Image.open(tmp_path / "seen" / "digit3.png").format == "PNG"


def test_the_preparation_is_mnist_s(tmp_path):
    """Longer side 20 pixels, centre of mass in the middle, ink white on black,
    whatever the size, place and polarity of the digit in the image."""
    drawing = digit_drawings()[7]
    as_photo(drawing, tmp_path / "seven.png")
    gray, _ = predict.read_image(tmp_path / "seven.png")
    digit = predict.prepare(gray)
    assert digit.shape == (28, 28) and digit.max() == 1 and digit[0].sum() == 0
    rows, columns = digit.sum(dim=1).nonzero(), digit.sum(dim=0).nonzero()
    assert max(rows[-1] - rows[0] + 1, columns[-1] - columns[0] + 1) == 20
    mass = digit.sum()
    centre_y = (digit.sum(dim=1) * (torch.arange(28) + 0.5)).sum() / mass
    centre_x = (digit.sum(dim=0) * (torch.arange(28) + 0.5)).sum() / mass
    assert abs(centre_y - 14) <= 0.5 and abs(centre_x - 14) <= 0.5


def huge_png(path, width, height):
    """A PNG whose header claims width x height grey pixels, without the pixels."""
    def chunk(kind, body):
        return (struct.pack(">I", len(body)) + kind + body
                + struct.pack(">I", zlib.crc32(kind + body)))

    path.write_bytes(b"\x89PNG\r\n\x1a\n"
                     + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(b"\0" * 100)) + chunk(b"IEND", b""))


def test_an_image_given_without_the_model_is_told_to_come_after_it(capsys, checkpoint,
                                                                     tmp_path):
    code, _, err = run(capsys, predict, "photo.jpg")
    assert_one_line_error(code, err, "give the model file first",
                          "python -m lab.predict model.pt photo.jpg")
    as_photo(digit_drawings()[4], tmp_path / "photo.jpg")  # the two swapped
    code, _, err = run(capsys, predict, tmp_path / "photo.jpg", checkpoint)
    assert_one_line_error(code, err, "not a readable checkpoint", "the model file comes first: "
                          f"python -m lab.predict model.pt {tmp_path / 'photo.jpg'}")


def test_bad_images_are_one_line_each_and_the_good_ones_still_answered(
        capsys, checkpoint, tmp_path):
    good = tmp_path / "good.png"
    as_photo(digit_drawings()[4], good)
    (tmp_path / "text.png").write_bytes(b"not an image at all")
    as_photo(digit_drawings()[1], tmp_path / "whole.jpg")
    whole = (tmp_path / "whole.jpg").read_bytes()
    (tmp_path / "truncated.jpg").write_bytes(whole[:len(whole) // 3])
    Image.new("RGB", (640, 480), (235, 235, 230)).save(tmp_path / "blank.jpg")
    huge_png(tmp_path / "huge.png", 20000, 20000)  # refused by PIL itself
    huge_png(tmp_path / "large.png", 12000, 10000)  # by predict.py
    paths = [tmp_path / name for name in ("missing.png", "text.png", "truncated.jpg")] + [
        good] + [tmp_path / name for name in ("blank.jpg", "huge.png", "large.png")]
    code, stdout, err = run(capsys, predict, checkpoint, *paths)
    assert code == 1 and "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 6
    for line, expected in zip(lines, ["No such file", "not an image", "truncated",
                                      "no ink found", "too large", "too large"]):
        assert expected in line and line.startswith("error: ")
    assert stdout.startswith(f"{good}: ")  # answered all the same

# ----------------------------------------------------------------------------
# Thin strokes: a fine pen or a mouse is read as a thick pen is

def test_thin_strokes_are_prepared_and_read_as_thick_ones(drawn_digit_model, monkeypatch):
    """The same strokes, with a 2-4 pixel pen and a 20-28 pixel one on a 400 x
    400 page: once prepared, the digits have about the same ink and shape, far
    closer than without the widening, and the model reads both the same."""
    model, checkpoint = load_checkpoint(drawn_digit_model)
    normalization = checkpoint["normalization"]

    def prepared(pen_widths):
        rng = random.Random(0)
        images = []
        for digit in range(10):
            for _ in range(3):
                strokes = pen_strokes(digit, rng, 400)
                images.append(predict.prepare(grey_levels(drawing(strokes, rng.choice(
                    pen_widths), 400))))
        return torch.stack(images)

    thin, thick = prepared([2, 3, 4]), prepared([20, 24, 28])
    similarity = F.cosine_similarity(thin.flatten(1), thick.flatten(1))
    ink = thin.sum(dim=(1, 2)) / thick.sum(dim=(1, 2))
    assert similarity.mean() > 0.93 and ((0.7 < ink) & (ink < 1.3)).all()
    with torch.no_grad():
        read_thin, read_thick = (model(((images - normalization["mean"])
                                        / normalization["std"])[:, None]).argmax(dim=1)
                                 for images in (thin, thick))
    digits = torch.arange(10).repeat_interleave(3)
    assert (read_thin == read_thick).float().mean() >= 0.9
    assert (read_thin == digits).float().mean() >= 0.9

    monkeypatch.setattr(predict, "thicken", lambda ink: ink)  # as predict.py was
    thin_unwidened = prepared([2, 3, 4])
    assert (F.cosine_similarity(thin_unwidened.flatten(1), thick.flatten(1)) < similarity).all()
    assert (thin_unwidened.sum(dim=(1, 2)) / thick.sum(dim=(1, 2))).mean() < 0.6


def test_a_digit_drawn_on_transparent_paper_is_read_as_on_white():
    strokes = pen_strokes(4, random.Random(4), 400)
    on_white = drawing(strokes, 12, 400)
    on_transparent = Image.new("RGBA", (400, 400), (0, 0, 0, 0))
    on_transparent.putalpha(ImageOps.invert(on_white))  # the ink opaque black, the rest clear
    for image in (on_transparent, on_transparent.convert("LA")):
        gray, _ = predict.read_image(png(image))
        assert torch.equal(predict.prepare(gray),
                           predict.prepare(grey_levels(on_white)))


def test_a_16_bit_grey_scan_is_read_as_its_8_bit_form():
    on_paper = drawing(pen_strokes(7, random.Random(7), 400), 12, 400).point(
        lambda value: 30 + value * 200 // 255)  # grey ink on grey paper, as scanned
    sixteen_bit = on_paper.convert("I").point(lambda value: value * 257).convert("I;16")
    assert Image.open(BytesIO(png(sixteen_bit))).mode == "I;16"
    gray, _ = predict.read_image(png(sixteen_bit))
    assert torch.equal(gray, grey_levels(on_paper))


def test_show_keeps_each_of_two_images_of_one_name(capsys, checkpoint, tmp_path, pictures,
                                                   monkeypatch):
    for folder in ("monday", "tuesday"):
        (tmp_path / folder).mkdir()
        as_photo(digit_drawings()[3], tmp_path / folder / "digit.jpg")
    saved = []
    monkeypatch.setattr(pictures, "save", lambda figure, path: saved.append(path))
    code, _, err = run(capsys, predict, checkpoint, tmp_path / "monday" / "digit.jpg",
                       tmp_path / "tuesday" / "digit.jpg", "--show", tmp_path / "seen")
    assert code == 0, err
    assert saved == [os.path.join(tmp_path / "seen", name) for name in ("digit.png",
                                                                        "digit-2.png")]


def test_the_stroke_width_is_the_pen_s():
    for pen in (3, 10, 30):
        page = Image.new("L", (400, 400), 0)
        ImageDraw.Draw(page).line([(50, 200), (350, 200)], fill=255, width=pen)
        assert predict.stroke_width(grey_levels(page)) == pytest.approx(pen, rel=0.1)
