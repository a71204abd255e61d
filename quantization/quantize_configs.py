"""tfmot QuantizeConfigs for routevit's custom layers, and which config each layer gets.

What is fake-quantized during QAT (8 bit, tfmot's default scheme for standard layers):
- Conv2D / DepthwiseConv2D (+ folded BatchNormalization) / Dense: weights per channel (conv)
  or per tensor (dense), activations after the layer (tfmot default registry).
- Activation("swish"), Add, GlobalAveragePooling2D: output (tfmot default registry).
- PatchRouter: kernel per tensor, output (the router logits that leave a segment).
- RoutedExperts: every expert's two kernels per tensor, the layer output.
- GroupNorm1, SeparableAttention: the layer output.
- PatchUnfold, PatchFold, Dropout: nothing (they move values, do not change them).
Tensors *inside* GroupNorm1 / SeparableAttention / RoutedExperts (mean, rsqrt, softmax, gathers,
the experts' hidden SiLU) are not fake-quantized in training; the TFLite converter calibrates
them with the representative dataset at export (mixed QAT + calibration).
"""
from __future__ import annotations

import tensorflow_model_optimization as tfmot
import tf_keras as keras

_Q = tfmot.quantization.keras


def _activation_quantizer():
    return _Q.quantizers.MovingAverageQuantizer(num_bits=8, per_axis=False, symmetric=False,
                                                narrow_range=False)


def _weight_quantizer(per_axis: bool):
    # Symmetric, narrow range [-127, 127]: what TFLite's int8 kernels expect for weights.
    return _Q.quantizers.LastValueQuantizer(num_bits=8, per_axis=per_axis, symmetric=True,
                                            narrow_range=True)


class OutputQuantizeConfig(_Q.QuantizeConfig):
    """Fake-quantize only the layer's output (per tensor, asymmetric int8).

    Example:
    >>> with tfmot.quantization.keras.quantize_scope(CUSTOM_QUANTIZE_OBJECTS):  # doctest: +SKIP
    ...     annotated = tfmot.quantization.keras.quantize_annotate_layer(layer, OutputQuantizeConfig())
    """

    def get_weights_and_quantizers(self, layer):
        return []

    def get_activations_and_quantizers(self, layer):
        return []

    def set_quantize_weights(self, layer, quantize_weights):
        pass

    def set_quantize_activations(self, layer, quantize_activations):
        pass

    def get_output_quantizers(self, layer):
        return [_activation_quantizer()]

    def get_config(self):
        return {}


class PassThroughQuantizeConfig(OutputQuantizeConfig):
    """No quantizer at all: for layers that only move values (unfold, fold, dropout)."""

    def get_output_quantizers(self, layer):
        return []


class PatchRouterQuantizeConfig(OutputQuantizeConfig):
    """PatchRouter: kernel per tensor (as tfmot's Dense), output fake-quantized."""

    def get_weights_and_quantizers(self, layer):
        return [(layer.kernel, _weight_quantizer(per_axis=False))]

    def set_quantize_weights(self, layer, quantize_weights):
        (layer.kernel,) = quantize_weights


class RoutedExpertsQuantizeConfig(OutputQuantizeConfig):
    """RoutedExperts: both kernels of every expert per tensor, output fake-quantized."""

    def get_weights_and_quantizers(self, layer):
        pairs = []
        for up_kernel, _, down_kernel, _ in layer.expert_kernels:
            # Per tensor: a per-axis fake-quant on a matmul kernel makes the converter's weight
            # transpose fail ("tfl.transpose op has mismatched quantized axes"); tfmot's own
            # Dense is per tensor for the same reason.
            pairs.append((up_kernel, _weight_quantizer(per_axis=False)))
            pairs.append((down_kernel, _weight_quantizer(per_axis=False)))
        return pairs

    def set_quantize_weights(self, layer, quantize_weights):
        kernels = []
        for e, (_, up_bias, _, down_bias) in enumerate(layer.expert_kernels):
            kernels.append((quantize_weights[2 * e], up_bias, quantize_weights[2 * e + 1], down_bias))
        layer.expert_kernels = kernels


CUSTOM_QUANTIZE_OBJECTS = {cls.__name__: cls for cls in (
    OutputQuantizeConfig, PassThroughQuantizeConfig, PatchRouterQuantizeConfig,
    RoutedExpertsQuantizeConfig)}


def config_for(layer, registry):
    """The QuantizeConfig for `layer`: None = tfmot's default registry handles it;
    False = leave the layer unannotated (model inputs)."""
    from toolchain.models.layers import (GroupNorm1, PatchFold, PatchRouter, PatchUnfold,
                                         RoutedExperts, SeparableAttention)

    if isinstance(layer, keras.layers.InputLayer):
        return False
    if isinstance(layer, RoutedExperts):
        return RoutedExpertsQuantizeConfig()
    if isinstance(layer, PatchRouter):
        return PatchRouterQuantizeConfig()
    if isinstance(layer, (GroupNorm1, SeparableAttention)):
        return OutputQuantizeConfig()
    if isinstance(layer, (PatchUnfold, PatchFold, keras.layers.Dropout)):
        return PassThroughQuantizeConfig()
    if isinstance(layer, keras.layers.BatchNormalization) or registry.supports(layer):
        return None
    return OutputQuantizeConfig()
