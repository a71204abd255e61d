"""Shared pytest fixtures: small generated datasets in the layouts routevit reads.

Images are generated (never downloaded): each class has its own colour/pattern so a tiny model
can learn them, and sizes/modes vary the way real photo folders do.
"""
from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SSW60_CLASSES = [
    # label, species_code, common_name, scientific_name, family, order
    (0, "amecro", "American Crow", "Corvus brachyrhynchos", "Corvidae", "Passeriformes"),
    (1, "blujay", "Blue Jay", "Cyanocitta cristata", "Corvidae", "Passeriformes"),
    (2, "norcar", "Northern Cardinal", "Cardinalis cardinalis", "Cardinalidae", "Passeriformes"),
]
SSW60_TAXA_COLUMNS = ["label", "species_code", "inat_taxon_id", "inat2021_label", "nabirds_labels",
                      "common_name", "scientific_name", "family", "order"]
SSW60_IMAGE_COLUMNS = ["asset_id", "label", "split", "height", "width", "channels",
                       "rights_holder", "license_id"]
CLASS_COLOURS = [(200, 40, 40), (40, 80, 220), (40, 190, 60), (230, 200, 40)]


def class_image(label: int, index: int, width: int, height: int, gray: bool = False):
    """A PIL image whose colour and stripe direction depend on `label`, with seeded noise."""
    from PIL import Image

    rng = np.random.default_rng(1000 * label + index)
    base = np.array(CLASS_COLOURS[label % len(CLASS_COLOURS)], np.float32)
    yy, xx = np.mgrid[0:height, 0:width]
    stripes = ((xx if label % 2 == 0 else yy) // 4 % 2)[..., None] * 40.0
    pixels = base[None, None, :] * 0.8 + stripes + rng.normal(0, 12, (height, width, 3))
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")
    return image.convert("L") if gray else image


def make_ssw60(root: Path, per_split=None, classes=SSW60_CLASSES) -> Path:
    """Write a tiny SSW60-layout folder (taxa.csv, images_inat.csv, images_inat/*.jpg) at `root`."""
    per_split = per_split or {"train": 6, "val": 2, "test": 2}
    root = Path(root)
    (root / "images_inat").mkdir(parents=True, exist_ok=True)
    with open(root / "taxa.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(SSW60_TAXA_COLUMNS)
        for label, code, common, scientific, family, order in classes:
            writer.writerow([label, code, 9000 + label, 3000 + label, "[]", common, scientific, family, order])
    asset = 100
    with open(root / "images_inat.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(SSW60_IMAGE_COLUMNS)
        for split, count in per_split.items():
            for label, *_ in classes:
                for i in range(count):
                    width, height = 40 + 6 * (i % 3), 32 + 4 * (i % 2)  # not square, varying
                    gray = (asset % 7 == 0)  # an occasional grayscale JPEG, as in real data
                    class_image(label, asset, width, height, gray).save(
                        root / "images_inat" / f"{asset}.jpg", quality=90)
                    writer.writerow([asset, label, split, height, width, 1 if gray else 3, "someone", 1])
                    asset += 1
    return root


def make_image_folder(root: Path, classes=("cat", "dog", "fox"), per_class: int = 8) -> Path:
    """Write PATH/<class>/<n>.png|jpg images (mixed formats and sizes) at `root`."""
    root = Path(root)
    for label, name in enumerate(classes):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            image = class_image(label, i, 30 + 2 * i, 30)
            suffix = ".png" if i % 2 else ".jpg"
            image.save(root / name / f"img_{i:03d}{suffix}")
    return root


@pytest.fixture
def dataset_cache(tmp_path, monkeypatch):
    """Decoded-image caches go to a per-test folder, not the user's ~/.cache/routevit."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("ROUTEVIT_CACHE", str(cache))
    return cache


@pytest.fixture
def ssw60_dir(tmp_path, dataset_cache) -> Path:
    """A tiny SSW60-layout folder: 3 classes, 6/2/2 train/val/test JPEGs each."""
    return make_ssw60(tmp_path / "ssw60")


@pytest.fixture
def image_folder(tmp_path, dataset_cache) -> Path:
    """A folder of class subfolders (cat, dog, fox) with 8 PNG/JPEG images each."""
    return make_image_folder(tmp_path / "images")


def run_routevit(*args, env=None, timeout=600, cwd=REPO):
    """Run the installed `routevit` CLI in a subprocess (the way a user does); returns CompletedProcess."""
    full_env = dict(os.environ)
    full_env.update(env or {})
    script = Path(sys.executable).with_name("routevit")
    command = [str(script)] if script.exists() else [
        sys.executable, "-c", "import sys; from toolchain.cli import main; sys.exit(main())"]
    return subprocess.run([*command, *map(str, args)], capture_output=True, text=True, env=full_env,
                          timeout=timeout, cwd=cwd, stdin=subprocess.DEVNULL)


def error_lines(stderr: str) -> list:
    """stderr lines minus TensorFlow's own start-up chatter (which a user cannot avoid)."""
    noise = ("WARNING: All log messages before absl", "I0000 ", "W0000 ", "E0000 ")
    return [line for line in stderr.splitlines() if line.strip() and not line.startswith(noise)]


@pytest.fixture(scope="session")
def int8_artifacts(tmp_path_factory):
    """Tiny routed + dense models through train -> quantize -> export (tests/int8_fixture.py)."""
    from int8_fixture import build

    root = tmp_path_factory.mktemp("int8")
    # Its dataset caches go to a private folder while it builds; restored afterwards, so tests
    # that run later in the session still find the user's TFLM tree in the real cache.
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("ROUTEVIT_CACHE", str(root / "cache"))
        artifacts = build(root)
    return artifacts


# With ROUTEVIT_REQUIRE_ALL=1 (.ci/run sets it when ../shared provides TFLM and Renode) a test
# that skips for want of TFLM, the Arm toolchain, QEMU or Renode fails instead: CI must run the
# real firmware. Skips for want of real hardware stay skips.
_MISSING_TOOL_WORDS = ("tflm", "renode", "qemu", "arm-none-eabi", "mono")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if not report.skipped or not os.environ.get("ROUTEVIT_REQUIRE_ALL"):
        return
    reason = str(report.longrepr[-1] if isinstance(report.longrepr, tuple) else report.longrepr)
    if any(word in reason.lower() for word in _MISSING_TOOL_WORDS) and "hardware" not in reason.lower():
        report.outcome = "failed"
        report.longrepr = f"skipped although ROUTEVIT_REQUIRE_ALL=1 (CI has TFLM and Renode): {reason}"


@pytest.fixture(scope="session")
def fmnist_routed_export(tmp_path_factory):
    """An int8 export of examples/configs/fmnist_routed.json: $ROUTEVIT_TEST_EXPORT, else the newest
    routed export under runs/, else one trained here on a Fashion-MNIST subset (train 1 epoch on
    2,000 images, QAT 1 epoch on 500, export: a few minutes). Bit-exactness and instruction
    counts do not need a good model; accuracy claims are the benchmarks' business."""
    import json as _json

    given = os.environ.get("ROUTEVIT_TEST_EXPORT")
    if given:
        return Path(given)
    plans = sorted((REPO / "runs").glob("**/plan.json"), key=lambda p: p.stat().st_mtime)
    routed = [p for p in plans if _json.loads(p.read_text()).get("routed_layers")]
    if routed:
        return routed[-1].parent
    root = tmp_path_factory.mktemp("fmnist-routed")
    steps = [
        ("train", "--config", REPO / "examples" / "configs" / "fmnist_routed.json", "--data", "fashion-mnist",
         "--epochs", "1", "--limit-train", "2000", "--limit-eval", "300", "--out", root / "run"),
        ("quantize", root / "run", "--method", "qat", "--limit-train", "500", "--limit-eval", "300",
         "--out", root / "qat"),
        ("export", root / "qat", "--out", root / "exp"),
    ]
    for step in steps:
        result = run_routevit(*step, timeout=3600)
        assert result.returncode == 0, f"routevit {step[0]}: {result.stderr[-2000:]}"
    return root / "exp"


def generate_selftest_project(board_id: str, dest: Path) -> Path:
    """A generated project without a model, built with `make selftest` (no TFLM)."""
    import json

    from toolchain.boards import get_board
    from toolchain.generate import project as generate_project

    dest.mkdir(parents=True, exist_ok=True)
    board = get_board(board_id)
    generate_project.render_selftest_project(board, dest)
    if not (dest / "project.json").is_file():
        (dest / "project.json").write_text(json.dumps({"format": "routevit-project/1", "board": board_id,
                                                       "clock_hz": board.clock_hz, "qemu": board.qemu}))
    subprocess.run(["make", "-C", str(dest), "selftest"], check=True, capture_output=True)
    return dest
