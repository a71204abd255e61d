"""The tflite-micro wheel: load a segment, capture TFLM's own messages, read arena usage.

TFLM prints through MicroPrintf -> DebugLog -> the process's C stderr, so messages (op missing,
prepare failures, the recording allocator's report) are read by redirecting file descriptor 2.
"""
from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile

import numpy as np

# Generous: the recording allocator reports what was used, not what was given.
DEFAULT_ARENA = 8 << 20


@contextlib.contextmanager
def captured_stderr(sink: list):
    """Redirect the C-level stderr into `sink` (appended as one string on exit)."""
    with tempfile.TemporaryFile() as tmp:
        sys.stderr.flush()
        saved = os.dup(2)
        os.dup2(tmp.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            sink.append(tmp.read().decode(errors="replace"))


def load(flatbuffer: bytes, arena_size: int = DEFAULT_ARENA):
    """(interpreter, None) or (None, TFLM's messages) when the wheel refuses the model."""
    from tflite_micro.python.tflite_micro import runtime

    messages: list = []
    try:
        with captured_stderr(messages):
            interp = runtime.Interpreter.from_bytes(
                bytes(flatbuffer), arena_size=arena_size,
                intrepreter_config=runtime.InterpreterConfig.kAllocationRecording)
    except (RuntimeError, ValueError) as exc:
        return None, (messages[0] if messages else "") + f"\n{exc}"
    return interp, None


_ARENA_LINE = re.compile(r"Arena allocation (total|head|tail) (\d+) bytes")


def arena_usage(interp) -> dict:
    """{"total", "nonpersistent" (head), "persistent" (tail)} bytes from the recording allocator.

    Call after one invoke(). Figures are for this 64-bit host build: TFLM's bookkeeping structs
    hold pointers, so a 32-bit Cortex-M build needs somewhat less persistent memory.
    """
    messages: list = []
    with captured_stderr(messages):
        interp.print_allocations()
    found = dict((kind, int(n)) for kind, n in _ARENA_LINE.findall(messages[0]))
    if set(found) != {"total", "head", "tail"}:
        raise RuntimeError(f"could not read the recording allocator's report: {messages[0][:300]!r}")
    return {"total": found["total"], "nonpersistent": found["head"], "persistent": found["tail"]}


def invoke(interp, inputs: list) -> None:
    """Set inputs (in the model's input order) and invoke; TFLM errors raise RuntimeError."""
    messages: list = []
    try:
        with captured_stderr(messages):
            for i, value in enumerate(inputs):
                interp.set_input(np.ascontiguousarray(value), i)
            interp.invoke()
    except RuntimeError as exc:
        raise RuntimeError(f"{exc}: {(messages[0] if messages else '').strip()[:500]}") from None
