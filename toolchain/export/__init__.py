"""`routevit export QRUN --out EXP`: int8 TFLite Micro segments + plan.json.

    EXP/
      plan.json               docs/design.md "Export: segments and plan.json"
      segment_<k>.tflite      int8 segments (batch 1, static shapes, int32 dispatch/combine inputs)
      reference/              the float model (config.json, float_weights.h5): float accuracy
      baselines/ptq/          for a QAT QRUN: the PTQ baseline, same layout (plan.json + segments)

Usage:
    >>> from toolchain.export import export
    >>> plan = export("runs/q_qat", "runs/exp")   # doctest: +SKIP
"""
from __future__ import annotations

import shutil
from pathlib import Path

from toolchain.errors import RoutevitError

REFERENCE = "reference"
PTQ_BASELINE = "baselines/ptq"


def export(qrun, out, *, ptq_baseline: bool = True, calibration_limit: int | None = None,
           progress: bool = True) -> dict:
    """Write EXP from QRUN atomically; returns the plan as written (plan.json's dict; read it
    typed with `toolchain.plan.read_plan(out)`)."""
    import toolchain
    from quantization import calibration
    from quantization.qrun import (CONFIG, FLOAT_WEIGHTS, load_export_model, load_float_model,
                                   read_meta)
    from toolchain.data import Normalization
    from toolchain.fsutil import atomic_output_dir

    qrun = Path(qrun)
    meta = read_meta(qrun)
    config, meta, model = load_export_model(qrun)
    pixels = calibration.load(qrun)
    if calibration_limit:
        pixels = pixels[:calibration_limit]
    normalization = Normalization.from_lists(meta["normalization"]["mean"],
                                             meta["normalization"]["std"], config.model.in_channels)
    images = normalization.apply(pixels)
    variants = [("", meta["method"], model)]
    if ptq_baseline and meta["method"] == "qat":
        variants.append((PTQ_BASELINE, "ptq", load_float_model(qrun)[1]))
    with atomic_output_dir(Path(out)) as tmp:
        plan = None
        for sub, method, variant_model in variants:
            folder = tmp / sub if sub else tmp
            folder.mkdir(parents=True, exist_ok=True)
            label = "segment" if not sub else f"{method} baseline segment"
            p = _export_variant(variant_model, config, meta, images, folder, method, label,
                                progress, toolchain.__version__, qrun)
            if not sub:
                plan = p
        (tmp / REFERENCE).mkdir()
        shutil.copyfile(qrun / CONFIG, tmp / REFERENCE / CONFIG)
        shutil.copyfile(qrun / FLOAT_WEIGHTS, tmp / REFERENCE / FLOAT_WEIGHTS)
    return plan


def _export_variant(model, config, meta, images, folder: Path, method: str, label: str,
                    progress: bool, version: str, qrun: Path, provenance: dict | None = None) -> dict:
    """Segments + plan.json of `model` into `folder`. `provenance`: extra keys for the plan's
    `generated_by` (`routevit prune` says what it pruned)."""
    from toolchain.export.segments import convert_model, sha256
    from toolchain.models import routed_layer_info
    from toolchain.plan import FORMAT, pixel_lut, plan_from_dict, write_plan

    if method == "qat":
        from quantization.qat import is_quantized

        if not is_quantized(model):
            raise RoutevitError(f"{qrun}: method qat but the model has no fake-quant layers; "
                                "run `routevit quantize` again")
    sm, segments = convert_model(model, images, label, progress, pin_boundaries=method == "qat")

    router_out = {}
    for seg in segments:
        for i, out in enumerate(seg.outputs):
            router_out[out["name"]] = (seg.index, i)
    infos = routed_layer_info(_UnwrappedLayers(model))
    routed = []
    moe = config.model.moe
    for info in infos:
        segment, output = router_out[info.router]
        routed.append({
            "index": info.index, "name": info.block, "router_layer": info.router,
            "experts_layer": info.experts, "router": {"segment": segment, "output": output},
            "segment": info.index + 1, "num_patches": info.num_patches,
            "patch_area": info.patch_area, "dim": info.dim, "num_experts": info.num_experts,
            "top_k": info.top_k, "capacity_factor": moe.capacity_factor if moe else None,
            "capacity": info.capacity, "expert_hidden": info.expert_hidden})
    seg_entries = []
    for seg in segments:
        file = f"segment_{seg.index}.tflite"
        (folder / file).write_bytes(seg.flatbuffer)
        seg_entries.append({
            "index": seg.index, "file": file, "sha256": sha256(seg.flatbuffer),
            "bytes": len(seg.flatbuffer), "ops": seg.ops, "arena_bytes": seg.arena["total"],
            "persistent_bytes": seg.arena["persistent"],
            "nonpersistent_bytes": seg.arena["nonpersistent"], "arena": seg.arena, "inputs": seg.inputs, "outputs": seg.outputs})
    image_entry = next(e for e in segments[0].inputs if e["source"]["kind"] == "image")
    logits_seg = sm.logits[0]
    staging = staging_bytes(seg_entries)
    mc = config.model
    plan = {
        "format": FORMAT,
        "routevit_version": version,
        "generated_by": {"command": "routevit export", "qrun": str(qrun.resolve()), "method": method,
                         "source_run": meta.get("source_run"),
                         "calibration_images": int(len(images)), **(provenance or {})},
        "model": {
            "config": mc.to_dict(), "num_classes": mc.num_classes,
            "class_names": meta.get("class_names"),
            "input": {"shape": image_entry["shape"], "dtype": "int8",
                      "scale": image_entry["scale"], "zero_point": image_entry["zero_point"],
                      "normalization": meta["normalization"],
                      "pixel_lut": pixel_lut(meta["normalization"], image_entry["scale"],
                                             image_entry["zero_point"], mc.in_channels)}},
        "quantization": {"method": method},
        "segments": seg_entries,
        "routed_layers": routed,
        "logits": {"segment": logits_seg,
                   "output": [o["name"] for o in segments[logits_seg].outputs].index("logits")},
        "memory": {
            "arena_bytes_max": max(s["arena_bytes"] for s in seg_entries),
            "shared_arena_bytes": (max(s["arena"]["nonpersistent"] for s in seg_entries)
                                   + sum(s["arena"]["persistent"] for s in seg_entries)),
            "staging_bytes": staging,
            "staging_bytes_max": max(staging) if staging else 0,
            "measured_on": "tflite-micro wheel, host x86_64 (RecordingMicroAllocator)"},
    }
    write_plan(folder, plan_from_dict(plan, folder / "plan.json"))  # validated against the segments
    return plan


def staging_bytes(segments: list) -> list:
    """Bytes that must survive each boundary k -> k+1 (outputs of segments <= k still needed by
    segments > k, plus the int32 dispatch/combine of the next segment), from plan.json segment dicts."""
    import numpy as np

    result = []
    for k in range(len(segments) - 1):
        total = 0
        needed = set()
        for later in segments[k + 1:]:
            for entry in later["inputs"]:
                src = entry["source"]
                if src["kind"] == "segment_output" and src["segment"] <= k:
                    needed.add((src["segment"], src["output"]))
        for seg, out in needed:
            shape = segments[seg]["outputs"][out]["shape"]
            total += int(np.prod(shape))
        for entry in segments[k + 1]["inputs"]:
            if entry["source"]["kind"] in ("dispatch", "combine"):
                total += 4 * int(np.prod(entry["shape"]))
        result.append(total)
    return result


class _UnwrappedLayers:
    """routed_layer_info() over a QAT model: it looks at the layers inside tfmot's wrappers."""

    def __init__(self, model):
        from toolchain.export.graph import _inner

        self.layers = [_inner(layer) for layer in model.layers]
