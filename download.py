"""Fetch MNIST or Fashion-MNIST the first time a script needs it (data.py calls
this only when the files are not there yet)."""

import contextlib
import os

from data import DATASETS, FILES, DataError, raw_folder


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
