"""Unfold a feature map into 2x2 patches: SPACE_TO_DEPTH(2) + RESHAPE (docs/design.md layout)."""
import tensorflow as tf
import tf_keras as keras


@keras.utils.register_keras_serializable(package="routevit")
class PatchUnfold(keras.layers.Layer):
    """[B, H, W, d] -> [B, N, P, d]: N = (H/p)(W/p) patches row-major, P = p*p pixels ordered (ph, pw).

    Static shapes only (the batch is -1 when unknown, else the fixed batch), so a model built with
    `batch_size=1` converts to SPACE_TO_DEPTH + RESHAPE and nothing else.

    Example:
    >>> PatchUnfold(name="unfold")(tf.zeros([1, 8, 8, 16])).shape
    TensorShape([1, 16, 4, 16])
    """

    def __init__(self, patch_size=2, **kwargs):
        super().__init__(**kwargs)
        self.patch_size = int(patch_size)

    def call(self, inputs):
        _, height, width, channels = inputs.shape
        p = self.patch_size
        if height % p or width % p:
            raise ValueError(f"{self.name}: feature map {height}x{width} is not divisible by {p}")
        batch = inputs.shape[0] if inputs.shape[0] is not None else -1
        patches = tf.nn.space_to_depth(inputs, p)
        return tf.reshape(patches, [batch, (height // p) * (width // p), p * p, channels])

    def compute_output_shape(self, input_shape):
        b, h, w, c = input_shape
        p = self.patch_size
        return tf.TensorShape([b, (h // p) * (w // p), p * p, c])

    def get_config(self):
        return {**super().get_config(), "patch_size": self.patch_size}
