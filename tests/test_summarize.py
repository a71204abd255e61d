"""`routevit summarize`: JSON contract, how active parameters and MACs are counted, errors."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def summarize(*args):
    return subprocess.run([sys.executable, "-c", "from toolchain.cli import main; main()", "summarize", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def routed():
    result = summarize("--config", "examples/configs/fmnist_routed.json", "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout), result


def test_json_is_one_object_on_stdout_and_table_on_stderr(routed):
    data, result = routed
    assert result.stdout.count("\n") == 1
    assert "trainable params" in result.stderr and "layer3" in result.stderr


def test_routed_counts(routed):
    data, _ = routed
    assert data["trainable_params"] == 188_726
    (first, second) = data["routed_layers"]
    assert (first["num_patches"], first["capacity"], first["num_experts"], first["top_k"]) == (16, 5, 4, 1)
    # one expert per patch is active: the other E - k experts' parameters are not
    inactive = sum((r["num_experts"] - r["top_k"]) * r["params_per_expert"] for r in data["routed_layers"])
    assert data["active_params_per_patch"] == data["trainable_params"] - inactive
    assert first["params_per_expert"] == 2 * 32 * 32 + 32 + 32
    # experts process their full static buffers: E*C patches of P tokens, 2*d*h + d (gate) each
    per_layer = 4 * 5 * 4 * (2 * 32 * 32 + 32)
    assert data["macs"]["routed"] == 2 * per_layer
    assert data["macs"]["routed_active"] == 2 * 16 * 4 * (2 * 32 * 32 + 32)
    assert data["macs"]["total"] == data["macs"]["dense"] + data["macs"]["routed"]
    assert sum(s["params"] for s in data["stages"]) == data["trainable_params"]
    assert sum(s["macs"] for s in data["stages"]) == data["macs"]["total"]
    assert data["macs"]["total"] <= 10_000_000
    assert data["largest_activation"]["bytes_int8"] == 16 * 16 * 64
    assert data["input_bytes_int8"] == 32 * 32


def test_width_classes_image_size_flags_and_mobilevitv2_100_macs():
    result = summarize("--width", "1.0", "--classes", "1000", "--image-size", "256", "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["trainable_params"] == data["active_params_per_patch"] == 4_901_841
    # ml-cvnets reports 1.8 G MACs for MobileViTV2-1.0 at 256 px
    assert 1.75e9 < data["macs"]["total"] < 1.85e9 and data["macs"]["routed"] == 0


def test_user_errors_exit_2_with_one_line(tmp_path):
    result = summarize("--width", "0.5", "--image-size", "64")
    assert result.returncode == 2
    assert "layer5" in result.stderr and "strides that work for 64 px" in result.stderr
    assert "Traceback" not in result.stderr
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"model": {"width": 1.0}}))
    result = summarize("--config", str(bad))
    assert result.returncode == 2 and "bad.json" in result.stderr and "model.width" in result.stderr
    result = summarize("--config", str(bad), "--width", "1.0")
    assert result.returncode == 2
