"""Quantization-aware training of a routevit model with tfmot (8-bit default scheme).

    from quantization.qat import quantize_for_training
    qat_model = quantize_for_training(float_model)   # fake-quant wrappers, BN folded by tfmot
    qat_model.compile(...); qat_model.fit(...)

`quantize_for_training` annotates every layer (tfmot's registry for standard layers, routevit's
QuantizeConfigs in `quantization.quantize_configs` for the custom ones) and applies tfmot's
default 8-bit transforms (Conv + BatchNorm folding, activation fusing).
"""
from __future__ import annotations

import tensorflow_model_optimization as tfmot
import tf_keras as keras

from quantization.quantize_configs import CUSTOM_QUANTIZE_OBJECTS, config_for

_Q = tfmot.quantization.keras


def quantize_scope():
    """tfmot.quantize_scope with routevit's layers and QuantizeConfigs (to clone/load models)."""
    from toolchain.models import CUSTOM_OBJECTS

    return _Q.quantize_scope({**CUSTOM_OBJECTS, **CUSTOM_QUANTIZE_OBJECTS})


def annotate(model: keras.Model) -> keras.Model:
    """Wrap each layer of `model` in QuantizeAnnotate with its QuantizeConfig (weights kept)."""
    from tensorflow_model_optimization.python.core.quantization.keras.default_8bit import (
        default_8bit_quantize_registry)

    registry = default_8bit_quantize_registry.Default8BitQuantizeRegistry()

    def wrap(layer):
        config = config_for(layer, registry)
        if config is False:
            return layer
        return _Q.quantize_annotate_layer(layer, config)

    with quantize_scope():
        annotated = keras.models.clone_model(model, clone_function=wrap)
    annotated.set_weights(model.get_weights())
    return annotated


def quantize_for_training(model: keras.Model) -> keras.Model:
    """The QAT model of a float routevit model (same inputs/outputs, fake-quant wrappers)."""
    with quantize_scope():
        return _Q.quantize_apply(annotate(model))


def is_quantized(model: keras.Model) -> bool:
    """True when `model` holds tfmot QuantizeWrapper / QuantizeLayer layers."""
    from tensorflow_model_optimization.python.core.quantization.keras import (quantize_layer,
                                                                              quantize_wrapper)

    return any(isinstance(layer, (quantize_wrapper.QuantizeWrapper, quantize_layer.QuantizeLayer))
               for layer in model.layers)


def fine_tune(qat_model, dataset, config, normalization, *, epochs: int, learning_rate: float,
              batch_size: int, limit_train: int | None, limit_eval: int | None, seed: int) -> dict:
    """QAT fine-tuning: `epochs` passes over the training split at `learning_rate` (cosine to 0),
    then the fake-quant model's val and test accuracy (in-graph float routing).

    Returns {"history": [...], "val_accuracy", "test_accuracy", "test_examples"}.
    """
    from toolchain.training.progress import EpochProgressBar

    mc, tc = config.model, config.training
    keras.utils.set_random_seed(seed)
    n_train = dataset.num_examples("train", limit_train)
    batch_size = min(batch_size, n_train)
    steps = max(1, n_train // batch_size)
    schedule = keras.optimizers.schedules.CosineDecay(learning_rate, decay_steps=steps * epochs)
    qat_model.compile(optimizer=keras.optimizers.Adam(schedule),
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                      metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")])
    common = dict(image_size=mc.image_size, channels=mc.in_channels, seed=seed,
                  normalization=normalization)
    history = []
    for epoch in range(epochs):
        train_ds = dataset.pipeline("train", batch_size=batch_size, training=True, epoch=epoch,
                                    limit=limit_train, flip=tc.augmentation.horizontal_flip,
                                    pad=tc.augmentation.random_crop_padding, **common)
        bar = EpochProgressBar(steps, f"QAT epoch {epoch + 1}/{epochs}")
        logs = qat_model.fit(train_ds, epochs=1, verbose=0, callbacks=[bar]).history
        history.append({"epoch": epoch + 1, "loss": float(logs["loss"][-1]),
                        "accuracy": float(logs["accuracy"][-1])})
    result = {"history": history}
    for split in ("val", "test"):
        ds = dataset.pipeline(split, batch_size=256, limit=limit_eval, **common)
        scores = qat_model.evaluate(ds, verbose=0, return_dict=True)
        result[f"{split}_accuracy"] = float(scores["accuracy"])
        result[f"{split}_examples"] = dataset.num_examples(split, limit_eval)
    return result
