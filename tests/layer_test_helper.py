"""One shared check for every custom Keras layer: config round trip, build, a training step."""
from __future__ import annotations

import numpy as np
import tensorflow as tf
import tf_keras as keras


def _as_tensors(inputs):
    if isinstance(inputs, (list, tuple)):
        return [tf.convert_to_tensor(v) for v in inputs]
    return tf.convert_to_tensor(inputs)


def run_layer_test(layer_cls, init_kwargs: dict, inputs, expected_output_shape=None,
                   grad_wrt_inputs: tuple = (0,)):
    """Check a custom layer the way a user relies on it, and return its output.

    - every constructor argument comes back from get_config(); from_config() rebuilds an equal
      layer, also through keras.layers.serialize/deserialize (registered name);
    - the layer builds on `inputs` and gives `expected_output_shape`;
    - the clone with the same weights gives the same output;
    - one training step: the loss mean(y^2) + layer.losses has a finite gradient for every
      trainable weight (and for the float inputs listed in `grad_wrt_inputs`), some of it
      non-zero, and an SGD step changes the weights.
    """
    layer = layer_cls(**init_kwargs)
    config = layer.get_config()
    for key in init_kwargs:
        assert key in config, f"{layer_cls.__name__}.get_config() misses constructor arg {key!r}"
    clone = layer_cls.from_config(config)
    assert clone.get_config() == config
    revived = keras.layers.deserialize(keras.layers.serialize(layer))
    assert type(revived) is layer_cls and revived.get_config() == config

    inputs = _as_tensors(inputs)
    output = layer(inputs, training=False)
    if expected_output_shape is not None:
        assert tuple(output.shape) == tuple(expected_output_shape)
    clone(inputs, training=False)
    clone.set_weights(layer.get_weights())
    np.testing.assert_allclose(clone(inputs, training=False).numpy(), output.numpy(), rtol=1e-5, atol=1e-5)

    input_list = inputs if isinstance(inputs, list) else [inputs]
    watched = [input_list[i] for i in grad_wrt_inputs if input_list[i].dtype.is_floating]
    before = [w.numpy().copy() for w in layer.trainable_weights]
    with tf.GradientTape() as tape:
        tape.watch(watched)
        result = layer(inputs, training=True)
        loss = tf.reduce_mean(tf.square(result)) + tf.add_n([tf.constant(0.0)] + list(layer.losses))
    grads = tape.gradient(loss, layer.trainable_weights + watched)
    assert all(g is not None for g in grads), "a weight or input got no gradient"
    grads = [tf.convert_to_tensor(g) for g in grads]
    assert all(bool(tf.reduce_all(tf.math.is_finite(g))) for g in grads)
    assert any(float(tf.reduce_max(tf.abs(g))) > 0 for g in grads), "all gradients are zero"
    if layer.trainable_weights:
        keras.optimizers.SGD(0.1).apply_gradients(zip(grads[: len(layer.trainable_weights)],
                                                      layer.trainable_weights))
        changed = [not np.array_equal(b, w.numpy()) for b, w in zip(before, layer.trainable_weights)]
        assert any(changed), "an SGD step changed no weight"
    return output
