"""The common Dataset object: class names, splits of uint8 images, and tf.data pipelines.

Every dataset ends up as uint8 arrays per split (`SplitArrays`, [N, S, S, C_native]); the
pipelines cut/pad/resize them to the model's image size, convert channels, round back to uint8
(so the float model sees exactly the pixels a microcontroller is sent) and then normalise.
Randomness (shuffle, crop, flip) comes only from (seed, epoch, position), so an epoch's
batches are the same whether or not training was interrupted before it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np

from toolchain.errors import RoutevitError

SPLITS = ("train", "val", "test")

# Photos are stored a little larger than the model's input and cut to size: a random crop for
# training, the centre for evaluation (the usual resize-256/crop-224 ratio).
PHOTO_CROP_RATIO = 0.875

# Arrays up to this size are fed to tf.data from memory; bigger (memory-mapped) ones are read
# one element at a time.
_IN_MEMORY_BYTES = 256 << 20


@dataclass(frozen=True)
class Normalization:
    """Per-channel mean/std applied to pixels scaled to [0, 1]: x = (p / 255 - mean) / std.

    The default, mean = std = 0.5, maps uint8 pixel p to p / 127.5 - 1 exactly, so an int8 input
    with scale 1/127.5 and zero point -128 is the pixel minus 128 with no rounding at all.

    Example:
        >>> Normalization.unit(1).apply(np.array([0, 255], np.uint8)).tolist()
        [-1.0, 1.0]
    """

    mean: tuple
    std: tuple

    @classmethod
    def unit(cls, channels: int) -> "Normalization":
        return cls(mean=(0.5,) * channels, std=(0.5,) * channels)

    @classmethod
    def from_lists(cls, mean, std, channels: int, source: str = "config") -> "Normalization":
        """One value per channel, or a single value for every channel (a config's input_mean/std)."""
        mean, std = list(mean), list(std)
        for key, values in (("input_mean", mean), ("input_std", std)):
            if len(values) not in (1, channels):
                raise RoutevitError(f"{source}: 'training.{key}' has {len(values)} values for a "
                                    f"{channels}-channel model; give 1 or {channels}")
        if any(s <= 0 for s in std):
            raise RoutevitError(f"{source}: 'training.input_std' must be positive")
        if len(mean) == 1:
            mean = mean * channels
        if len(std) == 1:
            std = std * channels
        return cls(mean=tuple(float(m) for m in mean), std=tuple(float(s) for s in std))

    def apply(self, pixels):
        """uint8 (numpy) pixels [..., C] -> normalised float32."""
        mean = np.asarray(self.mean, np.float32)
        std = np.asarray(self.std, np.float32)
        return ((np.asarray(pixels, np.float32) / 255.0) - mean) / std

    def to_dict(self) -> dict:
        return {"mean": [float(m) for m in self.mean], "std": [float(s) for s in self.std]}


@dataclass
class SplitArrays:
    """One split: uint8 images [N, S, S, C] (possibly memory-mapped) and int32 labels [N]."""

    images: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return int(self.labels.shape[0])


class Dataset:
    """A classification dataset with train/val/test splits.

    Args:
        name: the name it was loaded by, e.g. ``"fashion-mnist"`` or ``"ssw60:/data/ssw60"``.
        class_names: one name per label, label i -> class_names[i].
        channels: channels of the stored images (1 grayscale, 3 RGB).
        style: ``"native"``: stored at their own size (Fashion-MNIST); padded with background
            up to a model size at most 1/4 larger, resized otherwise;
            ``"photo"``: stored a little larger than the model's input, training crops at
            random, evaluation takes the centre (SSW60, folders).
        split_sizes: number of examples per split.
        arrays_for_size: stored-size -> {split: SplitArrays}; called once per stored size.
        native_size: the stored size of ``"native"`` datasets.

    Example:
        >>> ds = load_dataset("folder:/data/flowers")   # doctest: +SKIP
        >>> ds.pipeline("val", image_size=64, channels=3, batch_size=32)  # doctest: +SKIP
    """

    def __init__(
        self,
        name: str,
        class_names: list,
        channels: int,
        style: str,
        split_sizes: dict,
        arrays_for_size: Callable[[int], dict],
        native_size: int | None = None,
    ):
        if style not in ("native", "photo"):
            raise ValueError(f"style must be 'native' or 'photo', got {style!r}")
        self.name = name
        self.class_names = list(class_names)
        self.channels = int(channels)
        self.style = style
        self.split_sizes = dict(split_sizes)
        self.native_size = native_size
        self._arrays_for_size = arrays_for_size
        self._arrays: dict[int, dict] = {}

    def __repr__(self) -> str:
        sizes = ", ".join(f"{k}={v}" for k, v in self.split_sizes.items())
        return f"Dataset({self.name!r}, {self.num_classes} classes, {sizes})"

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def stored_size(self, image_size: int) -> int:
        """Side of the stored square images used for a model input of `image_size`."""
        if self.style == "native":
            return int(self.native_size)
        return max(image_size + 1, int(math.ceil(image_size / PHOTO_CROP_RATIO)))

    def arrays(self, split: str, image_size: int) -> SplitArrays:
        """The stored uint8 arrays of `split` for a model of `image_size` (prepared once)."""
        self._check_split(split)
        size = self.stored_size(image_size)
        if size not in self._arrays:
            self._arrays[size] = self._arrays_for_size(size)
        return self._arrays[size][split]

    def num_examples(self, split: str, limit: int | None = None) -> int:
        self._check_split(split)
        n = int(self.split_sizes[split])
        return min(n, int(limit)) if limit else n

    def _check_split(self, split: str) -> None:
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; use one of {SPLITS}")
        if self.split_sizes.get(split, 0) == 0:
            raise RoutevitError(f"dataset {self.name}: the {split} split is empty; add images to it")

    # ------------------------------------------------------------------ pipelines

    def pipeline(
        self,
        split: str,
        *,
        image_size: int,
        channels: int,
        batch_size: int,
        training: bool = False,
        seed: int = 0,
        epoch: int = 0,
        limit: int | None = None,
        normalization: Normalization | None = None,
        flip: bool = False,
        pad: int = 0,
    ):
        """A tf.data.Dataset of (images, labels) batches.

        `training` shuffles (a permutation drawn from (seed, epoch)), augments and drops a last
        partial batch; otherwise the split's order is kept and images are cut deterministically.
        Training augmentation: photos are cropped at random from their stored margin; `pad` > 0
        pads by that many pixels and crops back at a random offset; `flip` flips left-right at
        random. `limit` keeps the split's first `limit` examples. With a `normalization` the
        images are float32 normalised; without, uint8 pixels.
        """
        import tensorflow as tf

        arrays = self.arrays(split, image_size)
        n = self.num_examples(split, limit)
        order = np.arange(n)
        if training:
            order = np.random.default_rng([int(seed), int(epoch)]).permutation(n)
        positions = np.arange(n, dtype=np.int64) + np.int64(epoch) * np.int64(1 << 32)
        labels = np.asarray(arrays.labels[:n], np.int32)[order]
        images = arrays.images
        stored = images.shape[1]
        native_channels = images.shape[3]

        if isinstance(images, np.memmap) or images.nbytes > _IN_MEMORY_BYTES:
            def fetch(index):
                return np.asarray(images[int(index)])

            def read(index, label, position):
                image = tf.numpy_function(fetch, [index], tf.uint8, stateful=False)
                image.set_shape((stored, stored, native_channels))
                return image, label, position

            ds = tf.data.Dataset.from_tensor_slices((order.astype(np.int64), labels, positions))
            ds = ds.map(read, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        else:
            ds = tf.data.Dataset.from_tensor_slices((np.asarray(images[:n])[order], labels, positions))

        if normalization is not None:
            mean = tf.constant(normalization.mean, tf.float32)
            std = tf.constant(normalization.std, tf.float32)
        seed_value = int(seed)

        def preprocess(image, label, position):
            element_seed = tf.stack([tf.constant(seed_value, tf.int64), position])
            pixels = self._transform(image, image_size, channels, element_seed,
                                     training=training, flip=flip, pad=int(pad))
            if normalization is not None:
                pixels = (tf.cast(pixels, tf.float32) / 255.0 - mean) / std
            return pixels, label

        ds = ds.map(preprocess, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        ds = ds.batch(batch_size, drop_remainder=training and n >= batch_size)
        options = tf.data.Options()
        options.deterministic = True
        return ds.with_options(options).prefetch(tf.data.AUTOTUNE)

    def _transform(self, image, image_size, channels, element_seed, *, training, flip, pad):
        """uint8 [S, S, C_native] -> uint8 [image_size, image_size, channels]."""
        import tensorflow as tf

        stored = int(image.shape[0])
        native_channels = int(image.shape[2])
        crop_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(element_seed, 2))
        side = image_size if self.style == "photo" else stored
        if training and (pad > 0 or side != stored):
            if pad > 0:  # zero padding: the background of centred images such as Fashion-MNIST
                image = tf.pad(image, [[pad, pad], [pad, pad], [0, 0]])
            image = tf.image.stateless_random_crop(image, (side, side, native_channels), seed=crop_seed)
        elif side != stored:
            offset = (stored - side) // 2
            image = image[offset:offset + side, offset:offset + side, :]
        if training and flip:
            image = tf.image.stateless_random_flip_left_right(image, seed=flip_seed)

        pixels = tf.cast(image, tf.float32)
        changed = False
        side = int(image.shape[0])
        if side < image_size <= side + side // 4:
            # A little larger than the stored images (Fashion-MNIST's 28 -> 32): pad with the
            # background instead of interpolating, so every pixel stays exactly as stored.
            before = (image_size - side) // 2
            after = image_size - side - before
            pixels = tf.pad(pixels, [[before, after], [before, after], [0, 0]])
        elif side != image_size:
            pixels = tf.image.resize(pixels, (image_size, image_size), method="bilinear", antialias=True)
            changed = True
        if native_channels == 1 and channels == 3:
            pixels = tf.tile(pixels, [1, 1, 3])
        elif native_channels == 3 and channels == 1:
            pixels = tf.image.rgb_to_grayscale(pixels)
            changed = True
        elif native_channels != channels:
            raise RoutevitError(
                f"dataset {self.name}: cannot convert {native_channels}-channel images to "
                f"{channels} channels; use a model config with in_channels 1 or 3")
        if changed:
            pixels = tf.round(tf.clip_by_value(pixels, 0.0, 255.0))
        return tf.cast(pixels, tf.uint8)

    def numpy_images(self, split: str, n: int | None, *, image_size: int, channels: int):
        """The first `n` images of `split` exactly as evaluation feeds them, before normalising.

        Returns (uint8 [n, image_size, image_size, channels], int32 labels [n]); a run's
        `Normalization.apply(...)` turns them into the float model's input.
        """
        images, labels = [], []
        for batch_images, batch_labels in self.pipeline(
                split, image_size=image_size, channels=channels, batch_size=256, limit=n):
            images.append(batch_images.numpy())
            labels.append(batch_labels.numpy())
        if not images:
            return (np.zeros((0, image_size, image_size, channels), np.uint8), np.zeros((0,), np.int32))
        return np.concatenate(images), np.concatenate(labels)
