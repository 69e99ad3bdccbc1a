"""A row of digits (a ZIP code): lab/segment.py, lab/predict.py and lab/zipcodes.py."""

import os
import random
import re

import pytest
import torch
import torch.nn.functional as F
from conftest import (
    arc,
    as_photo,
    assert_one_line_error,
    assert_one_line_of_json,
    digit_drawings,
    drawing,
    grey_levels,
    http_request,
    pen_strokes,
    png,
    row_strokes,
    run,
)
from PIL import Image, ImageOps

from checkpoint import load_checkpoint
from lab import predict, segment, zipcodes

# ----------------------------------------------------------------------------
# A row of digits (a ZIP code): segment.py finds the digits, predict.py reads
# each as it reads one alone, zipcodes.py measures on rows of test digits

def row_image(digits, gaps, rng, photographed=False, pen=9, height=100):
    """A row of drawn digits as a PNG's bytes, or photographed-looking: a JPEG's."""
    strokes, size = row_strokes(digits, rng, height, gaps)
    page = drawing(strokes, pen, size)
    if photographed:
        return zipcodes.as_photographed(1 - grey_levels(page), rng)[0]
    return png(page)


def read_row(image, model_file, count=None):
    """predict.py's reading of a row: the digits it found, a ? for an uncertain one."""
    model, checkpoint = load_checkpoint(model_file)
    gray, _ = predict.read_image(image)
    return "".join("?" if uncertain else checkpoint["classes"][p.argmax()]
                   for _, p, uncertain in predict.read_digits(gray, model, checkpoint, count))


def test_strokes_are_labelled_as_a_flood_fill_labels_them():
    generator = torch.Generator().manual_seed(0)
    for density in (0.3, 0.45, 0.6):  # few strokes, many, and one that winds through all
        mask = torch.rand(30, 50, generator=generator) < density
        labels = segment.label_strokes(mask)
        unvisited = {(y, x) for y, x in mask.nonzero().tolist()}
        while unvisited:  # a flood fill, pixel by pixel, from each pixel not yet reached
            stroke, todo = set(), [unvisited.pop()]
            while todo:
                y, x = todo.pop()
                stroke.add((y, x))
                for near in [(y + dy, x + dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)]:
                    if near in unvisited:
                        unvisited.remove(near)
                        todo.append(near)
            assert {labels[y, x].item() for y, x in stroke} == {min(50 * y + x for y, x in stroke)}
        assert (labels[~mask] == mask.numel()).all()


def test_the_paper_is_found_under_uneven_light_and_noise():
    strokes, size = row_strokes([3, 8], random.Random(0), 100, [0.3])
    ink = 1 - grey_levels(drawing(strokes, 9, size))
    light = torch.linspace(1, 0.5, size[0]).expand(size[1], -1)  # dimmer to the right
    noise = 0.03 * torch.randn(ink.shape, generator=torch.Generator().manual_seed(0))
    gray = ((0.9 - 0.7 * ink) * light + noise).clamp(0, 1)
    paper = F.max_pool2d(ink[None], 9, stride=1, padding=4)[0] == 0  # far from any stroke
    found = segment.ink_on_black(gray)
    inked = found >= segment.INK * predict.brightest_3x3_average(found)
    assert inked[paper].float().mean() < 0.01 and inked[ink == 1].float().mean() > 0.95
    # one level of paper for the whole page, the border's (as a lone digit was once
    # prepared), takes the shadow for ink
    border = torch.cat([gray[0], gray[-1], gray[:, 0], gray[:, -1]])
    above_paper = (border.median() - gray).clamp(min=0)
    inked = above_paper >= segment.INK * predict.brightest_3x3_average(above_paper)
    assert inked[paper].float().mean() > 0.1


def test_the_cut_crosses_the_least_ink():
    mask = torch.zeros(40, 60, dtype=torch.bool)
    mask[5:35, 5:25] = mask[5:35, 35:55] = True  # two blocks
    mask[20:22, 20:40] = True  # joined by a bridge two pixels thick
    paths, ink = segment.cut_paths(mask, [29, 15], band=8)  # the second: within a block
    assert ink.tolist() == [2, 30] and ((25 <= paths[0]) & (paths[0] < 35)).all()
    assert (paths[:, 1:] - paths[:, :-1]).abs().max() <= 1  # a column a row at most


def test_a_row_of_digits_is_read_digit_by_digit(capsys, drawn_digit_model, tmp_path, pictures,
                                                monkeypatch):
    rng = random.Random(1)
    paths, truths = [], []
    for n in range(8):  # drawn and photographed-looking, apart
        digits = [rng.randrange(10) for _ in range(5)]
        path = tmp_path / f"row{n}.{'jpg' if n % 2 else 'png'}"
        path.write_bytes(row_image(digits, [rng.uniform(0.1, 0.4) for _ in range(4)], rng,
                                   photographed=n % 2))
        paths.append(path)
        truths.append("".join(map(str, digits)))
    strokes, size = row_strokes([2, 0, 2, 6], rng, 100, [0.3] * 3)  # white ink on black
    paths.append(tmp_path / "light_on_dark.png")
    ImageOps.invert(drawing(strokes, 9, size)).save(paths[-1])
    truths.append("2026")
    code, stdout, err = run(capsys, predict, drawn_digit_model, *paths)
    assert code == 0, err
    lines = stdout.splitlines()
    assert [line.split(": ")[0] for line in lines] == list(map(str, paths))
    assert sum(line.split()[1] == truth for line, truth in zip(lines, truths)) >= 8
    assert lines[-1].split()[1] == "2026"
    for line in lines:  # each digit's likeliest, in order
        each = re.findall(r"(\d)\?? \d+\.\d%", line)
        assert "".join(each) == line.split()[1].replace("?", "") or "?" in line
        assert len(each) == len(line.split()[1])
    figures = []
    monkeypatch.setattr(pictures, "save", lambda figure, path: figures.append(figure))
    code, _, err = run(capsys, predict, drawn_digit_model, paths[0], "--show", tmp_path / "seen")
    assert code == 0, err
    assert len(figures[0].axes) == 1 + len(lines[0].split()[1])  # the image, and each digit


def test_a_digit_of_two_strokes_is_one_and_a_hyphen_is_left_out(drawn_digit_model):
    five = [[(0.6, 0.0), (0.24, 0.0)],  # the bar apart from the rest
            [(0.1, 0.08), (0.06, 0.45)] + arc(0.28, 0.7, 0.3, 0.28, -120, 150, 16)]
    strokes, size = row_strokes([3, five, 1], random.Random(0), 100, [0.3, 0.3])
    page = drawing(strokes, 9, size)
    assert segment.label_strokes(grey_levels(page) < 0.5).unique().numel() == 4 + 1
    assert read_row(png(page), drawn_digit_model) == "351"
    hyphen = [[(0.05, 0.5), (0.4, 0.5)]]
    strokes, size = row_strokes([9, 4, 1, hyphen, 1, 0], random.Random(0), 100, [0.3] * 5)
    assert read_row(png(drawing(strokes, 9, size)), drawn_digit_model) == "94110"


def test_touching_digits_are_cut_or_said_to_be_uncertain(drawn_digit_model):
    for digits in ([0, 7], [3, 2], [4, 6], [8, 1, 5]):
        gap = 0.2
        while True:  # the digits moved closer until their ink is one cluster
            strokes, size = row_strokes(digits, random.Random(2), 100, [gap] * (len(digits) - 1))
            page = drawing(strokes, 12, size)
            if segment.label_strokes(grey_levels(page) < 0.5).unique().numel() == 1 + 1:
                break
            gap -= 0.01
        truth = "".join(map(str, digits))
        read = read_row(png(page), drawn_digit_model)
        assert read == truth or "?" in read, (truth, read)
        told = read_row(png(page), drawn_digit_model, count=len(digits))
        assert len(told) == len(digits)


def test_a_faint_digit_beside_a_dark_one_is_read_too(drawn_digit_model):
    strokes, size = row_strokes([0, 1], random.Random(5), 100, [0.4])
    zero = len(strokes) - 1  # the 1 is one stroke
    pencil = 1 - grey_levels(drawing(strokes[:zero], 9, size))
    fainter = 1 - grey_levels(drawing(strokes[zero:], 9, size))
    gray = 1 - torch.maximum(0.35 * pencil, 0.15 * fainter)  # the 1 under 0.2 of contrast
    model, checkpoint = load_checkpoint(drawn_digit_model)
    digits = predict.read_digits(gray, model, checkpoint)
    assert predict.answer(digits, checkpoint["classes"], None)[0] == "01"


def test_a_row_cut_into_more_than_the_most_digits_is_too_many():
    height = 60
    ink = torch.zeros(2 * height, 10 * height)
    for cluster in range(2):  # two clusters of three blocks joined by thin bridges
        left = round((0.5 + 2.5 * cluster) * height)
        for block in range(3):
            x = left + round(0.7 * height) * block
            ink[30:90, x:x + 36] = 1
            if block:
                ink[59:61, x - 6:x] = 1

    def read(masks):  # every piece read as sure as a model gets
        return F.one_hot(torch.zeros(len(masks), dtype=torch.long), 10).float()

    assert len(segment.find_digits(ink, read, 1.0, 6)) == 6
    with pytest.raises(segment.TooManyDigits):
        segment.find_digits(ink, read, 1.0, 5)  # two clusters, cut into six


def test_a_row_of_class_names_is_answered_name_by_name():
    digits = [(None, torch.tensor([0.9, 0.1]), False), (None, torch.tensor([0.2, 0.8]), True)]
    assert predict.answer(digits, ["Coat", "Bag"], None) == ("Coat ?", "Coat 90.0%, Bag? 80.0%")
    assert predict.answer(digits, ["0", "1"], None)[0] == "0?"


def test_a_lone_digit_is_read_as_prepare_makes_it(checkpoint, tmp_path):
    model, saved = load_checkpoint(checkpoint)
    for large in digit_drawings():
        as_photo(large, tmp_path / "digit.jpg")
        gray, _ = predict.read_image(tmp_path / "digit.jpg")
        [(prepared, probabilities, uncertain)] = predict.read_digits(gray, model, saved)
        assert torch.equal(prepared, predict.prepare(gray)) and not uncertain
        assert torch.equal(probabilities, predict.class_probabilities(
            model, predict.prepare(gray)[None], saved["normalization"])[0])


def test_a_page_of_digits_and_a_count_not_found_are_told(capsys, drawn_digit_model, tmp_path):
    rng = random.Random(3)
    (tmp_path / "page.png").write_bytes(row_image([1, 7] * 11, [0.3] * 21, rng, height=40))
    (tmp_path / "three.png").write_bytes(row_image([3, 0, 7], [0.3, 0.3], rng))
    code, stdout, err = run(capsys, predict, drawn_digit_model, tmp_path / "page.png",
                            tmp_path / "three.png", "--digits", 5)
    assert_one_line_error(code, err, "page.png: more than 20 digits: a row of at most 20 is read")
    assert stdout.startswith(f"{tmp_path / 'three.png'}: 307") and stdout.rstrip().endswith(
        "; 3 digits found, not 5)")
    code, _, err = run(capsys, predict, drawn_digit_model, tmp_path / "three.png", "--digits", 21)
    assert_one_line_error(code, err, "--digits", "a whole number in [1, 20]")


def test_zipcodes_py_reads_rows_of_test_digits_and_measures(capsys, checkpoint, mnist,
                                                             tmp_path, monkeypatch):
    rng = random.Random(0)
    # digits of one stroke each, white on black, 28 x 28 as MNIST's
    images = torch.stack([255 - (255 * grey_levels(drawing(pen_strokes(digit, rng, 28), 2, 28)))
                          .round().byte() for digit in (3, 1, 4, 1, 5)])
    monkeypatch.setattr(zipcodes, "GAPS", ["touching"])
    page, gaps = zipcodes.make_row(images[:5], rng)
    assert gaps == ["touching"] * 4
    strokes = segment.label_strokes(page > 0.3)
    assert strokes.unique().numel() == 1 + 1  # one cluster of ink, and the paper
    monkeypatch.setattr(zipcodes, "GAPS", ["apart"])
    page, gaps = zipcodes.make_row(images[:5], rng)
    columns = (page > 0).any(dim=0).int()
    assert (columns[1:] - columns[:-1] == 1).sum() == 5  # five inked stretches
    monkeypatch.undo()
    code, stdout, err = run(capsys, zipcodes, checkpoint, "--data-dir", mnist, "--rows", 4,
                            "--save", tmp_path / "rows")
    assert code == 0, err
    assert stdout.startswith(f"4 rows of 5 test digits, read by {checkpoint}")
    assert re.search(r"rows read right: +\d+\.\d% +\(the digits alone, to the fifth power: "
                     r"\d+\.\d%\)", stdout)
    assert re.search(r"digits read right: +\d+\.\d%", stdout)
    saved = sorted(os.listdir(tmp_path / "rows"))
    assert len(saved) == 4 and re.fullmatch(r"row0-\d{5}-read-[\d_]*\.png", saved[0])
    assert re.fullmatch(r"row1-\d{5}-read-[\d_]*\.jpg", saved[1])
    code, _, err = run(capsys, zipcodes, checkpoint, "--data-dir", mnist, "--split", "val",
                       "--rows", 1)
    assert code == 0, err
    monkeypatch.setattr(predict, "read_digits", lambda *_: (_ for _ in ()).throw(
        predict.NoInk("no ink found")))
    code, stdout, err = run(capsys, zipcodes, checkpoint, "--data-dir", mnist, "--rows", 1)
    assert code == 0 and re.search(r"row 0 \(\d{5}\): no ink found", stdout), err
    assert re.search(r"rows read right: +0\.0%", stdout)
    monkeypatch.undo()
    assert zipcodes.edit_distance("94110", "9410") == 1
    assert zipcodes.edit_distance("94110", "94?10") == 1
    assert zipcodes.edit_distance("94110", "19411") == 2


def test_the_server_reads_a_row_drawn(server, drawn_digit_model):
    rng = random.Random(4)
    image = row_image([2, 8, 0], [0.3, 0.3], rng, pen=14, height=120)
    status, answer = http_request(server, "POST", "/row", image)
    assert status == 200 and len(answer["digits"]) == 3
    model, checkpoint = load_checkpoint(drawn_digit_model)
    gray, _ = predict.read_image(image)
    for sent, (digit, probabilities, uncertain) in zip(
            answer["digits"], predict.read_digits(gray, model, checkpoint)):
        assert sent["probabilities"] == probabilities.tolist()
        assert sent["seen"] == (digit * 255).round().int().flatten().tolist()
        assert sent["uncertain"] == uncertain
    status, answer = http_request(server, "POST", "/row", png(Image.new("L", (1000, 300), 255)))
    assert_one_line_of_json(status, answer, 400, "draw a digit first")
