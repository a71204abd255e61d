"""Calibration images: a fixed, stored sample of the training split.

`routevit quantize` stores them in QRUN/calibration.npz (uint8 pixels exactly as evaluation feeds
the model, before normalisation), so `routevit export QRUN` needs no dataset and converts the
same way every time. The converter calibrates every tensor without a QAT range from them
(all tensors for PTQ).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

FILE = "calibration.npz"


def sample_images(dataset, split: str, count: int, image_size: int, channels: int) -> np.ndarray:
    """The first `count` images of `split` (the dataset's own deterministic order), uint8 NHWC."""
    images, _ = dataset.numpy_images(split, count, image_size=image_size, channels=channels)
    return images


def save(folder: Path, images: np.ndarray, split: str) -> None:
    np.savez_compressed(Path(folder) / FILE, images=images.astype(np.uint8), split=np.array(split))


def load(folder: Path) -> np.ndarray:
    from toolchain.errors import RoutevitError

    path = Path(folder) / FILE
    if not path.is_file():
        raise RoutevitError(f"{path}: missing; run `routevit quantize` again to write the QRUN folder")
    with np.load(path) as data:
        return data["images"]
