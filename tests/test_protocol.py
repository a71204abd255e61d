"""Host side of the UART protocol: framing, CRC, resync, message codecs."""
import struct
import zlib

import numpy as np
import pytest

from toolchain import protocol as P
from toolchain.errors import RoutevitError


def test_frame_layout_and_crc_match_the_spec():
    frame = P.encode_frame(P.MsgType.PING, 0x42, b"abc")
    assert frame[:2] == b"\xA5\x5A"
    assert frame[2:6] == bytes([0x03, 0x42, 3, 0])
    assert frame[6:9] == b"abc"
    assert struct.unpack("<I", frame[9:])[0] == zlib.crc32(frame[2:9])


def test_parser_skips_noise_and_handles_split_input():
    frames = [P.encode_frame(P.MsgType.PONG, i, bytes(range(i))) for i in range(5)]
    stream = b"\x00\xA5junk\xA5" + b"".join(f + b"ROUTEVIT" for f in frames)
    parser = P.FrameParser()
    got = []
    for byte in stream:  # one byte at a time, like a slow UART
        got += parser.feed(bytes([byte]))
    assert [(f.type, f.seq, f.payload) for f in got] == [(0x83, i, bytes(range(i))) for i in range(5)]
    assert parser.errors == []


def test_bad_crc_is_reported_and_the_next_frame_recovered():
    good = P.encode_frame(P.MsgType.PING, 2, b"ok")
    bad = bytearray(P.encode_frame(P.MsgType.PING, 1, b"xy"))
    bad[-1] ^= 0xFF
    decoder = P.FrameDecoder()
    events = decoder.feed(bytes(bad) + good)
    assert events[0] == P.BadFrame("bad_crc", 1)
    assert events[1] == P.Frame(0x03, 2, b"ok")


def test_length_above_limit_resyncs_inside_the_bad_frame():
    good = P.encode_frame(P.MsgType.PING, 9, b"inner")
    bogus = b"\xA5\x5A\x03\x08" + struct.pack("<H", 5000)
    decoder = P.FrameDecoder(max_payload=1024)
    events = decoder.feed(bogus + good)
    assert events == [P.BadFrame("bad_length", 8), P.Frame(0x03, 9, b"inner")]


def test_hello_roundtrip():
    hello = P.Hello(1, 0, 788, 1428, 0x1122334455667788, (1, 12, 12, 1), 0.0078125, -3, 10,
                    (P.RoutedLayerInfo(16, 4, 5, 1), P.RoutedLayerInfo(7, 3, 2, 2)), "mps2-an386")
    assert P.decode_hello(P.encode_hello(hello)) == hello
    with pytest.raises(P.ProtocolError):
        P.decode_hello(P.encode_hello(hello)[:-1])


def test_routed_and_result_codecs():
    shape = P.RoutedLayerInfo(num_patches=5, num_experts=3, capacity=2, top_k=2)
    counts, dispatch, combine = [2, 1, 0], [0, 3, 1, 5, 5, 5], [0, 2, 1, 6, 6, 6, 6, 6, 6, 6]
    routed = P.decode_routed(P.encode_routed(counts, dispatch, combine), shape)
    assert routed.counts.tolist() == counts and routed.dispatch.tolist() == dispatch
    assert routed.combine.tolist() == combine
    with pytest.raises(P.ProtocolError):
        P.decode_routed(P.encode_routed(counts, dispatch, combine)[:-4], shape)
    payload = P.encode_result(123456789012, np.arange(-5, 5, dtype=np.int8), [[4, 1, 0]])
    result = P.decode_result(payload, [shape])
    assert result.counter == 123456789012
    assert result.logits.tolist() == list(range(-5, 5))
    assert [c.tolist() for c in result.expert_counts] == [[4, 1, 0]]
    assert P.decode_result(payload, [3]).counter == 123456789012  # expert counts as plain ints
    with pytest.raises(P.ProtocolError):
        P.decode_result(payload, [])


def test_route_request_encoding_and_errors():
    scores = np.array([[1, -2], [3, 3]], np.int8)
    assert P.encode_route(2, scores) == bytes([2, 1, 0xFE, 3, 3])
    with pytest.raises(ValueError):
        P.encode_route(0, scores.astype(np.int32))
    assert P.decode_error(P.encode_error(P.ErrorCode.BAD_LAYER, "no such layer")) == (7, "no such layer")
    assert P.error_name(1) == "bad_crc" and P.error_name(99) == "code_99"


def test_c_constants_table_is_the_python_definitions():
    table = P.c_constants()
    assert table["version"] == P.PROTOCOL_VERSION
    assert bytes(int(b, 16) for b in table["sync"]) == P.SYNC
    assert (table["header_bytes"], table["crc_bytes"]) == (P.HEADER_BYTES, P.CRC_BYTES)
    assert table["stop_sentinel"].encode() == P.STOP_SENTINEL
    enums = {e["python"]: e for e in table["enums"]}
    for enum_cls in (P.MsgType, P.ErrorCode, P.CounterKind):
        members = enums[enum_cls.__name__]["members"]
        assert [m["value"] for m in members] == [int(m) for m in enum_cls]
        names = [m["name"] for m in members]
        assert len(set(names)) == len(names) and all(n.startswith("k") for n in names)
    all_names = [m["name"] for e in table["enums"] for m in e["members"]]
    assert len(set(all_names)) == len(all_names)  # C++ enumerators share the namespace
    # the names the firmware code uses
    assert {"kHelloRequest", "kError", "kErrorBadCrc", "kErrorNoModel", "kCounterCycles"} <= set(all_names)


def test_error_frame_becomes_one_line_device_error():
    payload = P.encode_error(P.ErrorCode.NO_MODEL, "infer: this build has no model (self-test)\n")
    error = P.device_error("qemu mps2-an386", "INFER", payload, seq=9)
    assert isinstance(error, RoutevitError) and error.exit_code == 2
    assert (error.code, error.code_name, error.seq, error.what) == (6, "no_model", 9, "INFER")
    assert error.device_message == "infer: this build has no model (self-test)\n"
    message = error.format_message()
    assert "\n" not in message
    assert message.startswith('qemu mps2-an386: INFER: the device answered ERROR no_model (code 6): '
                              '"infer: this build has no model (self-test)?"; ')
    assert "routevit build PROJ" in message
    unknown = P.device_error("board", "PING", bytes([99]) + b"\x00\xffhm")
    assert unknown.code_name == "code_99" and '"??hm"' in unknown.format_message()
    assert P.DeviceError("plain").code is None  # timeouts and crashes carry no code


# --------------------------------------------------------------- Session without a device

class FakeDevice:
    """A pyserial-like port with a scripted device behind it: `answers(frame)` returns the bytes
    the device sends for each request it parses."""

    def __init__(self, answers):
        self.answers = answers
        self.parser = P.FrameParser()
        self.out = bytearray()
        self.requests = []

    def write(self, data):
        for frame in self.parser.feed(data):
            self.requests.append(frame)
            self.out += self.answers(frame, len(self.requests))

    def flush(self):
        pass

    @property
    def in_waiting(self):
        return len(self.out)

    def read(self, n):
        data, self.out[:] = bytes(self.out[:n]), self.out[n:]
        return data

    def close(self):
        pass


def fake_session(answers, timeout_s=1.0):
    from toolchain.emulate.link import Link
    from toolchain.emulate.session import Session

    port = FakeDevice(answers)
    return Session(Link(port=port, backend="serial", target="fake board"), timeout_s=timeout_s), port


def test_session_matches_answers_by_sequence_number():
    def pong_with_a_stale_one_first(frame, _):
        return (b"noise" + P.encode_frame(P.MsgType.PONG, frame.seq - 1, b"stale")
                + P.encode_frame(P.MsgType.PONG, frame.seq, frame.payload))

    session, _ = fake_session(pong_with_a_stale_one_first)
    assert session.ping(b"first") == b"first"
    assert session.ping(b"second") == b"second"
    assert session.garbage_bytes == 10


@pytest.mark.parametrize("code", [P.ErrorCode.BAD_CRC, P.ErrorCode.BAD_LENGTH])
def test_session_resends_a_request_the_device_got_damaged(code):
    def damaged_twice(frame, count):
        if count <= 2:
            return P.encode_frame(P.MsgType.ERROR, frame.seq, P.encode_error(code, "damaged; resynchronising"))
        return P.encode_frame(P.MsgType.PONG, frame.seq, frame.payload)

    session, port = fake_session(damaged_twice)
    assert session.ping(b"abc") == b"abc"
    assert session.resends == 2 and [f.seq for f in port.requests] == [1, 1, 1]


def test_session_gives_up_resending_with_the_error_code():
    session, port = fake_session(lambda frame, _: P.encode_frame(
        P.MsgType.ERROR, frame.seq, P.encode_error(P.ErrorCode.BAD_CRC, "frame CRC mismatch; resynchronising")))
    with pytest.raises(P.DeviceError) as info:
        session.ping(b"abc")
    assert info.value.code_name == "bad_crc" and len(port.requests) == 4  # the request + 3 resends
    assert "fake board: PING: the device answered ERROR bad_crc" in info.value.format_message()


def test_session_error_frames_for_other_seqs_are_ignored_and_others_raise():
    def answers(frame, _):
        stale = P.encode_frame(P.MsgType.ERROR, frame.seq ^ 0x80, P.encode_error(P.ErrorCode.BAD_CRC, "old"))
        if frame.type == P.MsgType.ROUTE:
            return stale + P.encode_frame(P.MsgType.ERROR, frame.seq,
                                          P.encode_error(P.ErrorCode.BAD_LAYER, "route: no such routed layer"))
        return stale + P.encode_frame(P.MsgType.PONG, frame.seq, frame.payload)

    session, port = fake_session(answers)
    assert session.ping(b"x") == b"x" and session.resends == 0
    with pytest.raises(P.DeviceError) as info:
        session.request(P.MsgType.ROUTE, b"\x09", "ROUTE layer 9")
    assert (info.value.code, info.value.code_name, info.value.what) == (7, "bad_layer", "ROUTE layer 9")
    assert len(port.requests) == 2  # no resend for a real answer
    assert session.ping(b"y") == b"y"


def test_one_device_error_class():
    from toolchain import emulate
    from toolchain.emulate import session

    assert session.DeviceError is P.DeviceError is emulate.DeviceError
    assert not hasattr(P, "Client")
