"""Evaluate a firmware project on devices (QEMU, Renode or a real board) and write a report.

    emulate_project(PROJ, backend="qemu", data="fashion-mnist", limit=200, out=REPORT, jobs=2)
    evaluate_on_port(PROJ, port="/dev/ttyACM0", data="fashion-mnist", limit=200, out=REPORT)

Both run `run_evaluation`: open the device(s) (HELLO checked against the project's plan), send
the test images quantised exactly as the host reference quantises them, one INFER per image,
each result kept in REPORT/device_results.jsonl as it arrives; then the host reference on the
same images and the report. If the run stops early (the device dies or hangs, Ctrl-C), the
report of the images that finished is written, marked partial, and `resume=True` continues.
"""
from __future__ import annotations

import json
import logging
import tempfile
import time
from pathlib import Path

from toolchain.emulate.device_run import (DeviceRun, Devices, Journal, file_sha256, images_sha256,
                                          run_images)
from toolchain.emulate.hostside import device_routing_maps, float_predictions, host_reference, open_host_reference
from toolchain.emulate.inputs import load_test_images, quantize_images
from toolchain.emulate.link import Link
from toolchain.emulate.renode import renode_notes
from toolchain.emulate.project import (BACKENDS, Project, check_hello, ensure_built, hello_json,  # noqa: F401
                                       load_project, open_backend, require_plan)
from toolchain.errors import RoutevitError

log = logging.getLogger("routevit")


class EvaluationStopped(RoutevitError):
    """The run stopped before every image was done; a partial report was written."""


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
            memory["model_bytes"] = sum(int(s.get("device_bytes", s.get("bytes", 0))) for s in segments)
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
    build_path = project.root / "build" / "build.json"
    if build_path.is_file():
        try:
            build = json.loads(build_path.read_text())
            # What `routevit generate --arena-from` checks the measurement against.
            memory["firmware"] = {"kernels": build.get("kernels"), "core": build.get("core"),
                                  "memory_plan": project.meta.get("memory_plan") or "tflm",
                                  "residency": project.meta.get("residency") or "resident"}
        except json.JSONDecodeError:
            log.warning("%s: not valid JSON; left out of the report", build_path)
    return memory



def _counter_kind(hello, backend: str | None) -> int | None:
    if hello is None:
        return None
    kind = hello.counter_kind
    # The firmware cannot tell QEMU from Renode: its SysTick instruction count (kind 0) is
    # Renode's virtual-time count when Renode runs it (kind 2).
    if backend == "renode" and kind == 0:
        return 2
    return kind


def build_record(project: Project, target: dict, dataset: str, labels, class_names, device: DeviceRun | None,
                 host: dict | None, maps: list, notes: list[str], progress: dict | None = None,
                 profile: dict | None = None) -> dict:
    """The report record (toolchain/report/writer.py) of the images `device` holds."""
    plan = project.plan
    logits_quant = None
    if plan is not None:
        out = plan.logits_entry
        logits_quant = {"scale": out.scale, "zero_point": out.zero_point}
    hello = device.hello if device is not None else None
    record = {
        "backend": target.get("backend"),
        "target": target.get("target"),
        "board": project.board.id,
        "clock_hz": project.clock_hz,
        "counter_kind": _counter_kind(hello, target.get("backend")),
        "dataset": dataset,
        "project": str(project.root),
        "class_names": class_names,
        "labels": labels,
        "logits_quant": logits_quant,
        "routed_layers": [layer.to_dict() for layer in plan.routed_layers] if plan is not None else [],
        "routing_maps": maps,
        "memory": memory_summary(project),
        "notes": notes,
        "progress": progress,
    }
    if profile:
        record["profile"] = profile
    if device is not None:
        record["device"] = {"logits": device.logits, "counts": device.counters, "expert_counts": device.expert_counts}
        record["hello"] = hello_json(hello) if hello is not None else None
        record["wall_seconds"] = device.wall_seconds
    if host:
        record["host"] = {"logits": host["logits"], "expert_counts": host.get("expert_counts")}
        if host.get("float_predictions") is not None:
            record["float"] = {"predictions": host["float_predictions"]}
    return record


def run_evaluation(open_link, project: Project, *, data: str, limit: int, out: Path | None,
                   timeout_per_image: float, hello_timeout: float = 30.0, progress: bool = True,
                   jobs: int = 1, resume: bool = False, elf: Path | None = None, profile: int = 0) -> dict:
    """The one code path for QEMU, Renode and real boards. `open_link(worker)` opens the link of
    one device; `jobs` devices run at once. Closes every link it opened. `profile` > 0: after the
    run, the first device profiles images 0..profile-1 op by op (INFER_PROFILE + PROFILE)."""
    from toolchain.report import build_report, write_report

    require_plan(project)
    images_u8, labels, class_names = load_test_images(data, project.plan, limit)
    reference = open_host_reference(project.export_dir)
    images_q = quantize_images(reference, images_u8)
    identity = {"plan_sha256": project.meta.get("plan_sha256"), "dataset": data,
                "firmware_sha256": file_sha256(elf) if elf and Path(elf).is_file() else None,
                "images_sha256": images_sha256(images_q)}
    journal_dir = Path(out) if out is not None else Path(tempfile.mkdtemp(prefix="routevit-results-"))
    if resume:
        # A resumed run may ask for more images than before: the identity covers the first ones.
        identity["images_sha256"] = None
    journal = Journal.start(journal_dir, identity, resume)
    notes: list[str] = []
    devices = Devices(open_link, jobs, timeout_s=timeout_per_image, hello_timeout=hello_timeout,
                      check=lambda hello, link: check_hello(hello, project, link.target))
    target = {}
    device = None
    started = time.monotonic()
    try:
        devices.open()
        first = devices.sessions[0].link
        target = {"backend": first.backend, "target": first.target}
        device = run_images(devices, images_q, journal, timeout_per_image=timeout_per_image, progress=progress,
                            label=f"{first.backend} inference" + (f" x{jobs}" if jobs > 1 else ""))
        profile_table = None
        if profile:
            profile_table = devices.on_first(lambda session: _profile(session, project, images_q, device, profile,
                                                                      timeout_per_image))
        host = host_reference(reference, images_u8, progress=progress)
        maps = devices.on_first(lambda session: device_routing_maps(session, host, project.plan, images_u8, labels))
        # Emulators end through semihosting; a real board stays up for the next run (its
        # semihosting call would fault without a debugger attached).
        devices.on_each(lambda session: session.stop() if session.link.emulator is not None else None)
        for session in devices.sessions:
            notes.extend(renode_notes(session.link, device.counters))
            if session.garbage_bytes or session.bad_frames or session.resends:
                notes.append(f"{session.link.target}: line noise: {session.bad_frames} damaged frames, "
                             f"{session.resends} requests resent")
    except BaseException as exc:
        devices.close()
        journal.close()
        if not journal.results:
            # No image finished (no emulator, the firmware is not this project's, it died on
            # the first image): no report, and no folder left behind holding an empty journal.
            if not resume:
                journal.discard()
            raise
        if out is None:
            raise
        partial = _write_partial(project, target, data, labels, class_names, reference, images_u8, journal,
                                 devices.hello, time.monotonic() - started, Path(out), exc)
        if isinstance(exc, KeyboardInterrupt):
            raise
        message = exc.format_message() if isinstance(exc, RoutevitError) else f"{type(exc).__name__}: {exc}"
        raise EvaluationStopped(f"{message}; {partial}") from None
    finally:
        devices.close()
        journal.close()
    if device.resumed:
        notes.append(f"{device.resumed} of {len(images_q)} images were finished by an earlier run (resumed)")
    predictions, why_not = float_predictions(project.export_dir, project.plan, images_u8)
    if predictions is not None:
        host["float_predictions"] = predictions
    else:
        notes.append(why_not)
    progress_record = {"complete": True, "images_done": len(images_q), "images_requested": len(images_q),
                       "resumed_images": device.resumed, "jobs": device.jobs}
    record = build_record(project, target, data, labels, class_names, device, host, maps, notes, progress_record,
                          profile=profile_table)
    if out is None:
        return build_report(record)
    return write_report(record, Path(out), keep=[journal.path])


def _profile(session, project: Project, images_q, device: DeviceRun, count: int, timeout_s: float) -> dict:
    from toolchain.emulate.profile import profile_images, segment_ops

    unprofiled = dict(zip(device.indices, device.counters))
    indices = [i for i in range(min(count, len(images_q)))]
    log.info("%s: profiling images %s op by op", session.link.target, indices)
    ops = segment_ops(project.plan, fused=project.meta.get("memory_plan") == "in-place")
    return profile_images(session, project.plan, images_q, indices, unprofiled, timeout_s, ops=ops)


def _write_partial(project, target, data, labels, class_names, reference, images_u8, journal: Journal, hello,
                   wall_seconds: float, out: Path, exc: BaseException) -> str:
    """Report the images that finished; return the sentence that tells the user where it is."""
    from toolchain.emulate.device_run import collect
    from toolchain.report import write_report

    why = "interrupted (Ctrl-C)" if isinstance(exc, KeyboardInterrupt) else (
        exc.format_message() if isinstance(exc, RoutevitError) else f"{type(exc).__name__}: {exc}")
    device = collect(journal, hello, wall_seconds, 0, 1, len(labels))
    done = device.indices
    host = host_reference(reference, images_u8[done], progress=False) if done else None
    progress = {"complete": False, "images_done": len(done), "images_requested": len(labels),
                "stopped_by": why.splitlines()[0][:400]}
    notes = [f"PARTIAL: {len(done)} of {len(labels)} images finished before the run stopped ({progress['stopped_by']})"]
    record = build_record(project, target or {"backend": None, "target": None}, data, labels[done], class_names,
                          device if hello is not None else None, host, [], notes, progress)
    record["image_indices"] = done
    write_report(record, out, keep=[journal.path])
    return (f"partial report of {len(done)} of {len(labels)} images in {out}; continue with the same command "
            "and --resume")


def _emulator_links(project: Project, backend: str, elf: Path):
    def open_link(worker: int) -> Link:
        workdir = Path(tempfile.mkdtemp(prefix=f"routevit-{backend}-{worker}-"))
        return open_backend(project, backend, elf, workdir)
    return open_link


def emulate_project(project_dir: Path, *, backend: str, data: str, limit: int, out: Path | None,
                    timeout_per_image: float = 60.0, build: bool = True, progress: bool = True,
                    export_dir: Path | None = None, jobs: int = 1, resume: bool = False, profile: int = 0) -> dict:
    if jobs < 1:
        raise RoutevitError(f"--jobs {jobs}: must be at least 1")
    if resume and out is None:
        raise RoutevitError("--resume needs the report folder of the earlier run (--out)")
    project = load_project(project_dir, export_dir)
    require_plan(project)
    elf = ensure_built(project) if build else project.elf
    return run_evaluation(_emulator_links(project, backend, elf), project, data=data, limit=limit, out=out,
                          timeout_per_image=timeout_per_image, progress=progress, jobs=jobs, resume=resume,
                          elf=elf, profile=profile)


def evaluate_on_port(project_dir: Path, *, port: str, baud: int, data: str, limit: int, out: Path | None,
                     timeout_per_image: float = 60.0, progress: bool = True,
                     export_dir: Path | None = None, resume: bool = False, profile: int = 0) -> dict:
    from toolchain.emulate.serialport import open_serial_port

    project = load_project(project_dir, export_dir)
    require_plan(project)
    return run_evaluation(lambda worker: open_serial_port(port, baud), project, data=data, limit=limit, out=out,
                          timeout_per_image=timeout_per_image, progress=progress, resume=resume,
                          elf=project.elf if project.elf.is_file() else None, profile=profile)
