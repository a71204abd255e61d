"""Reports: the numbers a user reads (agreement, L2r, cosine, cost, experts) and the files."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
from PIL import Image

from toolchain.report import build_report, write_report
from toolchain.report import metrics

CLASSES = ["T-shirt", "Trouser", "Pullover"]
LAYERS = [{"index": 0, "name": "layer3/transformer_0", "num_patches": 16, "num_experts": 4, "capacity": 5,
           "top_k": 1}]


def record(device_logits, host_logits, labels, counts=None, expert_counts=None, maps=None, float_logits=None):
    n = len(labels)
    expert_counts = expert_counts if expert_counts is not None else [[[4, 4, 4, 4]] for _ in range(n)]
    rec = {
        "backend": "qemu", "target": "qemu mps2-an386", "board": "mps2-an386", "clock_hz": 25_000_000,
        "counter_kind": 0, "dataset": "fashion-mnist", "project": "/tmp/proj", "class_names": CLASSES,
        "labels": labels, "logits_quant": {"scale": 0.25, "zero_point": -10}, "routed_layers": LAYERS,
        "host": {"logits": np.asarray(host_logits, np.int8), "expert_counts": expert_counts},
        "routing_maps": maps or [], "memory": {"memory_report": {"arena_bytes": 12_000, "flash_bytes": 90_000}},
    }
    if device_logits is not None:
        rec["device"] = {"logits": np.asarray(device_logits, np.int8),
                         "counts": counts if counts is not None else [1_000_000] * n,
                         "expert_counts": expert_counts}
    if float_logits is not None:
        rec["float"] = {"logits": np.asarray(float_logits, np.float32)}
    return rec


def test_metrics_match_hand_computed_values():
    ref = np.array([[10, -10, 0], [5, 5, -5]], np.int8)
    out = np.array([[10, -10, 0], [5, 4, -5]], np.int8)
    a = metrics.agreement(ref, out, scale=0.5, zero_point=0)
    assert a["bit_exact_images"] == 1 and a["bit_exact_rate"] == 0.5
    assert a["max_abs_diff_q"] == 1 and a["mismatched_images"] == [1]
    # L2r = ||ref-out|| / ||ref|| over all elements, dequantised (scale cancels, zero point doesn't)
    assert a["l2_relative_error"] == pytest.approx(1 / math.sqrt(100 + 100 + 25 + 25 + 25))
    flat_r, flat_o = ref.astype(float).ravel(), out.astype(float).ravel()
    assert a["cosine_similarity"] == pytest.approx(flat_r @ flat_o / np.linalg.norm(flat_r) / np.linalg.norm(flat_o))
    assert metrics.top1([[1, 3, 3]]).tolist() == [1]  # ties -> lowest index, as on the device
    assert metrics.l2_relative_error([0, 0], [0, 0]) == 0.0
    assert metrics.cosine_similarity([1, 0], [0, 1]) == 0.0


def test_zero_point_matters_for_dequantised_comparisons():
    ref, out = np.array([[0, 0]]), np.array([[1, 1]])
    assert metrics.agreement(ref, out, 1.0, 0)["cosine_similarity"] == 0.0  # ref is the zero vector
    assert metrics.agreement(ref, out, 1.0, -100)["cosine_similarity"] == pytest.approx(1.0)


def test_report_numbers_from_a_record():
    host = [[9, 1, 0], [0, 9, 1], [0, 1, 9], [9, 0, 1]]
    device = [row[:] for row in host]
    device[3] = [0, 9, 1]  # one image differs and flips its prediction
    labels = [0, 1, 2, 1]
    report = build_report(record(device, host, labels, counts=[100, 120, 110, 130],
                                 float_logits=np.eye(3)[[0, 1, 2, 1]]))
    assert report["top1"] == {"device": 1.0, "host_int8": 0.75, "float": 1.0}
    agreement = report["agreement_device_vs_host"]
    assert agreement["bit_exact_images"] == 3 and agreement["mismatched_images"] == [3]
    assert agreement["top1_agreement"] == 0.75
    assert report["counter"]["mean"] == 115 and report["counter"]["min"] == 100 and report["counter"]["max"] == 130
    assert report["counter"]["identical"] is False
    assert report["counter"]["ms_at_clock"]["mean"] == pytest.approx(115 / 25e6 * 1000)
    layer = report["experts"]["layers"][0]
    assert layer["patches_per_expert"] == [16, 16, 16, 16] and layer["dropped_patches"] == 0
    assert report["expert_counts_match_host"] is True
    assert report["confusion_matrix"]["matrix"] == [[1, 0, 0], [0, 2, 0], [0, 0, 1]]
    assert report["agreement_vs_float"]["subject"] == "device"


def test_dropped_patches_are_counted():
    counts = [[[5, 5, 3, 0]], [[5, 5, 5, 1]]]  # 13 and 16 of 16 patches processed
    report = build_report(record([[1, 0, 0]] * 2, [[1, 0, 0]] * 2, [0, 0], expert_counts=counts))
    layer = report["experts"]["layers"][0]
    assert layer["patches_per_expert"] == [10, 10, 8, 1]
    assert layer["dropped_patches"] == 3 and layer["drop_rate"] == pytest.approx(3 / 32)


def test_host_only_report_when_no_device_ran():
    report = build_report(record(None, [[1, 0, 0], [0, 0, 1]], [0, 1]))
    assert report["top1"]["device"] is None and report["top1"]["host_int8"] == 0.5
    assert "agreement_device_vs_host" not in report and "counter" not in report
    assert report["experts"]["source"] == "host_int8"


def test_patch_grid_geometry():
    assert metrics.patch_grid(16, (28, 28)) == (4, 4)
    assert metrics.patch_grid(8, (32, 64)) == (2, 4)
    assert metrics.patch_grid(49, (28, 28), {"feature_map": [14, 14]}) == (7, 7)
    assert metrics.patch_grid(6, (10, 10), {"grid": [2, 3]}) == (2, 3)
    # combine index -> expert of each patch; E*C = dropped
    assert metrics.assignment_from_combine([0, 5, 11, 20, 7], 5, 5, 4).tolist() == [0, 1, 2, -1, 1]


def test_written_report_has_json_markdown_and_real_pictures(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (3, 28, 28, 1), dtype=np.uint8)
    maps = [{"index": i, "image": images[i], "label": i % 3,
             "layers": [{"assignment": rng.integers(-1, 4, 16).tolist(), "source": "device routing"}]}
            for i in range(3)]
    host = rng.integers(-128, 127, (12, 3)).astype(np.int8)
    labels = rng.integers(0, 3, 12).tolist()
    out = tmp_path / "report"
    report = write_report(record(host, host, labels, counts=[777] * 12, maps=maps), out)
    assert sorted(p.name for p in out.iterdir()) == [
        "accuracy.png", "confusion.png", "experts.png", "report.json", "report.md", "routing_map.png"]
    assert json.loads((out / "report.json").read_text())["agreement_device_vs_host"]["bit_exact_rate"] == 1.0
    markdown = (out / "report.md").read_text()
    assert "| 12/12 (100.00%) |" in markdown and "777" in markdown and "![Routing map](routing_map.png)" in markdown
    assert "arena_bytes | 12,000" in markdown
    for name in report["figures"].values():
        with Image.open(out / name) as picture:
            array = np.asarray(picture.convert("RGB"))
        assert picture.width > 200 and picture.height > 150
        assert array.std() > 10, f"{name} looks blank"
    # The routing map paints each expert's colour over its patches: several colours appear.
    with Image.open(out / "routing_map.png") as picture:
        colours = np.unique(np.asarray(picture.convert("RGB")).reshape(-1, 3)[::7], axis=0)
    assert len(colours) > 50


def test_failed_report_leaves_nothing_behind(tmp_path):
    out = tmp_path / "report"
    bad = record([[1, 0, 0]], [[1, 0, 0], [0, 1, 0]], [0])  # device and host disagree in length
    with pytest.raises(ValueError, match="logit shapes differ"):
        write_report(bad, out)
    assert not out.exists() and list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_host_only_report_of_a_real_export(int8_artifacts, tmp_path):
    """What `routevit demo` writes when no firmware can be built: the host reference's report."""
    from toolchain.emulate.host_only import host_only_report

    out = tmp_path / "report"
    report = host_only_report(int8_artifacts["exp"], data=int8_artifacts["data"], limit=6, out=out,
                              notes=["no firmware was built"])
    assert report["backend"] == "host" and report["images"] == 6
    assert report["top1"]["device"] is None and 0.0 <= report["top1"]["host_int8"] <= 1.0
    assert report["top1"]["float"] is not None
    assert report["experts"]["source"] == "host_int8"
    assert all(l["source"] == "host routing" for m in report["routing_maps"] for l in m["layers"])
    assert "no firmware was built" in (out / "report.md").read_text()
    assert {"accuracy", "routing_map", "experts", "confusion"} <= set(report["figures"])
