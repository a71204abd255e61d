"""Evaluation runs that users rely on past the happy path, on the real firmware under QEMU:
the export found from project.json alone (the README's `emulate` command), no results lost when
the emulator dies mid-run (partial report, `--resume`), and `--jobs N` giving the same report.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO, error_lines, make_image_folder, run_routevit

pytestmark = [pytest.mark.tflm, pytest.mark.qemu, pytest.mark.slow]

IMAGES = 30  # 3 classes x 50 images, 20% of each class is the test split


@pytest.fixture(scope="module")
def firmware(int8_artifacts, tmp_path_factory):
    """The int8 fixture's routed export, generated for mps2-an386 and built; and a folder dataset
    of the same shape (16x16 RGB, 3 classes) with 30 test images."""
    from tflm_support import tflm_tree

    tflm_tree()
    root = tmp_path_factory.mktemp("runs")
    project = root / "proj"
    for args in (("generate", int8_artifacts["exp"], "--board", "mps2-an386", "--out", project),
                 ("build", project)):
        result = run_routevit(*args, timeout=1800)
        assert result.returncode == 0, result.stderr
    data = f"folder:{make_image_folder(root / 'images', per_class=50)}"
    return project, data


def report_of(folder: Path) -> dict:
    return json.loads((folder / "report.json").read_text())


# The firmware's instruction counter under QEMU has the resolution of one SysTick tick: 1e9 /
# 25 MHz = 40 instructions, and where inside a tick a measurement starts depends on what that
# emulator instance ran before. Two runs that send images to instances in another order agree on
# every count to within one tick (1 in 27 million for this model); everything else is identical.
COUNTER_RESOLUTION = 40


def comparable(report: dict) -> dict:
    """A report minus what legitimately differs between two runs: host wall times, the job count,
    where it was written, and the counter figures (compared by `same_counts`)."""
    report = dict(report)
    for key in ("wall_seconds", "progress", "project", "target", "notes", "counter"):
        report.pop(key, None)
    report["per_image"] = [{k: v for k, v in row.items() if k != "counter"} for row in report["per_image"]]
    return report


def same_counts(a: dict, b: dict) -> bool:
    counts = [[row["counter"] for row in r["per_image"]] for r in (a, b)]
    return len(counts[0]) == len(counts[1]) and all(abs(x - y) <= COUNTER_RESOLUTION for x, y in zip(*counts))


def test_emulate_finds_the_export_project_json_records(firmware, tmp_path):
    """The README's `routevit emulate proj --backend qemu --data D --limit N`, no --export."""
    project, data = firmware
    result = run_routevit("emulate", project, "--backend", "qemu", "--data", data, "--limit", "4",
                          "--out", tmp_path / "report", timeout=600)
    assert result.returncode == 0, result.stderr
    report = report_of(tmp_path / "report")
    assert report["images"] == 4 and report["agreement_device_vs_host"]["bit_exact_images"] == 4


def test_moved_export_is_a_clear_error(firmware, tmp_path):
    project, data = firmware
    record = json.loads((project / "project.json").read_text())["export"]
    moved = Path(record["path"]).with_name("exp-moved")
    os.rename(record["path"], moved)
    try:
        result = run_routevit("emulate", project, "--data", data, "--limit", "2", "--out", tmp_path / "r")
    finally:
        os.rename(moved, record["path"])
    lines = error_lines(result.stderr)
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert record["path"] in lines[0] and "--export EXP" in lines[0]
    assert not (tmp_path / "r").exists()  # nothing ran: no half-written report folder


def test_jobs_2_gives_the_report_of_jobs_1(firmware, tmp_path):
    project, data = firmware
    reports, seconds = [], []
    for jobs in (1, 2):
        out = tmp_path / f"jobs{jobs}"
        started = time.monotonic()
        result = run_routevit("emulate", project, "--data", data, "--limit", str(IMAGES), "--jobs", str(jobs),
                              "--out", out, timeout=900)
        seconds.append(time.monotonic() - started)
        assert result.returncode == 0, result.stderr
        reports.append(report_of(out))
    assert reports[1]["progress"]["jobs"] == 2 and reports[1]["images"] == IMAGES
    assert reports[0]["agreement_device_vs_host"]["bit_exact_images"] == IMAGES
    assert comparable(reports[0]) == comparable(reports[1])
    assert same_counts(reports[0], reports[1])
    # The journal holds one line per image (plus its header), whichever device ran it.
    lines = (tmp_path / "jobs2" / "device_results.jsonl").read_text().splitlines()
    assert sorted(json.loads(line)["index"] for line in lines[1:]) == list(range(IMAGES))


def test_killed_emulator_leaves_a_partial_report_and_resume_finishes_it(firmware, tmp_path):
    import psutil

    project, data = firmware
    out = tmp_path / "report"
    journal = out / "device_results.jsonl"
    script = Path(sys.executable).with_name("routevit")
    proc = subprocess.Popen([str(script), "emulate", str(project), "--data", data, "--limit", str(IMAGES),
                             "--out", str(out)], cwd=REPO, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    killed = False
    deadline = time.monotonic() + 600
    while proc.poll() is None and time.monotonic() < deadline:
        done = len(journal.read_text().splitlines()) - 1 if journal.is_file() else 0
        if done >= 3:
            for child in psutil.Process(proc.pid).children(recursive=True):
                if "qemu-system-arm" in child.name():
                    child.send_signal(signal.SIGKILL)
                    killed = True
            break
        time.sleep(0.005)
    _, stderr = proc.communicate(timeout=300)
    assert killed, "QEMU finished before it could be killed"
    lines = error_lines(stderr)
    assert proc.returncode == 2, stderr
    assert "partial report of" in lines[-1] and "--resume" in lines[-1], lines[-1]
    partial = report_of(out)
    finished = partial["progress"]["images_done"]
    assert partial["progress"]["complete"] is False and 3 <= finished < IMAGES
    assert partial["images"] == finished and "PARTIAL" in (out / "report.md").read_text()
    assert all(row["bit_exact"] for row in partial["per_image"])
    assert len(journal.read_text().splitlines()) == 1 + finished

    result = run_routevit("emulate", project, "--data", data, "--limit", str(IMAGES), "--out", out,
                          "--resume", timeout=900)
    assert result.returncode == 0, result.stderr
    resumed = report_of(out)
    assert resumed["progress"]["complete"] is True and resumed["progress"]["resumed_images"] == finished
    fresh_out = tmp_path / "fresh"
    assert run_routevit("emulate", project, "--data", data, "--limit", str(IMAGES), "--out", fresh_out,
                        timeout=900).returncode == 0
    assert comparable(resumed) == comparable(report_of(fresh_out)) and same_counts(resumed, report_of(fresh_out))


def test_resume_refuses_results_of_another_dataset(firmware, tmp_path, image_folder):
    project, data = firmware
    out = tmp_path / "report"
    assert run_routevit("emulate", project, "--data", data, "--limit", "3", "--out", out).returncode == 0
    result = run_routevit("emulate", project, "--data", f"folder:{image_folder}", "--limit", "3", "--out", out,
                          "--resume")
    lines = error_lines(result.stderr)
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert "another dataset" in lines[0] and "without --resume" in lines[0]
