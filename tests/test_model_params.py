"""MobileViTV2 matches ml-cvnets' parameter counts exactly; config validation; static shapes."""
import json

import numpy as np
import pytest
import tf_keras as keras

import toolchain  # noqa: F401
from toolchain.config import ModelConfig, config_from_dict, load_config
from toolchain.errors import RoutevitError
from toolchain.models import build_model, routed_layer_info, routed_layers
from toolchain.models.layers import GroupNorm1, PatchRouter, RoutedExperts

# Measured from apple/ml-cvnets' mobilevit_v2 (trainable parameters).
REFERENCE = {(1.0, 1000): 4_901_841, (1.0, 60): 4_419_621, (0.75, 1000): 2_866_009,
             (0.75, 60): 2_504_109, (0.5, 1000): 1_370_593, (0.5, 60): 1_129_013}
# 32 px with this schedule is the smallest input whose MobileViT maps all hold 2x2 patches;
# input size and strides change no parameter.
SMALL = {"image_size": 32, "strides": [2, 1, 2, 2, 1, 1]}


def trainable(model):
    return int(sum(np.prod(w.shape) for w in model.trainable_weights))


@pytest.mark.parametrize("width,classes", sorted(REFERENCE))
def test_trainable_params_equal_ml_cvnets(width, classes):
    keras.backend.clear_session()
    model = build_model(ModelConfig(width_multiplier=width, num_classes=classes, **SMALL))
    assert trainable(model) == REFERENCE[(width, classes)]


def test_ssw60_routed_config_has_at_most_a_quarter_of_mobilevitv2_100():
    keras.backend.clear_session()
    cfg = load_config("examples/configs/ssw60_routed.json").model
    cfg.image_size, cfg.strides = 64, [2, 1, 2, 2, 2, 1]  # same parameters, quicker build
    model = build_model(cfg)
    assert trainable(model) <= REFERENCE[(1.0, 60)] / 4
    infos = routed_layer_info(model)
    assert [i.block for i in infos] == [f"layer4.{i}" for i in range(4)] + [f"layer5.{i}" for i in range(3)]


def test_routed_layers_replace_ffn_and_are_described():
    keras.backend.clear_session()
    cfg = load_config("examples/configs/fmnist_routed.json").model
    model = build_model(cfg)
    (first, second) = routed_layer_info(model)
    assert first.block == "layer3.0" and second.block == "layer3.1"
    assert isinstance(model.get_layer(first.router), PatchRouter)
    assert isinstance(model.get_layer(first.experts), RoutedExperts)
    assert isinstance(model.get_layer(first.norm), GroupNorm1)
    assert first.num_patches == 16 and first.patch_area == 4 and first.capacity == 5
    assert first.capacity < first.num_patches
    names = {layer.name for layer in model.layers}
    assert "layer3_mvit_t0_ffn_expand" not in names and "layer4_mvit_t0_ffn_expand" in names
    assert [layer.name for layer in routed_layers(model)] == [first.experts, second.experts]


def test_fixed_batch_model_matches_and_has_static_shapes():
    keras.backend.clear_session()
    cfg = load_config("examples/configs/fmnist_routed.json").model
    model = build_model(cfg)
    fixed = build_model(cfg, batch_size=1)
    fixed.set_weights(model.get_weights())
    image = np.random.default_rng(0).normal(size=(1, 32, 32, 1)).astype(np.float32)
    np.testing.assert_allclose(fixed(image).numpy(), model(image).numpy(), rtol=1e-5, atol=1e-5)
    assert all(None not in layer.output_shape for layer in fixed.layers
               if not isinstance(layer.output_shape, list))


def test_dense_fixed_batch_converts_to_tflm_ops_only():
    import collections

    import tensorflow as tf

    keras.backend.clear_session()
    cfg = load_config("examples/configs/fmnist_dense.json").model
    cfg.transformer_depths = [1, 1, 1]  # every op kind, a smaller graph to convert
    model = build_model(cfg, batch_size=1)
    flatbuffer = tf.lite.TFLiteConverter.from_keras_model(model).convert()
    interpreter = tf.lite.Interpreter(model_content=flatbuffer)
    names = [op["op_name"] for op in interpreter._get_ops_details()]
    ops = set(names)
    # no dynamic-shape ops, no BATCH_MATMUL
    assert not ops & {"SHAPE", "FILL", "PACK", "REDUCE_PROD", "BATCH_MATMUL"}, ops
    assert ops <= {"CONV_2D", "DEPTHWISE_CONV_2D", "ADD", "MUL", "SUB", "LOGISTIC", "MEAN", "RSQRT",
                   "SQUARED_DIFFERENCE", "RESHAPE", "STRIDED_SLICE", "SOFTMAX", "CONCATENATION",
                   "SUM", "RELU", "SPACE_TO_DEPTH", "DEPTH_TO_SPACE", "FULLY_CONNECTED", "TRANSPOSE"}, ops
    # each attention's softmax over N: one SOFTMAX between two TRANSPOSEs (SeparableAttention)
    assert names.count("SOFTMAX") == 3 and names.count("TRANSPOSE") == 6, collections.Counter(names)


def bad_config(tmp_path, model_changes=None, extra=None, name="bad.json"):
    model = json.loads(open("examples/configs/fmnist_routed.json").read())
    model["model"].update(model_changes or {})
    model.update(extra or {})
    path = tmp_path / name
    path.write_text(json.dumps(model))
    return path


@pytest.mark.parametrize("changes,extra,words", [
    ({"widht_multiplier": 1.0}, None, ["bad.json", "model.widht_multiplier"]),
    (None, {"trainin": {}}, ["bad.json", "'trainin'"]),
    ({"in_channels": 2}, None, ["bad.json", "model.in_channels"]),
    ({"norm": "layer"}, None, ["model.norm"]),
    ({"strides": [2, 1, 2]}, None, ["model.strides"]),
    ({"expand_ratios": [2, 2, 2]}, None, ["model.expand_ratios", "layer1..layer5"]),
    ({"expand_ratios": [0.5, 2, 2, 2, 2]}, None, ["model.expand_ratios", "[1, 8]"]),
    ({"moe": {"layers": ["layer3.5"]}}, None, ["model.moe.layers", "layer3.5"]),
    ({"moe": {"layers": ["layer3.0"], "top_k": 3}}, None, ["model.moe.top_k"]),
    ({"moe": {"layers": ["layer3.0"], "experts": 4}}, None, ["model.moe.experts"]),
    ({"num_classes": "ten"}, None, ["model.num_classes", "int"]),
    (None, {"training": {"batch_size": 0}}, ["training.batch_size"]),
    (None, {"training": {"augmentation": {"flip": True}}}, ["training.augmentation.flip"]),
])
def test_bad_configs_name_file_and_key(tmp_path, changes, extra, words):
    with pytest.raises(RoutevitError) as err:
        load_config(bad_config(tmp_path, changes, extra))
    for word in words:
        assert word in str(err.value)


def test_image_too_small_for_mobilevit_blocks_says_stage_and_what_works():
    with pytest.raises(RoutevitError) as err:
        config_from_dict({"model": {"image_size": 28, "strides": [2, 1, 2, 2, 2, 2]}}, "cfg.json")
    message = str(err.value)
    # 28 -> 14 -> 14 -> 7 -> 4 -> 2: layer4's map holds a single patch
    assert "cfg.json" in message and "layer4" in message and "2x2 map" in message
    assert "image sizes that work with these strides: [128, 192, 256," in message
    # the suggested schedule does work
    suggested = json.loads(message.split("strides that work for 28 px: ")[1])
    config_from_dict({"model": {"image_size": 28, "strides": suggested}}, "cfg.json")


def test_moe_layer_names_wildcards_and_pairs_normalise():
    cfg = config_from_dict({"model": {"moe": {"layers": [[5, 2], "layer4.*", "layer3.1"]}}}).model
    assert cfg.moe.layers == ["layer3.1", "layer4.0", "layer4.1", "layer4.2", "layer4.3", "layer5.2"]
    assert cfg.moe.capacity(64) == 20 and cfg.moe.capacity(3) == 1


def test_model_config_round_trip_rebuilds_the_same_network():
    from toolchain.models import CUSTOM_OBJECTS

    keras.backend.clear_session()
    cfg = load_config("examples/configs/fmnist_routed.json").model
    model = build_model(cfg)
    rebuilt = keras.Model.from_config(model.get_config(), custom_objects=CUSTOM_OBJECTS)
    rebuilt.set_weights(model.get_weights())
    image = np.random.default_rng(1).normal(size=(2, 32, 32, 1)).astype(np.float32)
    np.testing.assert_allclose(rebuilt(image).numpy(), model(image).numpy(), rtol=1e-5, atol=1e-5)


def test_batch_norm_option_in_transformer_blocks():
    keras.backend.clear_session()
    cfg = load_config("examples/configs/fmnist_dense.json").model
    cfg.norm = "batch"
    model = build_model(cfg)
    assert isinstance(model.get_layer("layer3_mvit_t0_attn_norm"), keras.layers.BatchNormalization)
    assert not any(isinstance(layer, GroupNorm1) for layer in model.layers)


def test_expand_ratio_1_drops_the_expand_conv_and_its_largest_activation():
    """ml-cvnets' InvertedResidual without exp_1x1 at ratio 1: the F746 128 px config's layer1
    goes straight to its depthwise conv, so the 64x64 expand output never exists."""
    keras.backend.clear_session()
    cfg = load_config("examples/configs/ssw60_f746_128.json").model
    assert cfg.expand_ratios == [1, 2, 2, 2, 2]
    model = build_model(cfg)
    names = {layer.name for layer in model.layers}
    assert "layer1_ir0_expand_conv" not in names and "layer1_ir0_dw_conv" in names
    assert "layer2_ir0_expand_conv" in names
    cfg.expand_ratios = [2, 2, 2, 2, 2]
    keras.backend.clear_session()
    widened = build_model(cfg)
    # the expand conv (16 -> 32, no bias) and its BN; the depthwise conv, its BN and the project
    # conv over 32 channels instead of 16
    assert trainable(widened) - trainable(model) == 16 * 32 + 2 * 32 + 16 * 9 + 2 * 16 + 16 * 16
