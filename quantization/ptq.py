"""Post-training quantization baseline: the float model, converted with calibration only.

PTQ needs no training: `routevit quantize RUN --method ptq` stores the float weights and the
calibration images, and `routevit export` converts the float segments with the representative
dataset (every activation range calibrated, weights quantized per channel by the converter).
`routevit export` of a QAT QRUN also converts this baseline into EXP/baselines/ptq/ so
`routevit evaluate` can put PTQ beside QAT.
"""
from __future__ import annotations


def ptq_metrics(float_meta: dict) -> dict:
    """What a PTQ QRUN records: nothing is trained, so only the source run's figures."""
    return {"method": "ptq", "float_test_accuracy": float_meta.get("test_accuracy")}
