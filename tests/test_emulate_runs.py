"""Evaluation runs that users rely on past the happy path, on the real firmware under QEMU:
the export found from project.json alone (the README's `emulate` command), no results lost when
the emulator dies mid-run (partial report, `--resume`), and `--jobs N` giving the same report.
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO, error_lines, make_image_folder, run_routevit

pytestmark = [pytest.mark.tflm, pytest.mark.qemu, pytest.mark.slow]

IMAGES = 16  # of the 30 test images (3 classes x 50 images, 20% of each class is the test split)


@pytest.fixture(scope="module")
def firmware(int8_artifacts, tmp_path_factory):
    """The int8 fixture's routed export, generated for mps2-an386 and built (with the example
    application, examples/frame_loop); and a folder dataset of the same shape (16x16 RGB,
    3 classes) with 30 test images."""
    from tflm_support import tflm_tree

    tflm_tree()
    root = tmp_path_factory.mktemp("runs")
    project = root / "proj"
    for args in (("generate", int8_artifacts["exp"], "--board", "mps2-an386", "--out", project),
                 ("build", project, "--app", REPO / "examples" / "frame_loop")):
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


# examples/frame_loop/app.c prints one line per frame:
#   frame 0: 2 "c" logit 87 score 0.912 | 0 "a" logit 3 score 0.061 | ... | 812345 instructions | experts 3 5 / ...
FRAME_LINE = re.compile(r"^frame (\d+): (.*?) \| (\d+) instructions(?: \| experts (.*))?$")
PREDICTION = re.compile(r'^(\d+) "(.*)" logit (-?\d+) score (0\.\d{3})$')


def frame_loop_pixels(index: int, height: int, width: int, channels: int) -> np.ndarray:
    """The test pattern of frame_loop's camera_capture(): (x(3+i) + y(5+2i) + 80c + 41i) mod 256."""
    y, x, c = np.meshgrid(np.arange(height), np.arange(width), np.arange(channels), indexing="ij")
    return ((x * (3 + index) + y * (5 + 2 * index) + 80 * c + 41 * index) % 256).astype(np.uint8)


def test_example_application_classifies_frames_as_the_host_reference_does(firmware, int8_artifacts):
    """examples/frame_loop, built with `routevit build --app` and run with the project's
    qemu/run: on the model's C API alone it prints the host reference's top-3 classes, logits,
    softmax scores and per-expert patch counts for every frame."""
    from toolchain.hostref import HostReference

    project, _ = firmware
    elf = project / "build" / "app.elf"
    symbols = subprocess.run(["arm-none-eabi-nm", "-C", str(elf)], capture_output=True, text=True).stdout
    assert "routevit_model_classify" in symbols and "RunProtocolLoop" not in symbols  # no protocol inside
    run = subprocess.run([str(project / "qemu" / "run"), str(elf), "stdio"], capture_output=True, text=True,
                         timeout=300, stdin=subprocess.DEVNULL)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    lines = run.stdout.splitlines()
    assert "frame_loop: done" in lines and "ROUTEVIT-STOP 0" in lines, run.stdout[-2000:]
    ref = HostReference(int8_artifacts["exp"])
    _, height, width, channels = ref.plan.input.shape
    names = ref.plan.class_names or [""] * ref.plan.num_classes
    scale = ref.plan.logits_entry.scale
    frames = [FRAME_LINE.match(line) for line in lines if line.startswith("frame ")]
    assert len(frames) == 4 and all(frames), lines
    for index, match in enumerate(frames):
        assert int(match.group(1)) == index and int(match.group(3)) > 0
        host = ref.run(ref.quantize_pixels(frame_loop_pixels(index, height, width, channels)))
        logits = host.logits.astype(int)
        order = sorted(range(len(logits)), key=lambda c: (-logits[c], c))[:3]
        probs = np.exp(scale * (logits - logits.max()))
        probs /= probs.sum()
        shown = [PREDICTION.match(p) for p in match.group(2).split(" | ")]
        assert all(shown), match.group(2)
        assert [int(p.group(1)) for p in shown] == order
        assert [p.group(2) for p in shown] == [names[c] for c in order]
        assert [int(p.group(3)) for p in shown] == [logits[c] for c in order]
        assert all(abs(float(p.group(4)) - min(probs[c], 0.999)) <= 0.0011 for p, c in zip(shown, order))
        counts = [[int(v) for v in layer.split()] for layer in match.group(4).split(" / ")]
        assert counts == [r.counts.tolist() for r in host.routing]


def test_emulate_finds_the_export_project_json_records(firmware, tmp_path):
    """The README's `routevit emulate proj --backend qemu --data D --limit N`, no --export."""
    project, data = firmware
    result = run_routevit("emulate", project, "--backend", "qemu", "--data", data, "--limit", "4",
                          "--out", tmp_path / "report", timeout=600)
    assert result.returncode == 0, result.stderr
    report = report_of(tmp_path / "report")
    assert report["images"] == 4 and report["agreement_device_vs_host"]["bit_exact_images"] == 4


def test_arena_sized_from_the_device_run_is_smaller_and_still_bit_exact(firmware, int8_artifacts, tmp_path):
    """`generate --arena-from REPORT`: the arena from what the firmware's allocator used (HELLO)
    + TFLM's temporary planning memory, instead of the 64-bit host figure + 10%. The smaller
    firmware initialises and stays bit-exact; a build with other kernels is refused."""
    project, data = firmware
    measured = tmp_path / "measured"
    result = run_routevit("emulate", project, "--backend", "qemu", "--data", data, "--limit", "1",
                          "--out", measured, timeout=600)
    assert result.returncode == 0, result.stderr
    report = report_of(measured)
    used = report["hello"]["arena_bytes"]
    assert report["memory"]["firmware"]["kernels"] == "cmsis-nn"
    host_arena = json.loads((project / "project.json").read_text())["arena_bytes"]
    tight = tmp_path / "tight"
    result = run_routevit("generate", int8_artifacts["exp"], "--board", "mps2-an386", "--out", tight,
                          "--arena-from", measured)
    assert result.returncode == 0, result.stderr
    memory_report = json.loads((tight / "memory_report.json").read_text())
    arena = memory_report["arena"]
    assert arena["source"] == "device" and arena["measured_bytes"] == used and arena["kernels"] == "cmsis-nn"
    assert used + arena["temp_bytes"] <= arena["bytes"] < host_arena
    refused = run_routevit("build", tight, "--kernels", "reference")
    lines = error_lines(refused.stderr)
    assert refused.returncode == 2 and len(lines) == 1 and "--kernels cmsis-nn" in lines[0], refused.stderr
    assert run_routevit("build", tight, timeout=1800).returncode == 0
    result = run_routevit("emulate", tight, "--backend", "qemu", "--data", data, "--limit", "4",
                          "--out", tmp_path / "report", timeout=600)
    assert result.returncode == 0, result.stderr
    again = report_of(tmp_path / "report")
    assert again["agreement_device_vs_host"]["bit_exact_images"] == 4
    assert again["hello"]["arena_bytes"] == used  # the same allocations, in a smaller arena


def test_swapped_residency_holds_one_segment_and_stays_bit_exact(firmware, int8_artifacts, tmp_path):
    """`generate --residency swapped`: one interpreter prepared at a time, so the arena holds the
    largest segment instead of every segment's persistent part; the firmware prepares each segment
    again on every inference and stays bit-exact, and its allocator uses less than the resident one."""
    project, data = firmware
    resident = json.loads((project / "project.json").read_text())
    swapped = tmp_path / "swapped"
    for args in (("generate", int8_artifacts["exp"], "--board", "mps2-an386", "--out", swapped,
                  "--residency", "swapped"), ("build", swapped)):
        result = run_routevit(*args, timeout=1800)
        assert result.returncode == 0, result.stderr
    meta = json.loads((swapped / "project.json").read_text())
    assert len(meta["segments"]) > 1 and meta["residency"] == "swapped"
    assert meta["arena_bytes"] < resident["arena_bytes"]
    out = {}
    for name, proj in (("resident", project), ("swapped", swapped)):
        result = run_routevit("emulate", proj, "--backend", "qemu", "--data", data, "--limit", "4",
                              "--out", tmp_path / f"report_{name}", timeout=600)
        assert result.returncode == 0, result.stderr
        out[name] = report_of(tmp_path / f"report_{name}")
    assert out["swapped"]["agreement_device_vs_host"]["bit_exact_images"] == 4
    assert out["swapped"]["hello"]["arena_bytes"] < out["resident"]["hello"]["arena_bytes"]
    assert ([row["device_logits"] for row in out["swapped"]["per_image"]]
            == [row["device_logits"] for row in out["resident"]["per_image"]])


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
