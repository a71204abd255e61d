"""Run the test images on one or more devices, keeping every finished result.

Each finished image is appended at once to `OUT/device_results.jsonl` (the journal: its first
line says which firmware, plan and dataset the results belong to), so a crash, a timeout or
Ctrl-C loses nothing: the caller writes a partial report from what the journal holds, and a
later run with `resume=True` skips the images already there.

`jobs` > 1 opens that many devices (emulator instances, one per core) and hands each the next
image not yet done; results are kept by image index, so the report is the same as with one job.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import queue
import sys
import threading
import time
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from toolchain.emulate.link import Link
from toolchain.emulate.session import Session
from toolchain.errors import RoutevitError

log = logging.getLogger("routevit")

JOURNAL_FILE = "device_results.jsonl"
JOURNAL_FORMAT = "routevit-device-results/1"


@dataclass
class ImageResult:
    index: int
    logits: np.ndarray  # int8 [K]
    counter: int  # instructions or cycles of the whole inference (HELLO says which)
    expert_counts: list  # [routed layer][expert]
    seconds: float  # host wall time of the request

    def to_json(self) -> dict:
        return {"index": self.index, "logits": [int(v) for v in self.logits], "counter": int(self.counter),
                "expert_counts": self.expert_counts, "seconds": round(self.seconds, 4)}

    @classmethod
    def from_json(cls, data: dict) -> "ImageResult":
        return cls(int(data["index"]), np.asarray(data["logits"], np.int8), int(data["counter"]),
                   [list(map(int, c)) for c in data["expert_counts"]], float(data.get("seconds", 0.0)))


def file_sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def images_sha256(images_q: np.ndarray) -> str:
    """Identity of the image set: the int8 bytes the device is sent, in order."""
    return hashlib.sha256(np.ascontiguousarray(images_q).tobytes()).hexdigest()


class Journal:
    """The device results of one evaluation, one JSON line per image, written as they arrive."""

    def __init__(self, path: Path, identity: dict, results: dict[int, ImageResult] | None = None):
        self.path = Path(path)
        self.identity = identity
        self.results: dict[int, ImageResult] = dict(results or {})
        self._lock = threading.Lock()
        self._file = None

    @classmethod
    def start(cls, out: Path, identity: dict, resume: bool) -> "Journal":
        """A fresh journal in `out` (an old one is replaced), or with `resume` the one there,
        which must belong to the same firmware, plan and dataset."""
        path = Path(out) / JOURNAL_FILE
        results = {}
        if resume:
            results = cls._read(path, identity)
        journal = cls(path, identity, results)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".jsonl.tmp")
        with open(tmp, "w") as f:
            f.write(json.dumps({"format": JOURNAL_FORMAT, **identity}, sort_keys=True) + "\n")
            for index in sorted(results):
                f.write(json.dumps(results[index].to_json()) + "\n")
        os.replace(tmp, path)
        journal._file = open(path, "a")
        return journal

    @staticmethod
    def _read(path: Path, identity: dict) -> dict[int, ImageResult]:
        if not path.is_file():
            raise RoutevitError(f"{path.parent}: no earlier results to resume ({JOURNAL_FILE} missing); "
                                "run without --resume")
        lines = path.read_text().splitlines()
        try:
            header = json.loads(lines[0]) if lines else {}
        except json.JSONDecodeError:
            header = {}
        if header.get("format") != JOURNAL_FORMAT:
            raise RoutevitError(f"{path}: not a routevit results journal; run without --resume to start over")
        changed = [k.replace("_sha256", "") for k, v in identity.items() if v is not None and header.get(k) != v]
        if changed:
            raise RoutevitError(f"{path}: the earlier results are for another {', '.join(changed)}; "
                                "run without --resume to start over")
        results = {}
        for number, line in enumerate(lines[1:], start=2):
            try:
                result = ImageResult.from_json(json.loads(line))
            except (json.JSONDecodeError, KeyError, TypeError, ValueError):
                # A line cut short by a crash is the last one: everything before it is good.
                log.info("%s:%d: incomplete line (the run stopped while writing it); that image runs again",
                         path, number)
                continue
            results[result.index] = result
        return results

    def add(self, result: ImageResult) -> None:
        with self._lock:
            self.results[result.index] = result
            self._file.write(json.dumps(result.to_json()) + "\n")
            self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def discard(self) -> None:
        """Remove the journal (nothing ran); and its folder if that is now empty."""
        self.close()
        self.path.unlink(missing_ok=True)
        try:
            self.path.parent.rmdir()
        except OSError:
            pass  # it holds other files (e.g. an earlier report): leave it


@dataclass
class DeviceRun:
    """What the devices returned, in image order (only the images that finished)."""

    hello: object
    indices: list[int]
    logits: np.ndarray  # int8 [n, K]
    counters: list[int]
    expert_counts: list  # [n][R][E]
    wall_seconds: float
    resumed: int = 0  # images taken from an earlier run's journal
    jobs: int = 1
    notes: list[str] = field(default_factory=list)


def collect(journal: Journal, hello, wall_seconds: float, resumed: int, jobs: int, count: int) -> DeviceRun:
    """The journal's results for images 0..count-1, in image order."""
    indices = sorted(i for i in journal.results if i < count)
    results = [journal.results[i] for i in indices]
    num_classes = hello.num_classes if hello is not None else 0
    logits = np.stack([r.logits for r in results]) if results else np.zeros((0, num_classes), np.int8)
    return DeviceRun(hello=hello, indices=indices, logits=logits, counters=[r.counter for r in results],
                     expert_counts=[r.expert_counts for r in results], wall_seconds=wall_seconds,
                     resumed=resumed, jobs=jobs)


class Devices:
    """`jobs` sessions, each on its own link from `open_link(worker)`, all HELLO-checked.

    Each device has its own thread for its whole life (a one-thread executor): emulators are
    started with a parent-death signal, which Linux ties to the *thread* that started them, so
    the thread that opened a device must outlive it. Everything a device does runs there."""

    def __init__(self, open_link: Callable[[int], Link], jobs: int, *, timeout_s: float, hello_timeout: float,
                 check: Callable[[object, Link], None]):
        self.open_link = open_link
        self.jobs = jobs
        self.timeout_s = timeout_s
        self.hello_timeout = hello_timeout
        self.check = check
        self.sessions: list[Session] = []
        self.links: list[Link] = []
        self.executors = [ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"device-{w}") for w in range(jobs)]

    def open(self) -> None:
        """Start every device at once (emulators boot in parallel); the first failure is raised."""
        def start(worker: int) -> Session:
            link = self.open_link(worker)
            self.links.append(link)
            session = Session(link, timeout_s=self.timeout_s)
            hello = session.hello(timeout_s=self.hello_timeout)
            self.check(hello, link)
            return session

        self.sessions = wait_all([ex.submit(start, w) for w, ex in enumerate(self.executors)])

    def on_each(self, fn: Callable[[Session], object]) -> list:
        """fn(session) on every device, each in its own thread; the results in device order."""
        return wait_all([ex.submit(fn, s) for ex, s in zip(self.executors, self.sessions)])

    def on_first(self, fn: Callable[[Session], object]):
        return wait_all([self.executors[0].submit(fn, self.sessions[0])])[0]

    @property
    def hello(self):
        return self.sessions[0].hello_info if self.sessions else None

    def close(self) -> None:
        for link in list(self.links):
            link.close()
        for ex in self.executors:
            ex.shutdown(wait=False, cancel_futures=True)


def wait_all(futures: list) -> list:
    """The futures' results in order; the first exception is raised once all have ended. Waits
    in short steps so Ctrl-C reaches the main thread while devices block on the line."""
    pending = set(futures)
    while pending:
        _, pending = wait(pending, timeout=0.2, return_when=FIRST_EXCEPTION)
        if any(f.done() and f.exception() is not None for f in futures):
            wait(pending)  # the others stop on their own (run_images sets its stop flag)
            break
    for f in futures:
        if f.exception() is not None:
            raise f.exception()
    return [f.result() for f in futures]


def run_images(devices: Devices, images_q: np.ndarray, journal: Journal, *, timeout_per_image: float,
               progress: bool = True, label: str = "inference") -> DeviceRun:
    """INFER every image not yet in the journal, spread over the devices' sessions.

    On the first failure (or Ctrl-C) the other workers stop after their current image; the
    journal keeps every finished result and the failure is raised."""
    from tqdm import tqdm

    from toolchain.emulate.inputs import check_image_sizes

    check_image_sizes(images_q, devices.hello)
    resumed = len([i for i in journal.results if i < len(images_q)])
    todo: queue.Queue = queue.Queue()
    for index in range(len(images_q)):
        if index not in journal.results:
            todo.put(index)
    stop = threading.Event()
    bar = tqdm(total=len(images_q), initial=resumed, desc=label, unit="img", file=sys.stderr,
               disable=(not progress) or None, leave=False)
    bar_lock = threading.Lock()
    started = time.monotonic()

    def work(session: Session) -> None:
        while not stop.is_set():
            try:
                index = todo.get_nowait()
            except queue.Empty:
                return
            try:
                result = session.infer(images_q[index], what=f"INFER image {index}", timeout_s=timeout_per_image)
            except BaseException:
                stop.set()  # the other devices finish their current image and stop
                raise
            journal.add(ImageResult(index, result.logits, result.counter, result.expert_counts, result.seconds))
            with bar_lock:
                bar.update(1)

    try:
        devices.on_each(work)
    except BaseException:
        stop.set()
        raise
    finally:
        bar.close()
    wall = time.monotonic() - started
    return collect(journal, devices.hello, wall, resumed, len(devices.sessions), len(images_q))
