"""Datasets by name -> one `Dataset` object -> deterministic tf.data pipelines.

Names: ``fashion-mnist`` (Debian's dataset-fashion-mnist files, or ``fashion-mnist:DIR``),
``ssw60:PATH`` (the SSW60 released layout, iNaturalist images) and ``folder:PATH`` (class
subfolders of images).

Example:
    >>> from toolchain.data import load_dataset
    >>> ds = load_dataset("fashion-mnist")
    >>> train = ds.pipeline("train", image_size=28, channels=1, batch_size=64,
    ...                     training=True, seed=0, epoch=0)
    >>> images, labels = ds.numpy_images("test", 16, image_size=28, channels=1)  # uint8
"""
from toolchain.data.dataset import Dataset, Normalization, SplitArrays
from toolchain.data.registry import DATASET_KINDS, load_dataset

__all__ = ["Dataset", "Normalization", "SplitArrays", "DATASET_KINDS", "load_dataset"]
