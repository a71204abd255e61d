"""A folder of class subfolders of images: ``PATH/<class name>/<image>``.

Splits: if PATH holds ``train/`` (and optionally ``val/``, ``test/``) each with class
subfolders, those are the splits. Otherwise each class's images, sorted by name and shuffled
with a fixed seed, give 20% (at least one) to test, 10% (at least one) to val and the rest to
train, so the split is the same on every run and every machine.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from toolchain.data.dataset import SPLITS, Dataset
from toolchain.data.images import IMAGE_SUFFIXES, is_grayscale, prepare_splits
from toolchain.errors import RoutevitError

TEST_FRACTION = 0.2
VAL_FRACTION = 0.1
SPLIT_SEED = 1234  # fixed: the split must not move with the training seed


def _class_dirs(path: Path) -> list:
    return sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))


def _images_in(directory: Path) -> list:
    return sorted(p for p in directory.rglob("*")
                  if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."))


def load_folder(root: Path) -> Dataset:
    root = Path(root)
    subdirs = {p.name for p in _class_dirs(root)}
    if "train" in subdirs and subdirs <= set(SPLITS):
        class_names = sorted({p.name for split in subdirs for p in _class_dirs(root / split)})
        if len(class_names) < 2:
            raise RoutevitError(f"{root / 'train'}: needs at least 2 class subfolders of images")
        splits = {name: ([], []) for name in SPLITS}
        for split in sorted(subdirs):
            for class_dir in _class_dirs(root / split):
                for path in _images_in(class_dir):
                    splits[split][0].append(path)
                    splits[split][1].append(class_names.index(class_dir.name))
        if not splits["val"][0]:  # carve val from train when only train/ (and test/) exist
            splits = _carve(splits, "train", "val", VAL_FRACTION, len(class_names))
        if not splits["test"][0]:
            splits = _carve(splits, "train", "test", TEST_FRACTION, len(class_names))
    else:
        class_dirs = _class_dirs(root)
        if len(class_dirs) < 2:
            raise RoutevitError(f"{root}: needs at least 2 class subfolders of images "
                                f"(found {len(class_dirs)}); put each class's images in PATH/<class>/")
        class_names = [d.name for d in class_dirs]
        splits = {name: ([], []) for name in SPLITS}
        for label, class_dir in enumerate(class_dirs):
            paths = _images_in(class_dir)
            if len(paths) < 3:
                raise RoutevitError(f"{class_dir}: {len(paths)} images; each class needs at least 3 "
                                    "(train, val, test)")
            for split, chosen in _split_class(paths).items():
                splits[split][0].extend(chosen)
                splits[split][1].extend([label] * len(chosen))
    if not splits["train"][0]:
        raise RoutevitError(f"{root}: no training images found ({', '.join(IMAGE_SUFFIXES)})")

    # Grayscale only if every image is: one colour image makes the dataset RGB.
    all_paths = [p for paths, _ in splits.values() for p in paths]
    channels = 1 if all(is_grayscale(p) for p in all_paths) else 3
    present = {name: value for name, value in splits.items() if value[0]}
    return Dataset(
        name=f"folder:{root}",
        class_names=class_names,
        channels=channels,
        style="photo",
        split_sizes={name: len(splits[name][0]) for name in SPLITS},
        arrays_for_size=lambda size: prepare_splits("folder", root, present, size, channels),
    )


def _split_class(paths: list) -> dict:
    order = np.random.default_rng(SPLIT_SEED).permutation(len(paths))
    shuffled = [paths[i] for i in order]
    n_test = max(1, round(TEST_FRACTION * len(paths)))
    n_val = max(1, round(VAL_FRACTION * len(paths)))
    return {"test": sorted(shuffled[:n_test]), "val": sorted(shuffled[n_test:n_test + n_val]),
            "train": sorted(shuffled[n_test + n_val:])}


def _carve(splits: dict, source: str, target: str, fraction: float, num_classes: int) -> dict:
    paths, labels = splits[source]
    keep, moved = ([], []), ([], [])
    for label in range(num_classes):
        members = [p for p, l in zip(paths, labels) if l == label]
        if len(members) < 2:
            keep[0].extend(members)
            keep[1].extend([label] * len(members))
            continue
        order = np.random.default_rng(SPLIT_SEED).permutation(len(members))
        count = max(1, round(fraction * len(members)))
        chosen = {members[i] for i in order[:count]}
        for p in members:
            bucket = moved if p in chosen else keep
            bucket[0].append(p)
            bucket[1].append(label)
    result = dict(splits)
    result[source], result[target] = keep, moved
    return result
