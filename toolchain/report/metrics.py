"""Numbers a report shows, computed from plain arrays (no plotting, no I/O).

Agreement between device and host int8 logits: bit-exact rate (routevit's bar: the host
reference predicts the firmware byte for byte), plus the two figures ST X-CUBE-AI `validate`
reports for a target against a reference: L2 relative error ||ref - out||_2 / ||ref||_2 over
all outputs, and cosine similarity, both on dequantised logits.
"""
from __future__ import annotations

import numpy as np


def dequantize(q, scale: float, zero_point: int) -> np.ndarray:
    return (np.asarray(q, dtype=np.float64) - float(zero_point)) * float(scale)


def top1(logits) -> np.ndarray:
    """Predicted class per row; ties go to the lowest index (numpy argmax), as on the device."""
    return np.argmax(np.asarray(logits), axis=1)


def accuracy(predictions, labels) -> float:
    predictions = np.asarray(predictions)
    labels = np.asarray(labels)
    return float(np.mean(predictions == labels)) if len(labels) else float("nan")


def l2_relative_error(reference, output) -> float:
    """X-CUBE-AI's L2r: ||reference - output||_2 / ||reference||_2 over every element."""
    ref = np.asarray(reference, dtype=np.float64).ravel()
    out = np.asarray(output, dtype=np.float64).ravel()
    norm = np.linalg.norm(ref)
    diff = np.linalg.norm(ref - out)
    if norm == 0.0:
        return 0.0 if diff == 0.0 else float("inf")
    return float(diff / norm)


def cosine_similarity(reference, output) -> float:
    """Cosine of the angle between the flattened reference and output (1.0 = same direction)."""
    ref = np.asarray(reference, dtype=np.float64).ravel()
    out = np.asarray(output, dtype=np.float64).ravel()
    denom = np.linalg.norm(ref) * np.linalg.norm(out)
    if denom == 0.0:
        return 1.0 if np.array_equal(ref, out) else 0.0
    return float(np.dot(ref, out) / denom)


def agreement(reference_q, output_q, scale: float = 1.0, zero_point: int = 0) -> dict:
    """Device-vs-reference agreement of int8 logits, shape [images, classes]."""
    ref = np.asarray(reference_q)
    out = np.asarray(output_q)
    if ref.shape != out.shape:
        raise ValueError(f"logit shapes differ: reference {ref.shape}, output {out.shape}")
    exact = np.all(ref == out, axis=1)
    ref_f = dequantize(ref, scale, zero_point)
    out_f = dequantize(out, scale, zero_point)
    per_image_cos = [cosine_similarity(r, o) for r, o in zip(ref_f, out_f)]
    return {
        "images": int(len(ref)),
        "bit_exact_images": int(exact.sum()),
        "bit_exact_rate": float(exact.mean()) if len(ref) else float("nan"),
        "top1_agreement": float(np.mean(top1(ref) == top1(out))) if len(ref) else float("nan"),
        "max_abs_diff_q": int(np.max(np.abs(ref.astype(np.int64) - out.astype(np.int64)))) if ref.size else 0,
        "l2_relative_error": l2_relative_error(ref_f, out_f),
        "cosine_similarity": cosine_similarity(ref_f, out_f),
        "cosine_similarity_min_per_image": float(min(per_image_cos)) if per_image_cos else float("nan"),
        "mismatched_images": [int(i) for i in np.flatnonzero(~exact)[:50]],
    }


def float_agreement(reference_f, output_f) -> dict:
    """Agreement of (dequantised) outputs with a float reference: L2r and cosine only."""
    return {
        "l2_relative_error": l2_relative_error(reference_f, output_f),
        "cosine_similarity": cosine_similarity(reference_f, output_f),
    }


def counter_stats(counts, clock_hz: float | None) -> dict:
    """Mean/min/max of per-inference counts and their time at `clock_hz` (one per cycle)."""
    counts = np.asarray(counts, dtype=np.float64)
    if counts.size == 0:
        return {"mean": None, "min": None, "max": None, "std": None, "identical": None}
    stats = {
        "mean": float(counts.mean()),
        "min": int(counts.min()),
        "max": int(counts.max()),
        "std": float(counts.std()),
        "identical": bool(counts.min() == counts.max()),
    }
    if clock_hz:
        stats["ms_at_clock"] = {k: 1000.0 * stats[k] / clock_hz for k in ("mean", "min", "max")}
    return stats


def confusion_matrix(labels, predictions, num_classes: int) -> np.ndarray:
    """[true class, predicted class] counts."""
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    for t, p in zip(np.asarray(labels, dtype=np.int64), np.asarray(predictions, dtype=np.int64)):
        if 0 <= t < num_classes and 0 <= p < num_classes:
            matrix[t, p] += 1
    return matrix


def expert_totals(expert_counts) -> list[list[int]]:
    """Sum per-image expert counts [images][layers][experts] -> [layers][experts]."""
    if not expert_counts:
        return []
    layers = len(expert_counts[0])
    totals = []
    for layer in range(layers):
        totals.append(np.sum([np.asarray(img[layer], dtype=np.int64) for img in expert_counts],
                             axis=0).astype(int).tolist())
    return totals


def patch_grid(num_patches: int, image_hw: tuple[int, int], layer: dict | None = None) -> tuple[int, int]:
    """Rows x columns of a routed layer's patch grid (patches are row-major, design.md).

    The plan may name the grid; otherwise it follows the image's aspect ratio (the feature map
    is the image downsampled by the same factor along both axes)."""
    if layer:
        grid = layer.get("grid") or layer.get("patch_grid")
        if grid:
            return int(grid[0]), int(grid[1])
        fmap = layer.get("feature_map") or layer.get("feature_hw")
        if fmap:
            return int(fmap[0]) // 2, int(fmap[1]) // 2
    h, w = image_hw
    best = None
    for rows in range(1, num_patches + 1):
        if num_patches % rows:
            continue
        cols = num_patches // rows
        err = abs(rows / cols - h / w)
        if best is None or err < best[0]:
            best = (err, rows, cols)
    return best[1], best[2]


def assignment_from_combine(combine, num_patches: int, capacity: int, num_experts: int) -> np.ndarray:
    """Per patch: the expert that processed it (first choice), or -1 if it was dropped."""
    combine = np.asarray(combine, dtype=np.int64)[:num_patches]
    dropped = num_experts * capacity
    expert = np.where(combine >= dropped, -1, combine // max(capacity, 1))
    return expert.astype(np.int64)
