"""Renode backend: start Renode headless on the project's `renode/run.resc` (written by
`routevit generate`) with the UART on a TCP server socket, and connect the session to it.

Renode is on no package registry reachable here (ARCHITECTURE.md), so this backend runs where
`renode` is on PATH and is skipped with a clear reason elsewhere. Facts it relies on (Renode
docs and sources): `renode --disable-gui --plain --robot-server-port P -e CMD ...`;
`emulation CreateServerSocketTerminal PORT "name" false` + `connector Connect sysbus.UART name`;
`sysbus.cpu ExecutedInstructions`; `cpu PerformanceInMips`; NVIC `systickFrequency`; the robot
server's XML-RPC `run_keyword("ExecuteCommand", [cmd])`.
"""
from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
import xmlrpc.client
from pathlib import Path

from toolchain.emulate.link import Link, connect_socket, free_tcp_port
from toolchain.emulate.process import EmulatorProcess
from toolchain.errors import RoutevitError

log = logging.getLogger("routevit")

RENODE_BINARY = "renode"
# The project's Renode script (firmware_templates/project/renode/run.resc.j2, written by
# `routevit generate`): variables $bin (ELF) and $port (UART server socket); it ends with `start`.
PROJECT_RESC = Path("renode") / "run.resc"
RENODE_MIPS = 1000


def installed_renode_dir() -> Path:
    """Where `setup.sh` unpacks a Renode archive given by $ROUTEVIT_RENODE_FROM."""
    from toolchain.tflm.tree import cache_root

    return cache_root() / "renode"


def renode_binary() -> str | None:
    """$RENODE (the `renode` launcher), else `renode` on PATH, else the copy setup.sh unpacked."""
    explicit = os.environ.get("RENODE")
    if explicit:
        return explicit if Path(explicit).is_file() else None
    found = shutil.which(RENODE_BINARY)
    if found:
        return found
    unpacked = installed_renode_dir() / RENODE_BINARY
    return str(unpacked) if unpacked.is_file() else None


def renode_test_binary() -> str | None:
    """`renode-test` beside the renode launcher in use."""
    binary = renode_binary()
    if binary is None:
        return None
    beside = Path(binary).resolve().parent / "renode-test"
    return str(beside) if beside.is_file() else shutil.which("renode-test")


def renode_missing_reason() -> str | None:
    """Why the Renode backend cannot run here, or None if it can."""
    if os.environ.get("RENODE") and renode_binary() is None:
        return f"RENODE={os.environ['RENODE']}: no such file; point it at the `renode` launcher or unset it"
    if renode_binary() is None:
        return ("renode: not found ($RENODE, PATH, or the copy `ROUTEVIT_RENODE_FROM=ARCHIVE ./setup.sh` "
                "unpacks); Renode is on no package registry: get it from https://renode.io, or use --backend qemu")
    if shutil.which("mono") is None:
        return "renode: needs Mono (Debian: apt-get install mono-complete), or use --backend qemu"
    return None


def project_resc(project_dir: Path, board) -> Path:
    if not board.renode:
        raise RoutevitError(f"board {board.id}: has no Renode platform in the catalog; use --backend qemu "
                            "or a board with Renode support (see `routevit boards`)")
    resc = Path(project_dir) / PROJECT_RESC
    if not resc.is_file():
        raise RoutevitError(f"{resc}: missing; regenerate the project with `routevit generate`")
    return resc.resolve()


def renode_argv(resc: Path, elf: Path, uart_port: int, robot_port: int) -> list[str]:
    """Headless Renode running the project's script on `elf`, UART on 127.0.0.1:uart_port."""
    return [renode_binary() or RENODE_BINARY, "--disable-gui", "--plain",
            "--robot-server-port", str(robot_port),
            "-e", f"$bin=@{elf}", "-e", f"$port={uart_port}",
            "-e", f"include @{resc}",
            # One instruction per virtual nanosecond, as QEMU -icount shift=0: the firmware's
            # SysTick-based counter then reads instructions under Renode too.
            "-e", f"sysbus.cpu PerformanceInMips {RENODE_MIPS}"]


class RenodeMonitor:
    """Renode's robot-framework XML-RPC server, used to run monitor commands."""

    def __init__(self, port: int):
        self.proxy = xmlrpc.client.ServerProxy(f"http://127.0.0.1:{port}/", allow_none=True)

    def execute(self, command: str):
        response = self.proxy.run_keyword("ExecuteCommand", [command])
        if not isinstance(response, dict) or response.get("status") != "PASS":
            raise RoutevitError(f"renode: monitor command {command!r} failed: "
                                f"{(response or {}).get('error', response)}")
        return response.get("return")

    def executed_instructions(self) -> int | None:
        try:
            value = self.execute("sysbus.cpu ExecutedInstructions")
            return int(str(value).strip().split()[0], 0)
        except (RoutevitError, ValueError, IndexError, OSError):
            return None


def _wait_for_monitor(monitor: RenodeMonitor, proc: EmulatorProcess, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not proc.alive():
            raise RoutevitError(f"renode: exited with code {proc.poll()} while starting; "
                                f"its output: {proc.tail(800) or '(none)'}")
        try:
            monitor.proxy.get_keyword_names()
            return
        except (OSError, xmlrpc.client.Error):
            time.sleep(0.25)
    raise RoutevitError(f"renode: its robot server did not answer within {timeout_s:.0f} s; "
                        f"its output: {proc.tail(800) or '(none)'}")


def open_renode(project_dir: Path, elf: Path, board, *, connect_timeout_s: float = 120.0,
                workdir: Path | None = None) -> Link:
    """Start Renode on `elf` with the project's run.resc; return a Link to its UART socket."""
    reason = renode_missing_reason()
    if reason:
        raise RoutevitError(reason)
    elf = Path(elf).resolve()
    if not elf.is_file():
        raise RoutevitError(f"{elf}: firmware ELF not found; run `routevit build` on the project first")
    resc = project_resc(project_dir, board)
    workdir = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="routevit-renode-"))
    uart_port, robot_port = free_tcp_port(), free_tcp_port()
    argv = renode_argv(resc, elf, uart_port, robot_port)
    # cwd = the project: run.resc names its platform file relative to it (@renode/BOARD.repl).
    proc = EmulatorProcess(argv, "renode", workdir / "renode.log", cwd=Path(project_dir).resolve()).start()
    try:
        monitor = RenodeMonitor(robot_port)
        _wait_for_monitor(monitor, proc, connect_timeout_s)
        serial_port = connect_socket(uart_port, proc, connect_timeout_s)
    except BaseException:
        proc.kill()
        raise
    return Link(port=serial_port, backend="renode", target=f"renode {board.id}", emulator=proc,
                extra={"tcp_port": uart_port, "robot_port": robot_port, "argv": argv, "resc": str(resc),
                       "monitor": monitor})
