"""The same firmware ELF under QEMU and under Renode: instructions per image and bit-exactness.

For one export (default: the newest fmnist_routed export under runs/): generate + build for
mps2-an386 and stm32f746g-disco, then on the first L test images
- QEMU (mps2-an386 only: QEMU has no STM32F746): the firmware's SysTick count under
  `-icount shift=0,sleep=off` (exact instructions to one 40-instruction tick);
- Renode (both boards, same ELF as QEMU for mps2-an386): `sysbus.cpu ExecutedInstructions`
  between the two counter_read calls of each inference (a CPU hook), and the firmware's own
  SysTick count at PerformanceInMips 1000;
- the host reference (tflite-micro wheel) on the same images: logits bit-exact or not.
Writes benchmarks/results/renode_vs_qemu.{json,md}.

    .venv/bin/python benchmarks/renode_vs_qemu.py --limit 20
"""
from __future__ import annotations

import argparse
import datetime
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from qemu_benchmark import RESULTS, WORK, find_export, routevit  # noqa: E402

log = logging.getLogger("routevit")
BOARDS = ("mps2-an386", "stm32f746g-disco")


def run_device(link, images_q: np.ndarray, timeout_s: float) -> dict:
    """INFER every image over `link`; logits, firmware counts, wall seconds (closes the link)."""
    from toolchain.emulate.session import Session

    logits, counts = [], []
    try:
        with Session(link, timeout_s=timeout_s) as session:
            session.hello()
            started = time.monotonic()
            for image in images_q:
                result = session.infer(image, timeout_s=timeout_s)
                logits.append(np.asarray(result.logits, np.int8))
                counts.append(int(result.counter))
            seconds = time.monotonic() - started
            extra = {}
            if link.backend == "renode":
                from toolchain.emulate.renode import renode_inference_instructions

                extra["renode_executed"] = renode_inference_instructions(link)
            session.stop()
    finally:
        link.close()
    return {"logits": np.stack(logits), "counts": counts, "seconds": seconds, **extra}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--export", type=Path, default=None, help="EXP (default: newest fmnist_routed under runs/)")
    parser.add_argument("--kernels", default="cmsis-nn")
    parser.add_argument("--limit", type=int, default=20)
    parser.add_argument("--data", default="fashion-mnist")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per image")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    from toolchain.emulate.hostside import host_reference, open_host_reference
    from toolchain.emulate.inputs import load_test_images, quantize_images
    from toolchain.emulate.project import load_project
    from toolchain.emulate.qemu import open_qemu
    from toolchain.emulate.renode import open_renode
    from toolchain.emulate.session import DeviceError
    from toolchain.errors import RoutevitError

    export = args.export or find_export("fmnist_routed")
    if export is None:
        raise SystemExit("no fmnist_routed export under runs/; give --export EXP")
    from toolchain.plan import read_plan

    plan = read_plan(Path(export))
    images_u8, labels, _ = load_test_images(args.data, plan, args.limit)
    reference = open_host_reference(Path(export))
    images_q = quantize_images(reference, images_u8)
    host = host_reference(reference, images_u8, progress=False)["logits"]

    rows = []
    for board in BOARDS:
        project_dir = WORK / f"renode-vs-qemu-{board}"
        routevit("generate", export, "--board", board, "--out", project_dir)
        routevit("build", project_dir, "--kernels", args.kernels)
        project = load_project(project_dir)
        elf = project.elf
        runs = {}
        if project.qemu_machine:
            runs["qemu"] = run_device(open_qemu(elf, project.qemu_machine, workdir=WORK / f"qemu-{board}"),
                                      images_q, args.timeout)
        try:
            runs["renode"] = run_device(open_renode(project_dir, elf, project.board, workdir=WORK / f"renode-{board}"),
                                        images_q, args.timeout)
        except (RoutevitError, DeviceError) as exc:
            message = exc.format_message() if isinstance(exc, RoutevitError) else str(exc)
            log.error("%s: Renode run failed: %s", board, message)
            rows.append({"summary": {"board": board, "elf": str(elf), "images": len(images_q),
                                     "renode_error": message[:400],
                                     "wall_seconds": {b: round(r["seconds"], 2) for b, r in runs.items()}}})
            continue
        for i in range(len(images_q)):
            row = {"board": board, "image": i, "label": int(labels[i])}
            for backend, run in runs.items():
                row[f"{backend}_firmware_count"] = run["counts"][i]
                row[f"{backend}_bit_exact"] = bool(np.array_equal(run["logits"][i], host[i]))
            executed = runs["renode"].get("renode_executed") or []
            row["renode_executed_instructions"] = executed[i] if i < len(executed) else None
            rows.append(row)
        summary = {"board": board, "elf": str(elf), "images": len(images_q),
                   "wall_seconds": {b: round(r["seconds"], 2) for b, r in runs.items()}}
        for backend, run in runs.items():
            summary[f"{backend}_bit_exact"] = int(sum(np.array_equal(run["logits"][i], host[i])
                                                      for i in range(len(images_q))))
            summary[f"{backend}_firmware_count_mean"] = float(np.mean(run["counts"]))
        executed = [r["renode_executed_instructions"] for r in rows if r.get("board") == board]
        if all(e is not None for e in executed):
            summary["renode_executed_mean"] = float(np.mean(executed))
            summary["renode_executed_vs_renode_firmware_max_abs"] = int(max(
                abs(r["renode_executed_instructions"] - r["renode_firmware_count"]) for r in rows if r.get("board") == board))
            if "qemu" in runs:
                summary["renode_executed_vs_qemu_firmware_max_abs"] = int(max(
                    abs(r["renode_executed_instructions"] - r["qemu_firmware_count"]) for r in rows if r.get("board") == board))
        if "qemu" in runs:
            summary["renode_firmware_vs_qemu_firmware_max_abs"] = int(max(
                abs(r["renode_firmware_count"] - r["qemu_firmware_count"]) for r in rows if r.get("board") == board))
        rows_summary = summary
        log.info("%s", json.dumps(rows_summary))
        rows.append({"summary": rows_summary})

    summaries = [r["summary"] for r in rows if "summary" in r]
    per_image = [r for r in rows if "summary" not in r]
    meta = {"export": str(export), "kernels": args.kernels, "data": args.data, "limit": args.limit,
            "date": datetime.date.today().isoformat()}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "renode_vs_qemu.json").write_text(
        json.dumps({"meta": meta, "summary": summaries, "per_image": per_image}, indent=2) + "\n")
    (RESULTS / "renode_vs_qemu.md").write_text(markdown(summaries, per_image, meta))
    log.info("wrote %s", RESULTS / "renode_vs_qemu.md")


def _n(value) -> str:
    return "-" if value is None else f"{value:,.0f}"


def markdown(summaries: list[dict], per_image: list[dict], meta: dict) -> str:
    lines = [f"<!-- generated by benchmarks/renode_vs_qemu.py on {meta['date']} -->",
             f"# Same ELF on QEMU and Renode ({meta['limit']} {meta['data']} test images, {meta['kernels']} kernels)",
             "",
             "| board | images | bit-exact QEMU | bit-exact Renode | QEMU firmware count / image | "
             "Renode ExecutedInstructions / image | Renode firmware count / image | "
             "max abs Renode executed - QEMU count | wall s QEMU | wall s Renode |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for s in summaries:
        if "renode_error" in s:
            lines.append(f"| {s['board']} | {s['images']} | - | failed: {s['renode_error'][:160]} | - | - | - | - | - | - |")
            continue
        lines.append(
            f"| {s['board']} | {s['images']} | {s.get('qemu_bit_exact', '-')} | {s['renode_bit_exact']} | "
            f"{_n(s.get('qemu_firmware_count_mean'))} | {_n(s.get('renode_executed_mean'))} | "
            f"{_n(s.get('renode_firmware_count_mean'))} | {_n(s.get('renode_executed_vs_qemu_firmware_max_abs'))} | "
            f"{s['wall_seconds'].get('qemu', '-')} | {s['wall_seconds']['renode']} |")
    lines += ["",
              "QEMU firmware count: SysTick under `-icount shift=0,sleep=off` (resolution one tick = "
              "1e9 / SysTick clock instructions: 40 on MPS2). Renode ExecutedInstructions: "
              "`sysbus.cpu ExecutedInstructions` logged by a CPU hook at each entry of `counter_read` "
              "(start and end of an inference). Renode firmware count: the same SysTick code at "
              "`PerformanceInMips: 1000` (one instruction per virtual ns). QEMU has no STM32F746 machine: "
              "that row is Renode only. Bit-exact: images whose int8 logits equal the host reference's.",
              "", "## Per image", "",
              "| board | image | QEMU count | Renode executed | Renode firmware count | bit-exact QEMU / Renode |",
              "|---|---|---|---|---|---|"]
    for r in per_image:
        lines.append(f"| {r['board']} | {r['image']} | {_n(r.get('qemu_firmware_count'))} | "
                     f"{_n(r.get('renode_executed_instructions'))} | {_n(r.get('renode_firmware_count'))} | "
                     f"{r.get('qemu_bit_exact', '-')} / {r['renode_bit_exact']} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
