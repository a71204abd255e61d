"""MobileViTV2 (Apple ml-cvnets) in tf-keras, with optional per-patch routed experts.

Built from standard Keras layers (Conv2D / DepthwiseConv2D each followed directly by
BatchNormalization, Activation("swish"), Add, GlobalAveragePooling2D, Dense) plus the few small
custom layers in `toolchain.models.layers`. Layer names are stable and readable:

    stem_conv / stem_bn / stem_act
    layer2_ir1_expand_conv ... layer2_ir1_dw_conv ... layer2_ir1_project_bn, layer2_ir1_add
    layer4_mvit_local_dw_conv, layer4_mvit_local_pw_conv, layer4_mvit_unfold,
    layer4_mvit_t1_attn_norm / _attn_qkv / _attn_core / _attn_out / _attn_add,
    layer4_mvit_t1_ffn_norm / _ffn_expand / _ffn_act / _ffn_project / _ffn_add      (dense FFN)
    layer4_mvit_t1_ffn_norm / _ffn_router / _ffn_experts / _ffn_add                 (routed FFN)
    layer4_mvit_norm, layer4_mvit_fold, layer4_mvit_proj_conv / _proj_bn
    head_pool, head_dropout, head_logits

Deviation from ml-cvnets that does not change parameters: convolutions use TF "same" padding
(for stride 2 TF pads bottom/right only, PyTorch pads both sides).
"""
from __future__ import annotations

import dataclasses

import tf_keras as keras

from toolchain.config import MVIT_STAGES, ModelConfig, make_divisible
from toolchain.models.layers import (GroupNorm1, PatchFold, PatchRouter, PatchUnfold,
                                     RoutedExperts, SeparableAttention)

BN_MOMENTUM = 0.9  # PyTorch momentum 0.1
BN_EPSILON = 1e-5
MV2_EXPAND = 2  # ml-cvnets mv2_exp_mult


def build_model(cfg: ModelConfig, batch_size: int | None = None, name: str | None = None) -> keras.Model:
    """MobileViTV2 classifier for `cfg` as a functional keras.Model: image -> logits.

    batch_size: None for training (any batch), or a fixed batch (1 for int8 export: with a fixed
    batch every op has static shapes, so conversion adds no SHAPE/FILL/... ops).
    """
    cfg.validate()
    dims = cfg.stage_dims()
    sizes = cfg.feature_sizes()
    strides = dict(zip(("stem", "layer1", "layer2", *MVIT_STAGES), cfg.strides))
    image = keras.Input(shape=(cfg.image_size, cfg.image_size, cfg.in_channels),
                        batch_size=batch_size, name="image")

    x = _conv_bn(image, dims["stem"].out_channels, 3, strides["stem"], True, "stem")
    channels = dims["stem"].out_channels
    expand = dict(zip(("layer1", "layer2", *MVIT_STAGES), cfg.expand_ratios))
    for stage, blocks in (("layer1", 1), ("layer2", 2)):
        for i in range(blocks):
            x = _inverted_residual(x, channels, dims[stage].out_channels,
                                   strides[stage] if i == 0 else 1, f"{stage}_ir{i}", expand[stage])
            channels = dims[stage].out_channels
    for stage in MVIT_STAGES:
        # ml-cvnets starts a MobileViT stage with an inverted residual when its stride is 2;
        # routevit keeps it for stride 1 too so the widths (and parameters) stay the same.
        x = _inverted_residual(x, channels, dims[stage].out_channels, strides[stage], f"{stage}_ir0",
                               expand[stage])
        channels = dims[stage].out_channels
        x = _mobilevit_block(x, cfg, stage, dims[stage], sizes[stage])

    x = keras.layers.GlobalAveragePooling2D(name="head_pool")(x)
    if cfg.dropout:
        x = keras.layers.Dropout(cfg.dropout, name="head_dropout")(x)
    logits = keras.layers.Dense(cfg.num_classes, name="head_logits")(x)
    return keras.Model(image, logits, name=name or _default_name(cfg))


def _default_name(cfg: ModelConfig) -> str:
    base = f"mobilevitv2_{int(round(cfg.width_multiplier * 100)):03d}"
    return base + ("_routed" if cfg.moe else "")


def _conv_bn(x, filters, kernel, stride, act, name, depthwise=False):
    if depthwise:
        x = keras.layers.DepthwiseConv2D(kernel, stride, padding="same", use_bias=False,
                                         name=f"{name}_conv")(x)
    else:
        x = keras.layers.Conv2D(filters, kernel, stride, padding="same", use_bias=False,
                                name=f"{name}_conv")(x)
    x = keras.layers.BatchNormalization(momentum=BN_MOMENTUM, epsilon=BN_EPSILON, name=f"{name}_bn")(x)
    if act:
        x = keras.layers.Activation("swish", name=f"{name}_act")(x)
    return x


def _inverted_residual(x, in_channels, out_channels, stride, name, expand_ratio=MV2_EXPAND):
    """MobileNetV2 block as ml-cvnets' InvertedResidual (expand `expand_ratio`, 2 in ml-cvnets;
    SiLU, BN after every conv). With ratio 1 there is no expand conv, as in ml-cvnets: at camera
    resolution that conv's output is the largest tensor of the network."""
    hidden = make_divisible(int(round(in_channels * expand_ratio)), 8)
    y = x
    if expand_ratio != 1:
        y = _conv_bn(x, hidden, 1, 1, True, f"{name}_expand")
    else:
        hidden = in_channels
    y = _conv_bn(y, hidden, 3, stride, True, f"{name}_dw", depthwise=True)
    y = _conv_bn(y, out_channels, 1, 1, False, f"{name}_project")
    if stride == 1 and in_channels == out_channels:
        y = keras.layers.Add(name=f"{name}_add")([x, y])
    return y


def _norm(cfg, name):
    if cfg.norm == "batch":
        return keras.layers.BatchNormalization(momentum=BN_MOMENTUM, epsilon=BN_EPSILON, name=name)
    return GroupNorm1(name=name)


def _mobilevit_block(x, cfg: ModelConfig, stage: str, dims, side: int):
    """MobileViTBlockV2: local rep -> unfold -> n x (attention, FFN) -> norm -> fold -> 1x1 + BN."""
    name = f"{stage}_mvit"
    d = dims.attn_dim
    y = _conv_bn(x, None, 3, 1, True, f"{name}_local_dw", depthwise=True)
    y = keras.layers.Conv2D(d, 1, use_bias=False, name=f"{name}_local_pw_conv")(y)
    y = PatchUnfold(name=f"{name}_unfold")(y)  # [B, N, P, d]
    num_patches = y.shape[1]
    for t in range(dims.depth):
        prefix = f"{name}_t{t}"
        a = _norm(cfg, f"{prefix}_attn_norm")(y)
        a = keras.layers.Conv2D(1 + 2 * d, 1, name=f"{prefix}_attn_qkv")(a)
        a = SeparableAttention(cfg.attn_dropout, name=f"{prefix}_attn_core")(a)
        a = keras.layers.Conv2D(d, 1, name=f"{prefix}_attn_out")(a)
        y = keras.layers.Add(name=f"{prefix}_attn_add")([y, a])

        f_in = _norm(cfg, f"{prefix}_ffn_norm")(y)
        if cfg.moe is not None and cfg.moe.is_routed(stage, t):
            moe = cfg.moe
            logits = PatchRouter(moe.num_experts, name=f"{prefix}_ffn_router")(f_in)
            f = RoutedExperts(
                num_experts=moe.num_experts, expert_hidden=cfg.expert_hidden(stage),
                capacity=moe.capacity(num_patches), top_k=moe.top_k,
                balance_loss_weight=moe.balance_loss_weight, z_loss_weight=moe.z_loss_weight,
                ffn_dropout=cfg.ffn_dropout, name=f"{prefix}_ffn_experts")([f_in, logits])
        else:
            f = keras.layers.Conv2D(dims.ffn_dim, 1, name=f"{prefix}_ffn_expand")(f_in)
            f = keras.layers.Activation("swish", name=f"{prefix}_ffn_act")(f)
            if cfg.ffn_dropout:
                f = keras.layers.Dropout(cfg.ffn_dropout, name=f"{prefix}_ffn_dropout")(f)
            f = keras.layers.Conv2D(d, 1, name=f"{prefix}_ffn_project")(f)
        y = keras.layers.Add(name=f"{prefix}_ffn_add")([y, f])
    y = _norm(cfg, f"{name}_norm")(y)
    y = PatchFold(side, side, name=f"{name}_fold")(y)
    return _conv_bn(y, dims.out_channels, 1, 1, False, f"{name}_proj")


# ---- what the trainer and exporter need to know about routed layers ---------------------------
@dataclasses.dataclass(frozen=True)
class RoutedLayerInfo:
    """One routed transformer FFN: its layers and static sizes (plan.json `routed_layers`)."""

    index: int
    block: str  # "layer4.1"
    router: str  # PatchRouter layer name, e.g. "layer4_mvit_t1_ffn_router"
    experts: str  # RoutedExperts layer name, e.g. "layer4_mvit_t1_ffn_experts"
    norm: str  # the norm layer feeding both (x_norm)
    add: str  # the Add layer that adds the experts' output to the residual stream
    num_patches: int
    patch_area: int
    dim: int
    num_experts: int
    top_k: int
    capacity: int
    expert_hidden: int


def routed_layers(model: keras.Model) -> list[RoutedExperts]:
    """The model's RoutedExperts layers in graph order.

    Each has `expert_counts` (float32 [E] variable: patches processed per expert while
    training=True), `choices_seen` (patch choices made), `reset_counts()`, and static
    `num_patches`, `patch_area`, `dim`, `num_experts`, `top_k`, `capacity`, `expert_hidden`.
    Its balance loss is reported as metric `<layer name>_balance`.
    """
    return [layer for layer in model.layers if isinstance(layer, RoutedExperts)]


def routed_layer_info(model: keras.Model) -> list[RoutedLayerInfo]:
    infos = []
    for index, layer in enumerate(routed_layers(model)):
        prefix = layer.name[: -len("_experts")]
        stage, t = prefix.split("_mvit_t")
        infos.append(RoutedLayerInfo(
            index=index, block=f"{stage}.{int(t.split('_')[0])}", router=f"{prefix}_router",
            experts=layer.name, norm=f"{prefix}_norm", add=f"{prefix}_add",
            num_patches=layer.num_patches, patch_area=layer.patch_area, dim=layer.dim,
            num_experts=layer.num_experts, top_k=layer.top_k, capacity=layer.capacity,
            expert_hidden=layer.expert_hidden))
    return infos
