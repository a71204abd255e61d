"""routevit's tf-keras MobileViTV2 with per-patch routed experts.

    from toolchain.config import load_config
    from toolchain.models import build_model, routed_layers
    model = build_model(load_config("examples/configs/fmnist_routed.json").model)
"""
from toolchain.models.layers import CUSTOM_OBJECTS
from toolchain.models.mobilevit_v2 import (RoutedLayerInfo, build_model, routed_layer_info,
                                           routed_layers)

__all__ = ["build_model", "routed_layers", "routed_layer_info", "RoutedLayerInfo", "CUSTOM_OBJECTS"]
