"""A report of the host reference alone: what `routevit demo` writes when no firmware could be
built (no TFLM tree and no way to get one)."""
from __future__ import annotations

from pathlib import Path

from toolchain.emulate.hostside import device_routing_maps, float_predictions, host_reference, open_host_reference
from toolchain.emulate.inputs import load_test_images
from toolchain.plan import read_plan


def host_only_report(export_dir: Path, *, data: str, limit: int, out: Path, notes: list[str] | None = None,
                     progress: bool = True) -> dict:
    """A report of the host reference alone (what ran when no firmware could be built)."""
    from toolchain.report import write_report

    plan = read_plan(export_dir)
    images_u8, labels, class_names = load_test_images(data, plan, limit)
    host = host_reference(open_host_reference(Path(export_dir)), images_u8, progress=progress)
    notes = list(notes or [])
    predictions, why_not = float_predictions(Path(export_dir), plan, images_u8)
    if why_not:
        notes.append(why_not)
    logits = plan.logits_entry
    record = {
        "backend": "host", "target": "host reference (tflite-micro wheel)", "board": None, "dataset": data,
        "project": str(Path(export_dir).resolve()), "class_names": class_names, "labels": labels,
        "logits_quant": {"scale": logits.scale, "zero_point": logits.zero_point},
        "routed_layers": [layer.to_dict() for layer in plan.routed_layers],
        "host": {"logits": host["logits"], "expert_counts": host.get("expert_counts")},
        "routing_maps": device_routing_maps(None, host, plan, images_u8, labels),
        "notes": notes,
    }
    if predictions is not None:
        record["float"] = {"predictions": predictions}
    return write_report(record, Path(out))

