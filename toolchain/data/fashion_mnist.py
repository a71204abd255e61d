"""Fashion-MNIST from the IDX files of Debian's dataset-fashion-mnist package.

The 60,000 training images are split once, with a fixed permutation that does not depend on
the training seed, into 55,000 for training and 5,000 for validation; the 10,000 test images
are the test split.
"""
from __future__ import annotations

import gzip
import os
import zlib
from pathlib import Path

import numpy as np

from toolchain.data.dataset import Dataset, SplitArrays
from toolchain.errors import RoutevitError

DEFAULT_DIR = Path("/usr/share/datasets/fashion-mnist")
DIR_ENV = "ROUTEVIT_FASHION_MNIST_DIR"
CLASS_NAMES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
               "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
FILES = {
    "train_images": "train-images-idx3-ubyte.gz",
    "train_labels": "train-labels-idx1-ubyte.gz",
    "test_images": "t10k-images-idx3-ubyte.gz",
    "test_labels": "t10k-labels-idx1-ubyte.gz",
}
VAL_SIZE = 5000
SPLIT_SEED = 20170825  # fixed: the validation split must not move with the training seed

_IDX_MAGIC = {2049: 1, 2051: 3}  # labels: 1 dimension, images: 3 dimensions (unsigned byte data)


def read_idx(path: Path) -> np.ndarray:
    """Read a gzip'd IDX file of unsigned bytes into an array; problems raise RoutevitError."""
    try:
        with gzip.open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise RoutevitError(f"{path}: file missing; run `apt-get install dataset-fashion-mnist` "
                            f"or give fashion-mnist:DIR") from None
    except (OSError, EOFError, zlib.error) as exc:
        raise RoutevitError(f"{path}: not a readable gzip file ({_one_line(exc)}); "
                            "reinstall dataset-fashion-mnist") from None
    if len(data) < 8:
        raise RoutevitError(f"{path}: too short for an IDX file; reinstall dataset-fashion-mnist")
    magic = int.from_bytes(data[0:4], "big")
    dims = _IDX_MAGIC.get(magic)
    if dims is None:
        raise RoutevitError(f"{path}: bad IDX magic number {magic:#x}; reinstall dataset-fashion-mnist")
    header = 4 + 4 * dims
    shape = tuple(int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(dims))
    expected = int(np.prod(shape))
    if len(data) != header + expected:
        raise RoutevitError(f"{path}: IDX header says {expected} bytes of data but the file has "
                            f"{len(data) - header}; reinstall dataset-fashion-mnist")
    return np.frombuffer(data, np.uint8, count=expected, offset=header).reshape(shape)


def load_fashion_mnist(directory: Path | None = None) -> Dataset:
    """Fashion-MNIST from `directory` (default: $ROUTEVIT_FASHION_MNIST_DIR or Debian's folder)."""
    if directory is None:
        directory = Path(os.environ.get(DIR_ENV) or DEFAULT_DIR)
    directory = Path(directory)
    if not directory.is_dir():
        raise RoutevitError(f"{directory}: Fashion-MNIST folder not found; run "
                            "`apt-get install dataset-fashion-mnist` (or give fashion-mnist:DIR)")
    arrays = {key: read_idx(directory / name) for key, name in FILES.items()}
    for split in ("train", "test"):
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        if images.ndim != 3 or images.shape[1:] != (28, 28):
            raise RoutevitError(f"{directory / FILES[split + '_images']}: expected 28x28 images, "
                                f"got shape {images.shape}; reinstall dataset-fashion-mnist")
        if labels.shape[0] != images.shape[0]:
            raise RoutevitError(f"{directory / FILES[split + '_labels']}: {labels.shape[0]} labels for "
                                f"{images.shape[0]} images; reinstall dataset-fashion-mnist")
        bad = np.flatnonzero(labels >= len(CLASS_NAMES))
        if bad.size:
            raise RoutevitError(f"{directory / FILES[split + '_labels']}: label {int(labels[bad[0]])} at "
                                f"index {int(bad[0])} is out of range 0..{len(CLASS_NAMES) - 1}; "
                                "reinstall dataset-fashion-mnist")

    permutation = np.random.default_rng(SPLIT_SEED).permutation(arrays["train_labels"].shape[0])
    val_index, train_index = permutation[:VAL_SIZE], permutation[VAL_SIZE:]
    train_images = arrays["train_images"][..., None]
    splits = {
        "train": SplitArrays(train_images[train_index], arrays["train_labels"][train_index].astype(np.int32)),
        "val": SplitArrays(train_images[val_index], arrays["train_labels"][val_index].astype(np.int32)),
        "test": SplitArrays(arrays["test_images"][..., None], arrays["test_labels"].astype(np.int32)),
    }
    name = "fashion-mnist" if directory == DEFAULT_DIR else f"fashion-mnist:{directory}"
    return Dataset(
        name=name,
        class_names=CLASS_NAMES,
        channels=1,
        style="native",
        split_sizes={k: len(v) for k, v in splits.items()},
        arrays_for_size=lambda size: splits,
        native_size=28,
    )


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
