"""A real tiny routed model taken through train -> quantize (QAT and PTQ) -> export, for the int8
tests (test_quantize, test_export, test_hostref). Built once per session (about 2 minutes)."""
from __future__ import annotations

import json
from pathlib import Path

TINY_ROUTED = {
    "name": "tiny_routed_int8",
    "model": {"width_multiplier": 0.25, "num_classes": 3, "image_size": 16, "in_channels": 3,
              "strides": [1, 1, 1, 1, 2, 2], "transformer_depths": [1, 1, 1],
              "moe": {"layers": ["layer4.0"], "num_experts": 2, "expert_hidden": 16,
                      "capacity_factor": 1.0}},
    "training": {"batch_size": 6, "epochs": 1, "learning_rate": 0.003, "seed": 0},
}

TINY_DENSE = {**TINY_ROUTED, "name": "tiny_dense_int8",
              "model": {**TINY_ROUTED["model"], "moe": None}}


def build(root: Path) -> dict:
    """Write root/{ssw60, run, run_dense, qat, ptq, dense_ptq, exp, exp_dense}; returns their paths."""
    from conftest import make_ssw60
    from quantization.qrun import quantize_run
    from toolchain.export import export
    from toolchain.training import TrainRequest, train

    root = Path(root)
    data = f"ssw60:{make_ssw60(root / 'ssw60', per_split={'train': 8, 'val': 2, 'test': 4})}"
    paths = {"root": root, "data": data}
    for key, config in (("run", TINY_ROUTED), ("run_dense", TINY_DENSE)):
        file = root / f"{config['name']}.json"
        file.write_text(json.dumps(config))
        train(TrainRequest(config=file, data=data, out=root / key))
        paths[key] = root / key
    paths["qat_metrics"] = quantize_run(paths["run"], "qat", root / "qat", epochs=1,
                                        calibration_count=8)
    paths["qat"] = root / "qat"
    quantize_run(paths["run_dense"], "ptq", root / "dense_ptq", calibration_count=8)
    paths["dense_ptq"] = root / "dense_ptq"
    paths["plan"] = export(paths["qat"], root / "exp", progress=False)
    paths["exp"] = root / "exp"
    paths["plan_dense"] = export(paths["dense_ptq"], root / "exp_dense", progress=False)
    paths["exp_dense"] = root / "exp_dense"
    return paths
