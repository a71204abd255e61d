"""QEMU backend: run a firmware ELF under qemu-system-arm with its UART on a local TCP socket.

`-icount shift=0` makes the guest's SysTick count instructions exactly (see ARCHITECTURE.md
"Boards and emulators"); semihosting lets the firmware end QEMU with an exit code; `wait=on`
keeps the guest from starting before the host is connected, so no byte is lost.

`sleep=off`: bytes from the host arrive at a virtual time that depends on the host's timing,
so an inference starts at a random phase of the 40-instruction SysTick tick and its count
jitters by one tick (measured: +-40 on about half the images between two runs). A firmware that
waits for a SysTick interrupt (WFI) before it starts counting starts in phase; with sleep=off
QEMU jumps to that interrupt instantly instead of idling in real time (measured: identical
counts on every image of two runs).
"""
from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

from toolchain.emulate.link import Link, connect_socket, free_tcp_port
from toolchain.emulate.process import EmulatorProcess
from toolchain.errors import RoutevitError

log = logging.getLogger("routevit")

QEMU_BINARY = "qemu-system-arm"
_PORT_ATTEMPTS = 4


def qemu_binary() -> str:
    path = shutil.which(QEMU_BINARY)
    if path is None:
        raise RoutevitError(
            f"{QEMU_BINARY}: not found on PATH; install QEMU (Debian: apt-get install qemu-system-arm)")
    return path


def qemu_argv(machine: str, elf: Path, serial_spec: str, binary: str = QEMU_BINARY) -> list[str]:
    """The QEMU command line for one run; `serial_spec` is e.g. tcp:127.0.0.1:PORT,server=on,wait=on."""
    return [
        binary, "-M", machine, "-nographic", "-monitor", "none",
        "-icount", "shift=0,sleep=off",
        "-semihosting-config", "enable=on,target=native",
        "-serial", serial_spec,
        "-kernel", str(elf),
    ]


def open_qemu(elf: Path, machine: str, *, connect_timeout_s: float = 20.0,
              workdir: Path | None = None) -> Link:
    """Start QEMU on `elf` and return a Link connected to its UART (the caller closes it)."""
    elf = Path(elf)
    if not elf.is_file():
        raise RoutevitError(f"{elf}: firmware ELF not found; run `routevit build` on the project first")
    binary = qemu_binary()
    workdir = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="routevit-qemu-"))
    for attempt in range(_PORT_ATTEMPTS):
        port = free_tcp_port()
        argv = qemu_argv(machine, elf, f"tcp:127.0.0.1:{port},server=on,wait=on", binary)
        proc = EmulatorProcess(argv, "qemu", workdir / f"qemu-{port}.log").start()
        try:
            serial_port = connect_socket(port, proc, connect_timeout_s)
        except RoutevitError:
            output = proc.tail(4000)
            proc.kill()
            # Another program took the port between our probe and QEMU's bind: try another.
            if "Address already in use" in output and attempt + 1 < _PORT_ATTEMPTS:
                log.info("port %d taken before QEMU bound it; retrying", port)
                continue
            raise
        except BaseException:
            proc.kill()
            raise
        return Link(port=serial_port, backend="qemu", target=f"qemu {machine}", emulator=proc,
                    extra={"tcp_port": port, "argv": argv})
    raise AssertionError("unreachable")  # pragma: no cover


def open_qemu_pty(elf: Path, machine: str, *, timeout_s: float = 20.0,
                  workdir: Path | None = None) -> tuple[EmulatorProcess, str]:
    """Start QEMU with its UART on a pseudo-terminal (a real serial device node, like a board's
    /dev/ttyACM0) and return (process, "/dev/pts/N"). Used to drive `evaluate --port` with QEMU
    standing in for the board; `proc.kill()` releases the pty.

    routevit opens the pty pair and hands QEMU the master (`-add-fd`, `/dev/fdset/1`) rather than
    letting QEMU create one with `-serial pty`: QEMU closes its master when the firmware exits
    through semihosting, and Linux then hangs up the slave and discards the bytes not yet read —
    the STOPPED answer the firmware wrote just before exiting was lost whenever the host was slow
    to read. Our copy of the master keeps the slave's unread bytes until we are done with them.
    """
    binary = qemu_binary()
    elf = Path(elf)
    if not elf.is_file():
        raise RoutevitError(f"{elf}: firmware ELF not found; run `routevit build` on the project first")
    workdir = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="routevit-qemu-"))
    master, slave = os.openpty()
    device = os.ttyname(slave)
    os.close(slave)  # the client opens the device by name, as it would a board's
    argv = qemu_argv(machine, elf, "/dev/fdset/1", binary)
    argv[1:1] = ["-add-fd", f"fd={master},set=1"]
    proc = EmulatorProcess(argv, "qemu", workdir / "qemu-pty.log", pass_fds=(master,),
                           owned_fds=(master,))
    try:
        proc.start()
    except BaseException:
        os.close(master)
        raise
    time.sleep(0.2)
    if not proc.alive():
        output = proc.tail(800)
        proc.kill()
        raise RoutevitError(f"qemu: exited at start with its UART on {device}; its output: {output or '(none)'}")
    return proc, device
