"""Custom Keras layers of routevit's MobileViTV2 (one public class per module)."""
from toolchain.models.layers.group_norm import GroupNorm1
from toolchain.models.layers.patch_fold import PatchFold
from toolchain.models.layers.patch_router import PatchRouter
from toolchain.models.layers.patch_unfold import PatchUnfold
from toolchain.models.layers.routed_experts import RoutedExperts
from toolchain.models.layers.separable_attention import SeparableAttention

# For keras.models.load_model / tfmot.quantize_scope.
CUSTOM_OBJECTS = {cls.__name__: cls for cls in (
    GroupNorm1, PatchFold, PatchRouter, PatchUnfold, RoutedExperts, SeparableAttention)}

__all__ = ["GroupNorm1", "PatchFold", "PatchRouter", "PatchUnfold", "RoutedExperts",
           "SeparableAttention", "CUSTOM_OBJECTS"]
