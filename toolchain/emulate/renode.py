"""Renode backend: a `.resc` (+ a generated `.repl` for MPS boards) and a `.robot` suite per
board, and a runner that starts Renode headless with the UART on a TCP server socket.

Renode is on no package registry reachable here (ARCHITECTURE.md), so this backend runs where
`renode` is on PATH and is skipped with a clear reason elsewhere. Facts it relies on (Renode
docs and sources): `renode --disable-gui --plain --robot-server-port P -e CMD ...`;
`emulation CreateServerSocketTerminal PORT "name" false` + `connector Connect sysbus.UART name`;
`sysbus.cpu ExecutedInstructions`; `cpu PerformanceInMips`; NVIC `systickFrequency`; the robot
server's XML-RPC `run_keyword("ExecuteCommand", [cmd])`.
"""
from __future__ import annotations

import logging
import shutil
import tempfile
import time
import xmlrpc.client
import zlib
from pathlib import Path

import jinja2

from toolchain import __version__
from toolchain.emulate.link import Link, connect_socket, free_tcp_port
from toolchain.emulate.process import EmulatorProcess
from toolchain.errors import RoutevitError

log = logging.getLogger("routevit")

RENODE_BINARY = "renode"
TEMPLATE_DIR = Path(__file__).resolve().parents[2] / "firmware_templates" / "renode"
DEFAULT_UART_PORT = 3456
HELLO_REQUEST = bytes([0x01, 0x00, 0x00, 0x00])  # type, seq, length (LE) = what the CRC covers


def renode_binary() -> str | None:
    return shutil.which(RENODE_BINARY)


def renode_missing_reason() -> str | None:
    """Why the Renode backend cannot run here, or None if it can."""
    if renode_binary() is None:
        return ("renode: not found on PATH; install Renode from https://renode.io (it is on no "
                "package registry) or use --backend qemu")
    return None


def _file_names(board_id: str) -> dict[str, str]:
    return {"resc_name": f"{board_id}.resc", "repl_name": f"{board_id}.repl",
            "robot_name": f"{board_id}.robot"}


def render_renode_files(board) -> dict[str, str]:
    """{file name: text} of the Renode scripts for `board` (a toolchain.boards.Board).

    Deterministic: the same board gives the same bytes. The generator may write these into
    PROJ/renode/; the runner renders them itself when a project has none."""
    renode = board.renode
    if not renode:
        raise RoutevitError(f"board {board.id}: has no Renode platform in the catalog; use --backend qemu "
                            "or a board listed with Renode support in `routevit boards`")
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATE_DIR)), keep_trailing_newline=True,
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    names = _file_names(board.id)
    generated = renode.get("platform") == "generated"
    crc = zlib.crc32(HELLO_REQUEST)
    context = {
        "version": __version__,
        "board": board,
        "cpu_type": renode.get("cpu", board.core),
        "systick_hz": board.clock_hz,
        "regions": list(board.regions),
        "uart_name": renode.get("uart_name", "uart0"),
        "uart_model": renode.get("uart_model", "UART.CMSDK_APB_UART"),
        "uart_base": board.uart["base"],
        "platform_repl": None if generated else renode["platform"],
        "default_uart_port": DEFAULT_UART_PORT,
        "hello_crc_bytes": [f"0x{(crc >> (8 * i)) & 0xFF:02X}" for i in range(4)],
        **names,
    }
    files = {names["resc_name"]: env.get_template("board.resc.j2").render(context),
             names["robot_name"]: env.get_template("board.robot.j2").render(context)}
    if generated:
        files[names["repl_name"]] = env.get_template("platform.repl.j2").render(context)
    return files


def write_renode_files(board, out_dir: Path) -> Path:
    """Write the Renode scripts into `out_dir`; return the .resc path."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, text in render_renode_files(board).items():
        (out_dir / name).write_text(text)
    return out_dir / _file_names(board.id)["resc_name"]


def find_project_resc(project_dir: Path, board_id: str) -> Path | None:
    """The project's own .resc (written by `routevit generate`), if any."""
    renode_dir = Path(project_dir) / "renode"
    preferred = renode_dir / f"{board_id}.resc"
    if preferred.is_file():
        return preferred
    found = sorted(renode_dir.glob("*.resc")) if renode_dir.is_dir() else []
    return found[0] if found else None


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
    """Start Renode on `elf` with the project's (or freshly rendered) .resc; return a Link."""
    reason = renode_missing_reason()
    if reason:
        raise RoutevitError(reason)
    elf = Path(elf).resolve()
    if not elf.is_file():
        raise RoutevitError(f"{elf}: firmware ELF not found; run `routevit build` on the project first")
    workdir = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="routevit-renode-"))
    resc = find_project_resc(project_dir, board.id) or write_renode_files(board, workdir / "renode")
    uart_port, robot_port = free_tcp_port(), free_tcp_port()
    resc = Path(resc).resolve()
    argv = [renode_binary(), "--disable-gui", "--plain", "--robot-server-port", str(robot_port),
            "-e", f"$elf=@{elf}", "-e", f"$uart_port={uart_port}"]
    repl = resc.with_suffix(".repl")
    if repl.is_file():
        argv += ["-e", f"$repl=@{repl}"]
    argv += ["-e", f"include @{resc}", "-e", "start"]
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
