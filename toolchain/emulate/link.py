"""A `Link` is what a protocol session talks over: a pyserial port plus, for emulators, the
emulator process behind it. QEMU, Renode and real boards all produce one, so the session and
the report code are the same for all three.
"""
from __future__ import annotations

import logging
import socket
import time
from dataclasses import dataclass, field

import serial

from toolchain.emulate.process import EmulatorProcess
from toolchain.errors import RoutevitError

log = logging.getLogger("routevit")


@dataclass
class Link:
    """An open serial connection to a device; `backend` is "qemu", "renode" or "serial"."""

    port: serial.SerialBase
    backend: str
    target: str  # what the user would recognise: "qemu mps2-an386", "/dev/ttyACM0"
    emulator: EmulatorProcess | None = None
    extra: dict = field(default_factory=dict)

    def device_gone(self) -> str | None:
        """Why the device cannot answer any more (emulator exited), or None if it may."""
        if self.emulator is not None:
            code = self.emulator.poll()
            if code is not None:
                return f"{self.backend} exited with code {code}"
        return None

    def diagnostics(self) -> str:
        """Emulator log tail (empty for a real board)."""
        if self.emulator is None:
            return ""
        # QEMU's own "waiting for connection" notice is not news to anyone reading an error.
        lines = [line for line in self.emulator.tail(1500).splitlines()
                 if line.strip() and "waiting for connection" not in line]
        return f"{self.backend} output: {' | '.join(lines)}" if lines else ""

    def close(self) -> None:
        try:
            self.port.close()
        except Exception:  # closing a socket whose peer died can raise; nothing to do then
            pass
        if self.emulator is not None:
            self.emulator.kill()


def free_tcp_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (the caller retries on a clash)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def connect_socket(port: int, emulator: EmulatorProcess, timeout_s: float,
                   read_timeout_s: float = 0.05) -> serial.SerialBase:
    """Connect pyserial to the emulator's UART server socket, waiting for it to listen."""
    url = f"socket://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout_s
    last_error = None
    while time.monotonic() < deadline:
        if not emulator.alive():
            raise RoutevitError(
                f"{emulator.name}: exited with code {emulator.poll()} before its UART socket "
                f"accepted a connection; its output: {emulator.tail(800) or '(none)'}")
        try:
            port_obj = serial.serial_for_url(url, timeout=read_timeout_s, write_timeout=10)
            log.info("connected to %s UART at %s", emulator.name, url)
            return port_obj
        except serial.SerialException as exc:
            last_error = exc
            time.sleep(0.05)
    raise RoutevitError(
        f"{emulator.name}: its UART socket {url} did not accept a connection within "
        f"{timeout_s:.0f} s ({last_error}); its output: {emulator.tail(800) or '(none)'}")
