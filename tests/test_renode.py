"""The Renode backend against real firmware under real Renode (1.15.3, offline).

Every board's platform is routevit's own REPL (renode/BOARD.repl from the catalog), so nothing
here needs the internet. Skips only where Renode is missing (how to install it is in the reason).
Wall time: Renode loads a platform in about 3-8 s; each test starts one or two Renode runs.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from conftest import error_lines, generate_selftest_project, run_routevit
from toolchain.emulate import renode
from toolchain.errors import RoutevitError

pytestmark = pytest.mark.renode

INSTALL = "install it with `ROUTEVIT_RENODE_FROM=ARCHIVE ./setup.sh` (Renode is on no package registry)"
RENODE_MISSING = renode.renode_missing_reason()
needs_renode = pytest.mark.skipif(RENODE_MISSING is not None, reason=f"{RENODE_MISSING}; {INSTALL}")
needs_renode_test = pytest.mark.skipif(
    RENODE_MISSING is not None or renode.renode_test_binary() is None,
    reason=f"renode-test not found beside the renode launcher ({RENODE_MISSING or 'no renode-test'}); {INSTALL}")
needs_gcc = pytest.mark.skipif(shutil.which("arm-none-eabi-gcc") is None,
                               reason="needs arm-none-eabi-gcc (Debian: apt-get install gcc-arm-none-eabi)")

# The boards the self-test runs on: both MPS2-style generated CMSDK platforms and the three
# vendor UARTs (STM32F4 USART, STM32F7 USART on the F746 and, with the H7's clock enables and
# memory map, the H743, nRF52 UARTE).
SELFTEST_BOARDS = ["mps2-an386", "stm32f746g-disco", "stm32h743", "nrf52840-dk", "stm32f4-discovery"]
MODEL_BOARDS = ["mps2-an386", "stm32f746g-disco"]
MODEL_IMAGES = 5
USER_CACHE = os.environ.get("ROUTEVIT_CACHE") or str(Path.home() / ".cache" / "routevit")


@pytest.fixture(scope="module")
def selftest_projects(tmp_path_factory):
    """board -> a self-test project for it (built on first use)."""
    made = {}

    def get(board_id: str) -> Path:
        if board_id not in made:
            made[board_id] = generate_selftest_project(board_id, tmp_path_factory.mktemp("renode-selftest") / board_id)
        return made[board_id]
    return get


# -- errors a user sees ----------------------------------------------------------------------------

def test_renode_backend_without_renode_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setenv("RENODE", str(tmp_path / "no-renode-here"))
    reason = renode.renode_missing_reason()
    assert reason and "RENODE=" in reason and "no such file" in reason
    monkeypatch.delenv("RENODE")
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setenv("ROUTEVIT_CACHE", str(tmp_path / "cache"))
    reason = renode.renode_missing_reason()
    assert reason.startswith("renode: not found") and "ROUTEVIT_RENODE_FROM" in reason and "--backend qemu" in reason
    with pytest.raises(RoutevitError, match="renode: not found"):
        renode.open_renode(tmp_path, tmp_path / "x.elf", None)


def test_board_without_a_renode_platform_is_one_line(tmp_path):
    from dataclasses import replace

    from toolchain.boards import get_board

    board = replace(get_board("mps2-an386"), renode=None)
    with pytest.raises(RoutevitError, match=r"^board mps2-an386: has no Renode platform in the catalog; use --backend qemu"):
        renode.project_resc(tmp_path, board)


@needs_renode
@needs_gcc
def test_broken_platform_descriptions_are_one_line_errors(selftest_projects, tmp_path):
    project = tmp_path / "proj"
    shutil.copytree(selftest_projects("mps2-an386"), project)
    repl = project / "renode" / "mps2-an386.repl"
    good = repl.read_text()
    # What routevit wrote before: a CMSDK UART with an unnamed interrupt (Renode: E15).
    repl.write_text(good.replace("    RxInterrupt -> nvic@0\n    TxInterrupt -> nvic@1\n", "    -> nvic@0\n"))
    result = run_routevit("emulate", project, "--selftest", "--backend", "renode", timeout=120)
    lines = error_lines(result.stderr)
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert "older routevit" in lines[0] and "routevit generate" in lines[0]
    # A platform Renode refuses: its own error comes back through the robot server, on one line.
    repl.write_text(good.replace("UART.CMSDK_APB_UART", "UART.NO_SUCH_UART"))
    result = run_routevit("emulate", project, "--selftest", "--backend", "renode", timeout=180)
    lines = error_lines(result.stderr)
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert "renode:" in lines[0] and "NO_SUCH_UART" in lines[0] and "routevit generate" in lines[0]


# -- the self-test firmware ------------------------------------------------------------------------

@needs_renode
@needs_gcc
@pytest.mark.parametrize("board", SELFTEST_BOARDS)
def test_renode_runs_the_selftest_firmware(board, selftest_projects):
    """HELLO, PING and ROUTE on every routed shape, compared with toolchain.routing, then STOP."""
    project = selftest_projects(board)
    repl = [ln for ln in (project / "renode" / f"{board}.repl").read_text().splitlines()
            if not ln.lstrip().startswith("//")]
    assert not any("ApplySVD" in ln or "https://" in ln for ln in repl)
    result = run_routevit("emulate", project, "--selftest", "--backend", "renode", "--json", timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout)
    assert summary["backend"] == "renode" and summary["target"] == f"renode {board}"
    assert summary["hello"]["board"] == board
    # 6 self-test routing shapes x 4 score vectors, each equal to toolchain.routing's answer
    # (selftest_checks raises on the first difference).
    assert summary["route_checks"] == 24
    assert summary["stopped_cleanly"] is True


@needs_renode
@needs_gcc
def test_route_answers_equal_toolchain_routing_on_renode(selftest_projects, tmp_path):
    """The session directly: ROUTE of random tie-heavy scores on an STM32F746 (F7 USART)."""
    from toolchain.boards import get_board
    from toolchain.emulate.session import Session
    from toolchain.routing import route

    project = selftest_projects("stm32f746g-disco")
    link = renode.open_renode(project, project / "build" / "selftest.elf", get_board("stm32f746g-disco"),
                              workdir=tmp_path)
    try:
        with Session(link, timeout_s=60) as session:
            hello = session.hello()
            rng = np.random.default_rng(7)
            for index, layer in enumerate(hello.routed_layers):
                scores = rng.integers(-3, 3, size=(layer.num_patches, layer.num_experts)).astype(np.int8)
                got = session.route(index, scores)
                dispatch, combine, counts = route(scores, layer.capacity, top_k=layer.top_k)
                assert np.array_equal(got.dispatch, dispatch) and np.array_equal(got.combine, combine)
                assert np.array_equal(got.counts, counts)
            assert session.stop() is True
        assert not (tmp_path / "tmp").exists() or not any(p.name.startswith("renode-") and p.is_file()
                                                          for p in (tmp_path / "tmp").iterdir())
    finally:
        link.close()
    assert not link.emulator.alive(), "Renode outlived its link"


@needs_renode_test
@needs_gcc
@pytest.mark.parametrize("board", ["mps2-an386", "nrf52840-dk"])
def test_renode_robot_suite_passes(board, selftest_projects, tmp_path):
    project = selftest_projects(board)
    result = renode.run_robot_suite(project / "renode" / "selftest.robot", tmp_path)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    assert "Tests finished successfully" in result.stdout
    assert (tmp_path / "results" / "robot_output.xml").is_file()


# -- a model firmware against the host reference ---------------------------------------------------

@pytest.fixture(scope="module")
def renode_model_projects(int8_artifacts, tmp_path_factory):
    """The int8 fixture's routed QAT export generated and built (TFLM) for MODEL_BOARDS."""
    from toolchain.tflm import find_tree

    if RENODE_MISSING:
        pytest.skip(f"{RENODE_MISSING}; {INSTALL}")
    try:
        find_tree(cache=Path(USER_CACHE))
    except RoutevitError as exc:
        pytest.skip(f"no TFLM tree: run `routevit setup-tflm` ({exc.format_message()})")
    export = int8_artifacts["exp"]
    projects = {}
    for board in MODEL_BOARDS:
        project = tmp_path_factory.mktemp("renode-firmware") / board
        for args in (("generate", export, "--board", board, "--out", project), ("build", project)):
            result = run_routevit(*args, env={"ROUTEVIT_CACHE": USER_CACHE}, timeout=3600)
            assert result.returncode == 0, result.stderr[-3000:]
        projects[board] = project
    return export, projects, int8_artifacts["data"]


@pytest.mark.tflm
@pytest.mark.parametrize("board", [
    "mps2-an386",
    # Built for the FPv4-SP subset (toolchain/catalog/boards.json cortex-m7-sp): with fpv5-d16 the
    # firmware failed in AllocateTensors here, Renode's Cortex-M7 lacking FPv5's VRINT/VSEL.
    "stm32f746g-disco",
])
def test_routed_firmware_on_renode_is_bit_exact_with_host(board, renode_model_projects, tmp_path):
    export, projects, data = renode_model_projects
    out = tmp_path / "report"
    result = run_routevit("emulate", projects[board], "--backend", "renode", "--data", data, "--export", export,
                          "--limit", MODEL_IMAGES, "--out", out, "--json", "--no-build",
                          env={"ROUTEVIT_CACHE": USER_CACHE}, timeout=1200)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    assert report["backend"] == "renode" and report["images"] == MODEL_IMAGES
    assert report["agreement_device_vs_host"]["bit_exact_rate"] == 1.0, report["agreement_device_vs_host"]
    assert all(row["bit_exact"] for row in report["per_image"])
    assert report["expert_counts_match_host"] is True
    # The firmware's SysTick count is Renode's virtual time at 1000 MIPS: instructions.
    assert report["counter"]["kind"] == 2
    assert min(row["counter"] for row in report["per_image"]) > 100_000
    # Renode's own ExecutedInstructions per inference sit next to the firmware's count.
    note = next(n for n in report["notes"] if "Renode ExecutedInstructions" in n)
    assert f"over {MODEL_IMAGES} inferences" in note and "largest per-image difference" in note
    # Within two SysTick ticks (80 instructions on MPS2): SysTick's own resolution plus Renode
    # updating its timers at sync points (measured: at most 50).
    assert int(note.rsplit("difference ", 1)[1].split()[0]) <= 80


@pytest.mark.tflm
def test_renode_executed_instructions_match_the_firmware_count(renode_model_projects, tmp_path):
    """Renode's own ExecutedInstructions between the two counter_read calls of an inference
    agree with the firmware's SysTick count within two SysTick ticks (80 instructions on MPS2;
    measured differences 13-50)."""
    from toolchain.boards import get_board
    from toolchain.emulate.session import Session

    _, projects, _ = renode_model_projects
    project = projects["mps2-an386"]
    link = renode.open_renode(project, project / "build" / "firmware.elf", get_board("mps2-an386"), workdir=tmp_path)
    try:
        assert link.extra["count_hook"] is True
        with Session(link, timeout_s=300) as session:
            hello = session.hello()
            rng = np.random.default_rng(1)
            firmware = [session.infer(rng.integers(-128, 128, size=hello.input_shape[1:]).astype(np.int8),
                                      timeout_s=300).counter for _ in range(2)]
            emulator = renode.renode_inference_instructions(link, expect=2)
            session.stop()
    finally:
        link.close()
    assert len(emulator) == 2 and min(emulator) > 100_000
    assert all(abs(f - e) <= 80 for f, e in zip(firmware, emulator)), (firmware, emulator)
