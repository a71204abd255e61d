"""Evaluate a firmware project on a device (QEMU, Renode or a real board) and write a report.

    emulate_project(PROJ, backend="qemu", data="fashion-mnist", limit=200, out=REPORT)
    evaluate_on_port(PROJ, port="/dev/ttyACM0", data="fashion-mnist", limit=200, out=REPORT)

Both open a `Link`, then run the same `run_evaluation` over it: HELLO (checked against the
project's plan), the test images quantised exactly as the host reference quantises them, one
INFER per image, then the host reference on the same images and a report.
"""
from __future__ import annotations

import json
import logging
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from toolchain.emulate.link import Link
from toolchain.emulate.session import DeviceError, Session
from toolchain.errors import RoutevitError
from toolchain.manifest import read_manifest

log = logging.getLogger("routevit")

BACKENDS = ("qemu", "renode")
ROUTING_MAP_IMAGES = 4


# -- the project -------------------------------------------------------------------------------

@dataclass
class Project:
    """What evaluation needs from a generated project folder (docs/design.md)."""

    root: Path
    meta: dict  # project.json
    plan: dict | None  # the export's plan.json (None for a project generated without one)
    plan_path: Path | None
    board: object  # toolchain.boards.Board

    @property
    def elf(self) -> Path:
        return self.root / "build" / "firmware.elf"

    @property
    def selftest_elf(self) -> Path:
        return self.root / "build" / "selftest.elf"

    @property
    def export_dir(self) -> Path | None:
        return self.plan_path.parent if self.plan_path else None

    @property
    def clock_hz(self) -> int:
        return int(self.meta.get("clock_hz") or self.board.clock_hz)

    @property
    def qemu_machine(self) -> str | None:
        qemu = self.meta.get("qemu") or self.board.qemu
        return (qemu or {}).get("machine")

    @property
    def model_id(self) -> int | None:
        sha = self.meta.get("plan_sha256")
        return int.from_bytes(bytes.fromhex(sha)[:8], "little") if sha else None


def load_project(root: Path, export_dir: Path | None = None) -> Project:
    """Read PROJ/project.json and the export's plan.json (from `export_dir`, PROJ/plan.json or
    the export folder project.json names); the plan must be the one the project was made from."""
    import hashlib

    from toolchain.boards import get_board

    root = Path(root).resolve()
    meta_path = root / "project.json"
    if not meta_path.is_file():
        raise RoutevitError(f"{root}: not a routevit project (no project.json); create one with "
                            "`routevit generate EXP --board B --out PROJ`")
    meta = read_manifest(meta_path, "regenerate the project with `routevit generate EXP --board B --out PROJ`")
    board = get_board(meta.get("board", ""))
    if export_dir is not None:
        plan_path = Path(export_dir) / "plan.json"
        if not plan_path.is_file():
            raise RoutevitError(f"{export_dir}: no plan.json; give the folder `routevit export` wrote")
        plan_path = plan_path.resolve()
    else:
        plan_path = _find_plan(root, meta)
    plan = None
    if plan_path:
        data = plan_path.read_bytes()
        expected = meta.get("plan_sha256")
        if expected and hashlib.sha256(data).hexdigest() != expected:
            raise RoutevitError(f"{plan_path}: is not the plan {root.name} was generated from (sha256 differs); "
                                "give the right export with --export EXP or regenerate the project")
        plan = json.loads(data)
    return Project(root=root, meta=meta, plan=plan, plan_path=plan_path, board=board)


def _find_plan(root: Path, meta: dict) -> Path | None:
    candidates = [root / "plan.json"]
    for key in ("export_dir", "export", "plan", "plan_path"):
        value = meta.get(key)
        if isinstance(value, str) and value:
            path = Path(value)
            path = path if path.is_absolute() else (root / path)
            candidates.append(path / "plan.json" if path.suffix != ".json" else path)
    for candidate in candidates:
        if candidate.is_file():
            return candidate.resolve()
    return None


# -- images ------------------------------------------------------------------------------------

def plan_input(plan: dict) -> dict:
    return plan["model"]["input"]


def load_test_images(data: str, plan: dict, limit: int):
    """(uint8 [n, H, W, C], labels [n], class names) of the dataset's test split."""
    from toolchain.data import load_dataset

    _, height, width, channels = plan_input(plan)["shape"]
    if height != width:
        raise RoutevitError(f"plan: input {height}x{width} is not square; routevit datasets give square images")
    dataset = load_dataset(data)
    images, labels = dataset.numpy_images("test", limit, image_size=height, channels=channels)
    if len(images) == 0:
        raise RoutevitError(f"dataset {data}: its test split has no images")
    names = list(plan["model"].get("class_names") or dataset.class_names)
    return images, labels.astype(np.int64), names


def quantize_images(reference, images_u8: np.ndarray) -> np.ndarray:
    """The int8 input tensors the device is sent: the host reference's own quantisation (the
    plan's pixel table), so device and host see the same bytes."""
    return np.stack([reference.quantize_pixels(image) for image in images_u8])


def check_image_sizes(images_q: np.ndarray, hello) -> None:
    """An image whose size is not the firmware's input size is refused before anything is sent."""
    expected = tuple(int(v) for v in hello.input_shape[1:])
    for i, image in enumerate(images_q):
        if image.size != int(np.prod(expected)):
            raise RoutevitError(
                f"image {i}: {image.size} values ({'x'.join(map(str, image.shape))}) but the firmware expects "
                f"{'x'.join(map(str, expected))}; resize the images to the model's input")


# -- HELLO against the plan ----------------------------------------------------------------------

def check_hello(hello, project: Project, target: str) -> None:
    """The firmware must be the project's model: model id, input, classes, routed layers."""
    rebuild = f"rebuild it with `routevit build {project.root}`"
    if hello.num_classes == 0:
        raise RoutevitError(f"{target}: firmware is a self-test build without a model; {rebuild}")
    plan = project.plan
    if project.model_id is not None and hello.model_id != project.model_id:
        raise RoutevitError(f"{target}: firmware model id {hello.model_id:016x} is not this project's "
                            f"plan ({project.model_id:016x}); flash or {rebuild}")
    if plan is None:
        return
    shape = [int(v) for v in plan_input(plan)["shape"]]
    if list(hello.input_shape) != shape:
        raise RoutevitError(f"{target}: firmware input shape {list(hello.input_shape)} differs from the "
                            f"plan's {shape}; {rebuild}")
    if hello.num_classes != int(plan["model"]["num_classes"]):
        raise RoutevitError(f"{target}: firmware has {hello.num_classes} classes, the plan "
                            f"{plan['model']['num_classes']}; {rebuild}")
    layers = plan.get("routed_layers") or []
    device_layers = [(l.num_patches, l.num_experts, l.capacity, l.top_k) for l in hello.routed_layers]
    plan_layers = [(int(l["num_patches"]), int(l["num_experts"]), int(l["capacity"]), int(l.get("top_k", 1)))
                   for l in layers]
    if device_layers[:len(plan_layers)] != plan_layers:
        raise RoutevitError(f"{target}: firmware routed layers {device_layers} differ from the plan's "
                            f"{plan_layers}; {rebuild}")


# -- the evaluation loop -------------------------------------------------------------------------

@dataclass
class DeviceRun:
    hello: object
    logits: np.ndarray  # int8 [n, K]
    counters: list[int]
    expert_counts: list  # [n][R][E]
    wall_seconds: float
    routing_maps: list = field(default_factory=list)


def run_on_device(session: Session, images_q: np.ndarray, *, timeout_per_image: float,
                  progress: bool = True, label: str = "inference") -> DeviceRun:
    """INFER every image over `session` (HELLO already checked). Progress bar on stderr."""
    from tqdm import tqdm

    hello = session.hello_info
    check_image_sizes(images_q, hello)
    logits, counters, experts = [], [], []
    start = time.monotonic()
    bar = tqdm(total=len(images_q), desc=label, unit="img", file=sys.stderr,
               disable=(not progress) or None, leave=False)
    try:
        for i, image in enumerate(images_q):
            result = session.infer(image, what=f"INFER image {i}", timeout_s=timeout_per_image)
            logits.append(result.logits)
            counters.append(result.counter)
            experts.append(result.expert_counts)
            bar.update(1)
    finally:
        bar.close()
    return DeviceRun(hello=hello, logits=np.stack(logits) if logits else np.zeros((0, hello.num_classes), np.int8),
                     counters=counters, expert_counts=experts, wall_seconds=time.monotonic() - start)


def device_routing_maps(session: Session | None, host: dict | None, plan: dict, images_u8, labels,
                        count: int = ROUTING_MAP_IMAGES) -> list[dict]:
    """Per-patch expert of the first images, for the routing map.

    With the host's int8 router scores, the device's own routing code decides (ROUTE request),
    so the map shows what the firmware did; without a device (or if ROUTE fails) the host's
    routing of the same scores is drawn, or the host reference's own per-patch assignments."""
    from toolchain.report.metrics import assignment_from_combine
    from toolchain.routing import route

    layers = plan.get("routed_layers") or []
    if not host or not layers:
        return []
    scores_all = host.get("router_scores")
    assignments_all = host.get("assignments")
    available = len(scores_all) if scores_all is not None else (len(assignments_all) if assignments_all is not None else 0)
    maps = []
    for i in range(min(count, len(images_u8), available)):
        entry = {"index": i, "image": images_u8[i], "label": int(labels[i]), "layers": []}
        for r, layer in enumerate(layers):
            n, e, c = int(layer["num_patches"]), int(layer["num_experts"]), int(layer["capacity"])
            if scores_all is None:
                entry["layers"].append({"assignment": [int(a) for a in assignments_all[i][r]][:n],
                                        "source": "host routing"})
                continue
            scores = np.asarray(scores_all[i][r], dtype=np.int8).reshape(n, e)
            combine, source = None, "device routing"
            if session is not None:
                try:
                    combine = session.route(r, scores).combine
                except DeviceError as exc:
                    log.warning("ROUTE on the device failed (%s); drawing the host's routing", exc)
            if combine is None:
                _, combine, _ = route(scores, c, top_k=int(layer.get("top_k", 1)))
                source = "host routing"
            entry["layers"].append({"assignment": assignment_from_combine(combine, n, c, e).tolist(),
                                    "source": source})
        maps.append(entry)
    return maps


def open_host_reference(export_dir: Path):
    from toolchain.hostref import HostReference  # the int8 helper's host reference

    return HostReference(export_dir)


def host_reference(reference, images_u8: np.ndarray, progress: bool = True) -> dict:
    """Host int8 logits, expert counts and router scores on the same images, one by one."""
    from tqdm import tqdm

    logits, counts, scores = [], [], []
    for image in tqdm(images_u8, desc="host reference", unit="img", file=sys.stderr,
                      disable=(not progress) or None, leave=False):
        result = reference.run(reference.quantize_pixels(image))
        logits.append(np.asarray(result.logits, np.int8).reshape(-1))
        counts.append([[int(c) for c in r.counts] for r in result.routing])
        scores.append([np.asarray(r.scores, np.int8) for r in result.routing])
    return {"logits": np.stack(logits), "expert_counts": counts, "router_scores": scores}


def float_predictions(export_dir: Path, plan: dict, images_u8: np.ndarray) -> tuple[np.ndarray | None, str | None]:
    """Top-1 of the export's float reference model on the same images, or (None, why not)."""
    from toolchain.data import Normalization
    from toolchain.hostref.evaluate import _float_predictions  # the int8 helper's float path

    inp = plan["model"]["input"]
    norm = inp.get("normalization") or {"mean": [0.5], "std": [0.5]}
    normalization = Normalization.from_lists(norm["mean"], norm["std"], int(inp["shape"][3]))
    try:
        return _float_predictions(Path(export_dir), images_u8, normalization), None
    except RoutevitError as exc:
        return None, f"no float top-1: {exc.format_message()}"


def memory_summary(project: Project) -> dict:
    """Flash/RAM/arena figures: the generator's budget (PROJ/memory_report.json) and what the
    linker placed (PROJ/build/size.json, written by `routevit build`)."""
    memory = {}
    report_path = project.root / "memory_report.json"
    if report_path.is_file():
        try:
            report = json.loads(report_path.read_text())
        except json.JSONDecodeError:
            log.warning("%s: not valid JSON; left out of the report", report_path)
            report = {}
        arena = report.get("arena") or {}
        memory["arena_bytes"] = arena.get("bytes", project.meta.get("arena_bytes"))
        if arena.get("measured_bytes") is not None:
            memory["arena_measured_on_host_bytes"] = arena["measured_bytes"]
        if report.get("stack_bytes") is not None:
            memory["stack_bytes"] = report["stack_bytes"]
        segments = report.get("segments") or []
        if segments:
            memory["model_bytes"] = sum(int(s.get("bytes", 0)) for s in segments)
        for region in report.get("regions") or []:
            memory[f"{region['region']}_budget_used_bytes"] = region.get("used")
            memory[f"{region['region']}_size_bytes"] = region.get("size")
    size_path = project.root / "build" / "size.json"
    if size_path.is_file():
        try:
            size = json.loads(size_path.read_text())
        except json.JSONDecodeError:
            log.warning("%s: not valid JSON; left out of the report", size_path)
            size = {}
        memory["linked"] = {k: size[k] for k in ("flash_bytes", "ram_bytes", "text", "data", "bss") if k in size}
    return memory


def _counter_kind(device: DeviceRun | None, link: Link | None) -> int | None:
    if device is None:
        return None
    kind = device.hello.counter_kind
    # The firmware cannot tell QEMU from Renode: its SysTick instruction count (kind 0) is
    # Renode's virtual-time count when Renode runs it (kind 2).
    if link is not None and link.backend == "renode" and kind == 0:
        return 2
    return kind


def build_record(project: Project, link: Link, dataset: str, labels, class_names, device: DeviceRun | None,
                 host: dict | None, maps: list, notes: list[str]) -> dict:
    plan = project.plan or {}
    logits_quant = None
    if plan.get("logits"):
        seg = plan["segments"][plan["logits"]["segment"]]
        out = seg["outputs"][plan["logits"]["output"]]
        logits_quant = {"scale": out["scale"], "zero_point": out["zero_point"]}
    record = {
        "backend": link.backend if link else None,
        "target": link.target if link else None,
        "board": project.board.id,
        "clock_hz": project.clock_hz,
        "counter_kind": _counter_kind(device, link),
        "dataset": dataset,
        "project": str(project.root),
        "class_names": class_names,
        "labels": labels,
        "logits_quant": logits_quant,
        "routed_layers": plan.get("routed_layers") or [],
        "routing_maps": maps,
        "memory": memory_summary(project),
        "notes": notes,
    }
    if device is not None:
        record["device"] = {"logits": device.logits, "counts": device.counters, "expert_counts": device.expert_counts}
        record["hello"] = _hello_json(device.hello)
        record["wall_seconds"] = device.wall_seconds
    if host:
        record["host"] = {"logits": host["logits"], "expert_counts": host.get("expert_counts")}
        if host.get("float_predictions") is not None:
            record["float"] = {"predictions": host["float_predictions"]}
    return record


def require_plan(project: Project) -> None:
    if project.plan is None:
        raise RoutevitError(f"{project.root}: cannot find the export this project was generated from "
                            "(project.json names none); give it with --export EXP")


def run_evaluation(link: Link, project: Project, *, data: str, limit: int, out: Path | None,
                   timeout_per_image: float, hello_timeout: float = 30.0, progress: bool = True) -> dict:
    """The one code path for QEMU, Renode and real boards. Closes `link` when done."""
    from toolchain.report import build_report, write_report

    require_plan(project)
    images_u8, labels, class_names = load_test_images(data, project.plan, limit)
    reference = open_host_reference(project.export_dir)
    images_q = quantize_images(reference, images_u8)
    notes = []
    with Session(link, timeout_s=timeout_per_image) as session:
        hello = session.hello(timeout_s=hello_timeout)
        check_hello(hello, project, link.target)
        device = run_on_device(session, images_q, timeout_per_image=timeout_per_image, progress=progress,
                               label=f"{link.backend} inference")
        host = host_reference(reference, images_u8, progress=progress)
        maps = device_routing_maps(session, host, project.plan, images_u8, labels)
        if link.emulator is not None:
            # Emulators end through semihosting; a real board stays up for the next run (its
            # semihosting call would fault without a debugger attached).
            session.stop()
        if session.garbage_bytes or session.bad_frames or session.resends:
            notes.append(f"line noise: {session.bad_frames} damaged frames, {session.resends} requests resent")
    predictions, why_not = float_predictions(project.export_dir, project.plan, images_u8)
    if predictions is not None:
        host["float_predictions"] = predictions
    else:
        notes.append(why_not)
    record = build_record(project, link, data, labels, class_names, device, host, maps, notes)
    if out is None:
        return build_report(record)
    return write_report(record, Path(out))


# -- entry points ------------------------------------------------------------------------------

def ensure_built(project: Project, kernels: str | None = None) -> Path:
    """Build the firmware if it is missing or older than the project's sources."""
    elf = project.elf
    sources = [p for p in (project.root / "src").rglob("*") if p.is_file()] if (project.root / "src").is_dir() else []
    sources.append(project.root / "project.json")
    newest = max((p.stat().st_mtime for p in sources if p.exists()), default=0.0)
    if elf.is_file() and elf.stat().st_mtime >= newest and kernels is None:
        return elf
    from toolchain.build import build_project  # the build helper's `routevit build`

    build_project(project.root, **({"kernels": kernels} if kernels else {}))
    if not elf.is_file():
        raise RoutevitError(f"{elf}: the build finished without a firmware ELF; see the build log")
    return elf


def open_backend(project: Project, backend: str, elf: Path, workdir: Path | None = None) -> Link:
    if backend == "qemu":
        from toolchain.emulate.qemu import open_qemu

        machine = project.qemu_machine
        if not machine:
            raise RoutevitError(f"board {project.board.id}: QEMU does not emulate it; use --backend renode "
                                "or a real board with `routevit evaluate PROJ --port DEV`")
        return open_qemu(elf, machine, workdir=workdir)
    if backend == "renode":
        from toolchain.emulate.renode import open_renode

        return open_renode(project.root, elf, project.board, workdir=workdir)
    raise RoutevitError(f"backend {backend!r}: unknown; use one of {', '.join(BACKENDS)}")


def emulate_project(project_dir: Path, *, backend: str, data: str, limit: int, out: Path | None,
                    timeout_per_image: float = 60.0, build: bool = True, progress: bool = True,
                    export_dir: Path | None = None) -> dict:
    project = load_project(project_dir, export_dir)
    require_plan(project)
    elf = ensure_built(project) if build else project.elf
    workdir = Path(tempfile.mkdtemp(prefix=f"routevit-{backend}-"))
    link = open_backend(project, backend, elf, workdir)
    try:
        return run_evaluation(link, project, data=data, limit=limit, out=out,
                              timeout_per_image=timeout_per_image, progress=progress)
    finally:
        link.close()


def evaluate_on_port(project_dir: Path, *, port: str, baud: int, data: str, limit: int, out: Path | None,
                     timeout_per_image: float = 60.0, progress: bool = True,
                     export_dir: Path | None = None) -> dict:
    from toolchain.emulate.serialport import open_serial_port

    project = load_project(project_dir, export_dir)
    require_plan(project)
    link = open_serial_port(port, baud)
    try:
        return run_evaluation(link, project, data=data, limit=limit, out=out,
                              timeout_per_image=timeout_per_image, progress=progress)
    finally:
        link.close()


# -- self-test (no TFLM) -----------------------------------------------------------------------

def build_selftest(project: Project) -> Path:
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
    return {"target": link.target, "backend": backend, "hello": _hello_json(hello), "route_checks": checks,
            "stopped_cleanly": stopped, "wall_seconds": time.monotonic() - start}


def _hello_json(hello) -> dict:
    import dataclasses

    data = dataclasses.asdict(hello)
    data["model_id"] = f"{hello.model_id:016x}"
    return data


# -- host only (no device) ---------------------------------------------------------------------

def host_only_report(export_dir: Path, *, data: str, limit: int, out: Path, notes: list[str] | None = None,
                     progress: bool = True) -> dict:
    """A report of the host reference alone (what ran when no firmware could be built)."""
    from toolchain.report import write_report

    plan_path = Path(export_dir) / "plan.json"
    if not plan_path.is_file():
        raise RoutevitError(f"{export_dir}: no plan.json; give the folder `routevit export` wrote")
    plan = json.loads(plan_path.read_text())
    images_u8, labels, class_names = load_test_images(data, plan, limit)
    host = host_reference(open_host_reference(Path(export_dir)), images_u8, progress=progress)
    notes = list(notes or [])
    predictions, why_not = float_predictions(Path(export_dir), plan, images_u8)
    if why_not:
        notes.append(why_not)
    seg = plan["segments"][plan["logits"]["segment"]]["outputs"][plan["logits"]["output"]]
    record = {
        "backend": "host", "target": "host reference (tflite-micro wheel)", "board": None, "dataset": data,
        "project": str(Path(export_dir).resolve()), "class_names": class_names, "labels": labels,
        "logits_quant": {"scale": seg["scale"], "zero_point": seg["zero_point"]},
        "routed_layers": plan.get("routed_layers") or [],
        "host": {"logits": host["logits"], "expert_counts": host.get("expert_counts")},
        "routing_maps": device_routing_maps(None, host, plan, images_u8, labels),
        "notes": notes,
    }
    if predictions is not None:
        record["float"] = {"predictions": predictions}
    return write_report(record, Path(out))
