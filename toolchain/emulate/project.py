"""A generated firmware project as evaluation sees it: project.json, the export it came from
(checked by sha256), the board, the firmware ELF, and how to open an emulator on it.

    project = load_project(Path("proj"))          # finds the export project.json records
    check_hello(session.hello(), project, "qemu mps2-an386")
"""
from __future__ import annotations

import dataclasses
import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

from toolchain.emulate.link import Link
from toolchain.errors import RoutevitError
from toolchain.manifest import read_manifest
from toolchain.plan import Plan, read_plan

log = logging.getLogger("routevit")

BACKENDS = ("qemu", "renode")

@dataclass
class Project:
    """What evaluation needs from a generated project folder (docs/design.md)."""

    root: Path
    meta: dict  # project.json
    plan: Plan | None  # the export's plan (toolchain.plan.read_plan; None when the export is not found)
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
    """Read PROJ/project.json and the export's plan.json: the one given (`export_dir`), else the
    export project.json records (`export.path`, relative to the project first, then absolute).
    Either way its sha256 must be the plan the project was generated from."""
    from toolchain.boards import get_board

    root = Path(root).resolve()
    meta_path = root / "project.json"
    if not meta_path.is_file():
        raise RoutevitError(f"{root}: not a routevit project (no project.json); create one with "
                            "`routevit generate EXP --board B --out PROJ`")
    meta = read_manifest(meta_path, "regenerate the project with `routevit generate EXP --board B --out PROJ`")
    board = get_board(meta.get("board", ""))
    expected = meta.get("plan_sha256")
    if export_dir is not None:
        plan_path = Path(export_dir) / "plan.json"
        if not plan_path.is_file():
            raise RoutevitError(f"{export_dir}: no plan.json; give the folder `routevit export` wrote")
        plan_path = plan_path.resolve()
    else:
        plan_path = _recorded_plan(root, meta)
    plan = None
    if plan_path:
        data = plan_path.read_bytes()
        if expected and hashlib.sha256(data).hexdigest() != expected:
            raise RoutevitError(f"{plan_path}: is not the plan {root.name} was generated from (sha256 differs); "
                                "give the right export with --export EXP or regenerate the project")
        plan = read_plan(plan_path.parent)
    return Project(root=root, meta=meta, plan=plan, plan_path=plan_path, board=board)


def _recorded_plan(root: Path, meta: dict) -> Path | None:
    """The plan.json of the export recorded in project.json (`export`: {path, relative}), if it
    is still there and still the same plan; else a plan.json beside project.json."""
    record = meta.get("export") if isinstance(meta.get("export"), dict) else {}
    candidates = []
    if isinstance(record.get("relative"), str):
        candidates.append(root / record["relative"] / "plan.json")
    if isinstance(record.get("path"), str):
        candidates.append(Path(record["path"]) / "plan.json")
    candidates.append(root / "plan.json")
    for candidate in candidates:
        if candidate.is_file():
            if meta.get("plan_sha256") and hashlib.sha256(candidate.read_bytes()).hexdigest() != meta["plan_sha256"]:
                log.info("%s: not the plan this project was made from (sha256 differs); skipped", candidate)
                continue
            return candidate.resolve()
    return None


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
    shape = [int(v) for v in plan.input.shape]
    if list(hello.input_shape) != shape:
        raise RoutevitError(f"{target}: firmware input shape {list(hello.input_shape)} differs from the "
                            f"plan's {shape}; {rebuild}")
    if hello.num_classes != plan.num_classes:
        raise RoutevitError(f"{target}: firmware has {hello.num_classes} classes, the plan "
                            f"{plan.num_classes}; {rebuild}")
    device_layers = [(l.num_patches, l.num_experts, l.capacity, l.top_k) for l in hello.routed_layers]
    plan_layers = [(l.num_patches, l.num_experts, l.capacity, l.top_k) for l in plan.routed_layers]
    if device_layers[:len(plan_layers)] != plan_layers:
        raise RoutevitError(f"{target}: firmware routed layers {device_layers} differ from the plan's "
                            f"{plan_layers}; {rebuild}")

def require_plan(project: Project) -> None:
    if project.plan is None:
        record = (project.meta.get("export") or {}) if isinstance(project.meta.get("export"), dict) else {}
        where = f" (project.json records {record['path']}, which is gone or changed)" if record.get("path") else ""
        raise RoutevitError(f"{project.root}: cannot find the export this project was generated from{where}; "
                            "give it with --export EXP, or regenerate the project from it")

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

def hello_json(hello) -> dict:
    """HELLO as JSON (model id as 16 hex digits), for reports."""
    data = dataclasses.asdict(hello)
    data["model_id"] = f"{hello.model_id:016x}"
    return data

