"""routevit: routed MobileViTV2 to TensorFlow Lite Micro firmware for Cortex-M."""
import os

# tfmot needs tf-keras (Keras 2); this must be set before TensorFlow is imported anywhere.
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

__version__ = "0.1.0"
