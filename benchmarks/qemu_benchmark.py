"""Routed vs dense Fashion-MNIST models on QEMU, with reference and CMSIS-NN kernels, in one run.

For every (model, kernels) pair: `routevit generate` -> `routevit build --kernels K` ->
`routevit emulate --backend qemu` on the same test images; then one table of accuracy,
agreement with the host reference, instructions per image, arena and flash, written to
benchmarks/results/<name>.json and .md.

    .venv/bin/python benchmarks/qemu_benchmark.py                      # exports found under runs/
    .venv/bin/python benchmarks/qemu_benchmark.py --model fmnist_routed=runs/fmnist_routed/export \
        --model fmnist_dense=runs/fmnist_dense/export --limit 200 --board mps2-an386
"""
from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
WORK = REPO / "benchmarks" / "work"
DEFAULT_MODELS = ("fmnist_routed", "fmnist_dense")
KERNELS = ("reference", "cmsis-nn")

log = logging.getLogger("routevit")


def routevit(*args, timeout=7200) -> subprocess.CompletedProcess:
    argv = [str(Path(sys.executable).with_name("routevit")), *map(str, args)]
    log.info("running %s", subprocess.list2cmdline(argv))
    result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, cwd=REPO)
    if result.returncode != 0:
        tail = "\n".join(result.stderr.strip().splitlines()[-8:])
        raise SystemExit(f"`routevit {args[0]}` failed ({result.returncode}):\n{tail}")
    return result


def write_results(stem: str, rows: list[dict], text: str) -> None:
    """benchmarks/results/STEM.json ({"rows": rows}) and STEM.md (text), and text on stdout."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{stem}.json").write_text(json.dumps({"rows": rows}, indent=1, sort_keys=True) + "\n")
    (RESULTS / f"{stem}.md").write_text(text)
    print(text)


def find_export(name: str) -> Path | None:
    """The newest export (plan.json, not a PTQ baseline) under runs/ whose path names `name`."""
    plans = [p for p in (REPO / "runs").glob("**/plan.json")
             if name in str(p.relative_to(REPO / "runs")) and "baselines" not in p.parts]
    plans.sort(key=lambda p: p.stat().st_mtime)
    return plans[-1].parent if plans else None


def flash_and_ram(project: Path) -> dict:
    """Flash and RAM use as the linker placed it (build/size.json), arena from project.json."""
    meta = json.loads((project / "project.json").read_text())
    out = {"arena_bytes": meta.get("arena_bytes")}
    size_path = project / "build" / "size.json"
    if size_path.is_file():
        size = json.loads(size_path.read_text())
        out["size"] = size
        for key in ("flash_bytes", "ram_bytes", "text", "data", "bss"):
            if key in size:
                out[key] = size[key]
        if "flash_bytes" not in out and {"text", "data"} <= size.keys():
            out["flash_bytes"] = size["text"] + size["data"]
        if "ram_bytes" not in out and {"data", "bss"} <= size.keys():
            out["ram_bytes"] = size["data"] + size["bss"]
    return out


def run_one(name: str, export: Path, kernels: str, board: str, limit: int, data: str) -> dict:
    project = WORK / f"{name}-{board}-{kernels}"
    report_dir = RESULTS / "reports" / f"{name}-{board}-{kernels}"
    start = time.monotonic()
    routevit("generate", export, "--board", board, "--out", project)
    routevit("build", project, "--kernels", kernels)
    build_seconds = time.monotonic() - start
    result = routevit("emulate", project, "--backend", "qemu", "--data", data, "--limit", limit,
                      "--export", export, "--out", report_dir, "--json", "--no-build")
    summary = json.loads(result.stdout)
    report = json.loads((report_dir / "report.json").read_text())
    agreement = report.get("agreement_device_vs_host") or {}
    counter = report.get("counter") or {}
    plan = json.loads((export / "plan.json").read_text())
    return {
        "model": name, "export": str(export), "kernels": kernels, "board": board, "images": report["images"],
        "routed_layers": len(plan.get("routed_layers") or []),
        "top1_device": report["top1"]["device"], "top1_host_int8": report["top1"]["host_int8"],
        "top1_float": report["top1"]["float"],
        "bit_exact_rate": agreement.get("bit_exact_rate"),
        "instructions_mean": counter.get("mean"), "instructions_min": counter.get("min"),
        "instructions_max": counter.get("max"), "ms_at_clock_mean": (counter.get("ms_at_clock") or {}).get("mean"),
        "clock_hz": counter.get("clock_hz"), **flash_and_ram(project),
        "build_seconds": round(build_seconds, 1), "emulate_seconds": summary.get("wall_seconds"),
        "report": str(report_dir.relative_to(REPO)),
    }


def markdown(rows: list[dict], meta: dict) -> str:
    def pct(v):
        return "-" if v is None else f"{100 * v:.2f}%"

    def num(v):
        return "-" if v is None else f"{int(round(v)):,}"

    def ms(v):
        return "-" if v is None else f"{v:.1f}"

    lines = [f"<!-- generated by benchmarks/qemu_benchmark.py on {meta['date']} -->",
             f"# Routed vs dense on QEMU {meta['board']} ({meta['images']} Fashion-MNIST test images)", "",
             "| model | kernels | routed layers | top-1 device | top-1 host int8 | top-1 float | bit-exact | "
             "instructions / image | ms at clock | arena B | flash B |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['kernels']} | {r['routed_layers']} | {pct(r['top1_device'])} | "
                     f"{pct(r['top1_host_int8'])} | {pct(r['top1_float'])} | {pct(r['bit_exact_rate'])} | "
                     f"{num(r['instructions_mean'])} | "
                     f"{ms(r['ms_at_clock_mean'])} | "
                     f"{num(r.get('arena_bytes'))} | {num(r.get('flash_bytes'))} |")
    lines += ["", "Instructions: the firmware's SysTick count under QEMU `-icount shift=0,sleep=off` (one tick = "
              "40 instructions on MPS2); ms assume one instruction per cycle at the board clock. "
              "Bit-exact: images whose int8 logits equal the host reference's (tflite-micro wheel).",
              "Reports per row (accuracy, routing map, confusion): see the `report` paths in the JSON.", ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", action="append", default=[], metavar="NAME=EXP",
                        help="a model and its export folder (repeatable) [default: runs/fmnist_routed, runs/fmnist_dense]")
    parser.add_argument("--board", default="mps2-an386")
    parser.add_argument("--limit", type=int, default=200)
    parser.add_argument("--data", default="fashion-mnist")
    parser.add_argument("--kernels", default=",".join(KERNELS), help="comma-separated kernel sets")
    parser.add_argument("--name", default=None, help="results file name [default: qemu_<board>]")
    parser.add_argument("--render", metavar="RESULTS_JSON", help="only re-render the markdown of a results file")
    args = parser.parse_args(argv)
    if args.render:
        saved = json.loads(Path(args.render).read_text())
        text = markdown(saved["rows"], saved)
        Path(args.render).with_suffix(".md").write_text(text)
        print(text)
        return 0
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    models = {}
    for item in args.model:
        name, _, path = item.partition("=")
        models[name] = Path(path)
    if not models:
        for name in DEFAULT_MODELS:
            export = find_export(name)
            if export is None:
                raise SystemExit(f"runs/{name}: no export found; train/quantize/export it first or pass --model {name}=EXP")
            models[name] = export
    rows = []
    for name, export in models.items():
        for kernels in args.kernels.split(","):
            log.info("== %s, %s kernels", name, kernels)
            rows.append(run_one(name, export, kernels, args.board, args.limit, args.data))
    meta = {"date": time.strftime("%Y-%m-%d"), "board": args.board, "images": args.limit, "data": args.data}
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = args.name or f"qemu_{args.board}"
    (RESULTS / f"{stem}.json").write_text(json.dumps({**meta, "rows": rows}, indent=1) + "\n")
    (RESULTS / f"{stem}.md").write_text(markdown(rows, meta))
    print(markdown(rows, meta))
    return 0


if __name__ == "__main__":
    sys.exit(main())
