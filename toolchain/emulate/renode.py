"""Renode backend: start Renode headless on the project's `renode/run.resc` (written by
`routevit generate`) with the UART on a TCP server socket, and connect the session to it.

Renode is on no package registry reachable here (ARCHITECTURE.md); `setup.sh` unpacks an archive
given by $ROUTEVIT_RENODE_FROM into the cache, and `renode_binary()` finds it there, through
$RENODE or on PATH. What this backend relies on (measured with Renode 1.15.3):

- `renode --disable-gui --plain --robot-server-port P -e CMD ...` runs headless; the robot
  server's XML-RPC `run_keyword("ExecuteCommand", [cmd])` runs monitor commands while it runs.
- The platform is routevit's own REPL (renode/BOARD.repl, from the board catalog), never one of
  Renode's platforms/cpus/*.repl: several call `ApplySVD @https://...`, which fails offline.
- `emulation CreateServerSocketTerminal PORT "term" false` + `connector Connect sysbus.UART term`
  give pyserial a socket; Renode queues the bytes it receives, so none are lost while the
  firmware computes.
- Renode deletes every `$TMPDIR/renode-*` folder that no live Renode owns, so each run gets a
  private TMPDIR inside its work folder.
- Instruction counts: `PerformanceInMips: 1000` in the REPL makes one instruction one virtual
  nanosecond, so the firmware's SysTick counter reads instructions as under QEMU -icount
  shift=0. Independently of the firmware, a CPU hook on `counter_read` (called at the start and
  at the end of every inference) logs `sysbus.cpu ExecutedInstructions` each time; the
  differences of consecutive pairs are Renode's own instructions per inference
  (`renode_inference_instructions`).
"""
from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
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
# Written into every generated REPL (firmware_templates/project/renode/board.repl.j2).
RENODE_MIPS = 1000
# The firmware function read at the start and the end of every inference (src/board/counter.c).
COUNTER_SYMBOL = "counter_read"
COUNT_TAG = "ROUTEVIT-EXECUTED"
_COUNT_LINE = re.compile(COUNT_TAG + r" (\d+)")
_PORT_ATTEMPTS = 3


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
    if board.renode.get("platform") == "generated":
        repl = resc.parent / f"{board.id}.repl"
        if not repl.is_file():
            raise RoutevitError(f"{repl}: missing; regenerate the project with `routevit generate`")
        if "TxInterrupt ->" not in repl.read_text() and "IRQ ->" not in repl.read_text():
            raise RoutevitError(f"{repl}: written by an older routevit (its UART interrupts are unnamed, which "
                                "Renode refuses); regenerate the project with `routevit generate`")
    return resc.resolve()


def private_tmpdir(workdir: Path) -> Path:
    """Renode's own TMPDIR: it deletes `$TMPDIR/renode-*` folders it does not own, so it never
    shares one with other programs (or other Renode runs)."""
    tmp = Path(workdir) / "tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    return tmp


def renode_env_argv(argv: list[str], tmpdir: Path) -> list[str]:
    """`argv` run with TMPDIR=tmpdir (through env(1): EmulatorProcess inherits our environment)."""
    return ["env", f"TMPDIR={tmpdir}", *argv]


def counter_hook_commands(elf: Path) -> list[str]:
    """Monitor commands that log ExecutedInstructions whenever the firmware enters counter_read.

    The hook is a one-line IronPython statement using only Renode's own objects (this Renode
    build has no Python standard library). Firmware without that symbol (a foreign ELF) gets no
    hook: `sysbus GetSymbolAddress` would fail, so the symbol is looked up here first."""
    address = elf_symbol_address(elf, COUNTER_SYMBOL)
    if address is None:
        return []
    # Thumb functions: the symbol value has bit 0 set; the hook wants the instruction address.
    return [f'sysbus.cpu AddHook 0x{address & ~1:x} "self.Log(LogLevel.Info, \'{COUNT_TAG} \' + '
            f'str(self.ExecutedInstructions))"']


def elf_symbol_address(elf: Path, name: str) -> int | None:
    """The address of function `name` in `elf` (arm-none-eabi-nm), or None."""
    nm = shutil.which("arm-none-eabi-nm") or shutil.which("nm")
    if nm is None:
        return None
    argv = [nm, "--defined-only", str(elf)]
    log.debug("running %s", subprocess.list2cmdline(argv))
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    for line in proc.stdout.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[2] == name and parts[1] in "Tt":
            return int(parts[0], 16)
    return None


def renode_argv(robot_port: int) -> list[str]:
    """Headless Renode with its robot server on `robot_port`; the project's script is run
    through that server (`startup_commands`), so a failing command comes back with its error
    (Renode prints script errors only to a console it does not have here)."""
    return [renode_binary() or RENODE_BINARY, "--disable-gui", "--plain", "--robot-server-port", str(robot_port)]


def startup_commands(resc: Path, elf: Path, uart_port: int) -> list[str]:
    """Monitor commands that run the project's script on `elf` with the UART on `uart_port`."""
    return [f"$bin=@{elf}", f"$port={uart_port}", f"include @{resc}"]


class RenodeMonitor:
    """Renode's robot-framework XML-RPC server, used to run monitor commands."""

    def __init__(self, port: int):
        self.proxy = xmlrpc.client.ServerProxy(f"http://127.0.0.1:{port}/", allow_none=True)

    def execute(self, command: str):
        log.debug("renode monitor: %s", command)
        response = self.proxy.run_keyword("ExecuteCommand", [command])
        if not isinstance(response, dict) or response.get("status") != "PASS":
            error = " ".join(str((response or {}).get("error", response)).split())
            raise RoutevitError(f"renode: {command!r} failed: {error}; regenerate the project with "
                                "`routevit generate` or check the board's `renode` entry in the catalog")
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
                                f"its output: {_renode_errors(proc.tail(4000))}")
        try:
            monitor.proxy.get_keyword_names()
            return
        except (OSError, xmlrpc.client.Error):
            time.sleep(0.25)
    raise RoutevitError(f"renode: its robot server did not answer within {timeout_s:.0f} s; "
                        f"its output: {_renode_errors(proc.tail(4000))}")


def _renode_errors(text: str) -> str:
    """The lines of Renode's output a user needs (errors), else its last lines; one line."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    errors = [ln for ln in lines if "[ERROR]" in ln or "Error E" in ln or "error" in ln.lower()]
    picked = (errors or lines)[-3:]
    return " | ".join(picked) if picked else "(none)"


def renode_inference_instructions(link: Link, expect: int = 0, wait_s: float = 10.0) -> list[int]:
    """Renode's ExecutedInstructions per inference on `link` so far: the differences of the
    (start, end) pairs of counter_read calls its hook logged. Empty without the hook. Renode
    writes its log asynchronously, so the last lines can trail the UART answer: with `expect`,
    wait up to `wait_s` for that many inferences."""
    emulator = link.emulator
    if emulator is None or link.backend != "renode":
        return []
    deadline = time.monotonic() + wait_s
    while True:
        try:
            emulator._log_file and emulator._log_file.flush()
            text = emulator.log_path.read_text(errors="replace")
        except OSError:
            return []
        values = [int(v) for v in _COUNT_LINE.findall(text)]
        pairs = [end - start for start, end in zip(values[0::2], values[1::2])]
        if len(pairs) >= expect or time.monotonic() > deadline:
            return pairs
        time.sleep(0.2)


def open_renode(project_dir: Path, elf: Path, board, *, connect_timeout_s: float = 120.0,
                workdir: Path | None = None, count_hook: bool = True) -> Link:
    """Start Renode on `elf` with the project's run.resc; return a Link to its UART socket."""
    reason = renode_missing_reason()
    if reason:
        raise RoutevitError(reason)
    elf = Path(elf).resolve()
    if not elf.is_file():
        raise RoutevitError(f"{elf}: firmware ELF not found; run `routevit build` on the project first")
    resc = project_resc(project_dir, board)
    workdir = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="routevit-renode-"))
    tmpdir = private_tmpdir(workdir)
    hooks = counter_hook_commands(elf) if count_hook else []
    for attempt in range(_PORT_ATTEMPTS):
        uart_port, robot_port = free_tcp_port(), free_tcp_port()
        argv = renode_argv(robot_port)
        commands = startup_commands(resc, elf, uart_port)
        # cwd = the project, so relative names in a hand-edited run.resc still resolve.
        proc = EmulatorProcess(renode_env_argv(argv, tmpdir), "renode", workdir / f"renode-{uart_port}.log",
                               cwd=Path(project_dir).resolve()).start()
        try:
            monitor = RenodeMonitor(robot_port)
            _wait_for_monitor(monitor, proc, connect_timeout_s)
            for command in commands:
                monitor.execute(command)
            # The firmware waits for the host's first request, so a hook set now sees every
            # inference.
            for command in hooks:
                monitor.execute(command)
            serial_port = connect_socket(uart_port, proc, connect_timeout_s)
        except (RoutevitError, OSError, xmlrpc.client.Error) as exc:
            output = proc.tail(1 << 16)
            proc.kill()
            # Another program took a port between our probe and Renode's bind: try others.
            if "Address already in use" in f"{output} {exc}" and attempt + 1 < _PORT_ATTEMPTS:
                log.info("a port was taken before Renode bound it; retrying")
                continue
            if isinstance(exc, RoutevitError):
                raise
            raise RoutevitError(f"renode: lost its robot server while starting ({exc}); "
                                f"its output: {_renode_errors(output)}") from None
        except BaseException:
            proc.kill()
            raise
        return Link(port=serial_port, backend="renode", target=f"renode {board.id}", emulator=proc,
                    extra={"tcp_port": uart_port, "robot_port": robot_port, "argv": argv, "commands": commands,
                           "resc": str(resc), "monitor": monitor, "count_hook": bool(hooks)})
    raise AssertionError("unreachable")  # pragma: no cover


def run_robot_suite(suite: Path, workdir: Path, timeout_s: float = 600.0) -> subprocess.CompletedProcess:
    """`renode-test SUITE` the way it works offline: a private TMPDIR, results in `workdir`
    (not inside Renode's folder, which parallel runs would share), no CSS file (the unpacked
    build has none), and this Python first on PATH (renode-test runs the first `python3`, which
    needs robotframework)."""
    import sys

    binary = renode_test_binary()
    if binary is None:
        raise RoutevitError(renode_missing_reason() or "renode-test: not found beside the renode launcher; "
                            "reinstall Renode (`ROUTEVIT_RENODE_FROM=ARCHIVE ./setup.sh`)")
    workdir = Path(workdir)
    env = dict(os.environ)
    env["TMPDIR"] = str(private_tmpdir(workdir))
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    argv = [binary, "--css-file", "", "-r", str(workdir / "results"), str(Path(suite).resolve())]
    log.info("running %s", subprocess.list2cmdline(argv))
    return subprocess.run(argv, capture_output=True, text=True, env=env, timeout=timeout_s, cwd=workdir,
                          stdin=subprocess.DEVNULL)


def renode_notes(link: Link, firmware_counts: list[int] | None = None) -> list[str]:
    """Report notes for a Renode link: Renode's own ExecutedInstructions per inference next to
    the firmware's count (compared image by image when the link ran all of `firmware_counts`)."""
    executed = renode_inference_instructions(link, expect=len(firmware_counts or []))
    if not executed:
        return []
    mean = sum(executed) / len(executed)
    note = (f"{link.target}: Renode ExecutedInstructions per inference (hook on {COUNTER_SYMBOL}): "
            f"mean {mean:,.0f} over {len(executed)} inferences")
    if firmware_counts is not None and len(firmware_counts) == len(executed):
        diffs = [abs(int(f) - e) for f, e in zip(firmware_counts, executed)]
        fw_mean = sum(int(f) for f in firmware_counts) / len(firmware_counts)
        note += (f"; firmware SysTick count mean {fw_mean:,.0f}; largest per-image difference {max(diffs)} "
                 "(one SysTick tick is 1e9 / SysTick clock instructions)")
    return [note]
