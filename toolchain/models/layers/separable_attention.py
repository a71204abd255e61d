"""The core of MobileViTV2's separable (linear) self-attention, between its two 1x1 projections."""
import tensorflow as tf
import tf_keras as keras


@keras.utils.register_keras_serializable(package="routevit")
class SeparableAttention(keras.layers.Layer):
    """qkv [B, N, P, 1+2d] -> [B, N, P, d] as ml-cvnets' LinearSelfAttention does between
    `qkv_proj` and `out_proj`:

        query, key, value = split(qkv, [1, d, d])
        scores  = softmax(query) over the N patches (separately for each pixel position P)
        context = sum over N of key * scores          -> [B, 1, P, d]
        out     = relu(value) * context

    The softmax over N runs as one SOFTMAX on the query transposed to [B, P, N] (N last, as
    TFLite's SOFTMAX needs), then transposed back: RESHAPE / TRANSPOSE / SOFTMAX / TRANSPOSE /
    RESHAPE, five int8 ops whatever P is. (An earlier lowering sliced one [B, N] row per pixel
    position: 6 P + 1 ops, 25 at 2x2 patches, each costing TFLM about 200 B of persistent arena
    for its node and tensors. The values are the same: TRANSPOSE is a copy and TFLite's SOFTMAX
    works row by row.)

    Example:
    >>> SeparableAttention(name="attn_core")(tf.zeros([1, 16, 4, 1 + 2 * 8])).shape
    TensorShape([1, 16, 4, 8])
    """

    def __init__(self, attn_dropout=0.0, **kwargs):
        super().__init__(**kwargs)
        self.attn_dropout = float(attn_dropout)
        self.dropout = keras.layers.Dropout(self.attn_dropout)

    def call(self, inputs, training=None):
        _, num_patches, patch_area, width = inputs.shape
        dim = (width - 1) // 2
        if width != 1 + 2 * dim:
            raise ValueError(f"{self.name}: last axis {width} is not 1 + 2*d")
        batch = inputs.shape[0] if inputs.shape[0] is not None else -1
        query = inputs[..., :1]
        key = inputs[..., 1:1 + dim]
        value = inputs[..., 1 + dim:]
        # softmax over N: put N last ([B, P, N]), softmax, and back to [B, N, P, 1].
        q = tf.transpose(tf.reshape(query, [batch, num_patches, patch_area]), [0, 2, 1])
        scores = tf.transpose(tf.nn.softmax(q, axis=-1), [0, 2, 1])
        scores = tf.reshape(scores, [batch, num_patches, patch_area, 1])  # [B, N, P, 1]
        scores = self.dropout(scores, training=training)
        context = tf.reduce_sum(key * scores, axis=1, keepdims=True)  # [B, 1, P, d]
        return tf.nn.relu(value) * context

    def compute_output_shape(self, input_shape):
        return tf.TensorShape(list(input_shape[:-1]) + [(input_shape[-1] - 1) // 2])

    def get_config(self):
        return {**super().get_config(), "attn_dropout": self.attn_dropout}
