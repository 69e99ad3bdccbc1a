"""MNIST (or Fashion-MNIST) for the training loop: read the files once, keep
them as tensors on the device, and let a DataLoader serve whole batches.

The usual tutorial pipeline turns every image into a PIL picture, converts and
normalizes it, then stacks 64 of them into a batch: per-sample Python work that
costs several times more than the model itself. Here the 60,000 images are
converted once into one normalized float32 tensor on the training device, and a
batch is a single `index_select` on it.
"""

import contextlib
import math
import os

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Sampler

IMAGE_SIZE = 28
NUM_CLASSES = 10
# Both data sets come as four files in torchvision's layout, <root>/<folder>/raw/.
# "pixels": the mean and standard deviation of their training pixels in [0, 1],
# by which the files of one put in the other's folder are recognized.
DATASETS = {
    "mnist": {"folder": "MNIST", "classes": [str(digit) for digit in range(10)],
              "pixels": {"mean": 0.1307, "std": 0.3081}},
    "fashion-mnist": {"folder": "FashionMNIST",
                      "classes": ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                                  "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"],
                      "pixels": {"mean": 0.2860, "std": 0.3530}},
}
FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
         "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}


class DataError(Exception):
    """A problem with the data files that the user can fix; the message says how."""


# ----------------------------------------------------------------------------
# Reading the files

def raw_folder(root, dataset="mnist"):
    return os.path.join(root, DATASETS[dataset]["folder"], "raw")


def read_idx(path, ndim):
    """An IDX file as a uint8 tensor: a big-endian header (magic number, one
    32-bit size per dimension), then the values. Read here, not by torchvision,
    so that every problem with a file is named in one line the user can act on."""
    try:
        with open(path, "rb") as f:
            raw = bytearray(f.read())
    except OSError as error:
        raise DataError(f"{path}: cannot be read ({error.strerror})") from None
    header_size = 4 + 4 * ndim
    if len(raw) < header_size:
        raise DataError(f"{path}: truncated, {len(raw)} bytes is not even a header")
    magic = int.from_bytes(raw[0:4], "big")
    if magic != 0x800 + ndim:  # 0x08 = unsigned bytes, then the number of dimensions
        raise DataError(f"{path}: wrong magic number {magic:#010x}, expected "
                        f"{0x800 + ndim:#010x}; this is not an MNIST file of this kind")
    shape = [int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim)]
    if len(raw) != header_size + math.prod(shape):
        raise DataError(f"{path}: {len(raw):,} bytes, expected {header_size + math.prod(shape):,}"
                        f" for shape {shape}; the file is truncated or corrupt")
    return torch.frombuffer(raw, dtype=torch.uint8, offset=header_size).view(shape)


def load_split(root, dataset, split):
    """The images (uint8, N x 28 x 28) and labels (uint8, N) of 'train' or 'test',
    downloaded first if they are not there."""
    image_file, label_file = (os.path.join(raw_folder(root, dataset), name)
                              for name in FILES[split])
    if not (os.path.isfile(image_file) and os.path.isfile(label_file)):
        download(root, dataset)
    images, labels = read_idx(image_file, ndim=3), read_idx(label_file, ndim=1)
    if images.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE):
        raise DataError(f"{image_file}: images are {images.shape[1]}x{images.shape[2]}, "
                        f"expected {IMAGE_SIZE}x{IMAGE_SIZE}")
    if len(images) != len(labels):
        raise DataError(f"{image_file} has {len(images)} images but {label_file} has "
                        f"{len(labels)} labels")
    if len(labels) and labels.max() >= NUM_CLASSES:
        raise DataError(f"{label_file}: label {int(labels.max())} is not a class 0-9")
    # The other data set's files fit too, and would train silently to a useless model.
    pixels = pixel_statistics(images)
    for other, details in DATASETS.items():
        if other != dataset and all(abs(pixels[key] - details["pixels"][key]) < 0.01
                                    for key in pixels):
            raise DataError(f"{image_file} holds {other}'s images, not {dataset}'s (pixel "
                            f"mean {pixels['mean']:.3f} and std {pixels['std']:.3f}, as "
                            f"{other}'s); put {dataset}'s files there, or use --dataset {other}")
    return images, labels


def download(root, dataset):
    """Let torchvision's own class for the data set (MNIST or FashionMNIST) fetch
    the four files into <root>/<folder>/raw. If that fails, what it made is
    removed again: a mistyped --data-dir leaves no empty folders behind."""
    # Imported here, not at the top: importing torchvision took 2.5-3.6 s and 164 MB
    # (a shared 2-core Zen 3), which every run would pay for files fetched once.
    import torchvision.datasets

    folder = DATASETS[dataset]["folder"]
    if os.path.basename(os.path.abspath(root)) == folder and os.path.isdir(
            os.path.join(root, "raw")):  # --data-dir data/MNIST, where data/ was meant
        raise DataError(f"{root} is the {folder} folder itself: give --data-dir the folder "
                        f"that holds it, {os.path.dirname(os.path.abspath(root))}")
    raw = os.path.abspath(raw_folder(root, dataset))
    new_folders = []  # those torchvision will make, deepest first
    path = raw
    while not os.path.exists(path):
        new_folders.append(path)
        path = os.path.dirname(path)
    files_before = set(os.listdir(raw)) if os.path.isdir(raw) else set()
    try:
        for train in (True, False):
            getattr(torchvision.datasets, folder)(root, train=train, download=True)
    except Exception as error:  # no network, a mirror down, a read-only folder, ...
        for name in (set(os.listdir(raw)) if os.path.isdir(raw) else set()) - files_before:
            with contextlib.suppress(OSError):  # a half-downloaded archive
                os.remove(os.path.join(raw, name))
        for path in new_folders:
            with contextlib.suppress(OSError):  # rmdir: only if nothing else is in it
                os.rmdir(path)
        names = ", ".join(name for pair in FILES.values() for name in pair)
        reason = str(error).splitlines()[0].rstrip(":")
        raise DataError(
            f"{dataset}'s files are not in {raw_folder(root, dataset)}, and downloading "
            f"them failed (no network, or no such data there: {reason}). Put the four "
            f"uncompressed files there by hand ({names}; gunzip the .gz files from any "
            f"{dataset} mirror), or pass --data-dir to a folder that has {folder}/raw/ "
            f"with them") from None


def pixel_statistics(images):
    """The mean and standard deviation of the pixels in [0, 1], {"mean", "std"},
    counted from how often each of the 256 grey levels occurs: exact, and without
    a floating-point copy of 40 million pixels (a third of a gigabyte)."""
    counts = torch.bincount(images.flatten(), minlength=256).double()
    levels = torch.arange(256, dtype=torch.float64) / 255
    mean = (counts * levels).sum() / counts.sum()
    variance = (counts * (levels - mean) ** 2).sum() / (counts.sum() - 1)
    return {"mean": mean.item(), "std": variance.sqrt().item()}


def normalize(images, normalization):
    """uint8 pixels (N x 28 x 28) -> float32 (N x 1 x 28 x 28) with zero mean and
    unit variance over the training set: the first layer's inputs well scaled."""
    mean, std = normalization["mean"], normalization["std"]
    return images.unsqueeze(1).float().div_(255).sub_(mean).div_(std)


# ----------------------------------------------------------------------------
# Data augmentation

# The distortion's default strengths, train.py's too: mild, for short runs.
DISTORTION_DEFAULTS = {"rotation": 5.0, "scale": 0.05, "shear": 0.0, "shift": 1.0,
                       "elastic_alpha": 0.0, "elastic_sigma": 4.0}


class RandomDistortion:
    """Data augmentation of a batch of normalized images, each its own random
    rotation, scaling, horizontal shear and shift (train.py's flags say in what
    units) and, if elastic_alpha > 0, an elastic distortion (Simard et al.,
    2003): random displacements, uniform in [-1, 1] pixels, smoothed by a
    Gaussian elastic_sigma pixels wide, scaled by elastic_alpha. The whole batch
    is warped at once, on `device`, by one grid_sample."""

    def __init__(self, seed, device, normalization, rotation, scale, shear, shift,
                 elastic_alpha, elastic_sigma):
        # Its own generator, on the images' device: the same seed, the same distortions.
        self.generator = torch.Generator(device=device).manual_seed(seed)
        self.background = -normalization["mean"] / normalization["std"]  # a black pixel
        self.rotation, self.scale, self.shear, self.shift = rotation, scale, shear, shift
        self.elastic_alpha = elastic_alpha
        # Every pixel centre as (x, y, 1), in grid_sample's units (-1 and 1 are
        # the edges of the image), row by row: [784, 3].
        centres = (torch.arange(IMAGE_SIZE, device=device) * 2 + 1) / IMAGE_SIZE - 1
        y, x = torch.meshgrid(centres, centres, indexing="ij")
        self.pixels = torch.stack([x.flatten(), y.flatten(), torch.ones_like(x.flatten())], dim=1)
        # Gaussian smoothing along one axis as a 28 x 28 matrix: row i is the
        # normalized Gaussian around pixel i, cut off at the image's edges.
        offsets = torch.arange(-IMAGE_SIZE + 1, IMAGE_SIZE, device=device)
        gaussian = torch.exp(-offsets ** 2 / (2 * elastic_sigma ** 2))
        index = torch.arange(IMAGE_SIZE, device=device)
        distance = index[None, :] - index[:, None]
        self.smoothing = (gaussian / gaussian.sum())[distance + IMAGE_SIZE - 1]

    def uniform(self, bound, *shape):
        """Independent draws in [-bound, bound]."""
        noise = torch.rand(*shape, device=self.generator.device, generator=self.generator)
        return (2 * noise - 1) * bound

    def __call__(self, images):
        batch = len(images)
        angle = self.uniform(math.radians(self.rotation), batch)
        zoom = 1 + self.uniform(self.scale, batch)
        shift_x, shift_y = self.uniform(2 * self.shift / IMAGE_SIZE, 2, batch)
        # Drawn only when asked for, after the others: without shear the random
        # numbers, and so the distortions, are those of a version without it.
        lean = (torch.tan(self.uniform(math.radians(self.shear), batch)) if self.shear
                else torch.zeros_like(angle))
        cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
        # One 2 x 3 affine matrix per image: the rotation and zoom (cos, -sin;
        # sin, cos) times the shear (1, lean; 0, 1), then the shift. One matrix
        # product applies them all to every pixel centre: where each output
        # pixel reads the input, as x and y planes.
        affine = torch.stack([cos, cos * lean - sin, shift_x,
                              sin, sin * lean + cos, shift_y], dim=1)
        grid = (affine.view(2 * batch, 3) @ self.pixels.T).view(batch, 2, IMAGE_SIZE, IMAGE_SIZE)
        if self.elastic_alpha > 0:
            grid = grid + self.elastic_field(batch)
        # grid_sample wants [B, 28, 28, (x, y)] and reads the permuted view as it
        # is: copying it into a contiguous tensor first made the augmentation
        # cost a third more time in training on this project's CPU.
        grid = grid.permute(0, 2, 3, 1)
        # Pixels pulled in from outside the image are background (black), which is
        # not 0 after normalization: shift so that it is, warp, shift back.
        shifted = images - self.background
        return F.grid_sample(shifted, grid, align_corners=False) + self.background

    def elastic_field(self, batch):
        """Random displacements of every pixel, smoothed so that neighbouring pixels
        move together: x and y planes, [batch, 2, 28, 28]."""
        field = self.uniform(1.0, batch, 2, IMAGE_SIZE, IMAGE_SIZE)
        field = field @ self.smoothing  # along each row (the matrix is symmetric) ...
        field = (field.transpose(2, 3) @ self.smoothing).transpose(2, 3)  # ... and column
        return field * (2 * self.elastic_alpha / IMAGE_SIZE)


# ----------------------------------------------------------------------------
# Batches

class MNISTTensors(torch.utils.data.Dataset):
    """Images [N, 1, 28, 28] and labels [N] held as tensors on one device, each
    batch optionally transformed (for example augmented) on the fly.

    Given a tensor of indices, `__getitem__` returns the whole batch at once:
    the fast path, with a sampler that yields one tensor of indices per batch
    (BatchIndices) and a DataLoader told not to batch again (batch_size=None),
    as make_loader builds it. Given one integer, it returns one image and its
    label: torch's stock DataLoader(dataset, batch_size=64) works too, slower."""

    def __init__(self, images, labels, transform=None):
        self.images = images
        self.labels = labels
        self.transform = transform

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, index):
        if not (isinstance(index, torch.Tensor) and index.dim() == 1):  # one image
            images, labels = self[torch.tensor([int(index)], device=self.labels.device)]
            return images[0], labels[0]
        # index_select copies whole rows; it is several times faster than
        # images[index], and far faster than indexing with a Python list.
        images = self.images.index_select(0, index)
        if self.transform is not None:
            images = self.transform(images)
        return images, self.labels.index_select(0, index)


class BatchIndices(Sampler):
    """A batch sampler: one tensor of indices per batch, on the data's device,
    in a new order every epoch with shuffle (drawn from `generator`), else in
    order. torch's BatchSampler yields Python lists, built one index at a time
    and copied to the device at every step."""

    def __init__(self, size, batch_size, device, shuffle, generator=None):
        self.size = size
        self.batch_size = batch_size
        self.device = device
        self.shuffle = shuffle
        self.generator = generator

    def __len__(self):
        return math.ceil(self.size / self.batch_size)

    def __iter__(self):
        if self.shuffle:  # drawn on the CPU, so a seed gives the same order on every device
            order = torch.randperm(self.size, generator=self.generator).to(self.device)
        else:
            order = torch.arange(self.size, device=self.device)
        return iter(order.split(self.batch_size))


def make_loader(dataset, batch_size, shuffle, generator=None):
    """A DataLoader of an MNISTTensors' (images float32 [B,1,28,28], labels int64
    [B]) batches, in a new order every epoch if `shuffle` (for training)."""
    sampler = BatchIndices(len(dataset), batch_size, dataset.labels.device, shuffle, generator)
    return DataLoader(dataset, sampler=sampler, batch_size=None)  # the sampler batches


def train_val_sets(root, dataset, val_size, seed, device):
    """The 60,000 training images split by `seed` into a training set and
    `val_size` validation images, both normalized by the training set's pixel
    mean and standard deviation; and that normalization, which test images get too."""
    images, labels = load_split(root, dataset, "train")
    if val_size >= len(labels):
        raise DataError(f"--val-size {val_size} leaves no training images: the "
                        f"training set in {raw_folder(root, dataset)} has {len(labels)}")
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    val, train = order[:val_size], order[val_size:]
    normalization = pixel_statistics(images[train])
    return (as_dataset(images[train], labels[train], device, normalization),
            as_dataset(images[val], labels[val], device, normalization), normalization)


def as_dataset(images, labels, device, normalization):
    """uint8 images and labels -> an MNISTTensors of normalized float32 images and
    int64 labels on `device` (cross-entropy wants int64 class indices)."""
    return MNISTTensors(normalize(images.to(device), normalization), labels.to(device).long())
