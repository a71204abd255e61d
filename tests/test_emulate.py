"""The emulator runners and the protocol session against real firmware under real QEMU.

CI part (no TFLM): the self-test firmware (`make selftest` in a generated project) answers
HELLO/PING/ROUTE; these tests kill, freeze and disturb it and check what a user sees. The tflm
part runs a model firmware on test images and compares with the host reference bit for bit.
"""
from __future__ import annotations

import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO, error_lines, generate_selftest_project, run_routevit
from toolchain import protocol
from toolchain.errors import RoutevitError

pytestmark = pytest.mark.qemu

needs_qemu = pytest.mark.skipif(shutil.which("qemu-system-arm") is None or shutil.which("arm-none-eabi-gcc") is None,
                                reason="needs qemu-system-arm and arm-none-eabi-gcc")


def pid_alive(pid: int) -> bool:
    """True if `pid` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] != "Z"
    except FileNotFoundError:
        return False


def qemu_pids(needle: str = "") -> list[int]:
    """Live qemu-system-arm processes whose command line contains `needle`."""
    pids = []
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue
        if b"qemu-system-arm" in cmdline and needle.encode() in cmdline and pid_alive(int(entry)):
            pids.append(int(entry))
    return pids


def wait_dead(pid: int, timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not pid_alive(pid):
            return True
        time.sleep(0.05)
    return False


@pytest.fixture(scope="module")
def selftest_project(tmp_path_factory) -> Path:
    if shutil.which("qemu-system-arm") is None or shutil.which("arm-none-eabi-gcc") is None:
        pytest.skip("needs qemu-system-arm and arm-none-eabi-gcc")
    return generate_selftest_project("mps2-an386", tmp_path_factory.mktemp("selftest") / "proj")


@pytest.fixture
def qemu_link(selftest_project):
    from toolchain.emulate.qemu import open_qemu

    link = open_qemu(selftest_project / "build" / "selftest.elf", "mps2-an386")
    yield link
    link.close()
    assert wait_dead(link.emulator.pid), "QEMU outlived its link"


# -- the session against the real self-test firmware -----------------------------------------

def test_selftest_cli_checks_routing_and_stops_qemu(selftest_project):
    result = run_routevit("emulate", selftest_project, "--selftest", "--json", timeout=120)
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["hello"]["board"] == "mps2-an386"
    assert data["route_checks"] >= 4 * len(data["hello"]["routed_layers"]) > 0
    assert data["stopped_cleanly"] is True
    assert "self-test firmware answered HELLO" in result.stderr


def test_infer_on_selftest_build_is_a_clear_error(qemu_link):
    from toolchain.emulate.session import Session

    session = Session(qemu_link, timeout_s=10)
    session.hello()
    sent = []  # every byte written to the device while infer() runs
    real_write = session.port.write
    session.port.write = lambda data: sent.append(bytes(data)) or real_write(data)
    try:
        with pytest.raises(RoutevitError, match="self-test build"):
            session.infer(np.zeros((1, 28, 28, 1), np.int8))
    finally:
        session.port.write = real_write
    assert sent == [], "INFER was sent to a firmware that has no model"
    assert session.ping(b"still fine") == b"still fine"


def test_wrong_image_size_is_refused_before_sending():
    from toolchain.emulate.inputs import check_image_sizes

    hello = protocol.Hello(version=1, counter_kind=0, max_payload=2048, arena_bytes=1, model_id=1,
                           input_shape=(1, 28, 28, 1), input_scale=0.5, input_zero_point=-1, num_classes=10,
                           routed_layers=(), board="mps2-an386")
    check_image_sizes(np.zeros((3, 28, 28, 1), np.int8), hello)  # right size: no error
    with pytest.raises(RoutevitError, match=r"image 0: 1024 values \(32x32x1\).*expects 28x28x1"):
        check_image_sizes(np.zeros((2, 32, 32, 1), np.int8), hello)


# -- ERROR frames from the real firmware through the Session -------------------------------------

class DamagingPort:
    """The session's port, damaging the next `times` request frames it writes (as a noisy line
    towards the device would): `damage(bytearray)` alters one frame in place."""

    def __init__(self, port, damage, times: int):
        self._port, self._damage, self.left = port, damage, times

    def write(self, data):
        if self.left and bytes(data[:2]) == protocol.SYNC:
            self.left -= 1
            data = bytearray(data)
            self._damage(data)
        return self._port.write(bytes(data))

    def __getattr__(self, name):
        return getattr(self._port, name)


def flip_a_payload_bit(frame: bytearray) -> None:
    frame[protocol.HEADER_BYTES] ^= 0x01  # the device sees a CRC mismatch


def claim_65535_bytes(frame: bytearray) -> None:
    frame[4:6] = b"\xff\xff"  # above the firmware's kMaxPayload


def damaged_session(qemu_link, damage, times: int):
    from toolchain.emulate.link import Link
    from toolchain.emulate.session import Session

    session = Session(qemu_link, timeout_s=5)
    session.hello()
    port = DamagingPort(qemu_link.port, damage, times)
    session.link = Link(port=port, backend=qemu_link.backend, target=qemu_link.target, emulator=qemu_link.emulator)
    session.port = port
    return session


@pytest.mark.parametrize("damage, code", [(flip_a_payload_bit, "bad_crc"), (claim_65535_bytes, "bad_length")])
def test_a_request_the_firmware_got_damaged_is_resent(qemu_link, damage, code, caplog):
    session = damaged_session(qemu_link, damage, times=2)
    with caplog.at_level("INFO", logger="routevit"):
        assert session.ping(b"abc") == b"abc"
    assert session.resends == 2 and session.resyncs == 0
    assert f"(ERROR {code}); sending it again" in caplog.text
    assert session.ping(b"undamaged") == b"undamaged" and session.resends == 2


@pytest.mark.parametrize("damage, code", [(flip_a_payload_bit, "bad_crc"), (claim_65535_bytes, "bad_length")])
def test_a_line_that_damages_every_request_is_a_device_error(qemu_link, damage, code):
    from toolchain.emulate.session import DeviceError

    session = damaged_session(qemu_link, damage, times=10)
    with pytest.raises(DeviceError) as info:
        session.ping(b"abc")
    assert info.value.code_name == code and session.resends == 3
    message = info.value.format_message()
    assert message.startswith(f"qemu mps2-an386: PING: the device answered ERROR {code} (code ") and "\n" not in message
    assert "resynchronising" in message and "check the baud rate" in message


def test_error_frames_from_the_firmware_are_one_line_device_errors(qemu_link):
    from toolchain.emulate.session import DeviceError, Session

    session = Session(qemu_link, timeout_s=5)
    hello = session.hello()
    cases = [  # (request, code name, the firmware's message)
        (lambda: session.route(0, np.zeros((3, 3), np.int8)), "ROUTE layer 0", "bad_size",
         "route: payload must be 1 + N*E bytes"),
        (lambda: session.request(protocol.MsgType.INFER, bytes(16), "INFER"), "INFER", "no_model",
         "infer: this build has no model (self-test)"),
        (lambda: session.request(0x7F, b"", "message 0x7f"), "message 0x7f", "unknown_type", "unknown message type"),
        (lambda: session.request(protocol.MsgType.ROUTE, bytes([len(hello.routed_layers)]) + bytes(4), "ROUTE"),
         "ROUTE", "bad_layer", "route: no such routed layer"),
        (lambda: session.request(protocol.MsgType.HELLO_REQ, b"x", "HELLO"), "HELLO", "bad_size",
         "hello: payload must be empty"),
    ]
    for ask, what, name, device_message in cases:
        with pytest.raises(DeviceError) as info:
            ask()
        error = info.value
        assert (error.code_name, error.what, error.device_message) == (name, what, device_message)
        assert isinstance(error, RoutevitError)
        message = error.format_message()
        assert message.startswith(f'qemu mps2-an386: {what}: the device answered ERROR {name} (code {error.code}): '
                                  f'"{device_message}"; '), message
        assert "\n" not in message
    assert session.resends == 0 and session.resyncs == 0
    assert session.ping(b"still fine") == b"still fine"
    with pytest.raises(RoutevitError, match=r"ROUTE layer 99: the firmware has 6 routed layers"):
        session.route(99, np.zeros((16, 4), np.int8))


# -- the emulator is always reaped ---------------------------------------------------------------

def test_killing_qemu_mid_run_is_a_clear_error(qemu_link):
    from toolchain.emulate.session import DeviceError, Session

    session = Session(qemu_link, timeout_s=10)
    session.hello()
    pid = qemu_link.emulator.pid
    killer = threading.Timer(0.3, lambda: os.kill(pid, signal.SIGKILL))
    killer.start()
    rng = np.random.default_rng(0)
    start = time.monotonic()
    with pytest.raises(DeviceError) as info:
        while time.monotonic() - start < 20:
            session.route(2, rng.integers(-128, 128, size=(64, 8)).astype(np.int8))
    killer.join()
    message = str(info.value)
    assert "qemu mps2-an386" in message and "last UART bytes:" in message
    assert "exited with code -9" in message or "connection broke" in message
    assert "\n" not in message
    assert time.monotonic() - start < 15, "a dead emulator must not wait for the full timeout"


def test_frozen_qemu_times_out_and_is_reaped(qemu_link):
    from toolchain.emulate.session import DeviceError, Session

    session = Session(qemu_link, timeout_s=1.0)
    session.hello()
    pid = qemu_link.emulator.pid
    os.kill(pid, signal.SIGSTOP)  # a hung emulator: alive, silent
    start = time.monotonic()
    with pytest.raises(DeviceError, match=r"PING: no answer within 1 s \(twice, with a resync"):
        session.ping(b"x")
    assert time.monotonic() - start < 5
    qemu_link.close()
    assert wait_dead(pid), "a stopped QEMU must still be killed"


# A program started in the background by a non-interactive shell (as CI may start the tests)
# inherits SIGINT as ignored; a user's Ctrl-C reaches a program whose SIGINT is the default.
REAPER_SCRIPT = textwrap.dedent("""
    import signal, sys, time
    signal.signal(signal.SIGINT, signal.default_int_handler)
    from toolchain.emulate.qemu import open_qemu
    from toolchain.emulate.session import Session
    link = open_qemu(sys.argv[1], "mps2-an386")
    Session(link).hello()
    print(link.emulator.pid, flush=True)
    time.sleep(600)
""")


@needs_qemu
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL])
def test_qemu_dies_with_its_host_process(selftest_project, sig):
    """Ctrl-C, a termination request, even SIGKILL of Python: no QEMU is left behind."""
    proc = subprocess.Popen([sys.executable, "-c", REAPER_SCRIPT, str(selftest_project / "build" / "selftest.elf")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
    try:
        line = proc.stdout.readline()
        assert line.strip().isdigit(), proc.stderr.read()
        qemu_pid = int(line)
        assert pid_alive(qemu_pid)
        proc.send_signal(sig)
        proc.wait(timeout=90)  # seconds: CI runs on 2 busy cores (it timed out at 20 once there)
        assert wait_dead(qemu_pid), f"QEMU {qemu_pid} survived {sig.name} of its host process"
    finally:
        if proc.poll() is None:
            proc.kill()


# -- line noise ---------------------------------------------------------------------------------

def test_garbage_sent_to_the_device_is_skipped(qemu_link):
    from toolchain.emulate.session import Session

    session = Session(qemu_link, timeout_s=5)
    session.hello()
    noise = (b"\x00\xff\xa5garbage\x5a"  # not frames at all
             + b"\xa5\x5a\x03\x77\xff\xff"  # a header claiming 65535 bytes -> bad_length, resync
             + protocol.encode_frame(protocol.MsgType.PING, 0x42, b"abc")[:-1] + b"\x00")  # bad CRC
    qemu_link.port.write(noise)
    assert session.ping(b"after noise") == b"after noise"
    assert session.resyncs == 0
    # The firmware answered the damaged frames with ERROR frames of their own seq: skipped.
    assert session.hello().board == "mps2-an386"


def test_noise_opening_a_bogus_frame_is_flushed(qemu_link):
    from toolchain.emulate.session import Session

    session = Session(qemu_link, timeout_s=1.5)
    session.hello()
    # A plausible header (length 700 <= max payload): the firmware waits for 700 more bytes and
    # would swallow the next request; the session flushes it and sends the request again.
    qemu_link.port.write(b"\xa5\x5a\x03\x10\xbc\x02")
    assert session.ping(b"recovered") == b"recovered"
    assert session.resyncs == 1


class NoisyRelay:
    """A TCP relay between QEMU's UART socket and the session that damages device->host bytes:
    `noise` is inserted before every chunk, and `corrupt(chunk_index, data)` may alter a chunk."""

    def __init__(self, upstream_port: int, noise: bytes = b"", corrupt=None, replace_all: bool = False):
        self.upstream = socket.create_connection(("127.0.0.1", upstream_port))
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(1)
        self.port = self.listener.getsockname()[1]
        self.noise, self.corrupt, self.replace_all = noise, corrupt, replace_all
        self.chunks = 0
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        client, _ = self.listener.accept()
        sockets = [client, self.upstream]
        held = b""  # device bytes arrive one by one: forward them as one chunk once the line is quiet
        try:
            while True:
                readable, _, _ = select.select(sockets, [], [], 0.02)
                if not readable and held:
                    client.sendall(self._damage(held))
                    held = b""
                for sock in readable:
                    data = sock.recv(4096)
                    if not data:
                        return
                    if sock is client:
                        self.upstream.sendall(data)
                    else:
                        held += data
        except OSError:
            return
        finally:
            client.close()
            self.upstream.close()

    def _damage(self, data: bytes) -> bytes:
        if self.replace_all:
            return bytes((b * 7 + 3) & 0xFF for b in data).replace(b"\xa5", b"\x11")
        if self.corrupt:
            data = self.corrupt(self.chunks, data)
        self.chunks += 1
        return self.noise + data


def open_qemu_behind_relay(elf: Path, **relay_args):
    """QEMU with its UART reached through a NoisyRelay; returns the Link (session side)."""
    import serial

    from toolchain.emulate.link import Link, free_tcp_port
    from toolchain.emulate.process import EmulatorProcess
    from toolchain.emulate.qemu import qemu_argv

    port = free_tcp_port()
    proc = EmulatorProcess(qemu_argv("mps2-an386", elf, f"tcp:127.0.0.1:{port},server=on,wait=on"), "qemu",
                           Path(f"/tmp/routevit-test-qemu-{port}.log")).start()
    deadline = time.monotonic() + 20
    while True:
        try:
            relay = NoisyRelay(port, **relay_args)
            break
        except ConnectionRefusedError:
            if time.monotonic() > deadline:
                proc.kill()
                raise
            time.sleep(0.05)
    port_obj = serial.serial_for_url(f"socket://127.0.0.1:{relay.port}", timeout=0.05)
    return Link(port=port_obj, backend="qemu", target="qemu mps2-an386 (noisy line)", emulator=proc)


def test_noise_from_the_device_is_skipped_and_damaged_answers_are_recovered(selftest_project):
    from toolchain.emulate.session import Session

    def flip_one_bit_of_the_second_answer(index, data):
        if index == 1 and len(data) > 8:
            data = bytearray(data)
            data[7] ^= 0x01
            data = bytes(data)
        return data

    link = open_qemu_behind_relay(selftest_project / "build" / "selftest.elf",
                                  noise=b"\x00noise\xa5\xa5\x5a\x01", corrupt=flip_one_bit_of_the_second_answer)
    try:
        session = Session(link, timeout_s=1.5)
        assert session.hello().board == "mps2-an386"
        assert session.ping(b"0123456789abcdef") == b"0123456789abcdef"  # its answer was damaged
        assert session.ping(b"x" * 300) == b"x" * 300
        assert session.bad_frames >= 1 and session.resyncs >= 1
        assert session.garbage_bytes > 0
    finally:
        link.close()
    assert wait_dead(link.emulator.pid)


def test_a_line_of_pure_garbage_is_a_clear_error(selftest_project):
    from toolchain.emulate.session import DeviceError, Session

    link = open_qemu_behind_relay(selftest_project / "build" / "selftest.elf", replace_all=True)
    try:
        session = Session(link, timeout_s=1.0)
        with pytest.raises(DeviceError) as info:
            session.hello()
        message = str(info.value)
        assert "HELLO: no answer within 1 s" in message
        last = message.split("last UART bytes: ", 1)[1]
        assert last != "(no bytes received)" and "|" in last  # hex and printable text of the noise
    finally:
        link.close()
    assert wait_dead(link.emulator.pid)


# -- a serial port: QEMU behind a pseudo-terminal stands in for a board ---------------------------

def test_serial_port_backend_talks_to_qemu_through_a_pty(selftest_project):
    from toolchain.emulate.selftest import selftest_checks
    from toolchain.emulate.qemu import open_qemu_pty
    from toolchain.emulate.serialport import open_serial_port
    from toolchain.emulate.session import Session

    proc, device = open_qemu_pty(selftest_project / "build" / "selftest.elf", "mps2-an386")
    try:
        assert device.startswith("/dev/pts/")
        link = open_serial_port(device, 115200)
        with Session(link, timeout_s=10) as session:
            hello = session.hello()
            assert hello.board == "mps2-an386"
            assert selftest_checks(session) == 4 * len(hello.routed_layers)
            assert session.stop() is True
        assert proc.wait(10) == 0  # the firmware ended QEMU through semihosting
    finally:
        proc.kill()


def test_missing_serial_port_is_one_line_error(tmp_path):
    from toolchain.emulate.serialport import open_serial_port

    with pytest.raises(RoutevitError, match=r"/nonexistent/ttyACM9: cannot open the serial port"):
        open_serial_port("/nonexistent/ttyACM9")


# -- with TFLM: a model firmware against the host reference --------------------------------------

# The int8 fixture points ROUTEVIT_CACHE at a temporary folder; TFLM trees and cached TFLM
# libraries live in the user's cache, so the firmware commands get the cache as it was.
USER_CACHE = os.environ.get("ROUTEVIT_CACHE") or str(Path.home() / ".cache" / "routevit")


def run_with_user_cache(*args, timeout=3600):
    return run_routevit(*args, env={"ROUTEVIT_CACHE": USER_CACHE}, timeout=timeout)


@pytest.fixture(scope="module")
def int8_project(int8_artifacts, tmp_path_factory):
    """The int8 fixture's routed QAT export (SSW60-layout data, 16x16x3, 3 classes) generated for
    mps2-an386 and built with TFLM: (export, project, dataset)."""
    from toolchain.errors import RoutevitError
    from toolchain.tflm import find_tree

    try:
        find_tree(cache=Path(USER_CACHE))
    except RoutevitError as exc:
        pytest.skip(f"no TFLM tree: run `routevit setup-tflm` ({exc.format_message()})")
    export = int8_artifacts["exp"]
    project = tmp_path_factory.mktemp("int8-firmware") / "proj"
    for args in (("generate", export, "--board", "mps2-an386", "--out", project), ("build", project)):
        result = run_with_user_cache(*args)
        assert result.returncode == 0, result.stderr
    return export, project, int8_artifacts["data"]


@pytest.mark.tflm
def test_emulate_routed_firmware_matches_host_and_repeats(int8_project, tmp_path):
    export, project, data = int8_project
    reports = []
    for run in range(2):
        out = tmp_path / f"report-{run}"
        result = run_with_user_cache("emulate", project, "--data", data, "--export", export, "--out", out,
                                     "--json", timeout=900)
        assert result.returncode == 0, result.stderr
        json.loads(result.stdout)
        reports.append(json.loads((out / "report.json").read_text()))
    report = reports[0]
    assert report["images"] == 12
    assert report["agreement_device_vs_host"]["bit_exact_rate"] == 1.0, report["agreement_device_vs_host"]
    assert report["expert_counts_match_host"] is True
    counters = [[row["counter"] for row in r["per_image"]] for r in reports]
    assert counters[0] == counters[1] and min(counters[0]) > 100_000
    assert report["counter"]["kind"] == 0 and report["memory"]["arena_bytes"] > 0
    assert report["memory"]["linked"]["flash_bytes"] > report["memory"]["model_bytes"]
    layer = report["experts"]["layers"][0]
    n, e, c = layer["num_patches"], layer["num_experts"], layer["capacity"]
    assert sum(layer["patches_per_expert"]) + layer["dropped_patches"] == 12 * n
    assert max(layer["patches_per_expert"]) <= 12 * c
    # The routing map is the device's own routing (ROUTE) of the host's router scores, and it
    # agrees with the expert counts the device reported for the same images.
    assert report["routing_maps"]
    for entry in report["routing_maps"]:
        assignment = entry["layers"][0]["assignment"]
        assert entry["layers"][0]["source"] == "device routing" and len(assignment) == n
        assert [assignment.count(x) for x in range(e)] == report["per_image"][entry["index"]]["device_expert_counts"][0]
    for name in ("report.md", "accuracy.png", "routing_map.png", "experts.png", "confusion.png"):
        assert (tmp_path / "report-0" / name).is_file()


@pytest.mark.tflm
def test_evaluate_port_uses_the_same_session_against_qemu_behind_a_pty(int8_project, tmp_path):
    """`routevit evaluate PROJ --port /dev/pts/N`: QEMU on a pseudo-terminal stands in for a board."""
    from toolchain.emulate.qemu import open_qemu_pty

    export, project, data = int8_project
    proc, device = open_qemu_pty(project / "build" / "firmware.elf", "mps2-an386")
    try:
        result = run_with_user_cache("evaluate", project, "--port", device, "--data", data, "--limit", "4",
                                     "--export", export, "--out", tmp_path / "board", "--json", timeout=900)
        assert proc.poll() is None, "a real board is not stopped after an evaluation"
    finally:
        proc.kill()
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["backend"] == "serial" and summary["target"] == device
    assert summary["agreement_device_vs_host"]["bit_exact_images"] == 4
    assert (tmp_path / "board" / "report.md").is_file()


@pytest.mark.tflm
def test_hung_inference_is_reported_and_qemu_reaped(int8_project, tmp_path):
    """A per-image timeout far below one inference's time: exit 2, one line with the UART bytes."""
    export, project, data = int8_project
    result = run_with_user_cache("emulate", project, "--data", data, "--limit", "2", "--export", export,
                                 "--out", tmp_path / "r", "--timeout-per-image", "0.001", "--no-build", timeout=300)
    assert result.returncode == 2
    lines = error_lines(result.stderr)
    assert len(lines) == 1 and "INFER image 0: no answer within 0.001 s" in lines[0] and "last UART bytes:" in lines[0]
    assert not (tmp_path / "r").exists()
    assert qemu_pids(str(project)) == [], "a QEMU running this project's firmware was left behind"


@pytest.mark.tflm
@pytest.mark.slow
@pytest.mark.parametrize("board", ["mps2-an386", "mps2-an500"])
def test_fmnist_routed_firmware_is_bit_exact_with_host_reference(board, fmnist_routed_export, tmp_path):
    from tflm_support import tflm_tree

    tflm_tree()
    export = fmnist_routed_export
    project = tmp_path / f"proj-{board}"
    result = run_with_user_cache("generate", export, "--board", board, "--out", project, timeout=600)
    assert result.returncode == 0, result.stderr
    # CMSIS-NN kernels: the same integers as the reference kernels (checked on the demo export and
    # in benchmarks/qemu_benchmark.py, which also runs reference kernels) at 1/6 of the emulated
    # instructions. 60 images on the M4 (benchmarks/ run 200), 20 on the M7 (same C, other core
    # flags), to keep CI under its 45 minutes; on the M4 a repeat run checks counts on 20.
    result = run_with_user_cache("build", project, "--kernels", "cmsis-nn", timeout=3600)
    assert result.returncode == 0, result.stderr
    reports = []
    images = 60 if board == "mps2-an386" else 20
    runs = (images, 20) if board == "mps2-an386" else (images,)
    # on two QEMU instances (the report is the one of --jobs 1; tests/test_emulate_runs.py).
    for run, limit in enumerate(runs):
        out = tmp_path / f"report-{run}"
        result = run_with_user_cache("emulate", project, "--backend", "qemu", "--data", "fashion-mnist",
                                     "--limit", str(limit), "--export", export, "--out", out, "--json",
                                     "--no-build", "--jobs", "2" if run == 0 else "1", timeout=7200)
        assert result.returncode == 0, result.stderr
        reports.append(json.loads((out / "report.json").read_text()))
    first = reports[0]
    agreement = first["agreement_device_vs_host"]
    assert agreement["images"] == images
    assert agreement["bit_exact_rate"] == 1.0, agreement["mismatched_images"]
    assert first["expert_counts_match_host"] is True
    counters = [[row["counter"] for row in r["per_image"]] for r in reports]
    # Repeatable under -icount to the counter's resolution: one SysTick tick, 40 instructions
    # (where inside a tick a measurement starts depends on what the instance ran before).
    assert all(abs(a - b) <= 40 for r in counters[1:] for a, b in zip(counters[0][:20], r)), counters
    for name in ("report.md", "accuracy.png", "routing_map.png", "experts.png", "confusion.png"):
        assert (tmp_path / "report-0" / name).is_file()


# -- the demo's firmware stages ---------------------------------------------------------------

@pytest.mark.slow
def test_demo_without_any_way_to_tflm_stops_after_host_evaluation_with_a_report(int8_artifacts, tmp_path,
                                                                                 monkeypatch, capsys):
    """No TFLM tree, no local copies and no network (clones from a folder that does not exist):
    one line on how to get TFLM, and the host reference's report."""
    from toolchain import demo

    monkeypatch.setenv("ROUTEVIT_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.delenv("ROUTEVIT_TFLM_FROM", raising=False)
    monkeypatch.setenv("ROUTEVIT_TFLM_GIT_URL", f"file://{tmp_path}/no-such-mirror/{{owner}}/{{name}}.git")
    ctx = demo.DemoContext(out=tmp_path / "demo", config=demo.DEFAULT_CONFIG, data=int8_artifacts["data"],
                           quick=True, seed=0, paths={"export": int8_artifacts["exp"]})
    numbers = demo.stage_generate(ctx)
    assert numbers["board"] == "mps2-an386" and (ctx.out / "project" / "project.json").is_file()
    capsys.readouterr()
    built = demo.stage_build(ctx)
    said = [line for line in capsys.readouterr().err.splitlines() if line.strip() and not line.startswith("[")]
    assert built["skipped"] is True
    assert said[-1].startswith("TFLM could not be set up") and "ROUTEVIT_TFLM_FROM" in said[-1]
    report = json.loads((ctx.out / "report" / "report.json").read_text())
    assert report["backend"] == "host" and report["top1"]["host_int8"] is not None
    assert any("no firmware was built" in note for note in report["notes"])
    assert demo.stage_emulate(ctx)["skipped"] is True


@pytest.mark.tflm
def test_a_missing_tflm_tree_is_set_up_from_local_copies(tmp_path, monkeypatch):
    """What `routevit demo` and `routevit build` do on a fresh machine with ROUTEVIT_TFLM_FROM."""
    from tflm_support import mirror_root

    from toolchain.tflm import PINNED_COMMIT, installed_trees
    from toolchain.tflm.setup import ensure_tree

    copies = mirror_root()
    if copies is None:
        pytest.skip("no local TFLM copies: set ROUTEVIT_TFLM_FROM=DIR (CI: ../shared/third_party)")
    cache = tmp_path / "cache"
    monkeypatch.setenv("ROUTEVIT_TFLM_FROM", str(copies))
    assert installed_trees(cache) == []
    tree = ensure_tree(cache)
    assert tree.commit == PINNED_COMMIT and installed_trees(cache) == [tree.root]
    assert ensure_tree(cache).root == tree.root  # found, not set up again
