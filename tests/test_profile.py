"""Per-op profile from the device (INFER_PROFILE + PROFILE, docs/protocol.md): host-side decoding,
MACs counted from the flatbuffers against `routevit summarize`, and the real firmware under QEMU
(`routevit emulate --profile`) built with the default kernels (CMSIS-NN on the M4F)."""
from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import make_image_folder, run_routevit
from toolchain import protocol


# ------------------------------------------------------------------ host side, no device

def test_profile_records_round_trip():
    records = [protocol.ProfileRecord(0, protocol.ProfileKind.INPUTS, 0, 680),
               protocol.ProfileRecord(0, protocol.ProfileKind.OP, 0, 384_280),
               protocol.ProfileRecord(1, protocol.ProfileKind.OP, 65_535, 0xFFFFFFFF),
               protocol.ProfileRecord(0, protocol.ProfileKind.ROUTING, 1, 2_120),
               protocol.ProfileRecord(2, protocol.ProfileKind.INVOKE, 2, 12)]
    payload = protocol.encode_profile_records(9, 4, records)
    assert len(payload) == protocol.PROFILE_HEADER.size + len(records) * protocol.PROFILE_RECORD.size
    page = protocol.decode_profile_records(payload)
    assert (page.total, page.first, list(page.records)) == (9, 4, records)
    assert protocol.encode_profile_request(300) == b"\x2c\x01"
    empty = protocol.decode_profile_records(protocol.encode_profile_records(0, 0, []))
    assert (empty.total, empty.records) == (0, ())


@pytest.mark.parametrize("payload, words", [
    (b"\x01", "is not 4 \\+ a multiple of 8"),
    (protocol.encode_profile_records(3, 0, [protocol.ProfileRecord(0, 0, 0, 1)]) + b"\x00", "multiple of 8"),
    (protocol.encode_profile_records(1, 1, [protocol.ProfileRecord(0, 0, 0, 1)]), "records 1..1 of 1"),
    (protocol.encode_profile_records(1, 0, [protocol.ProfileRecord(0, 9, 0, 1)]), "unknown record kind 9"),
])
def test_malformed_profile_payloads_are_protocol_errors(payload, words):
    with pytest.raises(protocol.ProtocolError, match=words):
        protocol.decode_profile_records(payload)


def test_profile_constants_reach_the_firmware_header():
    constants = protocol.c_constants()
    enums = {e["name"]: e for e in constants["enums"]}
    kinds = {m["name"]: m["value"] for m in enums["ProfileKind"]["members"]}
    assert kinds == {"kProfileOp": 0, "kProfileInputs": 1, "kProfileOutputs": 2, "kProfileRouting": 3,
                     "kProfileInvoke": 4, "kProfilePrepare": 5}
    messages = {m["name"]: m["value"] for m in enums["MessageType"]["members"]}
    assert (messages["kInferProfile"], messages["kProfile"], messages["kProfileRecords"]) == (0x06, 0x07, 0x87)
    assert (constants["profile_header_bytes"], constants["profile_record_bytes"]) == (4, 8)


def _summary_macs_the_graph_has_as_elementwise(config_path) -> int:
    """MACs `summarize` counts that the int8 graph computes with MUL/SUM (0 MACs in the profile):
    separable attention's 2*N*P*d and each routed layer's gate, E*C*P*d."""
    from toolchain.config import load_model_config
    from toolchain.models import build_model
    from toolchain.models.layers import RoutedExperts, SeparableAttention
    from toolchain.summary import _layer_macs

    model = build_model(load_model_config(config_path), batch_size=1)
    total = 0
    for layer in model.layers:
        if isinstance(layer, SeparableAttention):
            total += _layer_macs(layer)[0]
        elif isinstance(layer, RoutedExperts):
            total += layer.num_experts * layer.capacity * layer.patch_area * layer.dim
    return total


def test_profile_macs_agree_with_summarize(int8_artifacts):
    """Tolerance: the flatbuffer's CONV_2D/DEPTHWISE_CONV_2D/FULLY_CONNECTED/BATCH_MATMUL MACs are
    summarize's MACs minus exactly the attention and gate products the graph does element-wise
    (those are MULs here, counted as 0 MACs); the raw difference is a few percent on this tiny
    model (0.26% on fmnist_routed)."""
    from toolchain.emulate.profile import segment_ops
    from toolchain.plan import read_plan

    config = int8_artifacts["root"] / "tiny_routed_int8.json"
    result = run_routevit("summarize", "--config", config, "--json")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)["macs"]["total"]
    ops = segment_ops(read_plan(int8_artifacts["exp"]))
    profile = sum(o.macs for seg in ops for o in seg)
    elementwise = _summary_macs_the_graph_has_as_elementwise(config)
    assert 0 < elementwise < 0.1 * summary
    assert profile == summary - elementwise
    assert all(o.macs == 0 for seg in ops for o in seg if o.op in ("MUL", "ADD", "SUB"))
    assert {o.op for seg in ops for o in seg if o.macs} <= {"CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED",
                                                            "BATCH_MATMUL"}


# ------------------------------------------------------------------ the firmware under QEMU

@pytest.fixture(scope="module")
def profiled(int8_artifacts, tmp_path_factory):
    """The int8 fixture's routed export generated for mps2-an386, built with the default kernels,
    and `routevit emulate --profile` on 4 images."""
    from tflm_support import tflm_tree

    tflm_tree()
    root = tmp_path_factory.mktemp("profile")
    project = root / "proj"
    for args in (("generate", int8_artifacts["exp"], "--board", "mps2-an386", "--out", project),
                 ("build", project)):
        result = run_routevit(*args, timeout=1800)
        assert result.returncode == 0, result.stderr
    data = f"folder:{make_image_folder(root / 'images', per_class=10)}"
    out = root / "report"
    result = run_routevit("emulate", project, "--no-build", "--data", data, "--limit", "4", "--profile",
                          "--out", out, "--json", timeout=900)
    assert result.returncode == 0, result.stderr
    return {"project": project, "out": out, "report": json.loads((out / "report.json").read_text()),
            "stdout": json.loads(result.stdout), "stderr": result.stderr, "exp": int8_artifacts["exp"]}


@pytest.mark.tflm
@pytest.mark.qemu
@pytest.mark.slow
def test_default_build_uses_cmsis_nn_and_stays_bit_exact(profiled):
    build = json.loads((profiled["project"] / "build" / "build.json").read_text())
    assert build["kernels"] == "cmsis-nn"  # the M4F has it per the board catalog
    agreement = profiled["report"]["agreement_device_vs_host"]
    assert agreement["bit_exact_images"] == agreement["images"] == 4


@pytest.mark.tflm
@pytest.mark.qemu
@pytest.mark.slow
def test_profile_covers_every_op_of_every_segment(profiled):
    from toolchain.export.tflm_check import operators
    from toolchain.plan import read_plan

    from toolchain.generate.device_model import SILU_OP, device_flatbuffer

    profile = profiled["report"]["profile"]
    plan = read_plan(profiled["exp"])
    # the ops as the firmware embeds them (the default in-place plan fuses each SiLU into one op)
    expected = [(seg.index, i, name) for seg in plan.segments
                for i, (name, _) in enumerate(operators(device_flatbuffer(seg.data)))]
    got = [(r["segment"], r["op_index"], r["op"]) for r in profile["rows"]]
    assert got == expected
    assert any(op == SILU_OP for _, _, op in got)
    # every fused SiLU sits where its MUL was, with the layer of the export's MUL
    exported = [(seg.index, name) for seg in plan.segments for name, _ in operators(seg.data)]
    assert len(exported) - len(expected) == sum(op == SILU_OP for _, _, op in got)
    assert all(r["instructions"] > 0 for r in profile["rows"] if r["op"] not in ("RESHAPE",))
    assert all(r["layer"] and r["layer"] != "?" for r in profile["rows"])
    routing = [g for g in profile["glue"] if g["op"] == "(routing)"]
    assert len(routing) == len(plan.routed_layers)
    # per-op-type and per-layer summaries add up to the profile total
    total = profile["totals"]["instructions"]
    assert sum(g["instructions"] for g in profile["by_op"]) == total
    assert sum(g["instructions"] for g in profile["by_layer"]) == total
    assert profile["totals"]["macs"] == sum(r["macs"] for r in profile["rows"]) > 0
    assert (profiled["out"] / "profile.png").stat().st_size > 10_000
    assert "## Per-op profile" in (profiled["out"] / "report.md").read_text()
    assert "profile of image 0" in profiled["stderr"]
    assert profiled["stdout"]["profile"]["totals"]["ops"] == len(expected)


@pytest.mark.tflm
@pytest.mark.qemu
@pytest.mark.slow
def test_profile_total_agrees_with_the_result_counter(profiled):
    report = profiled["report"]
    profile = report["profile"]
    counters = {row["index"]: row["counter"] for row in report["per_image"]}
    assert [p["index"] for p in profile["images"]] == [0, 1, 2]
    for image in profile["images"]:
        assert image["unprofiled_counter"] == counters[image["index"]]
        assert abs(image["profile_total"] - image["unprofiled_counter"]) <= 0.01 * image["unprofiled_counter"]
        # switching the profiler on costs little, and the records leave most of it out
        assert 0 <= image["profiler_overhead"] <= 0.01 * image["unprofiled_counter"]
        assert image["ops_total"] <= image["profile_total"]
    ratios = np.array([image["relative_difference"] for image in profile["images"]])
    assert np.all(np.abs(ratios) < 0.01)
