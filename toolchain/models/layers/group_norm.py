"""GroupNorm with one group (ml-cvnets' `layer_norm_2d`), written with static-shape ops only."""
import tensorflow as tf
import tf_keras as keras


@keras.utils.register_keras_serializable(package="routevit")
class GroupNorm1(keras.layers.Layer):
    """Normalise each sample over all axes but the batch, then a per-channel scale and shift.

    Equals `torch.nn.GroupNorm(1, C)` (eps 1e-5) on any rank >= 2 channels-last tensor; in
    MobileViTV2 it normalises the unfolded patches [B, N, P, d] over (N, P, d). Lowers to
    MEAN, SQUARED_DIFFERENCE, RSQRT, SUB, MUL, ADD (all in TFLite Micro).

    Example:
    >>> layer = GroupNorm1(name="ln")
    >>> layer(tf.ones([1, 16, 4, 8])).shape
    TensorShape([1, 16, 4, 8])
    """

    def __init__(self, epsilon=1e-5, **kwargs):
        super().__init__(**kwargs)
        self.epsilon = float(epsilon)

    def build(self, input_shape):
        channels = int(input_shape[-1])
        self.gamma = self.add_weight(name="gamma", shape=(channels,), initializer="ones")
        self.beta = self.add_weight(name="beta", shape=(channels,), initializer="zeros")
        super().build(input_shape)

    def call(self, inputs):
        axes = list(range(1, len(inputs.shape)))
        mean = tf.reduce_mean(inputs, axis=axes, keepdims=True)
        variance = tf.reduce_mean(tf.math.squared_difference(inputs, mean), axis=axes, keepdims=True)
        normed = (inputs - mean) * tf.math.rsqrt(variance + self.epsilon)
        return normed * self.gamma + self.beta

    def get_config(self):
        return {**super().get_config(), "epsilon": self.epsilon}
