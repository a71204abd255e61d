"""plan.json (docs/design.md "Export: segments and plan.json"): write, read, check against segments."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from toolchain.errors import RoutevitError
from toolchain.manifest import read_manifest

FORMAT = "routevit-plan/1"
PLAN = "plan.json"


def pixel_lut(normalization: dict, scale: float, zero_point: int, channels: int) -> list:
    """int8 input value for each uint8 pixel value, per channel: [channels][256].

    q = clamp(floor(((p / 255 - mean) / std) / scale + 0.5) + zero_point, -128, 127), computed in
    float64. The host reference and the firmware use this table, so they quantize identically.
    """
    pixels = np.arange(256, dtype=np.float64) / 255.0
    table = []
    for c in range(channels):
        mean = normalization["mean"][c if len(normalization["mean"]) > 1 else 0]
        std = normalization["std"][c if len(normalization["std"]) > 1 else 0]
        q = np.floor(((pixels - mean) / std) / scale + 0.5) + zero_point
        table.append(np.clip(q, -128, 127).astype(int).tolist())
    return table


def staging_bytes(segments: list) -> list:
    """Bytes that must survive each boundary k -> k+1 (outputs of segments <= k still needed by
    segments > k, plus the int32 dispatch/combine of the next segment)."""
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


def write(folder: Path, plan: dict) -> None:
    (Path(folder) / PLAN).write_text(json.dumps(plan, indent=2) + "\n")


def read(folder) -> dict:
    """plan.json of an export folder, checked against its segment files (sha256, size, tensors)."""
    folder = Path(folder)
    path = folder / PLAN
    if not folder.is_dir():
        raise RoutevitError(f"{folder}: no such folder; give the --out folder of `routevit export`")
    if not path.is_file():
        raise RoutevitError(f"{path}: missing; give the --out folder of `routevit export`")
    plan = read_manifest(path, "run `routevit export` again", FORMAT)
    for seg in plan["segments"]:
        check_segment_file(folder, seg)
    check_routing(plan, path)
    return plan


def check_segment_file(folder: Path, seg: dict) -> bytes:
    """The segment's bytes, after checking them against its plan entry."""
    from quantization.convert import signature_io, tensor_quant

    file = Path(folder) / seg["file"]
    where = f"{Path(folder) / PLAN}: segment {seg['index']}"
    if not file.is_file():
        raise RoutevitError(f"{where}: file {seg['file']} missing; run `routevit export` again")
    data = file.read_bytes()
    if len(data) != seg["bytes"] or hashlib.sha256(data).hexdigest() != seg["sha256"]:
        raise RoutevitError(f"{where}: {seg['file']} does not match the plan (sha256/size differ); "
                            "the plan and its segments come from different exports: export again")
    try:
        sig_in, sig_out = signature_io(data)
    except Exception:
        raise RoutevitError(f"{where}: {seg['file']} is not a TFLite model; export again") from None
    for kind, sig, entries in (("input", sig_in, seg["inputs"]), ("output", sig_out, seg["outputs"])):
        if len(sig) != len(entries):
            raise RoutevitError(f"{where}: plan lists {len(entries)} {kind}s, {seg['file']} has "
                                f"{len(sig)}; export again")
        for _, tensor, position in sig:
            shape, dtype, scale, zero = tensor_quant(data, tensor)
            entry = entries[position]
            if shape != entry["shape"] or np.dtype(dtype).name != entry["dtype"] or (
                    entry.get("scale") is not None and (
                        zero != entry["zero_point"]
                        or abs(scale - entry["scale"]) > 1e-6 * abs(entry["scale"]))):
                raise RoutevitError(f"{where}: {kind} {position} ({entry['name']}) is {shape} "
                                    f"{np.dtype(dtype).name} scale={scale} zero_point={zero} in "
                                    f"{seg['file']} but the plan says {entry['shape']} "
                                    f"{entry['dtype']} scale={entry.get('scale')} "
                                    f"zero_point={entry.get('zero_point')}; export again")
    return data


def check_routing(plan: dict, path) -> None:
    """Every input's source exists earlier; dispatch/combine sizes match E*C and k*N."""
    segs = plan["segments"]
    routed = plan["routed_layers"]
    for seg in segs:
        for entry in seg["inputs"]:
            src = entry["source"]
            kind = src["kind"]
            bad = None
            if kind == "segment_output":
                if not 0 <= src["segment"] < seg["index"] or src["output"] >= len(segs[src["segment"]]["outputs"]):
                    bad = "comes from a segment output that does not exist before it"
                elif segs[src["segment"]]["outputs"][src["output"]]["shape"] != entry["shape"]:
                    bad = "has a different shape from the output it comes from"
            elif kind in ("dispatch", "combine"):
                r = src["routed_layer"]
                if not 0 <= r < len(routed):
                    bad = "names a routed layer that does not exist"
                else:
                    layer = routed[r]
                    want = (layer["num_experts"] * layer["capacity"] if kind == "dispatch"
                            else layer["top_k"] * layer["num_patches"])
                    if entry["shape"] != [want]:
                        bad = f"has shape {entry['shape']}, routed layer {r} needs [{want}]"
                    if layer["router"]["segment"] >= seg["index"]:
                        bad = "is routed from a router that runs later"
            elif kind != "image":
                bad = f"has unknown source kind {kind!r}"
            if bad:
                raise RoutevitError(f"{path}: segment {seg['index']} input {entry['name']} {bad}; "
                                    "export again")
