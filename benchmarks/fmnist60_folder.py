"""Write a 60-class image folder from Fashion-MNIST, for training SSW60-shaped (60-class) models on
this machine, where SSW60 itself is not available.

Class `k * 6 + j` is Fashion-MNIST class k seen in orientation j (as is, rotated 90/180/270
degrees, flipped top-bottom, transposed): a real 60-way task on real images whose classes
differ in both content and pose. It is not a substitute for SSW60's accuracy; it gives the
60-class head real gradients and the int8 model real activation ranges.

    .venv/bin/python benchmarks/fmnist60_folder.py OUT [--per-class-train 150] [--per-class-test 30]

OUT gets train/<class>/*.png and test/<class>/*.png (routevit's folder reader carves val from
train); `routevit train --data folder:OUT`.
"""
import argparse
import shutil
import sys
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from toolchain.data.fashion_mnist import CLASS_NAMES, load_fashion_mnist  # noqa: E402

ORIENTATIONS = {
    "upright": lambda a: a,
    "rot90": lambda a: np.rot90(a, 1),
    "rot180": lambda a: np.rot90(a, 2),
    "rot270": lambda a: np.rot90(a, 3),
    "flipped": lambda a: a[::-1],
    "transposed": lambda a: a.T,
}


def class_dir_name(label: int, orientation: str) -> str:
    base = CLASS_NAMES[label].lower().replace("/", "-").replace(" ", "-")
    return f"{label * len(ORIENTATIONS) + list(ORIENTATIONS).index(orientation):02d}-{base}-{orientation}"


def write(out: Path, per_class: dict) -> None:
    data = load_fashion_mnist()
    partial = out.with_name(out.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    for split, count in per_class.items():
        arrays = data.arrays(split, 28)
        for label in range(len(CLASS_NAMES)):
            # different images for each orientation: the classes share no picture
            index = np.flatnonzero(arrays.labels == label)[:count * len(ORIENTATIONS)]
            for j, (orientation, turn) in enumerate(ORIENTATIONS.items()):
                folder = partial / split / class_dir_name(label, orientation)
                folder.mkdir(parents=True)
                for i in index[j::len(ORIENTATIONS)][:count]:
                    Image.fromarray(np.ascontiguousarray(turn(arrays.images[i, :, :, 0]))).save(folder / f"{i:05d}.png")
    shutil.rmtree(out, ignore_errors=True)
    partial.rename(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--per-class-train", type=int, default=150)
    parser.add_argument("--per-class-test", type=int, default=30)
    args = parser.parse_args()
    write(args.out, {"train": args.per_class_train, "test": args.per_class_test})
    print(f"{args.out}: {len(CLASS_NAMES) * len(ORIENTATIONS)} classes")


if __name__ == "__main__":
    main()
