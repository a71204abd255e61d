"""The firmware's protocol framing compiled for the host and checked against its Python twin.

A generated project's own src/protocol.cc and src/crc32.c (unchanged, with AddressSanitizer and
UBSan when the host compiler has them) are linked with tests/fixtures/protocol_host/host_driver.cc:
frames Python encodes are parsed by the C parser, frames the C code sends decode in Python, and
seeded random streams of good frames, damaged frames, over-long headers and garbage give the same
frames and the same error events (bad CRC / bad length, with the damaged header's seq) in both.
Also: the generated protocol_constants.h says what toolchain/protocol.py says, and no other
firmware source copies those constants.
"""
from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from toolchain import protocol as P

REPO = Path(__file__).resolve().parents[1]
DRIVER = REPO / "tests" / "fixtures" / "protocol_host" / "host_driver.cc"
SRC_TEMPLATES = REPO / "firmware_templates" / "project" / "src"

needs_host_compilers = pytest.mark.skipif(shutil.which("g++") is None or shutil.which("gcc") is None,
                                          reason="needs the host's gcc and g++")
WARNINGS = ["-Wall", "-Wextra", "-Werror"]
SANITIZERS = ["-fsanitize=address,undefined", "-fno-sanitize-recover=all"]


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """A rendered self-test project (rendering needs no cross compiler)."""
    from toolchain.boards import get_board
    from toolchain.generate.project import render_selftest_project

    dest = tmp_path_factory.mktemp("protocol-host") / "proj"
    dest.mkdir()
    render_selftest_project(get_board("mps2-an386"), dest)
    return dest


def compile_driver(project: Path, out: Path, extra: list[str]) -> subprocess.CompletedProcess:
    src = project / "src"
    crc = subprocess.run(["gcc", "-std=c11", "-O1", "-g", *WARNINGS, *extra, f"-I{src}", "-c", str(src / "crc32.c"),
                          "-o", str(out.with_suffix(".crc32.o"))], capture_output=True, text=True)
    if crc.returncode != 0:
        return crc
    return subprocess.run(["g++", "-std=c++17", "-O1", "-g", *WARNINGS, *extra, f"-I{src}", f"-I{src / 'board'}",
                           str(DRIVER), str(src / "protocol.cc"), str(out.with_suffix(".crc32.o")), "-o", str(out)],
                          capture_output=True, text=True)


@pytest.fixture(scope="module")
def driver(project) -> Path:
    if shutil.which("g++") is None or shutil.which("gcc") is None:
        pytest.skip("needs the host's gcc and g++")
    out = project.parent / "host_driver"
    built = compile_driver(project, out, SANITIZERS)
    if built.returncode != 0 and "sanitize" in built.stderr:  # no libasan/libubsan on this host
        built = compile_driver(project, out, [])
    assert built.returncode == 0, built.stderr[-3000:]
    return out


def run_driver(driver: Path, mode: str, data: bytes = b"") -> bytes:
    done = subprocess.run([str(driver), mode], input=data, capture_output=True, timeout=120)
    assert done.returncode == 0, done.stderr.decode(errors="replace")[-3000:]
    return done.stdout


@pytest.fixture(scope="module")
def limits(driver) -> dict:
    lines = run_driver(driver, "info").decode().split("\n")
    return {k: int(v) for k, v in (line.split() for line in lines if line)}


# ------------------------------------------------------------------------- the Python twin

def python_events(stream: bytes, max_payload: int, rng=None) -> list[tuple]:
    """FrameDecoder's events in the driver's notation, feeding random chunk sizes."""
    decoder = P.FrameDecoder(max_payload=max_payload)
    events, pos = [], 0
    while pos < len(stream):
        step = 1 if rng is None else int(rng.integers(1, 64))
        for event in decoder.feed(stream[pos:pos + step]):
            if isinstance(event, P.BadFrame):
                events.append(("C" if event.reason == "bad_crc" else "L", event.seq))
            else:
                events.append(("F", event.type, event.seq, event.payload))
        pos += step
    return events


def c_events(driver: Path, stream: bytes) -> list[tuple]:
    events = []
    for line in run_driver(driver, "parse", stream).decode().splitlines():
        kind, *rest = line.split()
        if kind == "F":
            events.append(("F", int(rest[0]), int(rest[1]), b"" if rest[2] == "-" else bytes.fromhex(rest[2])))
        else:
            events.append((kind, int(rest[0])))
    return events


def random_stream(rng, max_payload: int, pieces: int = 120) -> tuple[bytes, int]:
    """Good frames mixed with damaged frames, over-long headers, lone sync bytes, truncated
    frames and garbage. Returns (stream, number of good frames put in)."""
    out, good = bytearray(), 0

    def payload():
        size = int(rng.choice([0, 1, 2, 5, 17, 64, max_payload, int(rng.integers(0, max_payload + 1))]))
        data = rng.integers(0, 256, size, dtype=np.uint8)
        if size and rng.random() < 0.3:  # sync pairs inside payloads
            i = int(rng.integers(0, size))
            data[i:i + 2] = [0xA5, 0x5A][: len(data[i:i + 2])]
        return bytes(data)

    def frame():
        return P.encode_frame(int(rng.integers(0, 256)), int(rng.integers(0, 256)), payload())

    for _ in range(pieces):
        kind = rng.choice(["good", "good", "good", "bad_byte", "bad_crc", "too_long", "garbage", "sync_noise",
                           "truncated"])
        if kind == "good":
            out += frame()
            good += 1
        elif kind == "bad_byte":  # any byte of a frame damaged: CRC, payload, header, even the length
            data = bytearray(frame())
            data[int(rng.integers(2, len(data)))] ^= 1 << int(rng.integers(0, 8))
            out += data
        elif kind == "bad_crc":
            data = bytearray(frame())
            data[-1] ^= 0xFF
            out += data
        elif kind == "too_long":
            length = int(rng.integers(max_payload + 1, 0x10000))
            out += P.SYNC + bytes([int(rng.integers(0, 256)), int(rng.integers(0, 256))]) + length.to_bytes(2, "little")
            out += bytes(rng.integers(0, 256, int(rng.integers(0, 12)), dtype=np.uint8))
        elif kind == "garbage":
            out += bytes(rng.integers(0, 256, int(rng.integers(1, 200)), dtype=np.uint8))
        elif kind == "sync_noise":
            out += bytes(rng.choice([b"\xA5", b"\x5A", b"\xA5\xA5", b"\xA5\xA5\x5A", b"\x5A\xA5", b"\xA5\x00\x5A"]))
        else:  # a frame cut short, then the stream goes on
            data = frame()
            out += data[: int(rng.integers(1, len(data)))]
    return bytes(out), good


# --------------------------------------------------------------------------------- tests

def test_generated_constants_header_says_it_comes_from_protocol_py(project):
    text = (project / "src" / "protocol_constants.h").read_text()
    assert text.startswith("// Generated from toolchain/protocol.py")
    table = P.c_constants()
    assert f'#define ROUTEVIT_STOP_SENTINEL "{P.STOP_SENTINEL.decode()}"' in text
    assert f"#define ROUTEVIT_PROTOCOL_VERSION {P.PROTOCOL_VERSION}" in text
    for enum in table["enums"]:
        for m in enum["members"]:
            assert f"#define {m['macro']} {m['hex']}" in text and f"  {m['name']} = {m['macro']}," in text
    assert '#include "protocol_constants.h"' in (project / "src" / "protocol.h").read_text()


def test_no_other_firmware_source_copies_the_protocol_constants():
    table = P.c_constants()
    definitions = [re.compile(rf"\b{m['name']}\s*=") for e in table["enums"] for m in e["members"]]
    definitions += [re.compile(r"\bk(ProtocolVersion|Sync[01]|HeaderBytes|CrcBytes)\s*="),
                    re.compile(r"0x(A5|5A)\b", re.IGNORECASE), re.compile(r"#define\s+ROUTEVIT_(SYNC|MSG|ERROR|COUNTER)_")]
    checked = 0
    for path in sorted(SRC_TEMPLATES.rglob("*.j2")):
        if path.name == "protocol_constants.h.j2":
            continue
        text = path.read_text()
        checked += 1
        assert table["stop_sentinel"] not in text, f"{path.name} spells the stop sentinel; use ROUTEVIT_STOP_SENTINEL"
        for pattern in definitions:
            assert not pattern.search(text), f"{path.name} defines {pattern.pattern}: take it from protocol_constants.h"
    assert checked > 10


@needs_host_compilers
def test_generated_constants_compile_to_the_python_values(project, tmp_path):
    """static_asserts written from the Python enums, compiled as C++ and the macros as C."""
    table = P.c_constants()
    cxx = ['#include "protocol_constants.h"', "#include <string.h>",
           "constexpr bool Same(const char* a, const char* b) { return *a == *b && (*a == 0 || Same(a + 1, b + 1)); }",
           f'static_assert(Same(ROUTEVIT_STOP_SENTINEL, "{table["stop_sentinel"]}"), "sentinel");',
           f"static_assert(routevit::kProtocolVersion == {P.PROTOCOL_VERSION}, \"version\");",
           f"static_assert(routevit::kSync0 == {P.SYNC[0]} && routevit::kSync1 == {P.SYNC[1]}, \"sync\");",
           f"static_assert(routevit::kHeaderBytes == {P.HEADER_BYTES} && routevit::kCrcBytes == {P.CRC_BYTES}, \"sizes\");"]
    c = ['#include "protocol_constants.h"']
    for enum in table["enums"]:
        for m in enum["members"]:
            cxx.append(f"static_assert(routevit::{m['name']} == {m['value']} && "
                       f"sizeof(routevit::{enum['name']}) == 1, \"{m['name']}\");")
            c.append(f"_Static_assert({m['macro']} == {m['value']}, \"{m['macro']}\");")
    (tmp_path / "check.cc").write_text("\n".join(cxx) + "\n")
    (tmp_path / "check.c").write_text("\n".join(c) + "\n")
    for compiler, std, name in (("g++", "-std=c++17", "check.cc"), ("gcc", "-std=c11", "check.c")):
        done = subprocess.run([compiler, std, "-fsyntax-only", *WARNINGS, f"-I{project / 'src'}", str(tmp_path / name)],
                              capture_output=True, text=True)
        assert done.returncode == 0, done.stderr[-3000:]


def test_driver_sees_the_framing_constants(limits, project):
    assert limits["header_bytes"] == P.HEADER_BYTES and limits["crc_bytes"] == P.CRC_BYTES
    assert limits["max_payload"] >= 256 and limits["max_error_message"] == 120


def test_frames_python_encodes_are_parsed_by_the_c_parser(driver, limits):
    rng = np.random.default_rng(11)
    max_payload = limits["max_payload"]
    frames = [(t, s, bytes(rng.integers(0, 256, n, dtype=np.uint8)))
              for t, s, n in [(0x01, 0, 0), (0x03, 255, max_payload), (0xE0, 7, 1), (0x02, 128, max_payload - 1)]]
    frames += [(int(rng.integers(0, 256)), int(rng.integers(0, 256)),
                bytes(rng.integers(0, 256, int(rng.integers(0, 300)), dtype=np.uint8))) for _ in range(200)]
    stream = b"".join(P.encode_frame(t, s, p) for t, s, p in frames)
    assert c_events(driver, stream) == [("F", t, s, p) for t, s, p in frames]


def test_frames_the_c_code_sends_decode_in_python(driver, limits):
    rng = np.random.default_rng(12)
    max_payload = limits["max_payload"]
    lines, expected = [], []
    for i in range(150):
        if i % 5 == 4:  # SendError: code byte + the message cut to kMaxErrorMessage bytes
            seq, code = int(rng.integers(0, 256)), int(rng.integers(1, 8))
            message = bytes(rng.integers(32, 127, int(rng.choice([0, 10, 120, 121, 400])), dtype=np.uint8))
            lines.append(f"error {seq} {code} {message.hex() or '-'}")
            expected.append((P.MsgType.ERROR, seq, P.encode_error(code, message.decode())[: 1 + limits["max_error_message"]]))
        else:
            t, s = int(rng.integers(0, 256)), int(rng.integers(0, 256))
            n = int(rng.choice([0, 1, max_payload, int(rng.integers(0, max_payload + 1))]))
            payload = bytes(rng.integers(0, 256, n, dtype=np.uint8))
            lines.append(f"frame {t} {s} {payload.hex() or '-'}")
            expected.append((t, s, payload))
    sent = run_driver(driver, "encode", ("\n".join(lines) + "\n").encode())
    assert sent == b"".join(P.encode_frame(t, s, p) for t, s, p in expected)  # byte for byte
    parser = P.FrameParser(max_payload=max_payload)
    assert [(f.type, f.seq, f.payload) for f in parser.feed(sent)] == expected
    assert parser.errors == [] and bytes(parser.text) == b""
    code, message = P.decode_error(expected[4][2])
    assert 1 <= code <= 7 and len(message) <= 120


@pytest.mark.parametrize("seed", range(12))
def test_random_streams_give_the_same_frames_and_errors_in_c_and_python(driver, limits, seed):
    rng = np.random.default_rng(1000 + seed)
    max_payload = limits["max_payload"]
    stream, good = random_stream(rng, max_payload)
    from_c = c_events(driver, stream)
    assert from_c == python_events(stream, max_payload)  # byte by byte, like the UART
    assert from_c == python_events(stream, max_payload, rng)  # and in random chunks
    kinds = [e[0] for e in from_c]
    assert kinds.count("C") > 0 and kinds.count("L") > 0  # the resync paths really ran
    assert kinds.count("F") >= good // 2  # most good frames survive their damaged neighbours


def test_the_documented_resync_cases(driver, limits):
    """docs/protocol.md: a bad frame is reported with its seq, then scanning restarts after its
    first sync byte, so a good frame right behind it (or inside it) is not lost."""
    max_payload = limits["max_payload"]
    good = P.encode_frame(P.MsgType.PING, 9, b"inner")
    bad = bytearray(P.encode_frame(P.MsgType.PING, 1, b"xy"))
    bad[-1] ^= 0xFF
    too_long = P.SYNC + bytes([3, 8]) + (max_payload + 1).to_bytes(2, "little")
    hidden = P.SYNC + bytes([3, 5]) + (len(good) + 2).to_bytes(2, "little") + good  # a frame inside a bad one
    cases = {
        bytes(bad) + good: [("C", 1), ("F", 3, 9, b"inner")],
        too_long + good: [("L", 8), ("F", 3, 9, b"inner")],
        b"\x00\xA5garbage\xA5\xA5\x5A" + good[2:] + good: [("F", 3, 9, b"inner"), ("F", 3, 9, b"inner")],
        hidden + bytes(6): [("C", 5), ("F", 3, 9, b"inner")],  # 2 payload bytes + a wrong CRC
        good[:-1]: [],
    }
    for stream, expected in cases.items():
        assert c_events(driver, stream) == expected, stream.hex()
        assert python_events(stream, max_payload) == expected, stream.hex()
