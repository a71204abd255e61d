"""Fold 2x2 patches back into a feature map: RESHAPE + DEPTH_TO_SPACE (inverse of PatchUnfold)."""
import tensorflow as tf
import tf_keras as keras


@keras.utils.register_keras_serializable(package="routevit")
class PatchFold(keras.layers.Layer):
    """[B, N, P, d] -> [B, H, W, d] for a map of `height` x `width` pixels (N = (H/p)(W/p)).

    Example:
    >>> PatchFold(height=8, width=8, name="fold")(tf.zeros([1, 16, 4, 16])).shape
    TensorShape([1, 8, 8, 16])
    """

    def __init__(self, height, width, patch_size=2, **kwargs):
        super().__init__(**kwargs)
        self.height = int(height)
        self.width = int(width)
        self.patch_size = int(patch_size)

    def call(self, inputs):
        p = self.patch_size
        _, num_patches, patch_area, channels = inputs.shape
        rows, cols = self.height // p, self.width // p
        if num_patches != rows * cols or patch_area != p * p:
            raise ValueError(f"{self.name}: got {num_patches} patches of {patch_area} pixels, "
                             f"expected {rows * cols} of {p * p} for {self.height}x{self.width}")
        batch = inputs.shape[0] if inputs.shape[0] is not None else -1
        grid = tf.reshape(inputs, [batch, rows, cols, patch_area * channels])
        return tf.nn.depth_to_space(grid, p)

    def compute_output_shape(self, input_shape):
        return tf.TensorShape([input_shape[0], self.height, self.width, input_shape[-1]])

    def get_config(self):
        return {**super().get_config(), "height": self.height, "width": self.width,
                "patch_size": self.patch_size}
