"""One protocol session over a pyserial port: the code path QEMU, Renode and real boards share.

The session sends one request at a time and waits for the frame that answers it (same
sequence number). It never trusts the line: bytes that are not frames are skipped and kept in a
ring buffer so that an error can show the last bytes the device sent; a request the device
reports as corrupted (ERROR bad_crc / bad_length with our sequence number) is sent again; any
other ERROR frame is a `DeviceError` naming what was asked, the error code and the device's
message; no answer within the timeout, or the emulator exiting, is a `DeviceError` naming what
was asked, why it failed and the last UART bytes. This is routevit's only protocol client.
"""
from __future__ import annotations

import logging
import time
from collections import deque
from dataclasses import dataclass

import numpy as np
import serial

from toolchain import protocol
from toolchain.emulate.link import Link
from toolchain.errors import RoutevitError
from toolchain.protocol import DeviceError

__all__ = ["DeviceError", "InferResult", "Session", "format_tail"]

log = logging.getLogger("routevit")

# bad_crc, bad_length with our seq: the request was damaged on the line (docs/protocol.md)
_RESENDABLE_ERRORS = {protocol.ErrorCode.BAD_CRC, protocol.ErrorCode.BAD_LENGTH}
_MAX_RESENDS = 3


def format_tail(data: bytes, limit: int = 96) -> str:
    """The last bytes as hex and as printable text, for one error line."""
    data = bytes(data[-limit:])
    if not data:
        return "(no bytes received)"
    text = "".join(chr(b) if 32 <= b < 127 else "." for b in data)
    return f"{data.hex(' ')} |{text}|"


@dataclass
class InferResult:
    logits: np.ndarray  # int8 [K]
    counter: int  # instructions or cycles for the whole inference (HELLO says which)
    expert_counts: list[list[int]]  # [routed layer][expert]
    seconds: float  # host wall time for the request


class Session:
    """Talks the evaluation protocol with one device over `link`.

    Example:
        >>> with Session(open_qemu(elf, "mps2-an386")) as s:
        ...     hello = s.hello()
        ...     s.ping(b"abc")
        b'abc'
    """

    def __init__(self, link: Link, timeout_s: float = 30.0, tail_bytes: int = 512,
                 resync_on_timeout: bool = True):
        self.link = link
        self.port: serial.SerialBase = link.port
        self.timeout_s = float(timeout_s)
        self.tail = deque(maxlen=tail_bytes)  # last raw bytes received, frames and garbage alike
        self.decoder = protocol.FrameParser()
        self.pending: deque = deque()  # decoded events not consumed yet
        self.seq = 0
        self.bad_frames = 0
        self.resends = 0
        self.resyncs = 0
        self.stalled_frames = 0
        self.resync_on_timeout = resync_on_timeout
        self.hello_info = None

    @property
    def garbage_bytes(self) -> int:
        """Bytes received outside any frame (noise, boot text, the stop sentinel line)."""
        return len(self.decoder.text)

    # -- context -----------------------------------------------------------------------------
    def __enter__(self) -> "Session":
        return self

    def __exit__(self, *exc) -> None:
        self.link.close()

    # -- low level ---------------------------------------------------------------------------
    def _next_seq(self) -> int:
        self.seq = (self.seq + 1) & 0xFF
        return self.seq

    def _fail(self, what: str, why: str) -> DeviceError:
        gone = self.link.device_gone()
        parts = [f"{self.link.target}: {what}: {why}"]
        if gone and gone not in why:
            parts.append(gone)
        parts.append(f"last UART bytes: {format_tail(bytes(self.tail))}")
        extra = self.link.diagnostics()
        if extra:
            parts.append(extra.replace("\n", " | ")[-600:])
        return DeviceError("; ".join(parts))

    def _write(self, data: bytes, what: str) -> None:
        try:
            self.port.write(data)
            self.port.flush()
        except (serial.SerialException, OSError) as exc:
            raise self._fail(what, f"writing to the serial port failed ({exc})") from None

    def _read_some(self, what: str) -> bytes:
        try:
            data = self.port.read(max(1, self.port.in_waiting if hasattr(self.port, "in_waiting") else 1))
        except (serial.SerialException, OSError) as exc:
            raise self._fail(what, f"the serial connection broke ({exc})") from None
        if data:
            self.tail.extend(data)
        return data

    def _events(self, what: str, deadline: float):
        """Yield decoded frame events until the deadline; raise DeviceError after it."""
        while True:
            while self.pending:
                yield self.pending.popleft()
            if time.monotonic() >= deadline:
                return
            data = self._read_some(what)
            if data:
                self.pending.extend(self.decoder.feed(data))
                self._note_damage()
                continue
            gone = self.link.device_gone()
            if gone:
                # Drain whatever the device wrote before it went away, then give up.
                time.sleep(0.05)
                data = self._read_some(what)
                if data:
                    self.pending.extend(self.decoder.feed(data))
                    self._note_damage()
                    continue
                raise self._fail(what, f"the device stopped answering ({gone})")

    def request(self, msg_type: int, payload: bytes, what: str, timeout_s: float | None = None,
                resync: bool | None = None) -> "protocol.Frame":
        """Send one request; return the frame that answers it (same seq, not ERROR).

        Recovery, in order: an ERROR bad_crc/bad_length for our seq (the request was damaged on
        the line) -> send it again; no answer within the timeout while the device is alive ->
        once, flush the device's parser with zero bytes (line noise may have opened a bogus frame
        that is still waiting for its payload) and send it again. Every request is idempotent.
        """
        timeout_s = self.timeout_s if timeout_s is None else timeout_s
        resync = self.resync_on_timeout if resync is None else resync
        seq = self._next_seq()
        frame = protocol.encode_frame(msg_type, seq, payload)
        resends = 0
        flushed = False
        self._write(frame, what)
        deadline = time.monotonic() + timeout_s
        while True:
            for event in self._events(what, deadline):
                if not isinstance(event, protocol.Frame):
                    continue  # a damaged frame reported as an event: counted via the parser
                if event.seq != seq:
                    log.info("%s: ignoring frame type 0x%02x seq %d while waiting for seq %d",
                             self.link.target, event.type, event.seq, seq)
                    continue
                if event.type == protocol.MsgType.ERROR:
                    code = event.payload[0] if event.payload else 0
                    if code in _RESENDABLE_ERRORS and resends < _MAX_RESENDS:
                        resends += 1
                        self.resends += 1
                        log.info("%s: the device got %s damaged (ERROR %s); sending it again", self.link.target,
                                 what, protocol.error_name(code))
                        self._write(frame, what)
                        deadline = time.monotonic() + timeout_s
                        continue
                    raise protocol.device_error(self.link.target, what, event.payload, seq)
                return event
            if self._rescan_stalled_frame():
                continue  # line noise had opened a bogus frame on our side: its bytes were rescanned
            if not resync or flushed or self.link.device_gone():
                break
            flushed = True
            self.resyncs += 1
            log.info("%s: no answer to %s within %g s; flushing the line and sending it again",
                        self.link.target, what, timeout_s)
            self._write(bytes(self._flush_bytes()), what)
            self._write(frame, what)
            deadline = time.monotonic() + timeout_s
        waited = f"{timeout_s:g} s" + (" (twice, with a resync in between)" if flushed else "")
        raise self._fail(what, f"no answer within {waited}")

    def send_raw(self, data: bytes, what: str = "raw bytes") -> None:
        """Write bytes as they are (tests and diagnostics: damaged frames, noise)."""
        self._write(bytes(data), what)

    def read_frame(self, timeout_s: float | None = None, what: str = "waiting for a frame") -> protocol.Frame:
        """The next frame the device sends, whatever its type or sequence number (ERROR frames
        included); DeviceError if none arrives within the timeout."""
        timeout_s = self.timeout_s if timeout_s is None else timeout_s
        for event in self._events(what, time.monotonic() + timeout_s):
            if isinstance(event, protocol.Frame):
                return event
        if self._rescan_stalled_frame():
            return self.read_frame(timeout_s, what)
        raise self._fail(what, f"no frame within {timeout_s:g} s")

    def _rescan_stalled_frame(self) -> bool:
        """If our parser holds a partial frame (noise that looked like a header), drop its first
        byte and rescan the rest; True if that produced frames."""
        stalled = bytes(getattr(self.decoder, "buffer", b""))
        if len(stalled) < 2:
            return False
        self.decoder.buffer = bytearray()
        self.stalled_frames += 1
        frames = self.decoder.feed(stalled[1:])
        self.pending.extend(frames)
        return bool(frames)

    def _flush_bytes(self) -> int:
        # Enough zero bytes to complete the longest frame the firmware can be waiting for; zeros
        # are not sync bytes, so afterwards its parser is idle.
        max_payload = self.hello_info.max_payload if self.hello_info else protocol.HOST_MAX_PAYLOAD
        return protocol.HEADER_BYTES + max_payload + protocol.CRC_BYTES

    # -- messages ----------------------------------------------------------------------------
    def hello(self, timeout_s: float | None = None, attempts: int = 5):
        """HELLO, sent again a few times within the timeout: a device that is still booting drops
        bytes that arrive before its UART receiver is on (QEMU's STM32 USART does, and so does a
        board just out of reset). Answers to earlier tries carry older sequence numbers and are
        skipped; the last try also flushes the line (see `request`)."""
        timeout_s = self.timeout_s if timeout_s is None else timeout_s
        per_try = max(timeout_s / attempts, 0.5)
        for attempt in range(attempts):
            last = attempt == attempts - 1
            try:
                frame = self.request(protocol.MsgType.HELLO_REQ, b"", "HELLO", per_try, resync=None if last else False)
                break
            except DeviceError as exc:
                if exc.code is not None or self.link.device_gone():
                    raise
                if last:
                    raise self._fail("HELLO", f"no answer within {timeout_s:g} s ({attempts} tries, the last "
                                     "one after a resync)") from None
                log.info("%s: no answer to HELLO within %g s (try %d of %d); sending it again",
                         self.link.target, per_try, attempt + 1, attempts)
        self._expect(frame, protocol.MsgType.HELLO, "HELLO")
        try:
            self.hello_info = protocol.decode_hello(frame.payload)
        except protocol.ProtocolError as exc:
            raise self._fail("HELLO", str(exc)) from None
        # Frames longer than the device's own limit are noise: reject them as early as it does.
        self.decoder.max_payload = max(self.hello_info.max_payload, 16)
        if self.hello_info.version != protocol.PROTOCOL_VERSION:
            raise self._fail("HELLO", f"firmware speaks protocol version {self.hello_info.version}, this "
                             f"routevit speaks {protocol.PROTOCOL_VERSION}; regenerate and rebuild the project")
        return self.hello_info

    def ping(self, data: bytes, timeout_s: float | None = None) -> bytes:
        frame = self.request(protocol.MsgType.PING, bytes(data), "PING", timeout_s)
        self._expect(frame, protocol.MsgType.PONG, "PING")
        return bytes(frame.payload)

    def route(self, layer: int, scores: np.ndarray, timeout_s: float | None = None):
        """Ask the device's routing code for dispatch/combine/counts of int8 scores [N, E]."""
        info = self._require_hello()
        if not 0 <= layer < len(info.routed_layers):
            raise RoutevitError(f"{self.link.target}: ROUTE layer {layer}: the firmware has {len(info.routed_layers)} "
                                f"routed layers (0..{len(info.routed_layers) - 1}); ask for one of those")
        shape = info.routed_layers[layer]
        payload = bytes([layer]) + np.asarray(scores, dtype=np.int8).tobytes()
        frame = self.request(protocol.MsgType.ROUTE, payload, f"ROUTE layer {layer}", timeout_s)
        self._expect(frame, protocol.MsgType.ROUTED, "ROUTE")
        try:
            return protocol.decode_routed(frame.payload, shape)
        except protocol.ProtocolError as exc:
            raise self._fail(f"ROUTE layer {layer}", str(exc)) from None

    def infer(self, image_q: np.ndarray, what: str = "INFER", timeout_s: float | None = None,
              msg_type: int = protocol.MsgType.INFER) -> InferResult:
        """Run one inference on an int8 input tensor whose size matches HELLO's input shape."""
        info = self._require_hello()
        data = np.ascontiguousarray(image_q)
        if data.dtype != np.int8:
            raise RoutevitError(f"{what}: input must be int8 (quantised), got {data.dtype}; "
                                "quantise it with the plan's input scale and zero point")
        expected = int(np.prod(info.input_shape[1:])) if info.num_classes else 0
        if info.num_classes == 0:
            raise RoutevitError(f"{self.link.target}: firmware has no model (self-test build); "
                                "build the model firmware with `routevit build PROJ`")
        if data.size != expected:
            raise RoutevitError(
                f"{what}: input has {data.size} values ({'x'.join(map(str, data.shape))}) but the firmware "
                f"expects {expected} ({'x'.join(map(str, info.input_shape[1:]))}); resize the images "
                "to the model's input shape")
        if data.size > info.max_payload:
            raise RoutevitError(f"{what}: input of {data.size} bytes exceeds the firmware's max payload "
                                f"{info.max_payload}; regenerate the project")
        start = time.monotonic()
        frame = self.request(msg_type, data.tobytes(), what, timeout_s)
        self._expect(frame, protocol.MsgType.RESULT, what)
        try:
            result = protocol.decode_result(frame.payload, info.routed_layers)
        except protocol.ProtocolError as exc:
            raise self._fail(what, str(exc)) from None
        if len(result.logits) != info.num_classes:
            raise self._fail(what, f"RESULT has {len(result.logits)} logits, HELLO announced {info.num_classes}")
        return InferResult(logits=np.asarray(result.logits, dtype=np.int8), counter=int(result.counter),
                           expert_counts=[list(map(int, c)) for c in result.expert_counts],
                           seconds=time.monotonic() - start)

    def infer_profile(self, image_q: np.ndarray, what: str = "INFER_PROFILE",
                      timeout_s: float | None = None) -> tuple[InferResult, list]:
        """One inference with the device's per-op profiler on: (its RESULT, whose counter includes
        the profiler's own cost, and every profile record, fetched with PROFILE page by page)."""
        result = self.infer(image_q, what=what, timeout_s=timeout_s, msg_type=protocol.MsgType.INFER_PROFILE)
        records: list = []
        total = None
        while total is None or len(records) < total:
            frame = self.request(protocol.MsgType.PROFILE, protocol.encode_profile_request(len(records)),
                                 f"PROFILE after {what}", timeout_s)
            self._expect(frame, protocol.MsgType.PROFILE_RECORDS, "PROFILE")
            try:
                page = protocol.decode_profile_records(frame.payload)
            except protocol.ProtocolError as exc:
                raise self._fail(f"PROFILE after {what}", str(exc)) from None
            if page.first != len(records) or (not page.records and page.total > len(records)):
                raise self._fail(f"PROFILE after {what}", f"asked for records from {len(records)}, got "
                                 f"{len(page.records)} from {page.first} of {page.total}")
            total = page.total
            records.extend(page.records)
        return result, records

    def stop(self, exit_code: int = 0, timeout_s: float = 5.0) -> bool:
        """Ask the firmware to end (QEMU then exits through semihosting). True if it said STOPPED."""
        try:
            frame = self.request(protocol.MsgType.STOP, bytes([exit_code & 0xFF]), "STOP", timeout_s)
        except DeviceError as exc:
            log.info("STOP not acknowledged: %s", exc)
            return False
        return frame.type == protocol.MsgType.STOPPED

    # -- helpers -----------------------------------------------------------------------------
    def _note_damage(self) -> None:
        # Damaged frames from the device (bad CRC / length): their answers are lost, the
        # request times out or a resend recovers; counted for the report.
        if len(self.decoder.errors) > self.bad_frames:
            for error in self.decoder.errors[self.bad_frames:]:
                log.info("%s: damaged frame from the device (%s); resynchronising", self.link.target, error)
            self.bad_frames = len(self.decoder.errors)

    def _require_hello(self):
        if self.hello_info is None:
            self.hello()
        return self.hello_info

    def _expect(self, frame, msg_type: int, what: str) -> None:
        if frame.type != msg_type:
            raise self._fail(what, f"expected a frame of type 0x{msg_type:02x}, got 0x{frame.type:02x}")
