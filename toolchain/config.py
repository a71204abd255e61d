"""Model, mixture-of-experts and training configuration: dataclasses + strict JSON loading.

A config file is one JSON object::

    {"name": "fmnist_routed",               # optional
     "description": "...",                  # optional
     "model": {...ModelConfig fields..., "moe": {...MoEConfig fields...} or null},
     "training": {...TrainConfig fields...}} # optional

Unknown keys and bad values raise `RoutevitError` naming the file and the key.
"""
from __future__ import annotations

import dataclasses
import itertools
import json
import math
from fractions import Fraction
from pathlib import Path
from typing import Any

from toolchain.errors import RoutevitError

# Stages of MobileViTV2 in order; `strides` has one entry per stage.
STAGES = ("stem", "layer1", "layer2", "layer3", "layer4", "layer5")
# Stages that end in a MobileViTBlockV2 (transformer layers inside).
MVIT_STAGES = ("layer3", "layer4", "layer5")
IMAGENET_STRIDES = (2, 1, 2, 2, 2, 2)
MV2_EXPAND_RATIOS = (2, 2, 2, 2, 2)  # layer1..layer5, ml-cvnets mv2_exp_mult
PATCH = 2  # MobileViTV2 unfolds into 2x2 patches
MIN_PATCHES_PER_SIDE = 2  # a MobileViT block needs at least 2x2 patches


def make_divisible(value: float, divisor: int = 8, min_value: int | None = None) -> int:
    """Round `value` to the nearest multiple of `divisor`, never more than 10% down (ml-cvnets rule)."""
    if min_value is None:
        min_value = divisor
    new_value = max(min_value, int(value + divisor / 2) // divisor * divisor)
    if new_value < 0.9 * value:
        new_value += divisor
    return int(new_value)


# A routed FFN needs a choice to make (one expert is a dense FFN: use a dense config), and the
# firmware's routing counts fit in a 64-entry table.
MIN_EXPERTS, MAX_EXPERTS = 2, 64


@dataclasses.dataclass(frozen=True)
class StageDims:
    """Channel sizes of one stage for a width multiplier (see `ModelConfig.stage_dims`)."""

    name: str
    out_channels: int
    attn_dim: int = 0  # transformer dim d (MobileViT stages only)
    ffn_dim: int = 0  # dense FFN hidden size (multiple of 16)
    depth: int = 0  # transformer layers


@dataclasses.dataclass
class MoEConfig:
    """Per-patch routed experts replacing the FFN of chosen transformer layers.

    layers: transformer layers to route, as "layer4.1" (stage.index, index from 0), "layer4.*"
      (every layer of the stage) or [4, 1] pairs; normalised to sorted "layerS.I" strings.
    capacity(N) = min(N, ceil(capacity_factor * top_k * N / num_experts)) patches per expert.
    expert_hidden: hidden size of each expert FFN; None = the dense FFN's hidden size.
    """

    layers: list = dataclasses.field(default_factory=list)
    num_experts: int = 4
    top_k: int = 1
    capacity_factor: float = 1.25
    expert_hidden: int | None = None
    balance_loss_weight: float = 0.01
    z_loss_weight: float = 0.001

    def capacity(self, num_patches: int) -> int:
        # Fraction(str(x)) keeps decimal factors like 1.1 exact, so C never depends on float rounding.
        exact = Fraction(str(self.capacity_factor)) * self.top_k * num_patches / self.num_experts
        return int(min(num_patches, math.ceil(exact)))

    def is_routed(self, stage: str, index: int) -> bool:
        return f"{stage}.{index}" in self.layers


@dataclasses.dataclass
class ModelConfig:
    """MobileViTV2 (ml-cvnets) with a width multiplier, optional per-patch experts.

    strides: [stem, layer1..layer5], each 1 or 2; ImageNet default [2,1,2,2,2,2]. A MobileViT stage
      whose stride is 1 still starts with its inverted residual (stride 1), so channel widths and
      parameter counts do not depend on the stride schedule.
    transformer_depths: transformer layers in layer3, layer4, layer5 (ml-cvnets: [2, 4, 3]).
    expand_ratios: the inverted residuals' expansion in layer1..layer5 (ml-cvnets: 2 everywhere);
      1 drops the expand conv (its output is the largest activation at camera resolution).
    norm: normalisation inside transformer blocks: "group" (GroupNorm with 1 group, ml-cvnets'
      layer_norm_2d) or "batch".
    dropout: before the classifier; ffn_dropout: inside each FFN; attn_dropout: on attention scores.
    """

    width_multiplier: float = 1.0
    num_classes: int = 1000
    image_size: int = 256
    in_channels: int = 3
    norm: str = "group"
    strides: list = dataclasses.field(default_factory=lambda: list(IMAGENET_STRIDES))
    transformer_depths: list = dataclasses.field(default_factory=lambda: [2, 4, 3])
    expand_ratios: list = dataclasses.field(default_factory=lambda: list(MV2_EXPAND_RATIOS))
    ffn_multiplier: float = 2.0
    dropout: float = 0.0
    ffn_dropout: float = 0.0
    attn_dropout: float = 0.0
    moe: MoEConfig | None = None

    # ---- derived sizes -------------------------------------------------------------------
    def stage_dims(self) -> dict[str, StageDims]:
        """Channels per stage exactly as ml-cvnets' mobilevit_v2 configuration computes them."""
        w = self.width_multiplier
        stem = make_divisible(min(64.0, max(16.0, 32 * w)), 8, min_value=16)
        dims = {
            "stem": StageDims("stem", stem),
            "layer1": StageDims("layer1", make_divisible(64 * w, 16)),
            "layer2": StageDims("layer2", make_divisible(128 * w, 8)),
        }
        for stage, out_c, attn_d, depth in zip(
            MVIT_STAGES, (256, 384, 512), (128, 192, 256), self.transformer_depths
        ):
            d = make_divisible(attn_d * w, 8)
            ffn = int((self.ffn_multiplier * d) // 16 * 16)
            dims[stage] = StageDims(stage, make_divisible(out_c * w, 8), d, ffn, int(depth))
        return dims

    def feature_sizes(self) -> dict[str, int]:
        """Side length of each stage's output feature map ('same' padding: ceil(size / stride))."""
        return _feature_sizes(self.image_size, self.strides)

    def num_patches(self, stage: str) -> int:
        side = self.feature_sizes()[stage] // PATCH
        return side * side

    def expert_hidden(self, stage: str) -> int:
        if self.moe is None or self.moe.expert_hidden is None:
            return self.stage_dims()[stage].ffn_dim
        return int(self.moe.expert_hidden)

    def routed_layer_names(self) -> list[str]:
        return list(self.moe.layers) if self.moe else []

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict, source: str = "config") -> "ModelConfig":
        return _model_from_dict(data, source)

    def validate(self, source: str = "config") -> "ModelConfig":
        _validate_model(self, source)
        return self


@dataclasses.dataclass
class AugmentationConfig:
    """Training-time augmentation (applied by the data pipeline to training images only)."""

    horizontal_flip: bool = False
    random_crop_padding: int = 0  # pad by this many pixels, then crop back at a random offset


@dataclasses.dataclass
class TrainConfig:
    """Training recipe consumed by toolchain.training."""

    batch_size: int = 64
    epochs: int = 3
    learning_rate: float = 2e-3
    weight_decay: float = 0.01
    optimizer: str = "adamw"  # adamw | adam | sgd
    lr_schedule: str = "cosine"  # cosine | constant
    warmup_epochs: float = 0.0
    label_smoothing: float = 0.0
    seed: int = 0
    max_train_examples: int | None = None  # None = the whole training split
    input_mean: list = dataclasses.field(default_factory=lambda: [0.5])
    input_std: list = dataclasses.field(default_factory=lambda: [0.5])
    augmentation: AugmentationConfig = dataclasses.field(default_factory=AugmentationConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict, source: str = "config") -> "TrainConfig":
        return _train_from_dict(data, source)


@dataclasses.dataclass
class Config:
    """A whole config file: the model and its training recipe."""

    model: ModelConfig
    training: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    name: str = ""
    description: str = ""

    def to_dict(self) -> dict:
        return {"name": self.name, "description": self.description,
                "model": self.model.to_dict(), "training": self.training.to_dict()}


# ---- loading ------------------------------------------------------------------------------
def load_config(path) -> Config:
    """Read and validate a config file; any problem -> RoutevitError naming the file and key."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise RoutevitError(f"{path}: no such file; give an existing config JSON (see examples/configs/)")
    except json.JSONDecodeError as exc:
        raise RoutevitError(f"{path}: not valid JSON ({exc}); fix the syntax")
    return config_from_dict(data, str(path))


def load_model_config(path) -> ModelConfig:
    return load_config(path).model


def config_from_dict(data: Any, source: str = "config") -> Config:
    if not isinstance(data, dict):
        raise RoutevitError(f"{source}: top level must be a JSON object with a 'model' key")
    _reject_unknown(data, {"name", "description", "model", "training"}, source, "")
    if "model" not in data:
        raise RoutevitError(f"{source}: missing key 'model'; add a \"model\": {{...}} section")
    model = _model_from_dict(data["model"], source)
    training = _train_from_dict(data.get("training") or {}, source)
    name = _typed(data, "name", str, source, "", "")
    description = _typed(data, "description", str, source, "", "")
    return Config(model=model, training=training, name=name, description=description)


def _reject_unknown(data: dict, known, source: str, prefix: str):
    for key in data:
        if key not in known:
            raise RoutevitError(
                f"{source}: unknown key '{prefix}{key}'; known keys: {', '.join(sorted(known))}")


def _typed(data, key, kinds, source, prefix, default):
    if key not in data or data[key] is None and default is None:
        return default
    value = data[key]
    kinds = kinds if isinstance(kinds, tuple) else (kinds,)
    if isinstance(value, bool) and bool not in kinds:
        ok = False
    elif float in kinds and isinstance(value, int) and not isinstance(value, bool):
        value, ok = float(value), True
    else:
        ok = isinstance(value, kinds)
    if not ok:
        names = "/".join(k.__name__ for k in kinds)
        raise RoutevitError(f"{source}: '{prefix}{key}' must be {names}, got {json.dumps(value)}")
    return value


def _model_from_dict(data: Any, source: str) -> ModelConfig:
    if not isinstance(data, dict):
        raise RoutevitError(f"{source}: 'model' must be a JSON object")
    fields = {f.name: f for f in dataclasses.fields(ModelConfig)}
    _reject_unknown(data, fields, source, "model.")
    kinds = {"width_multiplier": float, "num_classes": int, "image_size": int, "in_channels": int,
             "norm": str, "strides": list, "transformer_depths": list, "expand_ratios": list,
             "ffn_multiplier": float,
             "dropout": float, "ffn_dropout": float, "attn_dropout": float}
    kwargs = {}
    for key, kind in kinds.items():
        if key in data:
            kwargs[key] = _typed(data, key, kind, source, "model.", None)
    if data.get("moe") is not None:
        kwargs["moe"] = _moe_from_dict(data["moe"], source)
    cfg = ModelConfig(**kwargs)
    _validate_model(cfg, source)
    return cfg


def _moe_from_dict(data: Any, source: str) -> MoEConfig:
    if not isinstance(data, dict):
        raise RoutevitError(f"{source}: 'model.moe' must be a JSON object or null")
    fields = {f.name for f in dataclasses.fields(MoEConfig)}
    _reject_unknown(data, fields, source, "model.moe.")
    kinds = {"layers": list, "num_experts": int, "top_k": int, "capacity_factor": float,
             "expert_hidden": int, "balance_loss_weight": float, "z_loss_weight": float}
    kwargs = {k: _typed(data, k, kind, source, "model.moe.", None)
              for k, kind in kinds.items() if k in data and data[k] is not None}
    return MoEConfig(**kwargs)


def _train_from_dict(data: Any, source: str) -> TrainConfig:
    if not isinstance(data, dict):
        raise RoutevitError(f"{source}: 'training' must be a JSON object")
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    _reject_unknown(data, fields, source, "training.")
    kinds = {"batch_size": int, "epochs": int, "learning_rate": float, "weight_decay": float,
             "optimizer": str, "lr_schedule": str, "warmup_epochs": float,
             "label_smoothing": float, "seed": int, "max_train_examples": int,
             "input_mean": list, "input_std": list}
    kwargs = {k: _typed(data, k, kind, source, "training.", None)
              for k, kind in kinds.items() if k in data and data[k] is not None}
    if data.get("augmentation") is not None:
        aug = data["augmentation"]
        if not isinstance(aug, dict):
            raise RoutevitError(f"{source}: 'training.augmentation' must be a JSON object")
        aug_fields = {f.name for f in dataclasses.fields(AugmentationConfig)}
        _reject_unknown(aug, aug_fields, source, "training.augmentation.")
        kwargs["augmentation"] = AugmentationConfig(
            horizontal_flip=_typed(aug, "horizontal_flip", bool, source, "training.augmentation.", False),
            random_crop_padding=_typed(aug, "random_crop_padding", int, source,
                                       "training.augmentation.", 0))
        if kwargs["augmentation"].random_crop_padding < 0:
            raise RoutevitError(f"{source}: 'training.augmentation.random_crop_padding' must be >= 0")
    cfg = TrainConfig(**kwargs)
    checks = [
        ("batch_size", cfg.batch_size >= 1, "must be >= 1"),
        ("epochs", cfg.epochs >= 0, "must be >= 0"),
        ("learning_rate", cfg.learning_rate > 0, "must be > 0"),
        ("weight_decay", cfg.weight_decay >= 0, "must be >= 0"),
        ("optimizer", cfg.optimizer in ("adamw", "adam", "sgd"), "must be adamw, adam or sgd"),
        ("lr_schedule", cfg.lr_schedule in ("cosine", "constant"), "must be cosine or constant"),
        ("warmup_epochs", cfg.warmup_epochs >= 0, "must be >= 0"),
        ("label_smoothing", 0 <= cfg.label_smoothing < 1, "must be in [0, 1)"),
        ("max_train_examples", cfg.max_train_examples is None or cfg.max_train_examples >= 1,
         "must be >= 1 or null"),
        ("input_mean", len(cfg.input_mean) >= 1 and all(isinstance(v, (int, float)) for v in cfg.input_mean),
         "must be a non-empty list of numbers (one per channel, or one for all)"),
        ("input_std", len(cfg.input_std) >= 1 and all(isinstance(v, (int, float)) and v > 0
                                                      for v in cfg.input_std),
         "must be a non-empty list of positive numbers"),
    ]
    for key, ok, what in checks:
        if not ok:
            raise RoutevitError(f"{source}: 'training.{key}' {what}, got {json.dumps(getattr(cfg, key))}")
    return cfg


# ---- validation ---------------------------------------------------------------------------
def _feature_sizes(image_size: int, strides) -> dict[str, int]:
    sizes, side = {}, image_size
    for stage, stride in zip(STAGES, strides):
        side = -(-side // stride)
        sizes[stage] = side
    return sizes


def _mvit_ok(image_size: int, strides) -> str | None:
    """None if every MobileViT block gets an even map of >= 2x2 patches, else the first bad stage."""
    sizes = _feature_sizes(image_size, strides)
    for stage in MVIT_STAGES:
        side = sizes[stage]
        if side % PATCH or side // PATCH < MIN_PATCHES_PER_SIDE:
            return stage
    return None


def working_image_sizes(strides, limit: int = 6) -> list[int]:
    """Valid sizes, preferring multiples of the total stride (no odd maps on the way)."""
    valid = [s for s in range(8, 2049) if _mvit_ok(s, strides) is None]
    step = math.prod(strides)
    return ([s for s in valid if s % step == 0] or valid)[:limit]


def working_strides(image_size: int) -> list[int] | None:
    """The cheapest (most downsampling) schedule valid for `image_size`, ties -> ImageNet-like."""
    best = None
    for schedule in itertools.product((1, 2), repeat=len(STAGES)):
        if _mvit_ok(image_size, schedule) is not None:
            continue
        key = (math.prod(schedule), sum(a == b for a, b in zip(schedule, IMAGENET_STRIDES)))
        if best is None or key > best[0]:
            best = (key, list(schedule))
    return best[1] if best else None


def _validate_model(cfg: ModelConfig, source: str):
    def bad(key, what):
        raise RoutevitError(f"{source}: 'model.{key}' {what}")

    if not 0.1 <= cfg.width_multiplier <= 4.0:
        bad("width_multiplier", f"must be in [0.1, 4.0], got {cfg.width_multiplier}")
    if cfg.num_classes < 2:
        bad("num_classes", f"must be >= 2, got {cfg.num_classes}")
    if cfg.in_channels not in (1, 3):
        bad("in_channels", f"must be 1 or 3, got {cfg.in_channels}")
    if cfg.norm not in ("group", "batch"):
        bad("norm", f"must be \"group\" or \"batch\", got {json.dumps(cfg.norm)}")
    if (len(cfg.strides) != len(STAGES)
            or any(isinstance(s, bool) or s not in (1, 2) for s in cfg.strides)):
        bad("strides", f"must be 6 values of 1 or 2 for [stem, layer1..layer5], got {json.dumps(cfg.strides)}")
    if (len(cfg.transformer_depths) != 3
            or any(not isinstance(d, int) or isinstance(d, bool) or not 1 <= d <= 12
                   for d in cfg.transformer_depths)):
        bad("transformer_depths", f"must be 3 integers in 1..12 for layer3..layer5, "
                                  f"got {json.dumps(cfg.transformer_depths)}")
    if (len(cfg.expand_ratios) != 5
            or any(isinstance(r, bool) or not isinstance(r, (int, float)) or not 1 <= r <= 8
                   for r in cfg.expand_ratios)):
        bad("expand_ratios", f"must be 5 numbers in [1, 8] for layer1..layer5, got {json.dumps(cfg.expand_ratios)}")
    if not 0.5 <= cfg.ffn_multiplier <= 8:
        bad("ffn_multiplier", f"must be in [0.5, 8], got {cfg.ffn_multiplier}")
    for key in ("dropout", "ffn_dropout", "attn_dropout"):
        if not 0 <= getattr(cfg, key) < 1:
            bad(key, f"must be in [0, 1), got {getattr(cfg, key)}")
    if not 8 <= cfg.image_size <= 2048:
        bad("image_size", f"must be in [8, 2048], got {cfg.image_size}")
    stage = _mvit_ok(cfg.image_size, cfg.strides)
    if stage is not None:
        side = cfg.feature_sizes()[stage]
        sizes = working_image_sizes(cfg.strides)
        alt = working_strides(cfg.image_size)
        hint = f"image sizes that work with these strides: {sizes}"
        hint += f"; strides that work for {cfg.image_size} px: {alt}" if alt else \
            f"; no stride schedule works for {cfg.image_size} px"
        raise RoutevitError(
            f"{source}: 'model.image_size'/'model.strides': {stage}'s MobileViT block gets a "
            f"{side}x{side} map (image {cfg.image_size}, strides {list(cfg.strides)}) but needs an "
            f"even map of at least {PATCH * MIN_PATCHES_PER_SIDE}x{PATCH * MIN_PATCHES_PER_SIDE} "
            f"(2x2 patches of 2x2); {hint}")
    if any(d.ffn_dim < 16 for d in cfg.stage_dims().values() if d.attn_dim):
        bad("ffn_multiplier", "gives an FFN hidden size below 16; raise it or the width")
    if cfg.moe is not None:
        _validate_moe(cfg, source)


def _parse_layer_ref(ref, depths: dict, source: str) -> list[str]:
    def bad(what):
        raise RoutevitError(f"{source}: 'model.moe.layers' entry {json.dumps(ref)} {what}; use "
                            f"\"layer4.1\", \"layer4.*\" or [4, 1] (stage 3..5, index from 0)")

    if isinstance(ref, list):
        if len(ref) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) for v in ref):
            bad("is not a [stage, index] pair")
        stage, index = f"layer{ref[0]}", str(ref[1])
    elif isinstance(ref, str) and ref.count(".") == 1:
        stage, index = ref.split(".")
    else:
        bad("is not a layer name")
    if stage not in depths:
        bad("names no MobileViT stage")
    if index == "*":
        return [f"{stage}.{i}" for i in range(depths[stage])]
    if not index.isdigit() or int(index) >= depths[stage]:
        bad(f"is out of range ({stage} has {depths[stage]} transformer layers)")
    return [f"{stage}.{int(index)}"]


def _validate_moe(cfg: ModelConfig, source: str):
    moe = cfg.moe
    depths = dict(zip(MVIT_STAGES, cfg.transformer_depths))
    names = set()
    for ref in moe.layers:
        names.update(_parse_layer_ref(ref, depths, source))
    order = {f"{s}.{i}": (k, i) for k, s in enumerate(MVIT_STAGES) for i in range(depths[s])}
    moe.layers = sorted(names, key=order.__getitem__)

    def bad(key, what):
        raise RoutevitError(f"{source}: 'model.moe.{key}' {what}")

    if not moe.layers:
        bad("layers", "is empty; name at least one transformer layer, e.g. [\"layer4.1\"], "
                      "or set \"moe\": null for a dense model")
    if not MIN_EXPERTS <= moe.num_experts <= MAX_EXPERTS:
        bad("num_experts", f"must be in {MIN_EXPERTS}..{MAX_EXPERTS}, got {moe.num_experts}")
    if moe.top_k not in (1, 2):
        bad("top_k", f"must be 1 or 2, got {moe.top_k}")
    if not 0 < moe.capacity_factor <= 16:
        bad("capacity_factor", f"must be in (0, 16], got {moe.capacity_factor}")
    if moe.expert_hidden is not None and not 1 <= moe.expert_hidden <= 8192:
        bad("expert_hidden", f"must be in 1..8192 or null, got {moe.expert_hidden}")
    if moe.balance_loss_weight < 0:
        bad("balance_loss_weight", "must be >= 0")
    if moe.z_loss_weight < 0:
        bad("z_loss_weight", "must be >= 0")
