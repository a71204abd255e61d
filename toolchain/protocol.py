"""Host side of the routevit UART evaluation protocol (docs/protocol.md).

Pure functions only: framing, CRC, the resynchronising frame parser, message encoding and
decoding, and the table of constants the firmware's `protocol_constants.h` is generated from
(`c_constants()`), so host and device cannot drift apart. The one client that talks to a device
is `toolchain.emulate.session.Session`; an ERROR frame from the device becomes a `DeviceError`.

Example:
    >>> frame = encode_frame(MsgType.PING, 7, b"hi")
    >>> parser = FrameParser(max_payload=64)
    >>> [(f.type, f.seq, f.payload) for f in parser.feed(b"noise" + frame)]
    [(3, 7, b'hi')]
"""
from __future__ import annotations

import enum
import struct
import zlib
from dataclasses import dataclass, field

import numpy as np

from toolchain.errors import RoutevitError

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
    INFER_PROFILE = 0x06   # INFER with the per-op profiler on; answered by RESULT
    PROFILE = 0x07         # u16 first record -> PROFILE_RECORDS of the last INFER_PROFILE
    HELLO = 0x81
    RESULT = 0x82
    PONG = 0x83
    ROUTED = 0x84
    STOPPED = 0x85
    PROFILE_RECORDS = 0x87
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


class ProfileKind(enum.IntEnum):
    """What one PROFILE record measured (its `index` says which op / segment / routed layer)."""
    OP = 0        # one operator invocation: index = op index in the segment's subgraph 0
    INPUTS = 1    # writing (or requantizing) a segment's inputs before Invoke(): index = segment
    OUTPUTS = 2   # copying a segment's outputs to the staging buffers: index = segment
    ROUTING = 3   # the integer routing of a routed layer: index = routed layer
    INVOKE = 4    # the whole Invoke() of a segment (its ops + TFLM's own work): index = segment
    PREPARE = 5   # --residency swapped: preparing a segment's interpreter again (AllocateTensors): index = segment


# ------------------------------------------------------------------ the firmware's copy

# C++ enum name, enumerator prefix and C macro prefix of each enum in protocol_constants.h.
_C_ENUMS = ((MsgType, "MessageType", "k", "ROUTEVIT_MSG_"),
            (ErrorCode, "ErrorCode", "kError", "ROUTEVIT_ERROR_"),
            (CounterKind, "CounterKind", "kCounter", "ROUTEVIT_COUNTER_"),
            (ProfileKind, "ProfileKind", "kProfile", "ROUTEVIT_PROFILE_"))
# Enumerators whose C++ name is not the CamelCase of the Python name.
_C_ENUMERATOR_NAMES = {(MsgType, "HELLO_REQ"): "kHelloRequest"}


def _camel(name: str) -> str:
    return "".join(part.capitalize() for part in name.split("_"))


def c_constants() -> dict:
    """The table `firmware_templates/project/src/protocol_constants.h.j2` renders: every constant
    the firmware shares with this module (version, framing, stop sentinel, enums), so the C side is
    generated from these definitions instead of copied by hand.

    >>> c_constants()["enums"][0]["members"][0]
    {'name': 'kHelloRequest', 'macro': 'ROUTEVIT_MSG_HELLO_REQ', 'value': 1, 'hex': '0x01'}
    """
    enums = []
    for enum_cls, c_name, prefix, macro_prefix in _C_ENUMS:
        members = [{"name": _C_ENUMERATOR_NAMES.get((enum_cls, m.name), prefix + _camel(m.name)), "macro": macro_prefix + m.name,
                    "value": int(m), "hex": f"0x{int(m):02X}"} for m in enum_cls]
        enums.append({"name": c_name, "python": enum_cls.__name__, "members": members})
    return {
        "source": "toolchain/protocol.py",
        "version": PROTOCOL_VERSION,
        "sync": [f"0x{b:02X}" for b in SYNC],
        "header_bytes": HEADER_BYTES,
        "crc_bytes": CRC_BYTES,
        "stop_sentinel": STOP_SENTINEL.decode("ascii"),
        "profile_record_bytes": PROFILE_RECORD.size,
        "profile_header_bytes": PROFILE_HEADER.size,
        "enums": enums,
    }


def error_name(code: int) -> str:
    try:
        return ErrorCode(code).name.lower()
    except ValueError:
        return f"code_{code}"


class ProtocolError(Exception):
    """A payload does not have the layout the protocol requires (raised by the decoders; the
    session turns it into a `DeviceError` naming the request)."""


# What a user can do about each ERROR code the device sends.
_ERROR_HINTS = {
    ErrorCode.BAD_CRC: "the line keeps damaging the request; check the baud rate, the cable or the emulator's UART",
    ErrorCode.BAD_LENGTH: "the line keeps damaging the request; check the baud rate, the cable or the emulator's UART",
    ErrorCode.BAD_SIZE: "the request does not have the size this firmware expects; regenerate and rebuild the "
                        "project so firmware, plan and routevit agree",
    ErrorCode.UNKNOWN_TYPE: "the firmware does not know this request; regenerate and rebuild the project with "
                            "this routevit",
    ErrorCode.INVOKE_FAILED: "the model failed on the device; check the arena and memory in memory_report.md, "
                             "regenerate and rebuild",
    ErrorCode.NO_MODEL: "this is the self-test build; build the model firmware with `routevit build PROJ`",
    ErrorCode.BAD_LAYER: "the firmware has no such routed layer or cannot route its shape; regenerate and "
                         "rebuild the project",
}


class DeviceError(RoutevitError):
    """The device did not answer as the protocol says: an ERROR frame (then `code`, `code_name`,
    `device_message` and `seq` tell which), no answer, a crash or a malformed answer.
    The message is one line: what was asked, what went wrong, what to do."""

    def __init__(self, message: str, *, code: int | None = None, device_message: str | None = None,
                 seq: int | None = None, what: str | None = None):
        super().__init__(message)
        self.code = code
        self.device_message = device_message
        self.seq = seq
        self.what = what

    @property
    def code_name(self) -> str | None:
        return None if self.code is None else error_name(self.code)


def _printable(text: str, limit: int = 200) -> str:
    text = "".join(ch if 32 <= ord(ch) < 127 else "?" for ch in text)
    return text if len(text) <= limit else text[:limit] + "..."


def device_error(target: str, what: str, payload: bytes, seq: int | None = None) -> DeviceError:
    """The DeviceError for an ERROR frame with `payload` that answered the request `what`."""
    code, message = decode_error(payload)
    name = error_name(code)
    hint = _ERROR_HINTS.get(code, "regenerate and rebuild the project with this routevit")
    text = (f"{target}: {what}: the device answered ERROR {name} (code {code}): "
            f"\"{_printable(message)}\"; {hint}")
    return DeviceError(text, code=code, device_message=message, seq=seq, what=what)


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


# PROFILE_RECORDS payload: u16 total records of the last INFER_PROFILE, u16 first record in this
# answer, then records of (u8 segment, u8 kind, u16 index, u32 counter) up to the frame's end.
PROFILE_HEADER = struct.Struct("<HH")
PROFILE_RECORD = struct.Struct("<BBHI")


@dataclass(frozen=True)
class ProfileRecord:
    segment: int
    kind: int      # ProfileKind
    index: int     # op index (OP), segment (INPUTS, OUTPUTS, INVOKE) or routed layer (ROUTING)
    counter: int   # instructions or cycles, same counter as RESULT


@dataclass(frozen=True)
class ProfilePage:
    total: int
    first: int
    records: tuple[ProfileRecord, ...]


def encode_profile_request(first: int) -> bytes:
    return struct.pack("<H", first)


def encode_profile_records(total: int, first: int, records) -> bytes:
    out = PROFILE_HEADER.pack(total, first)
    for r in records:
        out += PROFILE_RECORD.pack(r.segment, r.kind, r.index, r.counter)
    return out


def decode_profile_records(payload: bytes) -> ProfilePage:
    if len(payload) < PROFILE_HEADER.size or (len(payload) - PROFILE_HEADER.size) % PROFILE_RECORD.size:
        raise ProtocolError(f"PROFILE_RECORDS payload of {len(payload)} bytes is not {PROFILE_HEADER.size} + "
                            f"a multiple of {PROFILE_RECORD.size}")
    total, first = PROFILE_HEADER.unpack_from(payload, 0)
    records = tuple(ProfileRecord(*PROFILE_RECORD.unpack_from(payload, pos))
                    for pos in range(PROFILE_HEADER.size, len(payload), PROFILE_RECORD.size))
    if first + len(records) > total:
        raise ProtocolError(f"PROFILE_RECORDS holds records {first}..{first + len(records) - 1} of {total}")
    for r in records:
        if r.kind not in ProfileKind.__members__.values():
            raise ProtocolError(f"PROFILE_RECORDS: unknown record kind {r.kind}")
    return ProfilePage(total, first, records)


def encode_error(code: int, message: str) -> bytes:
    return bytes([code & 0xFF]) + message.encode("ascii", "replace")


def decode_error(payload: bytes) -> tuple[int, str]:
    """ERROR payload -> (code, message)."""
    code = payload[0] if payload else 0
    return code, bytes(payload[1:]).decode("ascii", "replace")
