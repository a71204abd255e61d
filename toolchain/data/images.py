"""Decode image files once into cached uint8 arrays (one per split, memory-mapped).

Decoding every image up front is also the validation pass: a corrupt or unreadable file
stops here with its path, before any output folder exists, never as a TensorFlow traceback
in the middle of an epoch. The cache is keyed by the files' names, sizes and modification
times, so a changed dataset is decoded again.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from toolchain.data.dataset import SplitArrays
from toolchain.errors import RoutevitError
from toolchain.fsutil import atomic_output_dir

log = logging.getLogger("routevit")

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
CACHE_FORMAT = 1
_GRAY_MODES = ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F", "P;L")


def cache_root() -> Path:
    """`$ROUTEVIT_CACHE` or ~/.cache/routevit."""
    return Path(os.environ.get("ROUTEVIT_CACHE") or Path.home() / ".cache" / "routevit")


def file_fingerprint(paths, root: Path) -> list:
    """[(relative path, size, mtime_ns)] of `paths`; a missing file raises RoutevitError."""
    rows = []
    for path in paths:
        try:
            st = os.stat(path)
        except FileNotFoundError:
            raise RoutevitError(f"{path}: image file missing; restore it or remove it from the dataset") from None
        rows.append((os.path.relpath(path, root), st.st_size, st.st_mtime_ns))
    return rows


def is_grayscale(path: Path) -> bool:
    """Whether the image's stored mode is grayscale (reads the header only)."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            return image.mode in _GRAY_MODES
    except Exception as exc:  # PIL raises many types for bad files
        raise RoutevitError(f"{path}: cannot read image ({_one_line(exc)}); replace or remove the file") from None


def decode_square(path: Path, size: int, channels: int) -> np.ndarray:
    """Decode `path`, resize its shorter side to `size`, cut the centre square: uint8 [size, size, C]."""
    from PIL import Image, ImageOps

    mode = "L" if channels == 1 else "RGB"
    try:
        with Image.open(path) as image:
            # JPEG: let the decoder scale down by 1/2..1/8 while keeping both sides >= size.
            image.draft(mode, (size, size))
            image = ImageOps.exif_transpose(image)
            image = image.convert(mode)
            width, height = image.size
            if width < 1 or height < 1:
                raise ValueError("image has no pixels")
            scale = size / min(width, height)
            new_w, new_h = max(size, round(width * scale)), max(size, round(height * scale))
            image = image.resize((new_w, new_h), Image.Resampling.BILINEAR)
            left, top = (new_w - size) // 2, (new_h - size) // 2
            image = image.crop((left, top, left + size, top + size))
            pixels = np.asarray(image, np.uint8)
    except RoutevitError:
        raise
    except Exception as exc:  # PIL raises OSError, SyntaxError, ValueError, DecompressionBombError...
        raise RoutevitError(f"{path}: cannot read image ({_one_line(exc)}); replace or remove the file") from None
    return pixels.reshape(size, size, channels)


def prepare_splits(kind: str, root: Path, splits: dict, size: int, channels: int, extra_key: str = "") -> dict:
    """Decode `splits` ({split: (paths, labels)}) at `size` px into cached arrays.

    Returns {split: SplitArrays} with memory-mapped images. Reuses the cache when the files are
    unchanged; writes it atomically otherwise (an error leaves no partial cache).
    """
    fingerprint = {
        "format": CACHE_FORMAT, "kind": kind, "root": str(Path(root).resolve()), "size": size,
        "channels": channels, "extra": extra_key,
        "splits": {name: [file_fingerprint(paths, root), [int(x) for x in labels]]
                   for name, (paths, labels) in sorted(splits.items())},
    }
    key = hashlib.sha256(json.dumps(fingerprint, sort_keys=True).encode()).hexdigest()[:20]
    directory = cache_root() / "datasets" / f"{kind}-{size}px-{key}"
    if not (directory / "meta.json").is_file():
        _decode_into(directory, kind, splits, size, channels)
    result = {}
    for name in splits:
        images = np.load(directory / f"{name}_images.npy", mmap_mode="r")
        labels = np.load(directory / f"{name}_labels.npy")
        result[name] = SplitArrays(images, labels)
    return result


def _decode_into(directory: Path, kind: str, splits: dict, size: int, channels: int) -> None:
    from tqdm import tqdm

    total = sum(len(paths) for paths, _ in splits.values())
    log.info("decoding %d images of %s at %dpx into %s", total, kind, size, directory)
    workers = max(1, min(8, os.cpu_count() or 1))
    with atomic_output_dir(directory) as tmp, \
            tqdm(total=total, desc=f"decoding {kind} images ({size}px, once)", unit="img",
                 file=sys.stderr, disable=None) as bar, \
            ThreadPoolExecutor(max_workers=workers) as pool:
        for name, (paths, labels) in splits.items():
            images = np.lib.format.open_memmap(tmp / f"{name}_images.npy", mode="w+", dtype=np.uint8,
                                               shape=(len(paths), size, size, channels))
            futures = [pool.submit(decode_square, Path(p), size, channels) for p in paths]
            try:
                for i, future in enumerate(futures):
                    images[i] = future.result()
                    bar.update(1)
            except BaseException:
                for future in futures:
                    future.cancel()
                raise
            images.flush()
            del images
            np.save(tmp / f"{name}_labels.npy", np.asarray(labels, np.int32))
        (tmp / "meta.json").write_text(json.dumps(
            {"kind": kind, "size": size, "channels": channels,
             "splits": {name: len(paths) for name, (paths, _) in splits.items()}}, indent=1))


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
