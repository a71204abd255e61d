"""The test images an evaluation sends: the dataset's test split at the plan's input size, and
their int8 tensors quantised exactly as the host reference quantises them."""
from __future__ import annotations

import numpy as np

from toolchain.errors import RoutevitError


def load_test_images(data: str, plan, limit: int):
    """(uint8 [n, H, W, C], labels [n], class names) of the dataset's test split at the input
    size of `plan` (a `toolchain.plan.Plan`)."""
    from toolchain.data import load_dataset

    _, height, width, channels = plan.input.shape
    if height != width:
        raise RoutevitError(f"{plan.path or 'plan'}: input {height}x{width} is not square; routevit datasets "
                            "give square images")
    dataset = load_dataset(data)
    images, labels = dataset.numpy_images("test", limit, image_size=height, channels=channels)
    if len(images) == 0:
        raise RoutevitError(f"dataset {data}: its test split has no images")
    names = list(plan.class_names or dataset.class_names)
    return images, labels.astype(np.int64), names


def quantize_images(reference, images_u8: np.ndarray) -> np.ndarray:
    """The int8 input tensors the device is sent: the host reference's own quantisation (the
    plan's pixel table), so device and host see the same bytes."""
    return np.stack([reference.quantize_pixels(image) for image in images_u8])


def check_image_sizes(images_q: np.ndarray, hello) -> None:
    """An image whose size is not the firmware's input size is refused before anything is sent."""
    expected = tuple(int(v) for v in hello.input_shape[1:])
    for i, image in enumerate(images_q):
        if image.size != int(np.prod(expected)):
            raise RoutevitError(
                f"image {i}: {image.size} values ({'x'.join(map(str, image.shape))}) but the firmware expects "
                f"{'x'.join(map(str, expected))}; resize the images to the model's input")

