"""Host side of the routevit UART evaluation protocol (docs/protocol.md).

Framing, CRC, message encoding/decoding and a small client over any pyserial-like object
(`read(n)`, `write(bytes)`, `timeout` attribute), e.g. `serial.serial_for_url("socket://...")`.

Example:
    >>> frame = encode_frame(MsgType.PING, 7, b"hi")
    >>> parser = FrameParser(max_payload=64)
    >>> [(f.type, f.seq, f.payload) for f in parser.feed(b"noise" + frame)]
    [(3, 7, b'hi')]
"""
from __future__ import annotations

import enum
import logging
import struct
import time
import zlib
from dataclasses import dataclass, field

import numpy as np

log = logging.getLogger("routevit")

PROTOCOL_VERSION = 1
SYNC = b"\xA5\x5A"
HEADER_BYTES = 6
CRC_BYTES = 4
# Upper bound the host accepts in answers (the device announces its own in HELLO).
HOST_MAX_PAYLOAD = 0xFFFF
STOP_SENTINEL = b"ROUTEVIT-STOP"


class MsgType(enum.IntEnum):
    HELLO_REQ = 0x01
    INFER = 0x02
    PING = 0x03
    ROUTE = 0x04
    STOP = 0x05
    HELLO = 0x81
    RESULT = 0x82
    PONG = 0x83
    ROUTED = 0x84
    STOPPED = 0x85
    ERROR = 0xE0


class ErrorCode(enum.IntEnum):
    BAD_CRC = 1
    BAD_LENGTH = 2
    BAD_SIZE = 3
    UNKNOWN_TYPE = 4
    INVOKE_FAILED = 5
    NO_MODEL = 6
    BAD_LAYER = 7


class CounterKind(enum.IntEnum):
    QEMU_INSTRUCTIONS = 0   # SysTick under QEMU -icount shift=0
    CYCLES = 1              # DWT->CYCCNT
    RENODE_INSTRUCTIONS = 2


# Flat names for callers that prefer constants (toolchain/emulate uses these).
MSG_HELLO_REQ, MSG_INFER, MSG_PING, MSG_ROUTE, MSG_STOP = 0x01, 0x02, 0x03, 0x04, 0x05
MSG_HELLO, MSG_RESULT, MSG_PONG, MSG_ROUTED, MSG_STOPPED = 0x81, 0x82, 0x83, 0x84, 0x85
MSG_ERROR = 0xE0
ERR_BAD_CRC, ERR_BAD_LENGTH, ERR_BAD_SIZE, ERR_UNKNOWN_TYPE = 1, 2, 3, 4
ERR_INVOKE_FAILED, ERR_NO_MODEL, ERR_BAD_LAYER = 5, 6, 7


def error_name(code: int) -> str:
    try:
        return ErrorCode(code).name.lower()
    except ValueError:
        return f"code_{code}"


class ProtocolError(Exception):
    """The device did not answer as the protocol requires (timeout, wrong type, bad payload)."""


class DeviceError(ProtocolError):
    """The device answered with an ERROR frame."""

    def __init__(self, code: int, message: str, seq: int):
        self.code = code
        self.message = message
        self.seq = seq
        super().__init__(f"device error {error_name(code)}: {message}")


@dataclass(frozen=True)
class Frame:
    type: int
    seq: int
    payload: bytes


@dataclass(frozen=True)
class BadFrame:
    """A damaged frame seen on the line (bad CRC or a length above the limit); skipped."""
    reason: str  # "bad_crc" | "bad_length"
    seq: int


def crc32(data: bytes) -> int:
    return zlib.crc32(data) & 0xFFFFFFFF


def encode_frame(msg_type: int, seq: int, payload: bytes = b"") -> bytes:
    if len(payload) > 0xFFFF:
        raise ValueError(f"payload of {len(payload)} bytes does not fit a u16 length")
    body = struct.pack("<BBH", int(msg_type), seq & 0xFF, len(payload)) + bytes(payload)
    return SYNC + body + struct.pack("<I", crc32(body))


class FrameParser:
    """Incremental parser with the same resynchronisation rule as the firmware.

    `feed(data)` returns complete frames; frames with a bad CRC or a length above
    `max_payload` are counted in `errors` and skipped (rescan after their first sync byte).
    Bytes outside frames (e.g. the firmware's stop sentinel line) are kept in `text`.
    `FrameDecoder` is the same parser but also returns a `BadFrame` event per damaged frame.
    """

    report_bad_frames = False

    def __init__(self, max_payload: int = HOST_MAX_PAYLOAD):
        self.max_payload = max_payload
        self.buffer = bytearray()
        self.errors: list[str] = []
        self.text = bytearray()

    def feed(self, data: bytes) -> list[Frame]:
        self.buffer += data
        frames = []
        while True:
            start = self.buffer.find(SYNC)
            if start < 0:
                # keep a trailing first sync byte: it may start a frame
                keep = 1 if self.buffer.endswith(SYNC[:1]) else 0
                self.text += self.buffer[: len(self.buffer) - keep]
                del self.buffer[: len(self.buffer) - keep]
                return frames
            self.text += self.buffer[:start]
            del self.buffer[:start]
            if len(self.buffer) < HEADER_BYTES:
                return frames
            length = self.buffer[4] | (self.buffer[5] << 8)
            if length > self.max_payload:
                self.errors.append(f"bad_length {length}")
                if self.report_bad_frames:
                    frames.append(BadFrame("bad_length", self.buffer[3]))
                del self.buffer[:1]
                continue
            total = HEADER_BYTES + length + CRC_BYTES
            if len(self.buffer) < total:
                return frames
            body = bytes(self.buffer[2: HEADER_BYTES + length])
            (crc,) = struct.unpack_from("<I", self.buffer, HEADER_BYTES + length)
            if crc32(body) != crc:
                self.errors.append("bad_crc")
                if self.report_bad_frames:
                    frames.append(BadFrame("bad_crc", self.buffer[3]))
                del self.buffer[:1]
                continue
            frames.append(Frame(self.buffer[2], self.buffer[3], bytes(self.buffer[HEADER_BYTES: HEADER_BYTES + length])))
            del self.buffer[:total]


class FrameDecoder(FrameParser):
    """FrameParser whose `feed` also returns `BadFrame` events (for link statistics)."""

    report_bad_frames = True


# ---------------------------------------------------------------------------- messages

@dataclass(frozen=True)
class RoutedLayerInfo:
    num_patches: int
    num_experts: int
    capacity: int
    top_k: int


@dataclass(frozen=True)
class Hello:
    version: int
    counter_kind: int
    max_payload: int
    arena_bytes: int
    model_id: int
    input_shape: tuple[int, int, int, int]
    input_scale: float
    input_zero_point: int
    num_classes: int
    routed_layers: tuple[RoutedLayerInfo, ...]
    board: str

    @property
    def has_model(self) -> bool:
        return self.num_classes > 0

    @property
    def input_bytes(self) -> int:
        n, h, w, c = self.input_shape
        return n * h * w * c


def encode_hello(h: Hello) -> bytes:
    out = struct.pack("<BBHIQ4HfiH", h.version, h.counter_kind, h.max_payload, h.arena_bytes, h.model_id,
                      *h.input_shape, h.input_scale, h.input_zero_point, h.num_classes)
    out += struct.pack("<B", len(h.routed_layers))
    for r in h.routed_layers:
        out += struct.pack("<HBHB", r.num_patches, r.num_experts, r.capacity, r.top_k)
    name = h.board.encode("ascii")
    return out + struct.pack("<B", len(name)) + name


def decode_hello(payload: bytes) -> Hello:
    fixed = struct.Struct("<BBHIQ4HfiH")
    try:
        (version, kind, max_payload, arena, model_id, n, hh, w, c, scale, zp,
         classes) = fixed.unpack_from(payload, 0)
        pos = fixed.size
        (num_layers,) = struct.unpack_from("<B", payload, pos)
        pos += 1
        layers = []
        for _ in range(num_layers):
            layers.append(RoutedLayerInfo(*struct.unpack_from("<HBHB", payload, pos)))
            pos += 6
        (name_len,) = struct.unpack_from("<B", payload, pos)
        pos += 1
        name = payload[pos: pos + name_len]
        if len(name) != name_len or pos + name_len != len(payload):
            raise struct.error("board name length")
    except struct.error as e:
        raise ProtocolError(f"HELLO payload of {len(payload)} bytes is malformed ({e})") from None
    return Hello(version, kind, max_payload, arena, model_id, (n, hh, w, c), scale, zp, classes,
                 tuple(layers), name.decode("ascii", "replace"))


@dataclass(frozen=True)
class Routed:
    counts: np.ndarray    # uint16 [E]
    dispatch: np.ndarray  # int32 [E*C]
    combine: np.ndarray   # int32 [k*N]


def encode_route(layer: int, scores: np.ndarray) -> bytes:
    scores = np.asarray(scores)
    if scores.dtype != np.int8 or scores.ndim != 2:
        raise ValueError("scores must be an int8 array [N, E]")
    return struct.pack("<B", layer) + scores.astype("<i1").tobytes(order="C")


def encode_routed(counts, dispatch, combine) -> bytes:
    return (np.asarray(counts, "<u2").tobytes() + np.asarray(dispatch, "<i4").tobytes()
            + np.asarray(combine, "<i4").tobytes())


def decode_routed(payload: bytes, shape: RoutedLayerInfo) -> Routed:
    e, c, k, n = shape.num_experts, shape.capacity, shape.top_k, shape.num_patches
    expected = 2 * e + 4 * e * c + 4 * k * n
    if len(payload) != expected:
        raise ProtocolError(f"ROUTED payload is {len(payload)} bytes, expected {expected}")
    counts = np.frombuffer(payload, "<u2", e, 0).astype(np.uint16)
    dispatch = np.frombuffer(payload, "<i4", e * c, 2 * e).astype(np.int32)
    combine = np.frombuffer(payload, "<i4", k * n, 2 * e + 4 * e * c).astype(np.int32)
    return Routed(counts, dispatch, combine)


@dataclass(frozen=True)
class Result:
    counter: int                 # instructions or cycles for the whole inference
    logits: np.ndarray           # int8 [K]
    expert_counts: tuple[np.ndarray, ...] = field(default=())  # per routed layer, uint16 [E]


def encode_result(counter: int, logits, expert_counts=()) -> bytes:
    logits = np.asarray(logits, np.int8)
    out = struct.pack("<QH", counter, logits.size) + logits.tobytes()
    for counts in expert_counts:
        out += np.asarray(counts, "<u2").tobytes()
    return out


def decode_result(payload: bytes, routed_layers=()) -> Result:
    """routed_layers: HELLO's RoutedLayerInfo list, or just each layer's expert count."""
    experts = [r if isinstance(r, (int, np.integer)) else r.num_experts for r in routed_layers]
    if len(payload) < 10:
        raise ProtocolError(f"RESULT payload of {len(payload)} bytes is too short")
    counter, k = struct.unpack_from("<QH", payload, 0)
    pos = 10
    expected = pos + k + sum(2 * e for e in experts)
    if len(payload) != expected:
        raise ProtocolError(f"RESULT payload is {len(payload)} bytes, expected {expected}")
    logits = np.frombuffer(payload, np.int8, k, pos).copy()
    pos += k
    counts = []
    for e in experts:
        counts.append(np.frombuffer(payload, "<u2", e, pos).astype(np.uint16))
        pos += 2 * e
    return Result(counter, logits, tuple(counts))


def encode_error(code: int, message: str) -> bytes:
    return bytes([code & 0xFF]) + message.encode("ascii", "replace")


def decode_error(payload: bytes) -> tuple[int, str]:
    """ERROR payload -> (code, message)."""
    code = payload[0] if payload else 0
    return code, bytes(payload[1:]).decode("ascii", "replace")


# ---------------------------------------------------------------------------- client

class Client:
    """Request/answer client. Each request gets exactly one answer frame with its seq;
    stale answers (other seq numbers, e.g. after a timeout) are skipped."""

    def __init__(self, port, timeout: float = 10.0):
        self.port = port
        self.timeout = timeout
        self.parser = FrameParser()
        self.seq = 0
        self.hello_info: Hello | None = None
        self._pending: list[Frame] = []  # frames parsed but not yet consumed

    def _next_seq(self) -> int:
        self.seq = (self.seq + 1) & 0xFF
        return self.seq

    def send_raw(self, data: bytes) -> None:
        self.port.write(data)
        flush = getattr(self.port, "flush", None)
        if flush:
            flush()

    def read_frame(self, timeout: float | None = None) -> Frame:
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        pending = self._pending
        while not pending:
            if time.monotonic() > deadline:
                raise ProtocolError(f"no answer from the device within {timeout or self.timeout:g} s")
            data = self.port.read(max(1, getattr(self.port, "in_waiting", 0) or 1))
            if data:
                pending.extend(self.parser.feed(data))
        return pending.pop(0)

    def request(self, msg_type: int, payload: bytes = b"", expect: int | None = None,
                timeout: float | None = None) -> Frame:
        seq = self._next_seq()
        self.send_raw(encode_frame(msg_type, seq, payload))
        return self.wait_answer(seq, expect, timeout)

    def wait_answer(self, seq: int, expect: int | None, timeout: float | None = None) -> Frame:
        while True:
            frame = self.read_frame(timeout)
            if frame.seq != seq:
                log.debug("skipping stale frame type 0x%02x seq %d", frame.type, frame.seq)
                continue
            if frame.type == MsgType.ERROR:
                code, message = decode_error(frame.payload)
                raise DeviceError(code, message, frame.seq)
            if expect is not None and frame.type != expect:
                raise ProtocolError(f"expected message 0x{expect:02x}, got 0x{frame.type:02x}")
            return frame

    def hello(self, attempts: int = 5) -> Hello:
        """HELLO, resent a few times within the client's timeout: a device that is still booting
        drops bytes that arrive before its UART receiver is on (QEMU's STM32 USART does, and so
        does a board just out of reset). Answers to earlier tries carry older sequence numbers
        and are skipped."""
        per_try = max(self.timeout / attempts, 0.5)
        for attempt in range(attempts):
            try:
                frame = self.request(MsgType.HELLO_REQ, b"", MsgType.HELLO, timeout=per_try)
                break
            except DeviceError:
                raise
            except ProtocolError:
                if attempt == attempts - 1:
                    raise ProtocolError(f"no answer to HELLO within {per_try * attempts:g} s "
                                        f"({attempts} tries)") from None
        self.hello_info = decode_hello(frame.payload)
        return self.hello_info

    def ping(self, data: bytes) -> bytes:
        return self.request(MsgType.PING, data, MsgType.PONG).payload

    def route(self, layer: int, scores: np.ndarray) -> Routed:
        info = self.hello_info or self.hello()
        if not 0 <= layer < len(info.routed_layers):
            raise ProtocolError(f"device has {len(info.routed_layers)} routed layers, asked for {layer}")
        frame = self.request(MsgType.ROUTE, encode_route(layer, scores), MsgType.ROUTED)
        return decode_routed(frame.payload, info.routed_layers[layer])

    def infer(self, input_int8: np.ndarray, timeout: float | None = None) -> Result:
        info = self.hello_info or self.hello()
        data = np.asarray(input_int8, np.int8).tobytes()
        if len(data) != info.input_bytes:
            raise ProtocolError(f"input has {len(data)} bytes, the device expects {info.input_bytes}")
        frame = self.request(MsgType.INFER, data, MsgType.RESULT, timeout)
        return decode_result(frame.payload, info.routed_layers)

    def stop(self, exit_code: int = 0) -> None:
        self.request(MsgType.STOP, bytes([exit_code & 0xFF]), MsgType.STOPPED)
