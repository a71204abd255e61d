"""`routevit prune EXP --data D --out EXP2`: one routed model, pruned for one deployment site.

A camera at one site sees a few of the species the model knows, and per-patch routing sends
those images' patches to a few of the experts (arXiv 2504.08620 prunes MoE experts per site).
This module measures which:

1. the int8 host reference of EXP (exactly what the device computes) runs on the site's images
   (D, optionally only `classes`) and counts, per routed layer, how often each expert is a patch's
   choice (top-k before capacity: what the site needs, not what the capacity let through);
2. per routed layer it keeps the K experts chosen most (K = `keep`, or the fewest that leave out
   less than `min_share` of the choices in every layer; never fewer than top_k);
3. it rebuilds the model with K experts per routed layer from EXP's quantized run: the router
   keeps the kept experts' columns (so a patch whose expert was dropped goes to its best
   remaining one, and the gate is the softmax over the remaining scores), the kept experts keep
   their weights and, for a QAT run, their fake-quant ranges; capacity is re-derived from the
   config's capacity factor for K experts (`MoEConfig.capacity`);
4. it exports that model exactly as `routevit export` does (segments, plan.json, reference/)
   into EXP2, plus `prune.json`: the counts, what was kept, and the site's int8 top-1 before and
   after on its test images.

EXP2 is an export like any other: `generate`, `build`, `emulate`, `evaluate --host` take it.

    >>> report = prune_export("runs/exp", "fashion-mnist", "runs/exp_site", classes=["Sandal", "Sneaker"])  # doctest: +SKIP
    >>> report["kept"], report["site_top1"]                                     # doctest: +SKIP
"""
from __future__ import annotations

import dataclasses
import json
import re
import sys
import time
from pathlib import Path

import numpy as np

from toolchain.config import MIN_EXPERTS
from toolchain.errors import RoutevitError

REPORT = "prune.json"
FORMAT = "routevit-prune/1"
DEFAULT_MIN_SHARE = 0.02
DEFAULT_COUNT_IMAGES = 1000


# ------------------------------------------------------------------ the site's images
def site_images(data: str, split: str, limit: int | None, classes, plan) -> tuple[np.ndarray, np.ndarray, list]:
    """uint8 images and labels of `split` of D, only those of `classes` (names or indices; None =
    all), at most `limit` of them; and the class indices kept."""
    from toolchain.data import load_dataset

    dataset = load_dataset(data)
    if dataset.num_classes != plan.num_classes:
        raise RoutevitError(f"dataset {data}: {dataset.num_classes} classes, the model has "
                            f"{plan.num_classes}; give the dataset the model was trained on")
    wanted = resolve_classes(classes, dataset.class_names)
    shape = plan.input.shape
    pixels, labels = dataset.numpy_images(split, None, image_size=shape[1], channels=shape[3])
    keep = np.isin(labels, wanted)
    pixels, labels = pixels[keep], labels[keep]
    if limit:
        pixels, labels = pixels[:limit], labels[:limit]
    if not len(labels):
        raise RoutevitError(f"dataset {data}: no {split} images of classes {wanted}; "
                            "choose classes the split has")
    return pixels, labels, wanted


def resolve_classes(classes, class_names: list) -> list[int]:
    """Class names or indices -> sorted label indices (None -> every class)."""
    if not classes:
        return list(range(len(class_names)))
    out = set()
    for item in classes:
        item = str(item).strip()
        if item.isdigit() and int(item) < len(class_names):
            out.add(int(item))
        elif item in class_names:
            out.add(class_names.index(item))
        else:
            raise RoutevitError(f"--classes {item}: not a class of the dataset; use one of "
                                f"{', '.join(class_names)} (or their indices 0..{len(class_names) - 1})")
    return sorted(out)


# ------------------------------------------------------------------ counting and choosing
def count_choices(ref, pixels: np.ndarray, progress: bool = True) -> list[np.ndarray]:
    """Per routed layer: int64 [E] times each expert was one of a patch's top-k choices, on the
    int8 host reference (the device's own routing scores)."""
    from tqdm import tqdm

    from toolchain.routing import choose

    counts = [np.zeros(r.num_experts, np.int64) for r in ref.plan.routed_layers]
    for image in tqdm(pixels, desc="counting expert choices", unit="img", file=sys.stderr,
                      disable=None if progress else True, leave=False):
        result = ref.run(ref.quantize_pixels(image))
        for layer, routing in enumerate(result.routing):
            picked = choose(routing.scores, ref.plan.routed_layers[layer].top_k)
            counts[layer] += np.bincount(picked.reshape(-1), minlength=len(counts[layer]))
    return counts


def choose_kept(counts: list[np.ndarray], top_k: int, keep: int | None, min_share: float) -> list[list[int]]:
    """Per routed layer the experts to keep, most chosen first (ties: lower index first), then
    sorted by index so the pruned model keeps the original order. The same K in every layer
    (the model config has one expert count): `keep`, or the fewest that leave less than
    `min_share` of each layer's choices to other experts."""
    num_experts = len(counts[0])
    fewest = max(top_k, MIN_EXPERTS)
    if keep is not None:
        if not fewest <= keep <= num_experts:
            raise RoutevitError(f"--keep {keep}: must be between {fewest} (top_k={top_k}; a routed layer needs "
                                f"{MIN_EXPERTS} experts, one would be a dense FFN: train a dense config for that) "
                                f"and the {num_experts} experts the model has")
        k = keep
    else:
        k = fewest
        for c in counts:
            order = np.argsort(-c, kind="stable")
            total = max(int(c.sum()), 1)
            covered, needed = 0, 0
            for e in order:
                if (total - covered) / total < min_share:
                    break
                covered += int(c[e])
                needed += 1
            k = max(k, needed)
    return [sorted(int(e) for e in np.argsort(-c, kind="stable")[:k]) for c in counts]


# ------------------------------------------------------------------ rebuilding the model
def pruned_config(config, num_kept: int):
    moe = dataclasses.replace(config.model.moe, num_experts=int(num_kept))
    model = dataclasses.replace(config.model, moe=moe)
    description = (config.description + " " if config.description else "") + \
        f"Pruned for one site to {num_kept} of {config.model.moe.num_experts} experts per routed layer."
    return dataclasses.replace(config, model=model, description=description)


_EXPERT_VAR = re.compile(r"^expert(\d+)_(.+)$")


def transfer_weights(source, target, routed_infos, kept: list[list[int]]) -> None:
    """Copy `source`'s weights into `target` (the same model with fewer experts), layer by layer
    by name: routers keep the kept experts' kernel columns and biases, expert layers the kept
    experts' variables (renumbered 0..K-1, fake-quant ranges included), everything else as is;
    the experts' training counters start from zero."""
    routers = {info.router: kept[i] for i, info in enumerate(routed_infos)}
    experts = {info.experts: kept[i] for i, info in enumerate(routed_infos)}
    # Paired by position: the two models are built from the same config but for the expert
    # count, and Keras numbers its auto-named layers (quantize_layer, quantize_layer_1) per session.
    if len(source.layers) != len(target.layers):
        raise RoutevitError("pruning: the pruned model has a different layer structure; export the model again")
    for src, layer in zip(source.layers, target.layers):
        if not layer.weights:
            continue
        if type(src) is not type(layer) or len(src.weights) < len(layer.weights):
            raise RoutevitError(f"pruning: layer {layer.name} does not match {src.name} of the source "
                                "model; export the model again")
        base = layer.name[len("quant_"):] if layer.name.startswith("quant_") else layer.name
        # Expert layers (explicitly named, so their variable names are stable) map by name, as
        # they lose variables; every other layer keeps its variables in the same order.
        src_vars = {_var_name(w): w for w in src.weights}
        values = []
        for position, w in enumerate(layer.weights):
            name = _var_name(w)
            if base in experts:
                match = _EXPERT_VAR.match(name)
                if match:
                    value = src_vars[f"expert{experts[base][int(match.group(1))]}_{match.group(2)}"].numpy()
                elif name in ("expert_counts", "choices_seen"):
                    value = np.zeros(tuple(w.shape), np.float32)
                else:
                    value = src_vars[name].numpy()
            elif base in routers and name in ("kernel", "bias"):
                value = np.take(src.weights[position].numpy(), routers[base], axis=-1)
            else:
                value = src.weights[position].numpy()
            if tuple(value.shape) != tuple(w.shape):
                raise RoutevitError(f"pruning: {layer.name}/{name} has shape {tuple(value.shape)} in "
                                    f"the source, {tuple(w.shape)} pruned; export the model again")
            values.append(value)
        layer.set_weights(values)


def _var_name(weight) -> str:
    return weight.name.split("/")[-1].split(":")[0]


# ------------------------------------------------------------------ the whole command
def prune_export(exp, data: str, out, *, classes=None, keep: int | None = None,
                 min_share: float = DEFAULT_MIN_SHARE, count_images: int = DEFAULT_COUNT_IMAGES,
                 eval_limit: int | None = None, progress: bool = True) -> dict:
    """Write EXP2 = `out` (atomically) and return its prune.json."""
    import toolchain
    from quantization import calibration
    from quantization.qrun import CONFIG, FLOAT_WEIGHTS, load_export_model, load_float_model, read_meta
    from toolchain.data import Normalization
    from toolchain.export import REFERENCE, _export_variant
    from toolchain.fsutil import atomic_output_dir
    from toolchain.hostref import HostReference
    from toolchain.models import build_model, routed_layer_info

    started = time.monotonic()
    exp, out = Path(exp), Path(out)
    if out.resolve() == exp.resolve():
        raise RoutevitError(f"--out {out}: is EXP itself; give a new folder for the pruned export")
    if not 0.0 <= min_share < 1.0:
        raise RoutevitError(f"--min-share {min_share}: must be in [0, 1)")
    ref = HostReference(exp)
    plan = ref.plan
    if not plan.routed_layers:
        raise RoutevitError(f"{exp}: the model has no routed layers, so no experts to prune; "
                            "give the export of a routed config")
    qrun = Path(plan.raw.get("generated_by", {}).get("qrun") or "")
    if not (qrun / "quant.json").is_file():
        raise RoutevitError(f"{exp}/plan.json: its quantized run {qrun} is not there; pruning rebuilds "
                            "the model from it: export again from an existing QRUN")
    meta = read_meta(qrun)
    config, meta, source_model = load_export_model(qrun)
    _, source_float = load_float_model(qrun)
    top_k = plan.routed_layers[0].top_k

    count_pixels, _, wanted = site_images(data, "train", count_images, classes, plan)
    counts = count_choices(ref, count_pixels, progress)
    kept = choose_kept(counts, top_k, keep, min_share)
    num_kept = len(kept[0])

    pconfig = pruned_config(config, num_kept)
    infos = routed_layer_info(build_model(config.model))
    float_model = build_model(pconfig.model)
    transfer_weights(source_float, float_model, infos, kept)
    if meta["method"] == "qat":
        from quantization.qat import quantize_for_training

        export_model = quantize_for_training(build_model(pconfig.model))
        transfer_weights(source_model, export_model, infos, kept)
    else:
        export_model = float_model
    normalization = Normalization.from_lists(meta["normalization"]["mean"], meta["normalization"]["std"],
                                             config.model.in_channels)
    images = normalization.apply(calibration.load(qrun))
    test_pixels, test_labels, _ = site_images(data, "test", eval_limit, classes, plan)

    with atomic_output_dir(out) as tmp:
        new_plan = _export_variant(export_model, pconfig, meta, images, tmp, meta["method"],
                                   "pruned segment", progress, toolchain.__version__, qrun,
                                   provenance={"command": "routevit prune", "pruned_from": str(exp.resolve()),
                                               "kept_experts": kept})
        (tmp / REFERENCE).mkdir()
        (tmp / REFERENCE / CONFIG).write_text(json.dumps(pconfig.to_dict(), indent=2) + "\n")
        float_model.save_weights(str(tmp / REFERENCE / FLOAT_WEIGHTS))
        before = _top1(ref, test_pixels, test_labels, progress, "site top-1 before")
        after = _top1(HostReference(tmp), test_pixels, test_labels, progress, "site top-1 after")
        report = {
            "format": FORMAT, "routevit_version": toolchain.__version__,
            "export": str(exp.resolve()), "data": data,
            "classes": [plan.class_names[c] if plan.class_names else c for c in wanted],
            "count_images": int(len(count_pixels)), "test_images": int(len(test_labels)),
            "keep": keep, "min_share": None if keep is not None else min_share,
            "experts_before": plan.routed_layers[0].num_experts, "experts_after": num_kept,
            "layers": [{
                "name": r.label, "choices": [int(x) for x in c],
                "share": [float(x) / max(int(c.sum()), 1) for x in c],
                "kept": k, "capacity_before": r.capacity,
                "capacity_after": new_plan["routed_layers"][i]["capacity"],
            } for i, (r, c, k) in enumerate(zip(plan.routed_layers, counts, kept))],
            "segment_bytes_before": sum(s.bytes for s in plan.segments),
            "segment_bytes_after": sum(s["bytes"] for s in new_plan["segments"]),
            "site_top1": {"before": before, "after": after},
            "wall_seconds": round(time.monotonic() - started, 1),
        }
        (tmp / REPORT).write_text(json.dumps(report, indent=2) + "\n")
    return report


def _top1(ref, pixels, labels, progress: bool, label: str) -> float:
    from tqdm import tqdm

    hits = 0
    for image, truth in tqdm(zip(pixels, labels), total=len(labels), desc=label, unit="img", file=sys.stderr,
                             disable=None if progress else True, leave=False):
        hits += int(np.argmax(ref.run(ref.quantize_pixels(image)).logits) == truth)
    return hits / len(labels)
