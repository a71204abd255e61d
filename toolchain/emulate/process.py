"""Emulator child processes that are always reaped.

An emulator (QEMU, Renode) runs in its own process group so that it and anything it spawns die
together. It is killed on every way out of the `with` block (normal exit, timeout, Ctrl-C,
exception), by an `atexit` hook, by a SIGTERM/SIGHUP handler installed while any emulator lives,
and (Linux) by the kernel's parent-death signal if Python itself is killed with SIGKILL.
"""
from __future__ import annotations

import atexit
import ctypes
import logging
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

log = logging.getLogger("routevit")

_LIVE: set["EmulatorProcess"] = set()
_LIVE_LOCK = threading.Lock()
_PREVIOUS_HANDLERS: dict[int, object] = {}
_REAP_SIGNALS = (signal.SIGTERM, signal.SIGHUP)


def _set_parent_death_signal():
    """Runs in the child before exec: ask Linux to SIGKILL it when its parent dies."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGKILL)
    except Exception:  # not Linux: atexit and signal handlers still reap it
        pass


def reap_all() -> None:
    """Kill every emulator this process started and has not reaped yet."""
    with _LIVE_LOCK:
        live = list(_LIVE)
    for proc in live:
        proc.kill()


def _on_signal(signum, frame):
    reap_all()
    previous = _PREVIOUS_HANDLERS.get(signum)
    if callable(previous):
        previous(signum, frame)
    # Turn the signal into SystemExit so `finally` blocks and atomic output dirs clean up.
    raise SystemExit(128 + signum)


def _install_signal_handlers() -> None:
    if threading.current_thread() is not threading.main_thread() or _PREVIOUS_HANDLERS:
        return
    for sig in _REAP_SIGNALS:
        try:
            _PREVIOUS_HANDLERS[sig] = signal.signal(sig, _on_signal)
        except (ValueError, OSError):
            pass


def _restore_signal_handlers() -> None:
    if threading.current_thread() is not threading.main_thread():
        return
    for sig, previous in list(_PREVIOUS_HANDLERS.items()):
        try:
            signal.signal(sig, previous if previous is not None else signal.SIG_DFL)
        except (ValueError, OSError, TypeError):
            pass
    _PREVIOUS_HANDLERS.clear()


atexit.register(reap_all)


class EmulatorProcess:
    """One emulator run: `with EmulatorProcess(argv, "qemu", log_path) as proc: ...`.

    stdout and stderr go to `log_path` (a pipe could fill up and stall the emulator); `tail()`
    returns the end of that log for error messages.
    """

    def __init__(self, argv: list[str], name: str, log_path: Path, cwd: Path | None = None,
                 pass_fds: tuple[int, ...] = (), owned_fds: tuple[int, ...] = ()):
        self.argv = [str(a) for a in argv]
        self.name = name
        self.log_path = Path(log_path)
        self.cwd = cwd
        self.pass_fds = tuple(pass_fds)  # inherited by the emulator (e.g. a pty master)
        self.owned_fds = list(owned_fds)  # ours, closed by kill() (after the emulator is gone)
        self.popen: subprocess.Popen | None = None
        self._log_file = None

    # -- lifecycle -----------------------------------------------------------------------------
    def start(self) -> "EmulatorProcess":
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log_file = open(self.log_path, "wb")
        log.info("starting %s: %s", self.name, subprocess.list2cmdline(self.argv))
        self.popen = subprocess.Popen(
            self.argv,
            cwd=self.cwd,
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # own process group: killpg reaches its children too
            preexec_fn=_set_parent_death_signal,
            pass_fds=self.pass_fds,
        )
        with _LIVE_LOCK:
            _LIVE.add(self)
            _install_signal_handlers()
        return self

    def __enter__(self) -> "EmulatorProcess":
        return self.start() if self.popen is None else self

    def __exit__(self, *exc) -> None:
        self.kill()

    @property
    def pid(self) -> int | None:
        return self.popen.pid if self.popen else None

    def poll(self) -> int | None:
        """The exit code if the emulator has ended, else None."""
        return self.popen.poll() if self.popen else None

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def wait(self, timeout: float) -> int | None:
        try:
            return self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def kill(self, grace_s: float = 2.0) -> None:
        """SIGTERM the whole process group, then SIGKILL it; wait for the child. Idempotent."""
        popen = self.popen
        if popen is None:
            return
        if popen.poll() is None:
            log.info("stopping %s (pid %d)", self.name, popen.pid)
            self._signal_group(signal.SIGTERM)
            try:
                popen.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                pass
        # The leader may be gone while others in its group are not: always SIGKILL the group.
        self._signal_group(signal.SIGKILL)
        try:
            popen.wait(timeout=10)
        except subprocess.TimeoutExpired:  # pragma: no cover - a process ignoring SIGKILL
            log.error("%s (pid %d) did not die after SIGKILL", self.name, popen.pid)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        while self.owned_fds:
            try:
                os.close(self.owned_fds.pop())
            except OSError:
                pass
        with _LIVE_LOCK:
            _LIVE.discard(self)
            if not _LIVE:
                _restore_signal_handlers()

    def _signal_group(self, sig: int) -> None:
        try:
            os.killpg(self.popen.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    # -- diagnostics ---------------------------------------------------------------------------
    def tail(self, max_bytes: int = 2000) -> str:
        """The last bytes the emulator wrote to stdout/stderr, decoded leniently."""
        try:
            if self._log_file is not None:
                self._log_file.flush()
            data = self.log_path.read_bytes()[-max_bytes:]
        except OSError:
            return ""
        return data.decode("utf-8", "replace").strip()

    def wait_for_log(self, needle: str, timeout_s: float) -> bool:
        """Poll the emulator's log for `needle` (e.g. QEMU's pty name) until the timeout."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if needle in self.tail(1 << 16):
                return True
            if not self.alive():
                return False
            time.sleep(0.05)
        return False
