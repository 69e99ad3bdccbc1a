"""Find the digits in a row of handwriting (a ZIP code, a phone number, a
student ID, written side by side), for predict.py and draw.py, which read each
digit found as they read a single one.

    ink = segment.ink_on_black(gray)    # paper black, ink white, even light, no lines
    digits = segment.find_digits(ink, read, sure, most)  # ink: its strokes 1
    # [(mask, uncertain)], left to right; read(masks): the model's probabilities

The ink falls apart into strokes that do not touch. Strokes above one another
are one digit: a 5's bar, a 4 written in two strokes, an 8 whose loops do not
meet; neighbours that nearly meet are one where the model reads them more
surely so. A cluster too wide for
one digit is cut along the paths from top to bottom that cross the least ink,
and the model chooses among the cuttings: the one whose digits it reads most
surely, the "heuristic over-segmentation" of LeCun, Bottou, Bengio and Haffner
(1998, section V), which read ZIP codes and cheques this way.
"""

import math

import torch
import torch.nn.functional as F

# The ink: at least a quarter as bright as the brightest strokes (a lone digit's too).
INK = 0.25
# The paper's light is estimated at most this many pixels a side, and the
# digits are found at most SEGMENT_SIZE a side (a 1 to 2-pixel gap between
# digits on a 1,024-pixel photo may close): both far quicker than at full size.
PAPER_SIZE, SEGMENT_SIZE = 64, 512
# Printed lines (ruled and squared paper, a margin) are found at most LINES_SIZE
# pixels a side: ink at least LINE_INK bright (in [0, 1] above the paper), in a
# line that runs to within LINE_REACH of both opposite edges of the image,
# within LINE_TILT degrees of horizontal or vertical, at most LINE_WIDTH of the
# image wide (a pen's 1 filling 90 % of the photo is wider, and reaches no nearer).
LINES_SIZE, LINE_INK, LINE_REACH, LINE_TILT, LINE_WIDTH = 256, 0.05, 0.05, 5, 0.02
# Strokes of fewer pixels than 2 % of the largest are specks of dust or noise.
SPECK = 0.02
# Strokes lower than 0.4 of the tallest are marks, not digits: part of the digit
# they lie within (a 5's bar), else left out (a hyphen, a dot); and so is a piece
# cut from a cluster lower than 0.4 of the row's height (a 7's bar cut off its stem).
MARK = 0.4
# Strokes whose widths overlap by half the narrower one are one digit.
SAME_DIGIT = 0.5
# Pieces whose widths overlap and whose heights overlap, or leave a gap, of at
# most STACKED of the shorter one's lie one above the other: one digit.
STACKED = 0.3
# Measured in the row's height: a cluster wider than WIDE may hold several
# digits (the boxes of the ink of MNIST's 60,000 training digits: half are at
# most 0.8 times as wide as high, 99 % at most 1.43); a digit cut from it is
# NARROWEST to WIDEST wide; a cut path starts every STEP and strays at most
# BAND from its start; one that crosses more ink than THICK cut through
# strokes, not between digits.
WIDE, NARROWEST, WIDEST, STEP, BAND, THICK = 0.85, 0.1, 1.6, 0.05, 0.25, 0.25
# A cutting scores the sum of its digits' log surety (a digit's probability
# over the one its training aimed at: below 1 with label smoothing), plus
# PER_DIGIT for each digit (two sure digits then outscore the two read as
# one), less CUT_COST for each row-height of ink its cuts cross (cutting a 0
# in two crosses two strokes). A digit less sure than UNSURE is reported as uncertain.
# (Chosen on rows of a model's validation digits: zipcodes.py --split val.)
PER_DIGIT, CUT_COST, UNSURE = 0.2, 2.0, 0.55


class TooManyDigits(Exception):
    """More digits than asked to read at most."""


def opening(image, size):
    """The grey-level opening of `image` [H, W]: the minimum over each size x
    size square, then the maximum. Strokes narrower than `size` are removed;
    light that changes smoothly across the page is kept as it is, to its edges
    (the image is extended by its edge values first: a square cut short by an
    edge would take the minimum of a slope from its lower side only)."""
    reach = size // 2

    def max_filter(x):  # along the rows, then the columns: far faster than a square
        x = F.max_pool1d(x[:, None], size, stride=1)[:, 0]
        return F.max_pool1d(x.T[:, None], size, stride=1)[:, 0].T
    extended = F.pad(image[None], (2 * reach,) * 4, mode="replicate")[0]
    return max_filter(-max_filter(-extended))


def ink_on_black(gray):
    """Grey levels [H, W] in [0, 1] -> the ink's brightness above the paper:
    the paper (the opening of the image, smoothed so that noise does not pull it
    down, and shrunk to at most PAPER_SIZE pixels a side, as light changes
    slowly) taken away, shadows and uneven light with it, and its printed lines.
    Light paper is inverted first: the paper is most of the image's border, and
    on paper lighter than mid-grey the ink is dark; on darker paper the ink is
    dark where the image strays further below the border's level than above it
    (a page in dim light is dark, its ink darker still; a blackboard's chalk is
    light)."""
    shrink = -(-max(gray.shape) // PAPER_SIZE)
    small = F.avg_pool2d(gray[None], shrink, ceil_mode=True)
    small = F.avg_pool2d(small, 5, stride=1, padding=2, count_include_pad=False)[0]
    border = torch.cat([small[0], small[-1], small[:, 0], small[:, -1]]).median()
    if border > 0.5 or border - small.min() > small.max() - border:
        gray, small = 1 - gray, 1 - small
    paper = opening(small, min(small.shape) // 2 * 2 + 1)
    paper = F.interpolate(paper[None, None], size=gray.shape, mode="bilinear")[0, 0]
    ink = (gray - paper).clamp_(min=0)
    # printed lines taken away at their own level, so that a darker stroke crossing one is kept
    across, down = printed_lines(ink), printed_lines(ink.T)
    if across is not None:
        ink = (ink - across).clamp_(min=0)
    if down is not None:
        ink = (ink - down.T).clamp_(min=0)
    return ink


def printed_lines(ink):
    """The level of the printed lines that run across `ink` [H, W] near
    horizontal (ruled and squared paper's) where they lie, 0 elsewhere; None
    if there are none. A line: ink that runs to within LINE_REACH of both
    sides, within LINE_TILT degrees of horizontal, at most LINE_WIDTH of the
    height wide. Found at most
    LINES_SIZE pixels a side, as ink along a few rows once the image is sheared
    by each tilt in turn (a Hough transform kept to the lines that matter)."""
    side = max(1, int(LINE_REACH * ink.shape[1]))
    if ink[:, :side].max() < LINE_INK or ink[:, -side:].max() < LINE_INK:
        return None  # no ink near both sides (a drawing on the page's canvas): quickly done
    shrink = -(-max(ink.shape) // LINES_SIZE)
    smooth = F.avg_pool2d(ink[None], 3, stride=1, padding=1, count_include_pad=False)
    small = F.max_pool2d(smooth, shrink, ceil_mode=True)[0]  # thin lines kept
    peaks = F.max_pool2d(ink[None], shrink, ceil_mode=True)[0]  # (smoothing dims a thin line)
    height, width = small.shape
    reach = int(LINE_REACH * width)  # (0 for an image under 20 pixels: no lines found)
    tilts = torch.linspace(-LINE_TILT, LINE_TILT, 4 * LINE_TILT + 1)  # every half degree
    # each tilt's row offset at each column, from the middle: [T, W]
    offsets = ((torch.arange(width) - width / 2)[None] * torch.tan(tilts * math.pi / 180)[:, None]
               ).round().long()
    rows = torch.arange(height)[None, :, None] + offsets[:, None, :]  # [T, H, W]
    inside = (rows >= 0) & (rows < height)
    sheared = torch.where(inside, small[rows.clamp(0, height - 1), torch.arange(width)], 0.0)
    # a row a line's tilt misses by a fraction of a degree still meets it within a row
    near = F.max_pool1d(sheared.transpose(1, 2).reshape(-1, 1, height), 3, stride=1,
                        padding=1).view(len(tilts), width, height).transpose(1, 2)
    inked = near >= LINE_INK
    columns = torch.arange(width)
    first = torch.where(inked, columns, width).amin(dim=2)
    last = torch.where(inked, columns, -1).amax(dim=2)
    lines = (first < reach) & (last >= width - reach) & (
        inked.sum(dim=2) >= (1 - 2 * LINE_REACH) * width)  # [T, H]
    if not lines.any():
        return None
    # the tilt whose lines are sharpest: their ink gathered in the fewest rows
    tilt = ((sheared * lines[:, :, None]).sum(dim=2) ** 2).sum(dim=1).argmax()
    lines, level = lines[tilt].tolist(), torch.zeros(height)
    line_peaks = torch.where(inside[tilt], peaks[rows[tilt].clamp(0, height - 1),
                                                 torch.arange(width)], 0.0)
    starts = [y for y in range(height) if lines[y] and (y == 0 or not lines[y - 1])]
    for start in starts:  # each line: its rows, as thin as a printed line, at its own level
        end = start
        while end < height and lines[end]:
            end += 1
        if end - start - 2 <= max(1, LINE_WIDTH * height):  # (`near` widened it by 2)
            # its level: the lower quartile along it (strokes lying along a line, a 9's
            # stem and loop, may cover half of it), a fifth more for light that varies
            level[start:end] = 1.2 * line_peaks[start:end].amax(dim=0).quantile(0.25)
    rows = torch.arange(height)[:, None] - offsets[tilt][None]  # back from sheared rows
    level = torch.where((rows >= 0) & (rows < height), level[rows.clamp(0, height - 1)], 0.0)
    level = level.repeat_interleave(shrink, 0).repeat_interleave(shrink, 1)
    return level[:ink.shape[0], :ink.shape[1]]


def label_strokes(mask):
    """Each pixel of `mask` [H, W] labelled with the smallest flat index among
    the pixels it touches through others (8 neighbours). By hand: none of our
    libraries labels connected components (scipy.ndimage would). Each round,
    every pixel's label points its label's pixel at the smallest label next to
    it, then labels jump along those pointers: a few rounds, not one per pixel
    of the longest stroke."""
    height, width = mask.shape
    none = height * width  # the background's label, past every pixel's
    labels = torch.where(mask, torch.arange(none).view(height, width), none).flatten()
    labels = torch.cat([labels, torch.tensor([none])])  # labels[none] = none
    inked = mask.flatten().nonzero()[:, 0]
    while True:
        grid = labels[:-1].view(1, height, width).float()  # exact: indices below 2**24
        smallest = -F.max_pool2d(-grid, 3, stride=1, padding=1).flatten()[inked].long()
        before = labels.clone()
        labels.scatter_reduce_(0, labels[inked], smallest, "amin")
        labels[inked] = torch.minimum(labels[inked], smallest)
        while not torch.equal(jumped := labels[labels], labels):
            labels = jumped
        if torch.equal(labels, before):
            return labels[:-1].view(height, width)


def clusters(mask):
    """The mask's digits or clusters of touching digits, left to right: a mask,
    a box (x0, y0, x1, y1) and whether it is one digit of pieces one above the
    other, each; and the row's height, their median."""
    labels = label_strokes(mask)
    ys, xs = mask.nonzero().T
    ids, which = labels[ys, xs].unique(return_inverse=True)

    def per_stroke(values, how):
        return torch.zeros(len(ids), dtype=torch.long).scatter_reduce(
            0, which, values, how, include_self=False).tolist()
    boxes = list(zip(per_stroke(xs, "amin"), per_stroke(ys, "amin"),
                     [x + 1 for x in per_stroke(xs, "amax")],
                     [y + 1 for y in per_stroke(ys, "amax")]))
    sizes = torch.bincount(which).tolist()
    strokes = [(i, box) for i, box, size in zip(ids.tolist(), boxes, sizes)
               if size >= SPECK * max(sizes)]
    tallest = max(box[3] - box[1] for _, box in strokes)
    found = []  # [[stroke ids], box], the widest strokes first
    for i, box in sorted(strokes, key=lambda stroke: stroke[1][0] - stroke[1][2]):
        if box[3] - box[1] < MARK * tallest:
            continue
        overlaps = [min(box[2], other[2]) - max(box[0], other[0]) for _, other in found]
        best = max(range(len(found)), key=overlaps.__getitem__, default=None)
        if best is not None and overlaps[best] >= SAME_DIGIT * min(
                box[2] - box[0], found[best][1][2] - found[best][1][0]):
            found[best] = [found[best][0] + [i], joined(found[best][1], box)]
        else:
            found.append([[i], box])
    found = [[ids, box, [box]] for ids, box in found]  # and the boxes of its pieces
    while True:  # an 8's two loops, an italic 8 whose loops do not meet: one digit
        stacked = [(a, b) for a in range(len(found)) for b in range(a)
                   if one_above_the_other(found[a][1], found[b][1])]
        if not stacked:
            break
        a, b = stacked[0]
        found[b] = [found[b][0] + found[a][0], joined(found[b][1], found[a][1]),
                    found[b][2] + found[a][2]]
        del found[a]
    height = sorted(box[3] - box[1] for _, box, _ in found)[len(found) // 2]
    for i, box in strokes:  # the marks, each with the digit it lies within
        if box[3] - box[1] < MARK * tallest:
            x, y = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
            margin = 0.1 * height
            for digit in found:
                x0, y0, x1, y1 = digit[1]
                if x0 - margin <= x <= x1 + margin and y0 - margin <= y <= y1 + margin:
                    digit[0].append(i)
                    digit[1] = joined(digit[1], box)
                    break
    found.sort(key=lambda digit: digit[1][0])
    # a digit of pieces one above the other, none of them wider than a digit, is whole
    return [(torch.isin(labels, torch.tensor(ids)), box,
             len(pieces) > 1 and all(piece[2] - piece[0] <= WIDE * height for piece in pieces))
            for ids, box, pieces in found], height


def one_above_the_other(box, other):
    """Whether two pieces' boxes lie one above the other: their widths overlap,
    and their heights overlap, or leave a gap, of at most STACKED of the
    shorter one's height (digits side by side share most of theirs)."""
    across = min(box[2], other[2]) - max(box[0], other[0])
    up_and_down = min(box[3], other[3]) - max(box[1], other[1])  # less than 0: a gap
    return across > 0 and abs(up_and_down) <= STACKED * min(box[3] - box[1],
                                                             other[3] - other[1])


def joined(box, other):
    return (min(box[0], other[0]), min(box[1], other[1]),
            max(box[2], other[2]), max(box[3], other[3]))


def cut_paths(mask, starts, band):
    """For each start column, the path from the top of `mask` [H, W] to its
    bottom that crosses the fewest inked pixels, moving at most one column a row
    (a diagonal step costs a tenth of an inked pixel: straight paths win ties)
    and staying within `band` columns of its start: its columns [K, H], and
    the inked pixels it crosses [K]."""
    height, width = mask.shape
    away = (torch.arange(width)[None] - torch.tensor(starts)[:, None]).abs() > band
    ink = mask.float()
    cost = torch.where(away, torch.inf, ink[0])
    steps = torch.empty(height, len(starts), width, dtype=torch.long)
    for y in range(1, height):  # dynamic programming, a row at a time
        padded = F.pad(cost, (1, 1), value=torch.inf)
        cheapest, steps[y] = torch.stack([padded[:, :-2] + 0.1, padded[:, 1:-1],
                                          padded[:, 2:] + 0.1]).min(dim=0)
        cost = torch.where(away, torch.inf, cheapest + ink[y])
    x = cost.argmin(dim=1)
    paths = torch.empty(len(starts), height, dtype=torch.long)
    paths[:, -1] = x
    for y in range(height - 1, 0, -1):  # back along the cheapest steps
        x = x + steps[y].gather(1, x[:, None])[:, 0] - 1
        paths[:, y - 1] = x
    return paths, ink[torch.arange(height), paths].sum(dim=1)


def cuttings(mask, box, height, read, sure, narrow_too=False, whole=False):
    """The best ways to cut one cluster into digits: {number of digits:
    (score, [(mask, uncertain)])}. A cluster no wider than a digit, or `whole`
    (a digit of pieces one above the other), is one, unless `narrow_too` (set
    when a count of digits is to be reached)."""
    x0, y0, x1, y1 = box
    width = x1 - x0
    region = mask[y0:y1, x0:x1]
    edge = round(NARROWEST * height)
    starts = list(range(edge, width - edge + 1, max(1, round(STEP * height)))) \
        if narrow_too or (width > WIDE * height and not whole) else []
    cuts = [(torch.zeros(y1 - y0, dtype=torch.long), 0.0)]
    if starts:
        paths, ink = cut_paths(region, starts, max(1, round(BAND * height)))
        for k in range(len(starts)):  # where the ink crossed is least, locally
            if (k == 0 or ink[k] <= ink[k - 1]) and (k + 1 == len(starts) or ink[k] <= ink[k + 1]):
                if (paths[k] - cuts[-1][0]).abs().float().mean() >= 2:  # not a path already had
                    cuts.append((torch.maximum(paths[k], cuts[-1][0]), ink[k].item()))
    cuts.append((torch.full((y1 - y0,), width), 0.0))
    middles = [path.float().mean().item() for path, _ in cuts]
    columns = torch.arange(width)[None]
    pieces = {}  # (i, j): the ink between cuts i and j
    for i in range(len(cuts)):
        for j in range(i + 1, len(cuts)):
            if (i, j) == (0, len(cuts) - 1) or (
                    NARROWEST * height <= middles[j] - middles[i] <= WIDEST * height):
                piece = region & (columns >= cuts[i][0][:, None]) & (columns < cuts[j][0][:, None])
                rows = piece.any(dim=1).nonzero()[:, 0].tolist()
                # (a piece lower than a digit is a mark: a 7's bar cut off its stem is not a 4)
                if rows and ((i, j) == (0, len(cuts) - 1)
                             or rows[-1] - rows[0] + 1 >= MARK * height):
                    on_the_page = torch.zeros_like(mask)
                    on_the_page[y0:y1, x0:x1] = piece
                    pieces[i, j] = on_the_page
    surety = dict(zip(pieces, (read(list(pieces.values())).max(dim=1).values / sure).tolist()))
    best = {(0, 0): (0.0, [])}  # (cut, digits so far): the best score and its pieces
    for j in range(1, len(cuts)):
        for (i, count), (score, chosen) in list(best.items()):
            if i < j and (i, j) in pieces:
                candidate = (score + math.log(surety[i, j]) - CUT_COST * cuts[j][1] / height,
                             chosen + [(i, j)])
                if candidate[0] > best.get((j, count + 1), (-torch.inf,))[0]:
                    best[j, count + 1] = candidate
    thick = THICK * height
    return {count: (score, [(pieces[i, j], surety[i, j] < UNSURE or cuts[i][1] > thick
                             or cuts[j][1] > thick) for i, j in chosen])
            for (end, count), (score, chosen) in best.items() if end == len(cuts) - 1}


def find_digits(ink, read, sure, most, count=None):
    """The digits in a row, left to right: [(mask, uncertain)]. `ink` is
    ink_on_black's, scaled so that its brightest strokes are 1; read(masks)
    gives the model's probabilities [N, classes] for the ink under each mask; `sure` is the
    probability the model's training aimed the right class at. With `count`,
    exactly that many digits if the ink can be cut so; more than `most`:
    TooManyDigits."""
    smooth = F.avg_pool2d(ink[None], 3, stride=1, padding=1, count_include_pad=False)[0]
    inked = smooth >= INK
    shrink = -(-max(inked.shape) // SEGMENT_SIZE)
    small = F.max_pool2d(inked[None].float(), shrink, ceil_mode=True)[0] > 0
    found, height = clusters(small)
    if len(found) > most or sum(box[2] - box[0] for _, box, _ in found) > most * WIDEST * height:
        raise TooManyDigits(f"more than {most} digits")

    def full_size(mask):
        return mask.repeat_interleave(shrink, 0).repeat_interleave(shrink, 1)[
            :inked.shape[0], :inked.shape[1]] & inked

    options = [cuttings(mask, box, height, lambda masks: read([full_size(m) for m in masks]),
                        sure, count is not None, whole) for mask, box, whole in found]
    # Neighbours side by side, less than NARROWEST of the height apart or
    # overlapping (by less than clusters() joins outright), together no wider than
    # a digit, are one digit where the model reads them more surely joined: a 4
    # written in two strokes, a pencil stroke broken by the paper's grain.
    pairs = [n for n in range(len(found) - 1)
             if found[n + 1][1][0] - found[n][1][2] < NARROWEST * height
             and max(found[n][1][2], found[n + 1][1][2]) - found[n][1][0] <= WIDE * height]
    joins = {}
    if pairs:
        masks = [found[n][0] | found[n + 1][0] for n in pairs]
        surety = (read([full_size(m) for m in masks]).max(dim=1).values / sure).tolist()
        joins = {n: (math.log(s), [(m, s < UNSURE)]) for n, m, s in zip(pairs, masks, surety)}
    gain_per_digit = PER_DIGIT if count is None else 0  # (a count says how many)
    best = {(0, 0): (0.0, [])}  # (clusters read, digits so far): the best score, its pieces
    for start in range(len(found)):
        steps = [(start + 1, n, option) for n, option in options[start].items()]
        if start in joins:
            steps.append((start + 2, 1, joins[start]))
        for (at, total), (score, chosen) in list(best.items()):
            if at != start:
                continue
            for end, n, (gain, pieces) in steps:
                candidate = (score + gain + gain_per_digit * n, chosen + pieces)
                if (count is None or total + n <= count) and \
                        candidate[0] > best.get((end, total + n), (-torch.inf,))[0]:
                    best[end, total + n] = candidate
    ends = {total: option for (at, total), option in best.items() if at == len(found)}
    if count is None:  # the clusters cut and joined as they read best
        chosen = max(ends.values(), key=lambda option: option[0])[1]
    elif count in ends:
        chosen = ends[count][1]
    else:  # as many as can be found
        return find_digits(ink, read, sure, most)
    if len(chosen) > most:  # clusters few and narrow enough, cut into more
        raise TooManyDigits(f"more than {most} digits")
    return [(full_size(mask), uncertain) for mask, uncertain in chosen]
