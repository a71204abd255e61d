"""The routing/protocol self-test: `make selftest` (routevit's own sources only, no TFLM), then
HELLO, PING and ROUTE on every routed layer, compared with toolchain.routing."""
from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np

from toolchain.emulate.project import hello_json, load_project, open_backend
from toolchain.emulate.session import DeviceError, Session
from toolchain.errors import RoutevitError

log = logging.getLogger("routevit")


def build_selftest(project) -> Path:
    """`make selftest` in the project (routevit's own sources only; no TFLM tree needed)."""
    import shutil
    import subprocess

    if shutil.which("make") is None:
        raise RoutevitError("make: not found on PATH; install make (Debian: apt-get install make)")
    argv = ["make", "-C", str(project.root), "selftest"]
    log.info("running %s", subprocess.list2cmdline(argv))
    proc = subprocess.run(argv, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
        raise RoutevitError(f"{project.root}: `make selftest` failed ({' | '.join(tail)}); "
                            "check that arm-none-eabi-gcc is installed")
    return project.selftest_elf


def selftest_checks(session: Session, seed: int = 0, vectors_per_layer: int = 4) -> int:
    """PING and ROUTE on every routed layer the firmware announces, compared with
    toolchain.routing (small score ranges, so ties and over-capacity happen). Returns checks."""
    from toolchain.routing import route

    hello = session.hello_info
    payload = bytes(range(256)) * 2
    echoed = session.ping(payload)
    if echoed != payload:
        raise DeviceError(f"{session.link.target}: PING echoed {len(echoed)} bytes that differ from the "
                          f"{len(payload)} sent")
    rng = np.random.default_rng(seed)
    checks = 0
    for index, layer in enumerate(hello.routed_layers):
        for v in range(vectors_per_layer):
            span = (2, 8, 128, 1)[v % 4]  # narrow ranges force ties; span 1 makes every score equal
            scores = rng.integers(-span, span, size=(layer.num_patches, layer.num_experts)).astype(np.int8)
            routed = session.route(index, scores)
            dispatch, combine, counts = route(scores, layer.capacity, top_k=layer.top_k)
            if not (np.array_equal(routed.dispatch, dispatch) and np.array_equal(routed.combine, combine)
                    and np.array_equal(routed.counts, counts)):
                raise DeviceError(f"{session.link.target}: ROUTE on layer {index} (N={layer.num_patches}, "
                                  f"E={layer.num_experts}, C={layer.capacity}, k={layer.top_k}) differs from "
                                  "toolchain.routing; the firmware's routing code is wrong")
            checks += 1
    return checks


def selftest_project(project_dir: Path, *, backend: str = "qemu", timeout_s: float = 30.0) -> dict:
    project = load_project(project_dir)
    elf = build_selftest(project)
    start = time.monotonic()
    link = open_backend(project, backend, elf)
    try:
        with Session(link, timeout_s=timeout_s) as session:
            hello = session.hello()
            checks = selftest_checks(session)
            stopped = session.stop()
    finally:
        link.close()
    return {"target": link.target, "backend": backend, "hello": hello_json(hello), "route_checks": checks,
            "stopped_cleanly": stopped, "wall_seconds": time.monotonic() - start}

