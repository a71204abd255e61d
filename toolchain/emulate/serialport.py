"""Real-board backend: a serial port opened with pyserial (a device path or a pyserial URL).

A board running the firmware is just another peer of the same protocol session; nothing here
is specific to evaluation. `DEV` may be `/dev/ttyACM0`, `COM3`, `socket://host:port` or
`rfc2217://host:port` (anything `serial.serial_for_url` opens).
"""
from __future__ import annotations

import logging
import time

import serial

from toolchain.emulate.link import Link
from toolchain.errors import RoutevitError

log = logging.getLogger("routevit")

DEFAULT_BAUD = 115200


def open_serial_port(device: str, baud: int = DEFAULT_BAUD, settle_s: float = 0.1) -> Link:
    """Open `device` at `baud` (8N1, no flow control) and drop whatever was waiting in it."""
    log.info("opening serial port %s at %d baud", device, baud)
    try:
        port = serial.serial_for_url(device, baudrate=baud, bytesize=serial.EIGHTBITS,
                                     parity=serial.PARITY_NONE, stopbits=serial.STOPBITS_ONE,
                                     timeout=0.05, write_timeout=10, exclusive=True)
    except (serial.SerialException, ValueError, OSError) as exc:
        raise RoutevitError(f"{device}: cannot open the serial port ({exc}); check the device name, that "
                            "the board is connected and that no other program has the port open") from None
    # Boot banners or a previous session's leftovers: the session would skip them anyway, but a
    # clean start makes the "last UART bytes" of an error mean this session's bytes.
    time.sleep(settle_s)
    try:
        port.reset_input_buffer()
    except (serial.SerialException, OSError, AttributeError):
        pass
    return Link(port=port, backend="serial", target=device)
