"""Real export folders for the generator / build / firmware tests: what `routevit export` writes.

No hand-written plan.json, arena measurer, requantizer or host reference: every export here
went through the code path users run (toolchain.training.train -> quantization.qrun.quantize_run
-> toolchain.export.export) on tiny MobileViTV2 configs and a generated SSW60-layout folder, and
the host reference is toolchain.hostref.HostReference.

From the session's int8 fixture (tests/int8_fixture.py, `int8_artifacts` in conftest.py):
    routed_export(a)      QAT routed model: 2 segments cut at the router, one routed layer
                          (N=16, E=2, C=8, top-1); `requantize` is null (QAT pins boundaries)
    routed_ptq_export(a)  its PTQ baseline (EXP/baselines/ptq): the same cut, with requantized
                          segment boundaries (calibration gives each side its own range)
    dense_export(a)       PTQ dense model: one segment, no routed layers
Built here (train -> PTQ -> export, each well under a minute):
    make_small_export(root)      a dense model with stride-2 stem whose arena fits the smallest
                                 catalog board (stm32f4-discovery, 128 KB RAM): per-board builds
    make_big_export(root, data)  a wider dense model whose int8 weights exceed the 1 MB flash of
                                 the STM32/nRF boards
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from int8_fixture import TINY_DENSE

import toolchain  # noqa: F401  (TF_USE_LEGACY_KERAS before TF)

# width 0.5 and a wide last stage: ~1.3 MB of int8 weights in one segment.
BIG_DENSE = {**TINY_DENSE, "name": "big_dense_int8",
             "model": {**TINY_DENSE["model"], "width_multiplier": 0.5, "transformer_depths": [1, 2, 2]}}
# stride-2 stem and layer2: MobileViT blocks on 4x4 maps, so the arena fits 128 KB of RAM
SMALL_DENSE = {**TINY_DENSE, "name": "small_dense_int8",
               "model": {**TINY_DENSE["model"], "strides": [2, 1, 2, 1, 1, 1]}}
FLASH_1MB = 1 << 20


def routed_export(artifacts: dict) -> Path:
    return Path(artifacts["exp"])


def routed_ptq_export(artifacts: dict) -> Path:
    exp = Path(artifacts["exp"]) / "baselines" / "ptq"
    plan = json.loads((exp / "plan.json").read_text())
    assert any(i.get("requantize") for s in plan["segments"] for i in s["inputs"]), \
        "the PTQ baseline was expected to carry requantized boundaries"
    return exp


def dense_export(artifacts: dict) -> Path:
    return Path(artifacts["exp_dense"])


def _train_ptq_export(config: dict, root: Path, data: str) -> dict:
    """`routevit train` -> `quantize --method ptq` -> `export` of `config` in root; the plan."""
    from quantization.qrun import quantize_run
    from toolchain.export import export
    from toolchain.training import TrainRequest, train

    root = Path(root)
    file = root / f"{config['name']}.json"
    file.write_text(json.dumps(config))
    with pytest.MonkeyPatch.context() as patch:  # dataset caches stay out of the user's cache
        patch.setenv("ROUTEVIT_CACHE", str(root / "cache"))
        train(TrainRequest(config=file, data=data, out=root / "run"))
        quantize_run(root / "run", "ptq", root / "ptq", calibration_count=4)
        return export(root / "ptq", root / "exp", progress=False)


def make_small_export(root: Path, data: str | None = None) -> Path:
    """SMALL_DENSE exported (its own tiny SSW60-layout folder unless `data` is given); EXP."""
    from conftest import make_ssw60

    root = Path(root)
    if data is None:
        data = f"ssw60:{make_ssw60(root / 'ssw60', per_split={'train': 4, 'val': 1, 'test': 1})}"
    _train_ptq_export(SMALL_DENSE, root, data)
    return root / "exp"


def make_big_export(root: Path, data: str) -> Path:
    """BIG_DENSE exported; EXP."""
    plan = _train_ptq_export(BIG_DENSE, root, data)
    root = Path(root)
    total = sum(s["bytes"] for s in plan["segments"])
    assert total > FLASH_1MB, f"BIG_DENSE exported only {total} bytes; make it wider"
    return root / "exp"


def plan_of(exp: Path) -> dict:
    return json.loads((Path(exp) / "plan.json").read_text())


def all_ops(plan: dict) -> list:
    return sorted({op for s in plan["segments"] for op in s["ops"]})
