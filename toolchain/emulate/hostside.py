"""The host side of an evaluation: the host reference (tflite-micro wheel + numpy routing) and
the float model on the same images, and the per-patch routing maps drawn in the report."""
from __future__ import annotations

import logging
import sys
from pathlib import Path

import numpy as np

from toolchain.emulate.session import DeviceError, Session
from toolchain.errors import RoutevitError
from toolchain.plan import Plan

log = logging.getLogger("routevit")

ROUTING_MAP_IMAGES = 4


def device_routing_maps(session: Session | None, host: dict | None, plan: Plan, images_u8, labels,
                        count: int = ROUTING_MAP_IMAGES) -> list[dict]:
    """Per-patch expert of the first images, for the routing map.

    With the host's int8 router scores, the device's own routing code decides (ROUTE request),
    so the map shows what the firmware did; without a device (or if ROUTE fails) the host's
    routing of the same scores is drawn, or the host reference's own per-patch assignments."""
    from toolchain.report.metrics import assignment_from_combine
    from toolchain.routing import route

    layers = plan.routed_layers
    if not host or not layers:
        return []
    scores_all = host.get("router_scores")
    assignments_all = host.get("assignments")
    available = len(scores_all) if scores_all is not None else (len(assignments_all) if assignments_all is not None else 0)
    maps = []
    for i in range(min(count, len(images_u8), available)):
        entry = {"index": i, "image": images_u8[i], "label": int(labels[i]), "layers": []}
        for r, layer in enumerate(layers):
            n, e, c = layer.num_patches, layer.num_experts, layer.capacity
            if scores_all is None:
                entry["layers"].append({"assignment": [int(a) for a in assignments_all[i][r]][:n],
                                        "source": "host routing"})
                continue
            scores = np.asarray(scores_all[i][r], dtype=np.int8).reshape(n, e)
            combine, source = None, "device routing"
            if session is not None:
                try:
                    combine = session.route(r, scores).combine
                except DeviceError as exc:
                    log.warning("ROUTE on the device failed (%s); drawing the host's routing", exc)
            if combine is None:
                _, combine, _ = route(scores, c, top_k=layer.top_k)
                source = "host routing"
            entry["layers"].append({"assignment": assignment_from_combine(combine, n, c, e).tolist(),
                                    "source": source})
        maps.append(entry)
    return maps


def open_host_reference(export_dir: Path):
    from toolchain.hostref import HostReference  # the int8 helper's host reference

    return HostReference(export_dir)


def host_reference(reference, images_u8: np.ndarray, progress: bool = True) -> dict:
    """Host int8 logits, expert counts and router scores on the same images, one by one."""
    from tqdm import tqdm

    logits, counts, scores = [], [], []
    for image in tqdm(images_u8, desc="host reference", unit="img", file=sys.stderr,
                      disable=(not progress) or None, leave=False):
        result = reference.run(reference.quantize_pixels(image))
        logits.append(np.asarray(result.logits, np.int8).reshape(-1))
        counts.append([[int(c) for c in r.counts] for r in result.routing])
        scores.append([np.asarray(r.scores, np.int8) for r in result.routing])
    return {"logits": np.stack(logits), "expert_counts": counts, "router_scores": scores}


def float_predictions(export_dir: Path, plan: Plan, images_u8: np.ndarray) -> tuple[np.ndarray | None, str | None]:
    """Top-1 of the export's float reference model on the same images, or (None, why not)."""
    from toolchain.data import Normalization
    from toolchain.hostref.evaluate import _float_predictions  # the int8 helper's float path

    norm = plan.input.normalization
    mean, std = (norm.mean, norm.std) if norm is not None else ([0.5], [0.5])
    normalization = Normalization.from_lists(mean, std, plan.input.channels)
    try:
        return _float_predictions(Path(export_dir), images_u8, normalization), None
    except RoutevitError as exc:
        return None, f"no float top-1: {exc.format_message()}"

