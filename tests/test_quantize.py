"""`routevit quantize`: QAT wrappers on every layer (custom ones included), the QRUN folder, bad input."""
import json

import numpy as np
import pytest

from conftest import error_lines, run_routevit


def test_qat_fake_quantizes_custom_layers(int8_artifacts):
    from tensorflow_model_optimization.python.core.quantization.keras import quantize_wrapper

    from quantization.qrun import load_export_model
    from toolchain.models.layers import PatchRouter, PatchUnfold, RoutedExperts

    _, meta, model = load_export_model(int8_artifacts["qat"])
    assert meta["method"] == "qat"
    wrapped = {type(l.layer): l for l in model.layers if isinstance(l, quantize_wrapper.QuantizeWrapper)}
    experts = wrapped[RoutedExperts]
    # every expert's two kernels carry a weight quantizer; the output is fake-quantized
    assert len(experts._weight_vars) == 2 * experts.layer.num_experts
    assert experts._output_quantizers
    assert wrapped[PatchRouter]._weight_vars and wrapped[PatchRouter]._output_quantizers
    assert not wrapped[PatchUnfold]._output_quantizers  # moves values only
    # QAT trained the ranges: no output range is left at tfmot's initial [-6, 6]
    ranges = [(float(l._output_quantizer_vars["min_var"].numpy()), float(l._output_quantizer_vars["max_var"].numpy()))
              for l in wrapped.values() if l._output_quantizers]
    assert ranges and all(r != (-6.0, 6.0) for r in ranges)


def test_qrun_folder_is_complete_and_reloads_identically(int8_artifacts):
    from quantization.qrun import load_export_model

    qrun = int8_artifacts["qat"]
    assert sorted(p.name for p in qrun.iterdir()) == [
        "calibration.npz", "config.json", "float_weights.h5", "metrics.json", "quant.json", "weights.h5"]
    metrics = json.loads((qrun / "metrics.json").read_text())
    assert metrics["method"] == "qat" and metrics["qat_epochs"] == 1
    assert 0.0 <= metrics["qat_test_accuracy"] <= 1.0 and metrics["float_test_accuracy"] is not None
    images = np.random.default_rng(0).uniform(-1, 1, (2, 16, 16, 3)).astype(np.float32)
    a = load_export_model(qrun)[2](images, training=False).numpy()
    b = load_export_model(qrun)[2](images, training=False).numpy()
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("case", ["not_a_run", "already_quantized"])
def test_quantize_bad_input_one_line_exit_2(int8_artifacts, tmp_path, case):
    source = tmp_path if case == "not_a_run" else int8_artifacts["qat"]
    result = run_routevit("quantize", source, "--method", "ptq", "--out", tmp_path / "q")
    assert result.returncode == 2, result.stderr
    lines = error_lines(result.stderr)
    assert len(lines) == 1 and lines[0].startswith("Error: "), lines
    assert not (tmp_path / "q").exists()
