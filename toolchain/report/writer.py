"""Turn an evaluation record into report.json + report.md + PNGs, written atomically.

The record (a plain dict, built by `toolchain.emulate.evaluation` or by any caller that ran
something) holds raw per-image results; this module derives every number from them:

    {"backend": "qemu", "target": "qemu mps2-an386", "board": "mps2-an386", "clock_hz": 25e6,
     "counter_kind": 0, "dataset": "fashion-mnist", "project": "PROJ", "class_names": [...],
     "labels": [N], "logits_quant": {"scale": s, "zero_point": z},
     "routed_layers": [plan.json routed_layers],
     "device": {"logits": [N][K] int8, "counts": [N], "expert_counts": [N][R][E]} | None,
     "host": {"logits": [N][K] int8, "expert_counts": [N][R][E]} | None,
     "float": {"logits": [N][K] float} | {"accuracy": a} | None,
     "routing_maps": [{"index": i, "image": HxWxC uint8, "label": l,
                       "layers": [{"assignment": [N], "source": "device"}]}],
     "memory": {...}, "hello": {...}, "notes": [str], "wall_seconds": s}
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from toolchain import __version__
from toolchain.fsutil import atomic_output_dir
from toolchain.report import figures, metrics

COUNTER_NAMES = {
    0: "instructions (SysTick under QEMU -icount shift=0)",
    1: "cycles (DWT->CYCCNT)",
    2: "instructions (Renode ExecutedInstructions)",
}
COUNTER_SHORT = {0: "instructions", 1: "cycles", 2: "instructions"}


def _json_safe(value):
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, np.ndarray):
        return _json_safe(value.tolist())
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        value = float(value)
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def build_report(record: dict) -> dict:
    """The report's numbers (what report.json holds, minus figure names)."""
    labels = np.asarray(record.get("labels", []), dtype=np.int64)
    class_names = list(record.get("class_names") or [])
    num_classes = len(class_names)
    quant = record.get("logits_quant") or {"scale": 1.0, "zero_point": 0}
    device = record.get("device")
    host = record.get("host")
    float_ref = record.get("float")
    routed_layers = record.get("routed_layers") or []
    counter_kind = record.get("counter_kind")
    clock_hz = record.get("clock_hz")

    report = {
        "format": "routevit-report/1",
        "routevit_version": __version__,
        "backend": record.get("backend"),
        "target": record.get("target"),
        "board": record.get("board"),
        "project": record.get("project"),
        "dataset": record.get("dataset"),
        "images": int(len(labels)),
        "class_names": class_names,
        "hello": record.get("hello"),
        "wall_seconds": record.get("wall_seconds"),
        # {"complete": bool, "images_done", "images_requested", "stopped_by"?, "resumed_images"?, "jobs"?}
        "progress": record.get("progress"),
        "notes": list(record.get("notes") or []),
    }
    if record.get("profile"):
        # per-op profile of the device (toolchain/emulate/profile.py profile_table)
        report["profile"] = record["profile"]

    accuracy = {"device": None, "host_int8": None, "float": None}
    predictions = {}
    if device:
        predictions["device"] = metrics.top1(device["logits"])
        accuracy["device"] = metrics.accuracy(predictions["device"], labels)
    if host:
        predictions["host_int8"] = metrics.top1(host["logits"])
        accuracy["host_int8"] = metrics.accuracy(predictions["host_int8"], labels)
    if float_ref:
        if float_ref.get("logits") is not None:
            predictions["float"] = metrics.top1(float_ref["logits"])
            accuracy["float"] = metrics.accuracy(predictions["float"], labels)
        elif float_ref.get("predictions") is not None:
            predictions["float"] = np.asarray(float_ref["predictions"], dtype=np.int64)
            accuracy["float"] = metrics.accuracy(predictions["float"], labels)
        elif float_ref.get("accuracy") is not None:
            accuracy["float"] = float(float_ref["accuracy"])
            report["notes"].append(
                f"float top-1 is {float_ref.get('source', 'given')}, not from these images")
    report["top1"] = accuracy

    if "float" in predictions and ("device" in predictions or "host_int8" in predictions):
        key = "device" if "device" in predictions else "host_int8"
        report["top1_agreement_with_float"] = {
            "subject": key, "rate": float(np.mean(predictions[key] == predictions["float"]))}
    if device and host:
        report["agreement_device_vs_host"] = metrics.agreement(
            host["logits"], device["logits"], quant["scale"], quant["zero_point"])
        report["expert_counts_match_host"] = _same_counts(device.get("expert_counts"), host.get("expert_counts"))
    if float_ref and float_ref.get("logits") is not None:
        subject = device or host
        if subject:
            out = metrics.dequantize(subject["logits"], quant["scale"], quant["zero_point"])
            report["agreement_vs_float"] = {"subject": "device" if device else "host_int8",
                                            **metrics.float_agreement(float_ref["logits"], out)}

    if device and device.get("counts") is not None:
        report["counter"] = {
            "kind": counter_kind,
            "what": COUNTER_NAMES.get(counter_kind, "counter"),
            "clock_hz": clock_hz,
            **metrics.counter_stats(device["counts"], clock_hz),
        }
        if counter_kind in (0, 2):
            report["counter"]["ms_note"] = ("estimated as instructions / clock, i.e. one instruction per "
                                            "cycle; real cores differ (wait states, multi-cycle "
                                            "instructions, dual issue on M7)")

    source = device or host
    if source and source.get("expert_counts") and routed_layers:
        totals = metrics.expert_totals(source["expert_counts"])
        layers = []
        for idx, layer in enumerate(routed_layers):
            if idx >= len(totals):
                break
            counts = totals[idx]
            processed = sum(counts)
            patches = int(layer.get("num_patches", 0)) * len(labels) * int(layer.get("top_k", 1))
            layers.append({
                "index": idx, "name": layer.get("name", f"routed layer {idx}"),
                "num_experts": layer.get("num_experts"), "capacity": layer.get("capacity"),
                "num_patches": layer.get("num_patches"), "top_k": layer.get("top_k", 1),
                "patches_per_expert": counts,
                "patches_per_expert_per_image": [c / max(len(labels), 1) for c in counts],
                "dropped_patches": max(patches - processed, 0) if patches else None,
                "drop_rate": (max(patches - processed, 0) / patches) if patches else None,
            })
        report["experts"] = {"source": "device" if device else "host_int8", "layers": layers}

    if num_classes and predictions:
        key = "device" if "device" in predictions else next(iter(predictions))
        report["confusion_matrix"] = {
            "source": key,
            "matrix": metrics.confusion_matrix(labels, predictions[key], num_classes).tolist(),
        }
    report["routing_maps"] = [
        {"index": int(m.get("index", i)), "label": m.get("label"),
         "layers": [{"source": l.get("source"), "assignment": [int(a) for a in l["assignment"]]} for l in m["layers"]]}
        for i, m in enumerate(record.get("routing_maps") or [])]
    report["memory"] = record.get("memory") or {}
    report["per_image"] = _per_image(record, predictions, labels)
    return _json_safe(report)


def _same_counts(a, b) -> bool | None:
    if a is None or b is None:
        return None
    return bool(np.array_equal(np.asarray(a, dtype=np.int64), np.asarray(b, dtype=np.int64)))


def _per_image(record, predictions, labels) -> list[dict]:
    device = record.get("device") or {}
    host = record.get("host") or {}
    # A partial run holds a subset of the test images: rows name their index in the test split.
    indices = record.get("image_indices") or range(len(labels))
    rows = []
    for i, label in enumerate(labels):
        row = {"index": int(indices[i]), "label": int(label)}
        for key, preds in predictions.items():
            row[f"pred_{key}"] = int(preds[i])
        if device.get("logits") is not None:
            row["device_logits"] = [int(v) for v in device["logits"][i]]
        if device.get("counts") is not None:
            row["counter"] = int(device["counts"][i])
        if device.get("expert_counts") is not None:
            row["device_expert_counts"] = device["expert_counts"][i]
        if host.get("logits") is not None:
            row["host_logits"] = [int(v) for v in host["logits"][i]]
            if device.get("logits") is not None:
                row["bit_exact"] = bool(np.array_equal(device["logits"][i], host["logits"][i]))
        rows.append(row)
    return rows


def _fmt_pct(value) -> str:
    return "-" if value is None else f"{100.0 * value:.2f}%"


def _fmt_int(value) -> str:
    return "-" if value is None else f"{int(round(value)):,}"


def render_markdown(report: dict, figures_written: dict[str, str]) -> str:
    lines = [f"<!-- generated by routevit {report['routevit_version']} from {report.get('project') or '-'} "
             f"({report.get('backend')}, {report.get('dataset')}) -->",
             f"# routevit evaluation: {report.get('target') or report.get('backend')}", ""]
    progress = report.get("progress") or {}
    if progress and not progress.get("complete", True):
        lines += [f"**PARTIAL: {progress['images_done']} of {progress['images_requested']} images** finished "
                  f"before the run stopped ({progress.get('stopped_by', '?')}). Run the same command with "
                  "`--resume` to continue from here.", ""]
    lines += [f"- board: `{report.get('board')}`", f"- backend: {report.get('backend')}",
              f"- dataset: {report.get('dataset')}, {report['images']} test images",
              f"- project: `{report.get('project')}`"]
    if report.get("wall_seconds") is not None:
        lines.append(f"- wall time: {report['wall_seconds']:.1f} s")
    lines += ["", "## Accuracy (top-1)", "", "| device | host int8 | float |", "|---|---|---|",
              "| {} | {} | {} |".format(*(_fmt_pct(report["top1"].get(k)) for k in ("device", "host_int8", "float"))),
              ""]
    with_float = report.get("top1_agreement_with_float")
    if with_float:
        lines += [f"Top-1 agreement of {with_float['subject']} with the float model: {_fmt_pct(with_float['rate'])}", ""]
    agreement = report.get("agreement_device_vs_host")
    if agreement:
        lines += ["## Device vs host reference (int8 logits)", "",
                  "| bit-exact images | top-1 agreement | max abs diff (int8 steps) | L2 relative error | cosine similarity |",
                  "|---|---|---|---|---|",
                  f"| {agreement['bit_exact_images']}/{agreement['images']} ({_fmt_pct(agreement['bit_exact_rate'])}) "
                  f"| {_fmt_pct(agreement['top1_agreement'])} | {agreement['max_abs_diff_q']} "
                  f"| {agreement['l2_relative_error']:.3g} | {agreement['cosine_similarity']:.6f} |", ""]
        if agreement["mismatched_images"]:
            lines += [f"Images whose logits differ: {agreement['mismatched_images']}", ""]
        if report.get("expert_counts_match_host") is not None:
            lines += [f"Expert counts identical to the host's routing: "
                      f"{'yes' if report['expert_counts_match_host'] else 'NO'}", ""]
    vs_float = report.get("agreement_vs_float")
    if vs_float:
        lines += [f"Against the float model ({vs_float['subject']}): L2 relative error "
                  f"{vs_float['l2_relative_error']:.3g}, cosine similarity {vs_float['cosine_similarity']:.4f}", ""]
    counter = report.get("counter")
    if counter and counter.get("mean") is not None:
        lines += [f"## Cost per inference: {counter['what']}", "",
                  "| mean | min | max | identical for every image |", "|---|---|---|---|",
                  f"| {_fmt_int(counter['mean'])} | {_fmt_int(counter['min'])} | {_fmt_int(counter['max'])} "
                  f"| {'yes' if counter['identical'] else 'no'} |", ""]
        if counter.get("ms_at_clock"):
            ms = counter["ms_at_clock"]
            lines += [f"At {counter['clock_hz'] / 1e6:g} MHz: {ms['mean']:.2f} ms mean "
                      f"({ms['min']:.2f}-{ms['max']:.2f} ms). {counter.get('ms_note', '')}".rstrip(), ""]
    memory = report.get("memory") or {}
    if memory:
        lines += ["## Memory", "", "| item | bytes |", "|---|---|"]
        for key, value in _flatten(memory):
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                lines.append(f"| {key} | {int(value):,} |")
        lines.append("")
    experts = report.get("experts")
    if experts:
        lines += [f"## Patches per expert ({experts['source']}, summed over {report['images']} images)", "",
                  "| routed layer | patches | experts x capacity | per expert | dropped |", "|---|---|---|---|---|"]
        for layer in experts["layers"]:
            dropped = "-" if layer["dropped_patches"] is None else \
                f"{layer['dropped_patches']} ({_fmt_pct(layer['drop_rate'])})"
            lines.append(f"| {layer['name']} | {layer['num_patches']} | {layer['num_experts']} x {layer['capacity']} "
                         f"| {' / '.join(str(c) for c in layer['patches_per_expert'])} | {dropped} |")
        lines.append("")
    if report.get("profile"):
        lines += profile_markdown(report["profile"], COUNTER_SHORT.get((report.get("hello") or {}).get("counter_kind"),
                                                                       "instructions"))
        if "profile" in figures_written:
            lines += [f"![Where the instructions go]({figures_written['profile']})", ""]
    for title, key in (("Accuracy and cost", "accuracy"), ("Routing map", "routing_map"),
                       ("Patches per expert", "experts"), ("Confusion matrix", "confusion")):
        if key in figures_written:
            lines += [f"## {title}", "", f"![{title}]({figures_written[key]})", ""]
    if report.get("notes"):
        lines += ["## Notes", ""] + [f"- {n}" for n in report["notes"]] + [""]
    return "\n".join(lines)


def _ipm(value) -> str:
    return "-" if value is None else f"{value:.2f}"


def profile_markdown(profile: dict, unit: str = "instructions", top_ops: int = 25) -> list[str]:
    """The report's per-op profile section (also used by benchmarks/profile_fmnist.py)."""
    totals, agree = profile["totals"], profile["agreement"]
    diff = "-" if agree["relative_difference"] is None else f"{100 * agree['relative_difference']:+.3f}%"
    lines = [f"## Per-op profile (image {profile.get('image', 0)}, {unit})", "",
             f"{totals['ops']} ops; {totals['instructions']:,} {unit} in the profile for {totals['macs']:,} MACs: "
             f"**{_ipm(totals['instructions_per_mac'])} {unit} per MAC** overall, "
             f"{_ipm(totals['mac_op_instructions_per_mac'])} in the MAC ops alone. {profile['mac_rule']}.", "",
             "| | " + unit + " |", "|---|---|",
             f"| whole inference (INFER, profiler off) | {_fmt_int(agree['unprofiled_counter'])} |",
             f"| profile total (ops + TFLM interpreter + staging + routing) | {_fmt_int(agree['profile_total'])} |",
             f"| profile total vs INFER | {diff} |",
             f"| INFER_PROFILE whole count (profiler on) | {_fmt_int(agree['profiled_counter'])} |",
             f"| profiler overhead (INFER_PROFILE - INFER) | {_fmt_int(agree['profiler_overhead'])} |", ""]
    lines += ["### By op type", "", f"| op | ops | {unit} | share | MACs | {unit}/MAC | elements |",
              "|---|---|---|---|---|---|---|"]
    for g in profile["by_op"]:
        lines.append(f"| {g['op']} | {g['ops']} | {g['instructions']:,} | {100 * (g['share'] or 0):.1f}% "
                     f"| {g['macs']:,} | {_ipm(g['instructions_per_mac'])} | {g['elements']:,} |")
    lines += ["", "### By stage", "", f"| stage | ops | {unit} | share | MACs | {unit}/MAC |", "|---|---|---|---|---|---|"]
    for g in profile["by_stage"]:
        lines.append(f"| {g['stage']} | {g['ops']} | {g['instructions']:,} | {100 * (g['share'] or 0):.1f}% "
                     f"| {g['macs']:,} | {_ipm(g['instructions_per_mac'])} |")
    lines += ["", f"### Top {top_ops} layers", "", f"| layer | ops | {unit} | share | MACs | {unit}/MAC |",
              "|---|---|---|---|---|---|"]
    for g in profile["by_layer"][:top_ops]:
        lines.append(f"| {g['layer']} | {g['ops']} | {g['instructions']:,} | {100 * (g['share'] or 0):.1f}% "
                     f"| {g['macs']:,} | {_ipm(g['instructions_per_mac'])} |")
    rows = sorted(profile["rows"], key=lambda r: -r["instructions"])[:top_ops]
    lines += ["", f"### Top {top_ops} ops (all {totals['ops']} in report.json `profile.rows`)", "",
              f"| segment | op | type | layer | output | {unit} | MACs | {unit}/MAC |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['segment']} | {r['op_index']} | {r['op']} | {r['layer']} | "
                     f"{'x'.join(map(str, r['output_shape']))} | {r['instructions']:,} | {r['macs']:,} "
                     f"| {_ipm(r['instructions_per_mac'])} |")
    lines.append("")
    return lines


def _flatten(mapping: dict, prefix: str = ""):
    for key, value in mapping.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            yield from _flatten(value, name + ".")
        else:
            yield name, value


def _draw_figures(out: Path, report: dict, record: dict) -> dict[str, str]:
    written = {}
    device = record.get("device") or {}
    counter_kind = record.get("counter_kind")
    accuracies = {"device": report["top1"]["device"], "host int8": report["top1"]["host_int8"],
                  "float": report["top1"]["float"]}
    if any(v is not None for v in accuracies.values()):
        written["accuracy"] = figures.accuracy_figure(
            out / "accuracy.png", accuracies, device.get("counts"),
            COUNTER_SHORT.get(counter_kind, "counter"), record.get("clock_hz"))
    routed_layers = record.get("routed_layers") or []
    layer_names = [l.get("name", f"routed layer {i}") for i, l in enumerate(routed_layers)]
    experts = report.get("experts")
    if experts and experts["layers"]:
        capacity_totals = [int(l.get("capacity") or 0) * report["images"] for l in routed_layers]
        written["experts"] = figures.experts_figure(
            out / "experts.png", [l["patches_per_expert"] for l in experts["layers"]], layer_names,
            capacity_totals, report["images"])
    maps = record.get("routing_maps") or []
    if maps and routed_layers:
        prepared = []
        preds = {row["index"]: row.get("pred_device", row.get("pred_host_int8")) for row in report["per_image"]}
        for entry in maps:
            image = np.asarray(entry["image"])
            layers = []
            for idx, layer in enumerate(entry["layers"]):
                plan_layer = routed_layers[idx] if idx < len(routed_layers) else {}
                n = len(layer["assignment"])
                layers.append({"grid": list(metrics.patch_grid(n, image.shape[:2], plan_layer)),
                               "assignment": layer["assignment"], "source": layer.get("source", "")})
            prepared.append({"image": image, "label": entry.get("label"),
                             "prediction": preds.get(entry.get("index")), "layers": layers})
        written["routing_map"] = figures.routing_map_figure(
            out / "routing_map.png", prepared, layer_names,
            [int(l.get("num_experts", 0)) for l in routed_layers], record.get("class_names") or [])
    profile = report.get("profile")
    if profile:
        written["profile"] = figures.profile_figure(out / "profile.png", profile["by_op"], profile["by_layer"],
                                                    COUNTER_SHORT.get(counter_kind, "instructions"))
    confusion = report.get("confusion_matrix")
    if confusion:
        written["confusion"] = figures.confusion_figure(
            out / "confusion.png", np.asarray(confusion["matrix"]), record.get("class_names") or [],
            f"Confusion matrix ({confusion['source']})")
    return written


def write_report(record: dict, out: Path, keep=()) -> dict:
    """Write report.json, report.md and the PNGs into `out` (atomically); return the report.
    `keep`: files (e.g. the device results journal inside `out`) carried into the new folder."""
    import shutil

    out = Path(out)
    report = build_report(record)
    with atomic_output_dir(out) as tmp:
        for path in keep:
            if Path(path).is_file():
                shutil.copy2(path, tmp / Path(path).name)
        written = _draw_figures(tmp, report, record)
        report["figures"] = written
        (tmp / "report.json").write_text(json.dumps(report, indent=1, sort_keys=False) + "\n")
        (tmp / "report.md").write_text(render_markdown(report, written))
    return report
