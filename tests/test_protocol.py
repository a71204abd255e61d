"""Host side of the UART protocol: framing, CRC, resync, message codecs."""
import struct
import zlib

import numpy as np
import pytest

from toolchain import protocol as P


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
    assert P.decode_error(P.encode_error(P.ERR_BAD_LAYER, "no such layer")) == (7, "no such layer")
    assert P.error_name(1) == "bad_crc" and P.error_name(99) == "code_99"


class LoopbackPort:
    """A pyserial-like object answering PING frames the way the firmware does."""

    def __init__(self):
        self.out = bytearray()
        self.parser = P.FrameParser()

    def write(self, data):
        for frame in self.parser.feed(data):
            self.out += b"noise" + P.encode_frame(P.MsgType.PONG, frame.seq - 1, b"stale")
            self.out += P.encode_frame(P.MsgType.PONG, frame.seq, frame.payload)

    def read(self, n):
        data, self.out[:] = bytes(self.out[:n]), self.out[n:]
        return data


def test_client_matches_answers_by_sequence_number():
    client = P.Client(LoopbackPort(), timeout=1.0)
    assert client.ping(b"first") == b"first"
    assert client.ping(b"second") == b"second"
