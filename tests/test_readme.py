"""The README's command sequence (train -> quantize -> export -> evaluate --host -> generate ->
setup-tflm -> build -> emulate), run the way a user runs it: each command as the README writes it,
in a fresh folder, with only the sizes made small (a tiny config, few images, one epoch).

The commands are read from README.md, so a README change that breaks the chain (a renamed flag,
a command that needs an option the README does not give) fails here.
"""
from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest

from conftest import REPO, run_routevit

pytestmark = [pytest.mark.slow, pytest.mark.tflm, pytest.mark.qemu, pytest.mark.renode]

# Same ops as the int8 fixture's tiny routed model (so the TFLM library build is shared), at
# Fashion-MNIST's 28x28x1.
TINY_FMNIST = {
    "name": "readme_tiny_routed",
    "model": {"width_multiplier": 0.25, "num_classes": 10, "image_size": 28, "in_channels": 1,
              "strides": [2, 1, 2, 2, 1, 1], "transformer_depths": [1, 1, 1],
              "moe": {"layers": ["layer4.0"], "num_experts": 2, "expert_hidden": 16, "capacity_factor": 1.0}},
    "training": {"batch_size": 32, "epochs": 1, "learning_rate": 0.003, "seed": 0},
}
# Only the sizes change: where the README trains/evaluates on everything, use a few images.
SMALL = {
    "train": ["--limit-train", "256", "--limit-eval", "64", "--epochs", "1"],
    "quantize": ["--limit-train", "128", "--limit-eval", "64", "--calibration", "32"],
    "evaluate": ["--limit", "32"],
}


def readme_commands() -> list[list[str]]:
    """The `.venv/bin/routevit ...` lines of the README's shell blocks, continuation lines joined,
    comments and [optional] parts dropped."""
    text = (REPO / "README.md").read_text()
    commands = []
    for block in re.findall(r"```sh\n(.*?)```", text, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = re.sub(r"\s+#.*$", "", line).strip()
            line = re.sub(r"\[[^\]]*\]", "", line)
            if line.startswith(".venv/bin/routevit "):
                commands.append(shlex.split(line)[1:])
    return commands


def test_readme_command_sequence_runs_as_written(tmp_path):
    from tflm_support import tflm_tree

    from toolchain.emulate.renode import renode_missing_reason

    tflm_tree()  # set up (or skip with the reason) before the long part
    if renode_missing_reason():
        pytest.skip(renode_missing_reason())
    commands = [c for c in readme_commands() if c[0] not in ("demo", "boards") and "--port" not in c]
    names = [c[0] for c in commands]
    assert names == ["train", "quantize", "export", "evaluate", "fit", "generate", "setup-tflm", "build",
                     "emulate", "emulate"], names
    config = tmp_path / "examples" / "configs" / "fmnist_routed.json"
    config.parent.mkdir(parents=True)
    config.write_text(json.dumps(TINY_FMNIST))
    for command in commands:
        argv = list(command) + SMALL.get(command[0], [])
        if command[0] == "emulate":
            argv[argv.index("--limit") + 1] = "12" if "qemu" in argv else "4"
        result = run_routevit(*argv, cwd=tmp_path, timeout=1800)
        assert result.returncode == 0, f"routevit {shlex.join(argv)}:\n{result.stderr[-3000:]}"
    report = json.loads((tmp_path / "proj" / "reports" / "qemu" / "report.json").read_text())
    assert report["images"] == 12 and report["progress"]["complete"] is True
    assert report["agreement_device_vs_host"]["bit_exact_images"] == 12
    renode = json.loads((tmp_path / "proj" / "reports" / "renode" / "report.json").read_text())
    assert renode["agreement_device_vs_host"]["bit_exact_images"] == 4
    assert [r["device_logits"] for r in renode["per_image"]] == [r["device_logits"] for r in report["per_image"][:4]]
    project = json.loads((tmp_path / "proj" / "project.json").read_text())
    assert Path(project["export"]["path"]) == (tmp_path / "runs" / "fmnist_routed.exp").resolve()
