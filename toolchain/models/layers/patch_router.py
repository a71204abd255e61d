"""Per-patch router: one score per expert for each 2x2 patch."""
import tensorflow as tf
import tf_keras as keras


@keras.utils.register_keras_serializable(package="routevit")
class PatchRouter(keras.layers.Layer):
    """Normalised patches [B, N, P, d] -> router logits [B, N, E].

    Each patch's P pixel tokens are mean-pooled, then a linear layer d -> E (with bias) scores
    them (MEAN + FULLY_CONNECTED when converted). The exported model is cut right after this
    layer: the integer routing decision (toolchain.routing.route) runs between segments.

    Example:
    >>> PatchRouter(num_experts=4, name="router")(tf.zeros([1, 16, 4, 32])).shape
    TensorShape([1, 16, 4])
    """

    def __init__(self, num_experts, kernel_initializer=None, **kwargs):
        super().__init__(**kwargs)
        self.num_experts = int(num_experts)
        # Small random init: distinct scores from the first step, so ties do not send every
        # patch to expert 0.
        self.kernel_initializer = keras.initializers.get(
            kernel_initializer or keras.initializers.RandomNormal(stddev=0.02))

    def build(self, input_shape):
        dim = int(input_shape[-1])
        self.kernel = self.add_weight(name="kernel", shape=(dim, self.num_experts),
                                      initializer=self.kernel_initializer)
        self.bias = self.add_weight(name="bias", shape=(self.num_experts,), initializer="zeros")
        super().build(input_shape)

    def call(self, inputs):
        _, num_patches, _, dim = inputs.shape
        batch = inputs.shape[0] if inputs.shape[0] is not None else -1
        pooled = tf.reduce_mean(inputs, axis=2)  # [B, N, d]
        rows = tf.reshape(pooled, [-1, dim])
        logits = tf.matmul(rows, self.kernel) + self.bias
        return tf.reshape(logits, [batch, num_patches, self.num_experts])

    def compute_output_shape(self, input_shape):
        return tf.TensorShape([input_shape[0], input_shape[1], self.num_experts])

    def get_config(self):
        return {**super().get_config(), "num_experts": self.num_experts,
                "kernel_initializer": keras.initializers.serialize(self.kernel_initializer)}
