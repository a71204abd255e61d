"""Datasets: Fashion-MNIST from Debian's files, SSW60 layout, image folders, pipelines."""
import gzip
import os
from pathlib import Path

import numpy as np
import pytest

from conftest import make_image_folder, make_ssw60
from toolchain.data import Normalization, load_dataset
from toolchain.data.fashion_mnist import DEFAULT_DIR, FILES
from toolchain.errors import RoutevitError


def test_fashion_mnist_splits_and_labels():
    ds = load_dataset("fashion-mnist")
    assert ds.split_sizes == {"train": 55000, "val": 5000, "test": 10000}
    assert ds.num_classes == 10 and ds.class_names[9] == "Ankle boot"
    train, val = ds.arrays("train", 28), ds.arrays("val", 28)
    assert train.images.shape == (55000, 28, 28, 1) and train.images.dtype == np.uint8
    # val is carved from train with a fixed permutation: together they are the 60,000 images
    assert np.bincount(np.concatenate([train.labels, val.labels])).tolist() == [6000] * 10
    # and the carve does not depend on anything a run chooses (seed, order of calls)
    again = load_dataset("fashion-mnist").arrays("val", 28)
    assert np.array_equal(again.labels, val.labels) and np.array_equal(again.images, val.images)


def test_fashion_mnist_pipeline_pads_to_32_and_normalises():
    ds = load_dataset("fashion-mnist")
    norm = Normalization.unit(1)
    images, labels = ds.numpy_images("test", 8, image_size=32, channels=1)
    assert images.shape == (8, 32, 32, 1) and images.dtype == np.uint8
    # 28 -> 32: two background rows/columns each side, the 28x28 image untouched
    raw = ds.arrays("test", 32)
    assert np.array_equal(images[:, 2:30, 2:30], raw.images[:8])
    assert images[:, :2].max() == 0 and images[:, 30:].max() == 0
    batch, batch_labels = next(iter(ds.pipeline("test", image_size=32, channels=1, batch_size=8,
                                               normalization=norm)))
    np.testing.assert_array_equal(batch.numpy(), norm.apply(images))
    np.testing.assert_array_equal(batch_labels.numpy(), labels)
    assert batch.numpy().min() == -1.0 and batch.numpy().max() <= 1.0


def test_fashion_mnist_missing_files_say_how_to_install(tmp_path):
    with pytest.raises(RoutevitError, match="apt-get install dataset-fashion-mnist"):
        load_dataset(f"fashion-mnist:{tmp_path}")
    with pytest.raises(RoutevitError, match="apt-get install dataset-fashion-mnist"):
        load_dataset(f"fashion-mnist:{tmp_path / 'nowhere'}")


def test_fashion_mnist_corrupt_idx_names_the_file(tmp_path):
    for name in FILES.values():
        os.symlink(DEFAULT_DIR / name, tmp_path / name)
    bad = tmp_path / FILES["test_labels"]
    bad.unlink()
    bad.write_bytes(gzip.compress(b"\x00\x00\x08\x01" + (10000).to_bytes(4, "big") + b"\x03" * 9000))
    with pytest.raises(RoutevitError, match=f"{bad}: IDX header says 10000 bytes"):
        load_dataset(f"fashion-mnist:{tmp_path}")
    labels = bytes([1, 12] + [2] * 9998)
    bad.write_bytes(gzip.compress(b"\x00\x00\x08\x01" + (10000).to_bytes(4, "big") + labels))
    with pytest.raises(RoutevitError, match="label 12 at index 1 is out of range 0..9"):
        load_dataset(f"fashion-mnist:{tmp_path}")


def test_ssw60_layout(ssw60_dir):
    ds = load_dataset(f"ssw60:{ssw60_dir}")
    assert ds.class_names == ["American Crow", "Blue Jay", "Northern Cardinal"]
    assert ds.split_sizes == {"train": 18, "val": 6, "test": 6}
    assert ds.channels == 3
    arrays = ds.arrays("train", 16)
    assert arrays.images.shape == (18, ds.stored_size(16), ds.stored_size(16), 3)
    assert arrays.labels.tolist() == [0] * 6 + [1] * 6 + [2] * 6
    # grayscale JPEGs in the release become RGB; models with 1 input channel get gray images
    gray, _ = ds.numpy_images("test", None, image_size=16, channels=1)
    rgb, labels = ds.numpy_images("test", None, image_size=16, channels=3)
    assert gray.shape == (6, 16, 16, 1) and rgb.shape == (6, 16, 16, 3)
    assert labels.tolist() == [0, 0, 1, 1, 2, 2]
    # the generated classes differ in colour: red crows, blue jays, green cardinals
    crows, jays = rgb[labels == 0].astype(float), rgb[labels == 1].astype(float)
    assert crows[..., 0].mean() > crows[..., 2].mean() and jays[..., 2].mean() > jays[..., 0].mean()


def test_training_pipeline_is_a_function_of_seed_and_epoch(ssw60_dir):
    ds = load_dataset(f"ssw60:{ssw60_dir}")
    norm = Normalization.unit(3)

    def batches(seed, epoch):
        pipe = ds.pipeline("train", image_size=16, channels=3, batch_size=6, training=True, seed=seed,
                           epoch=epoch, normalization=norm, flip=True, pad=1)
        return [(x.numpy(), y.numpy()) for x, y in pipe]

    first = batches(seed=3, epoch=1)
    assert len(first) == 3 and first[0][0].shape == (6, 16, 16, 3)
    again = batches(seed=3, epoch=1)
    assert all(np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1]) for a, b in zip(first, again))
    other_epoch = batches(seed=3, epoch=2)
    assert not all(np.array_equal(a[0], b[0]) for a, b in zip(first, other_epoch))
    other_seed = batches(seed=4, epoch=1)
    assert not all(np.array_equal(a[1], b[1]) for a, b in zip(first, other_seed))
    # every training example appears once per epoch
    assert sorted(np.concatenate([y for _, y in first]).tolist()) == [0] * 6 + [1] * 6 + [2] * 6


def test_decoded_images_are_cached_and_refreshed_when_files_change(ssw60_dir, dataset_cache):
    load_dataset(f"ssw60:{ssw60_dir}").arrays("train", 16)
    entries = sorted((dataset_cache / "datasets").iterdir())
    assert len(entries) == 1
    stamp = (entries[0] / "meta.json").stat().st_mtime_ns
    load_dataset(f"ssw60:{ssw60_dir}").arrays("train", 16)
    assert (entries[0] / "meta.json").stat().st_mtime_ns == stamp  # reused, not decoded again
    from PIL import Image

    Image.new("RGB", (20, 20), (255, 255, 255)).save(ssw60_dir / "images_inat" / "100.jpg")
    fresh = load_dataset(f"ssw60:{ssw60_dir}").arrays("train", 16)
    assert len(list((dataset_cache / "datasets").iterdir())) == 2
    assert fresh.images[0].min() > 240  # the new white image, not the cached one


def test_image_folder_split_is_deterministic_and_covers_every_class(image_folder):
    ds = load_dataset(f"folder:{image_folder}")
    assert ds.class_names == ["cat", "dog", "fox"]
    assert ds.split_sizes == {"train": 15, "val": 3, "test": 6}
    again = load_dataset(f"folder:{image_folder}")
    for split in ("train", "val", "test"):
        a, b = ds.arrays(split, 16), again.arrays(split, 16)
        assert np.array_equal(a.images, b.images) and np.array_equal(a.labels, b.labels)
        assert sorted(set(a.labels.tolist())) == [0, 1, 2]
    # no image is in two splits
    rows = {split: {ds.arrays(split, 16).images[i].tobytes() for i in range(ds.split_sizes[split])}
            for split in ("train", "val", "test")}
    assert not (rows["train"] & rows["val"] or rows["train"] & rows["test"] or rows["val"] & rows["test"])


def test_image_folder_with_split_subfolders(tmp_path, dataset_cache):
    make_image_folder(tmp_path / "data" / "train", classes=("a", "b"), per_class=10)
    make_image_folder(tmp_path / "data" / "test", classes=("a", "b"), per_class=3)
    ds = load_dataset(f"folder:{tmp_path / 'data'}")
    assert ds.class_names == ["a", "b"]
    assert ds.split_sizes == {"train": 18, "val": 2, "test": 6}


def test_grayscale_folder_has_one_channel(tmp_path, dataset_cache):
    from conftest import class_image

    for label, name in enumerate(("x", "y")):
        (tmp_path / "g" / name).mkdir(parents=True)
        for i in range(3):
            class_image(label, i, 20, 20, gray=True).save(tmp_path / "g" / name / f"{i}.png")
    ds = load_dataset(f"folder:{tmp_path / 'g'}")
    assert ds.channels == 1
    images, _ = ds.numpy_images("train", None, image_size=16, channels=3)
    assert images.shape == (2, 16, 16, 3)
    assert np.array_equal(images[..., 0], images[..., 2])  # gray -> RGB repeats the channel


@pytest.mark.parametrize("spec, message", [
    ("mnist", "unknown dataset name"),
    ("ssw60", "missing path"),
    ("folder:/definitely/not/here", "dataset path does not exist"),
])
def test_bad_dataset_names(spec, message):
    with pytest.raises(RoutevitError, match=message):
        load_dataset(spec)


def test_ssw60_problems_are_named(tmp_path, dataset_cache):
    root = make_ssw60(tmp_path / "s", per_split={"train": 1, "val": 1, "test": 1})
    text = (root / "images_inat.csv").read_text().splitlines()
    (root / "images_inat.csv").write_text("\n".join([text[0].replace("split", "subset")] + text[1:]))
    with pytest.raises(RoutevitError, match=r"images_inat.csv: missing column 'split'"):
        load_dataset(f"ssw60:{root}")
    (root / "images_inat.csv").write_text("\n".join(text[:2] + [text[2].replace(",1,train,", ",7,train,")]))
    with pytest.raises(RoutevitError, match=r"images_inat.csv:3: label 7 is out of range 0..2"):
        load_dataset(f"ssw60:{root}")
    (root / "images_inat.csv").write_text("\n".join(text))
    (root / "images_inat" / "101.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    with pytest.raises(RoutevitError, match=r"101.jpg: cannot read image"):
        load_dataset(f"ssw60:{root}").arrays("train", 16)
    (root / "images_inat" / "101.jpg").unlink()
    with pytest.raises(RoutevitError, match=r"101.jpg: image file missing"):
        load_dataset(f"ssw60:{root}").arrays("train", 16)


def test_normalization_from_config_lists():
    assert Normalization.from_lists([0.5], [0.25], 3).mean == (0.5, 0.5, 0.5)
    with pytest.raises(RoutevitError, match="input_mean' has 2 values for a 3-channel model"):
        Normalization.from_lists([0.1, 0.2], [0.5], 3)
    norm = Normalization.unit(1)
    assert norm.apply(np.array([0, 128, 255], np.uint8)).tolist() == pytest.approx([-1.0, 0.003921, 1.0], abs=1e-5)
