"""routevit's own firmware code without TFLM: compiled for every board's core with
arm-none-eabi-gcc (-Werror), and the self-test build run under QEMU mps2-an386/an500 and
driven over its UART socket: HELLO, PING, ROUTE (against toolchain.routing), corrupted frames,
STOP -> semihosting exit code."""
from __future__ import annotations

import dataclasses
import re
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from toolchain import protocol as P
from toolchain import routing
from toolchain.boards import all_boards, get_board
from toolchain.generate.project import render_selftest_project
from toolchain.generate.render import SELFTEST_LAYERS, UART_TEMPLATES

needs_gcc = pytest.mark.skipif(shutil.which("arm-none-eabi-gcc") is None, reason="arm-none-eabi-gcc not installed")
needs_qemu = pytest.mark.skipif(shutil.which("qemu-system-arm") is None, reason="qemu-system-arm not installed")


def make(project: Path, *targets: str) -> subprocess.CompletedProcess:
    return subprocess.run(["make", "-j2", "-C", str(project), *targets], capture_output=True, text=True)


@pytest.fixture(scope="module")
def selftest_projects(tmp_path_factory):
    """Board id -> generated self-test project, built."""
    root = tmp_path_factory.mktemp("selftest")
    projects = {}
    for board in all_boards():
        project = root / board.id
        project.mkdir()
        render_selftest_project(board, project)
        built = make(project, "selftest")
        assert built.returncode == 0, f"{board.id}: {built.stdout[-3000:]}{built.stderr[-3000:]}"
        projects[board.id] = project
    return projects


@needs_gcc
def test_selftest_builds_for_every_board_without_heap(selftest_projects):
    for board_id, project in selftest_projects.items():
        elf = project / "build" / "selftest.elf"
        assert elf.is_file()
        mapfile = (project / "build" / "selftest.map").read_text()
        pulled_in = mapfile.split("Discarded input sections")[0]
        assert not re.search(r"\b(malloc|_malloc_r|_sbrk|free)\b|mallocr|lib_a-sbrk", pulled_in), board_id
        # linked where the board's memory is
        board = get_board(board_id)
        header = subprocess.run(["arm-none-eabi-readelf", "-h", str(elf)], capture_output=True, text=True).stdout
        entry = int(re.search(r"Entry point address:\s+(0x[0-9a-f]+)", header).group(1), 16)
        flash = board.region("flash")
        assert flash.origin <= entry < flash.origin + flash.size


@needs_gcc
@pytest.mark.parametrize("family", ["cortex-m4f", "cortex-m7", "cortex-m55"])
def test_every_uart_driver_compiles_for_every_core(tmp_path, family):
    """Each driver once per core family, not only on the boards that use it."""
    flags = next(b for b in all_boards() if b.core_family == family).cpu_flags
    boards_by_kind = {b.uart["kind"]: b for b in all_boards()}
    assert set(boards_by_kind) == set(UART_TEMPLATES)
    for kind, board in sorted(boards_by_kind.items()):
        project = tmp_path / kind
        project.mkdir()
        render_selftest_project(dataclasses.replace(board, cpu_flags=flags), project)
        obj = project / "uart.o"
        cmd = ["arm-none-eabi-gcc", *flags, "-O2", "-std=c11", "-Wall", "-Wextra", "-Werror",
               f"-I{project / 'src'}", f"-I{project / 'src/board'}", "-c", str(project / "src/board/uart.c"), "-o", str(obj)]
        done = subprocess.run(cmd, capture_output=True, text=True)
        assert done.returncode == 0, f"{kind} on {family}: {done.stderr}"


# ------------------------------------------------------------------------------- QEMU runs

@pytest.fixture(params=["mps2-an386", "mps2-an500"])
def device(request, selftest_projects):
    """(session, link) for the self-test firmware under QEMU; QEMU is always killed."""
    from toolchain.emulate.qemu import open_qemu
    from toolchain.emulate.session import Session

    board = get_board(request.param)
    link = open_qemu(selftest_projects[board.id] / "build" / "selftest.elf", board.qemu_machine)
    try:
        yield Session(link, timeout_s=5.0), link
    finally:
        link.close()
        assert link.emulator.poll() is not None  # the process is gone


def random_scores(rng, n, e):
    # A narrow range forces many ties; every expert gets several first choices -> over capacity.
    return rng.integers(-2, 3, size=(n, e)).astype(np.int8)


@needs_qemu
def test_hello_describes_the_selftest_build(device):
    session, link = device
    hello = session.hello()
    assert hello.version == P.PROTOCOL_VERSION
    assert hello.counter_kind == P.CounterKind.QEMU_INSTRUCTIONS
    assert hello.num_classes == 0 and hello.input_shape == (0, 0, 0, 0) and not hello.has_model
    assert hello.board == link.target.split()[-1]
    assert [(r.num_patches, r.num_experts, r.capacity, r.top_k) for r in hello.routed_layers] == [
        (s["num_patches"], s["num_experts"], s["capacity"], s["top_k"]) for s in SELFTEST_LAYERS]


@needs_qemu
def test_ping_echoes_any_bytes(device):
    session, _ = device
    hello = session.hello()
    assert session.ping(b"") == b""
    big = bytes(range(256)) * (hello.max_payload // 256) + bytes(hello.max_payload % 256)
    assert len(big) == hello.max_payload
    assert session.ping(big) == big


@needs_qemu
def test_route_matches_the_numpy_reference(device):
    session, _ = device
    hello = session.hello()
    rng = np.random.default_rng(1234)
    checked = {1: 0, 2: 0}
    for layer, shape in enumerate(hello.routed_layers):
        for trial in range(4):
            scores = random_scores(rng, shape.num_patches, shape.num_experts)
            if trial == 0:
                scores[:] = 0  # all ties: lowest index wins, capacity overflows
            if trial == 1:
                scores = rng.integers(-128, 128, size=scores.shape).astype(np.int8)
                scores[0, :] = -128  # extreme values
            answer = session.route(layer, scores)
            dispatch, combine, counts = routing.route(scores, shape.capacity, shape.top_k)
            assert answer.dispatch.tolist() == dispatch.tolist(), (layer, trial)
            assert answer.combine.tolist() == combine.tolist(), (layer, trial)
            assert answer.counts.tolist() == counts.tolist(), (layer, trial)
            checked[shape.top_k] += 1
    assert checked[1] >= 8 and checked[2] >= 8
    # over-capacity really happened: some patch was dropped
    scores = np.zeros((16, 4), np.int8)
    dropped = session.route(0, scores).combine
    assert (dropped == 4 * 5).sum() == 16 - 5


@needs_qemu
def test_bad_requests_get_error_frames(device):
    session, _ = device
    hello = session.hello()
    with pytest.raises(P.DeviceError) as err:
        session.request(P.MsgType.ROUTE, bytes([len(hello.routed_layers)]) + bytes(4), "ROUTE")
    assert err.value.code == P.ErrorCode.BAD_LAYER
    with pytest.raises(P.DeviceError) as err:
        session.request(P.MsgType.ROUTE, bytes([0]) + bytes(3), "ROUTE")
    assert err.value.code == P.ErrorCode.BAD_SIZE
    with pytest.raises(P.DeviceError) as err:
        session.request(0x7F, b"", "message 0x7f")
    assert err.value.code == P.ErrorCode.UNKNOWN_TYPE
    with pytest.raises(P.DeviceError) as err:
        session.request(P.MsgType.INFER, bytes(16), "INFER")
    assert err.value.code == P.ErrorCode.NO_MODEL
    assert session.ping(b"still alive") == b"still alive"


@needs_qemu
def test_corrupted_frames_get_error_then_resync(device):
    session, _ = device
    hello = session.hello()
    # bad CRC, with a good frame right behind it in the same write
    bad = bytearray(P.encode_frame(P.MsgType.PING, 50, b"damaged"))
    bad[8] ^= 0x01
    session.send_raw(bytes(bad) + P.encode_frame(P.MsgType.PING, 51, b"after crc"))
    first, second = session.read_frame(), session.read_frame()
    assert (first.type, first.seq, P.decode_error(first.payload)[0]) == (P.MsgType.ERROR, 50, P.ErrorCode.BAD_CRC)
    assert (second.type, second.seq, second.payload) == (P.MsgType.PONG, 51, b"after crc")
    # length above kMaxPayload
    too_long = b"\xA5\x5A\x03\x52" + (hello.max_payload + 1).to_bytes(2, "little")
    session.send_raw(too_long + P.encode_frame(P.MsgType.PING, 53, b"after length"))
    first, second = session.read_frame(), session.read_frame()
    assert (first.type, first.seq, P.decode_error(first.payload)[0]) == (P.MsgType.ERROR, 0x52, P.ErrorCode.BAD_LENGTH)
    assert (second.type, second.seq, second.payload) == (P.MsgType.PONG, 53, b"after length")
    # garbage bytes, including lone sync bytes, are skipped silently
    garbage = bytes(np.random.default_rng(5).integers(0, 256, 300, dtype=np.uint8)).replace(b"\x5A", b"\x00")
    session.send_raw(garbage + b"\xA5\xA5\x00" + P.encode_frame(P.MsgType.PING, 54, b"after garbage"))
    frame = session.read_frame()
    assert (frame.type, frame.seq, frame.payload) == (P.MsgType.PONG, 54, b"after garbage")
    # and the normal request/answer flow continues
    assert session.ping(b"ok") == b"ok"


@needs_qemu
def test_stop_ends_qemu_with_the_exit_code(device):
    session, link = device
    import serial

    assert session.stop(7) is True
    tail = bytes(session.decoder.text + session.decoder.buffer)
    deadline = time.monotonic() + 10
    try:
        while b"ROUTEVIT-STOP 7\n" not in tail and time.monotonic() < deadline:
            tail += link.port.read(max(1, link.port.in_waiting))  # never lose bytes to a disconnect
    except serial.SerialException:
        pass  # QEMU closed the socket after exiting
    assert link.emulator.wait(10) == 7
    assert b"ROUTEVIT-STOP 7\n" in tail


@needs_qemu
@pytest.mark.parametrize("board_id", ["mps3-an547", "stm32f4-discovery"])
def test_other_qemu_boards_answer(board_id, selftest_projects):
    """AN547 (Cortex-M55, UART at 0x49303000) and netduinoplus2 (STM32F4 USART layout, no RCC
    model, DWT reads 0 so the counter falls back to SysTick)."""
    from toolchain.emulate.qemu import open_qemu
    from toolchain.emulate.session import Session

    board = get_board(board_id)
    link = open_qemu(selftest_projects[board_id] / "build" / "selftest.elf", board.qemu_machine)
    try:
        session = Session(link, timeout_s=5.0)
        hello = session.hello()
        assert hello.board == board_id and hello.counter_kind == P.CounterKind.QEMU_INSTRUCTIONS
        assert session.ping(b"\x00\xA5\x5A\xFF") == b"\x00\xA5\x5A\xFF"
        shape = hello.routed_layers[1]
        scores = random_scores(np.random.default_rng(7), shape.num_patches, shape.num_experts)
        answer = session.route(1, scores)
        dispatch, combine, counts = routing.route(scores, shape.capacity, shape.top_k)
        assert (answer.dispatch.tolist(), answer.combine.tolist(), answer.counts.tolist()) == (
            dispatch.tolist(), combine.tolist(), counts.tolist())
    finally:
        link.close()
