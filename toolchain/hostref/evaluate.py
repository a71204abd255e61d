"""`routevit evaluate EXP --host`: float vs int8 (QAT or PTQ, and the PTQ baseline) on a test split.

Float top-1: the float model stored in EXP/reference (in-graph float routing, as trained).
int8 top-1: the host reference of EXP (and of EXP/baselines/ptq when present), images quantized
with the plan's pixel table, routing in integer numpy between TFLM segments.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

from toolchain.errors import RoutevitError


def _float_predictions(exp: Path, pixels: np.ndarray, normalization) -> np.ndarray:
    from quantization.qrun import CONFIG, FLOAT_WEIGHTS
    from toolchain.config import load_config
    from toolchain.models import build_model

    ref = exp / "reference"
    if not (ref / CONFIG).is_file() or not (ref / FLOAT_WEIGHTS).is_file():
        raise RoutevitError(f"{ref}: float reference missing; run `routevit export` again")
    config = load_config(ref / CONFIG)
    model = build_model(config.model)
    model.load_weights(str(ref / FLOAT_WEIGHTS))
    preds = []
    for start in range(0, len(pixels), 256):
        batch = normalization.apply(pixels[start:start + 256])
        preds.append(np.argmax(model(batch, training=False).numpy(), axis=-1))
    return np.concatenate(preds) if preds else np.zeros((0,), np.int64)


def _host_pass(ref, pixels, labels, float_pred, progress: bool) -> dict:
    """Top-1, agreement and expert use of one host reference (`HostReference`) on the images."""
    from tqdm import tqdm

    plan = ref.plan
    label = f"int8 {plan.method}"
    routed = plan.routed_layers
    counts = [np.zeros(r.num_experts, np.int64) for r in routed]
    preds = np.zeros(len(pixels), np.int64)
    started = time.monotonic()
    for i in tqdm(range(len(pixels)), desc=label, unit="img", file=sys.stderr, disable=None if progress else True,
                  leave=False):
        result = ref.run(ref.quantize_pixels(pixels[i]))
        preds[i] = int(np.argmax(result.logits))
        for j, routing in enumerate(result.routing):
            counts[j] += routing.counts
    n = len(pixels)
    experts = {}
    for r, c in zip(routed, counts):
        choices = n * r.choices
        total = int(c.sum())
        experts[r.label] = {"share": [float(x) / total if total else 0.0 for x in c],
                              "patches": [int(x) for x in c],
                              "dropped": float(choices - total) / choices if choices else 0.0}
    return {
        "method": plan.method,
        "top1": float(np.mean(preds == labels)) if n else None,
        "agreement_with_float": float(np.mean(preds == float_pred)) if n else None,
        "expert_share": experts,
        "arena_bytes": [s.arena_bytes for s in plan.segments],
        "arena": [s.arena.to_dict() if s.arena else None for s in plan.segments],
        "memory": plan.memory.to_dict() if plan.memory else None,
        "segment_bytes": [s.bytes for s in plan.segments],
        "seconds_per_image": (time.monotonic() - started) / n if n else None,
        "predictions": preds,
    }


def evaluate_host(exp, data: str, limit: int | None = None, split: str = "test",
                  progress: bool = True) -> dict:
    from toolchain.data import Normalization, load_dataset
    from toolchain.export import PTQ_BASELINE
    from toolchain.hostref import HostReference
    from toolchain.plan import PLAN

    exp = Path(exp)
    primary_ref = HostReference(exp)  # reads and checks EXP/plan.json (toolchain.plan.read_plan)
    plan = primary_ref.plan
    shape = plan.input.shape
    dataset = load_dataset(data)
    if dataset.num_classes != plan.num_classes:
        raise RoutevitError(f"dataset {data}: {dataset.num_classes} classes, the model in {exp} has "
                            f"{plan.num_classes}; use the dataset it was trained on")
    pixels, labels = dataset.numpy_images(split, limit, image_size=shape[1], channels=shape[3])
    norm = plan.input.normalization
    if norm is None:
        raise RoutevitError(f"{plan.path}: model.input has no normalization; export again "
                            "(`routevit export QRUN --out EXP`)")
    normalization = Normalization.from_lists(norm.mean, norm.std, shape[3])
    float_pred = _float_predictions(exp, pixels, normalization)
    result = {"target": str(exp), "backend": "host", "data": data, "split": split,
              "examples": int(len(labels)),
              "float": {"top1": float(np.mean(float_pred == labels)) if len(labels) else None}}
    variants = [("int8", primary_ref)]
    if (exp / PTQ_BASELINE / PLAN).is_file():
        variants.append(("ptq_baseline", HostReference(exp / PTQ_BASELINE)))
    for key, ref in variants:
        result[key] = _host_pass(ref, pixels, labels, float_pred, progress)
    primary = result["int8"]
    if primary["method"] == "ptq":
        result["ptq"] = {k: v for k, v in primary.items()}
    else:
        result["qat"] = primary
        if "ptq_baseline" in result:
            result["ptq"] = result["ptq_baseline"]
    for entry in (result.get("int8"), result.get("ptq_baseline")):
        if entry:
            entry.pop("predictions")
    result.pop("ptq_baseline", None)
    if "ptq" in result and result["ptq"] is not primary:
        result["ptq"].pop("predictions", None)
    return result


def format_table(result: dict) -> str:
    """Human summary: one accuracy table, expert use, arena per segment."""
    lines = [f"{result['examples']} {result['split']} images of {result['data']}",
             f"{'model':<14}{'top-1':>8}{'agree w/ float':>16}"]
    lines.append(f"{'float':<14}{result['float']['top1'] * 100:>7.2f}%{'':>16}")
    for key in ("ptq", "qat"):
        if key in result:
            r = result[key]
            lines.append(f"{key + ' int8':<14}{r['top1'] * 100:>7.2f}%{r['agreement_with_float'] * 100:>15.2f}%")
    primary = result["int8"]
    for name, share in primary["expert_share"].items():
        lines.append(f"experts {name} ({primary['method']}): "
                     + " ".join(f"{s * 100:.1f}%" for s in share["share"])
                     + f", dropped {share['dropped'] * 100:.1f}%")
    lines.append("arena per segment: " + ", ".join(f"{a:,} B" for a in primary["arena_bytes"])
                 + f"; staging {primary['memory']['staging_bytes_max']:,} B")
    return "\n".join(lines)
