"""Parse a dataset name (``fashion-mnist``, ``ssw60:PATH``, ``folder:PATH``) into a Dataset."""
from pathlib import Path

from toolchain.errors import RoutevitError

DATASET_KINDS = {
    "fashion-mnist": "Fashion-MNIST from Debian's dataset-fashion-mnist (or fashion-mnist:DIR)",
    "ssw60": "ssw60:PATH, the SSW60 released layout (taxa.csv, images_inat.csv, images_inat/)",
    "folder": "folder:PATH, one subfolder of images per class",
}


def load_dataset(spec: str):
    """Return the `Dataset` named by `spec`; a bad name or path raises RoutevitError."""
    spec = (spec or "").strip()
    kind, sep, arg = spec.partition(":")
    kind = kind.lower()
    if kind == "fashion-mnist":
        from toolchain.data.fashion_mnist import load_fashion_mnist

        return load_fashion_mnist(Path(arg).expanduser() if sep and arg else None)
    if kind in ("ssw60", "folder"):
        if not arg:
            raise RoutevitError(f"dataset {spec!r}: missing path; write {kind}:PATH")
        path = Path(arg).expanduser()
        if not path.exists():
            raise RoutevitError(f"{path}: dataset path does not exist; check the {kind}:PATH argument")
        if not path.is_dir():
            raise RoutevitError(f"{path}: dataset path is not a directory; give the dataset's folder")
        if kind == "ssw60":
            from toolchain.data.ssw60 import load_ssw60

            return load_ssw60(path)
        from toolchain.data.folder import load_folder

        return load_folder(path)
    known = ", ".join(["fashion-mnist", "ssw60:PATH", "folder:PATH"])
    raise RoutevitError(f"dataset {spec!r}: unknown dataset name; use one of {known}")
