"""routevit quantization: QAT (tensorflow-model-optimization), PTQ baseline, int8 conversion."""
import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
