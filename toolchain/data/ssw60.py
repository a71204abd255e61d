"""SSW60 (Van Horn et al., ECCV 2022) in its released layout, iNaturalist images.

    PATH/taxa.csv          label, species_code, ..., common_name, scientific_name, family, order
    PATH/images_inat.csv   asset_id, label, split (train/val/test), height, width, ...
    PATH/images_inat/{asset_id}.jpg

Only the columns routevit reads are required: taxa.csv ``label`` and ``common_name``;
images_inat.csv ``asset_id``, ``label`` and ``split``.
"""
from __future__ import annotations

import csv
from pathlib import Path

from toolchain.data.dataset import SPLITS, Dataset
from toolchain.data.images import prepare_splits
from toolchain.errors import RoutevitError

TAXA_COLUMNS = ("label", "common_name")
IMAGE_COLUMNS = ("asset_id", "label", "split")


def read_csv(path: Path, required: tuple) -> list:
    """Rows of `path` as (line number, dict); a missing file or column raises RoutevitError."""
    if not path.is_file():
        raise RoutevitError(f"{path}: file missing; an SSW60 folder needs taxa.csv, images_inat.csv "
                            "and images_inat/")
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            columns = [c.strip() for c in (reader.fieldnames or [])]
            missing = [c for c in required if c not in columns]
            if missing:
                raise RoutevitError(f"{path}: missing column {missing[0]!r} (has: {', '.join(columns) or 'nothing'}); "
                                    "use the SSW60 release's CSV files")
            rows = []
            for row in reader:
                rows.append((reader.line_num, {(k or "").strip(): (v or "").strip() for k, v in row.items()}))
    except UnicodeDecodeError as exc:
        raise RoutevitError(f"{path}: not UTF-8 text ({exc.reason}); use the SSW60 release's CSV files") from None
    except csv.Error as exc:
        raise RoutevitError(f"{path}: malformed CSV ({exc}); use the SSW60 release's CSV files") from None
    return rows


def _int(path: Path, line: int, column: str, value: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise RoutevitError(f"{path}:{line}: {column} {value!r} is not an integer; fix the row") from None


def load_ssw60(root: Path) -> Dataset:
    root = Path(root)
    taxa_path = root / "taxa.csv"
    taxa = read_csv(taxa_path, TAXA_COLUMNS)
    if not taxa:
        raise RoutevitError(f"{taxa_path}: no classes; use the SSW60 release's taxa.csv")
    names = {}
    for line, row in taxa:
        label = _int(taxa_path, line, "label", row["label"])
        if label in names:
            raise RoutevitError(f"{taxa_path}:{line}: label {label} appears twice; labels must be unique")
        names[label] = row["common_name"] or row.get("species_code") or f"class {label}"
    if sorted(names) != list(range(len(names))):
        missing = sorted(set(range(len(names))) - set(names))
        raise RoutevitError(f"{taxa_path}: labels must be 0..{len(names) - 1} without gaps "
                            f"(label {missing[0]} missing); fix taxa.csv")
    class_names = [names[i] for i in range(len(names))]

    images_path = root / "images_inat.csv"
    image_dir = root / "images_inat"
    if not image_dir.is_dir():
        raise RoutevitError(f"{image_dir}: folder missing; an SSW60 folder needs images_inat/ with the JPEGs")
    splits = {name: ([], []) for name in SPLITS}
    for line, row in read_csv(images_path, IMAGE_COLUMNS):
        label = _int(images_path, line, "label", row["label"])
        if not 0 <= label < len(class_names):
            raise RoutevitError(f"{images_path}:{line}: label {label} is out of range 0..{len(class_names) - 1} "
                                "(taxa.csv); fix the row")
        split = row["split"].lower()
        if split not in splits:
            raise RoutevitError(f"{images_path}:{line}: split {row['split']!r} is not one of train, val, test; "
                                "fix the row")
        if not row["asset_id"]:
            raise RoutevitError(f"{images_path}:{line}: empty asset_id; fix the row")
        splits[split][0].append(image_dir / f"{row['asset_id']}.jpg")
        splits[split][1].append(label)
    if not splits["train"][0]:
        raise RoutevitError(f"{images_path}: no training images (split=train); use the SSW60 release's CSV")

    present = {name: value for name, value in splits.items() if value[0]}
    return Dataset(
        name=f"ssw60:{root}",
        class_names=class_names,
        channels=3,
        style="photo",
        split_sizes={name: len(splits[name][0]) for name in SPLITS},
        arrays_for_size=lambda size: prepare_splits("ssw60", root, present, size, 3),
    )
