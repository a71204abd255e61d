"""Flash and SRAM of an export on the device, per memory technique, measured on real firmware.

For each model (NAME=EXP) on a board with room to measure (an MPS2 under QEMU):
1. the export's segment files as they are (what the firmware embedded before device_model.py)
   against the compacted flatbuffers `routevit generate` now embeds;
2. the arena head under TFLM's own greedy planner (`generate --memory-plan tflm`) against the
   offline in-place plan routevit writes into the segments (memory_plan.py), without and with
   the SiLU fusion that comes with it (device_model.fuse_silu; together the default), as planned
   on the host, and for TFLM's planner and the default as the firmware's allocator used it;
3. the tensor arena budgeted from the host (the tflite-micro wheel's recording allocator, 64-bit,
   + 10% + routevit's kernels), what the firmware's allocator then really used (HELLO), and the
   arena `generate --arena-from` sizes from that figure; both firmwares are run on QEMU and must
   stay bit-exact with the host reference;
4. `routevit fit --arena-from` against the small boards of the same kernels.
Results: benchmarks/results/memory_techniques.json and .md.

    .venv/bin/python benchmarks/memory_techniques.py \\
        --model fmnist_routed=runs/fmnist_routed.exp:mps2-an386:fashion-mnist \\
        --model ssw60_routed_96=runs/ssw60_routed_96.exp:mps2-an500:fashion-mnist
"""
from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
from qemu_benchmark import RESULTS, WORK, routevit, write_results  # noqa: E402

log = logging.getLogger("routevit")
IMAGES = 4


def run_project(exp: Path, board: str, data: str, work: Path, *extra) -> dict:
    """generate (+extra) -> build -> emulate IMAGES images; the report and the memory report."""
    proj, out = work / "proj", work / "report"
    for path in (proj, out):
        shutil.rmtree(path, ignore_errors=True)
    routevit("generate", exp, "--board", board, "--out", proj, *extra)
    routevit("build", proj)
    routevit("emulate", proj, "--backend", "qemu", "--data", data, "--limit", IMAGES, "--out", out)
    report = json.loads((out / "report.json").read_text())
    memory_report = json.loads((proj / "memory_report.json").read_text())
    return {"report": report, "memory_report": memory_report, "report_dir": out}


def measure(name: str, exp: Path, board: str, data: str) -> dict:
    work = WORK / f"memory-{name}-{board}"
    tflm_plan = run_project(exp, board, data, work / "tflm-plan", "--memory-plan", "tflm")
    host = run_project(exp, board, data, work / "host")
    device = run_project(exp, board, data, work / "device", "--arena-from", host["report_dir"])
    segments = host["memory_report"]["segments"]
    from toolchain.generate.device_model import device_flatbuffer, head_bytes
    from toolchain.plan import read_plan

    unfused = max(head_bytes(device_flatbuffer(seg.data, True, fuse=False)) for seg in read_plan(exp).segments)
    fit = json.loads(routevit("fit", exp, "--arena-from", host["report_dir"], "--json").stdout)

    def exact(r):
        a = r["agreement_device_vs_host"]
        return f"{a['bit_exact_images']}/{r['images']}"

    return {
        "name": name, "export": str(exp), "measured_on": board, "images": IMAGES,
        "kernels": host["report"]["memory"]["firmware"]["kernels"],
        "flash": {"export_segment_bytes": sum(s["bytes"] for s in segments),
                  "device_segment_bytes": sum(s["device_bytes"] for s in segments),
                  "linked_flash_bytes": host["report"]["memory"]["linked"]["flash_bytes"]},
        "memory_plan": {
            "largest_head_bytes": {"tflm": max(s["nonpersistent_bytes"] or 0 for s in segments),
                                   "in_place_unfused": unfused,
                                   "in_place": max(s["device_nonpersistent_bytes"] for s in segments)},
            "device_used_bytes": {"tflm": tflm_plan["report"]["hello"]["arena_bytes"],
                                  "in_place": host["report"]["hello"]["arena_bytes"]},
            "host_budget_bytes": {"tflm": tflm_plan["memory_report"]["arena"]["bytes"],
                                  "in_place": host["memory_report"]["arena"]["bytes"]},
            "ram_linked_bytes": {"tflm": tflm_plan["report"]["memory"]["linked"]["ram_bytes"],
                                 "in_place": host["report"]["memory"]["linked"]["ram_bytes"]},
            "bit_exact": {"tflm": exact(tflm_plan["report"]), "in_place": exact(host["report"])}},
        "arena": {"host_measured_bytes": host["memory_report"]["arena"]["measured_bytes"],
                  "host_budget_bytes": host["memory_report"]["arena"]["bytes"],
                  "device_used_bytes": host["report"]["hello"]["arena_bytes"],
                  "device_budget_bytes": device["memory_report"]["arena"]["bytes"],
                  "device_temp_bound_bytes": device["memory_report"]["arena"]["temp_bytes"],
                  "largest_segment_planner_head_bytes": max(s["nonpersistent_bytes"] or 0 for s in segments)},
        "ram_linked_bytes": {"host_budget": host["report"]["memory"]["linked"]["ram_bytes"],
                             "device_budget": device["report"]["memory"]["linked"]["ram_bytes"]},
        "bit_exact": {"host_budget": exact(host["report"]), "device_budget": exact(device["report"])},
        "instructions_per_image": host["report"]["counter"].get("mean"),
        "fit_with_device_arena": [{"board": r["board"], "fits": r["fits"],
                                   "regions": {g["region"]: [g["used"], g["size"]] for g in r["regions"]}}
                                  for r in fit["boards"]],
    }


def markdown(rows: list[dict]) -> str:
    lines = ["# Memory techniques on the device",
             "",
             "Generated by `benchmarks/memory_techniques.py`. Real firmware on QEMU, "
             f"{IMAGES} images per firmware, CMSIS-NN kernels.",
             "",
             "## Peak SRAM: TFLM's planner vs the in-place offline plan (+ fused SiLU)",
             "",
             "Largest segment head as planned (the tflite-micro wheel on the segments as embedded): TFLM's "
             "greedy planner → the in-place offline plan → the same with each SiLU fused (the default). "
             "The firmware columns compare `--memory-plan tflm` with the default.",
             "",
             "| model | board | largest segment head: TFLM → in-place → + fused SiLU | arena the firmware used: "
             "TFLM → default | RAM linked (host budget): TFLM → default | bit-exact |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        p = r.get("memory_plan")
        if p is None or "in_place_unfused" not in p["largest_head_bytes"]:
            continue  # a row measured before these columns existed
        h, u, m, b = p["largest_head_bytes"], p["device_used_bytes"], p["ram_linked_bytes"], p["bit_exact"]
        lines.append(f"| {r['name']} | {r['measured_on']} | {h['tflm']:,} → {h['in_place_unfused']:,} → "
                     f"{h['in_place']:,} B (−{1 - h['in_place'] / h['tflm']:.1%}) | {u['tflm']:,} → {u['in_place']:,} B "
                     f"(−{1 - u['in_place'] / u['tflm']:.1%}) | {m['tflm']:,} → {m['in_place']:,} B | "
                     f"{b['tflm']}, {b['in_place']} |")
    lines += ["", "## Flash and the arena budget (in-place plan)", "",
             "| model | board | segment flash: export → device | arena: host budget → device used → "
             "`--arena-from` budget | RAM linked: host → device budget | bit-exact |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        f, a, m, b = r["flash"], r["arena"], r["ram_linked_bytes"], r["bit_exact"]
        lines.append(f"| {r['name']} | {r['measured_on']} | {f['export_segment_bytes']:,} → "
                     f"{f['device_segment_bytes']:,} B (−{1 - f['device_segment_bytes'] / f['export_segment_bytes']:.1%}) | "
                     f"{a['host_budget_bytes']:,} → {a['device_used_bytes']:,} → {a['device_budget_bytes']:,} B "
                     f"(−{1 - a['device_budget_bytes'] / a['host_budget_bytes']:.1%}; {a['device_temp_bound_bytes']:,} B "
                     f"of it the temporary-planning bound) | {m['host_budget']:,} → {m['device_budget']:,} B | "
                     f"{b['host_budget']}, {b['device_budget']} |")
    lines += ["", "## `routevit fit --arena-from` (boards of the same kernels)", ""]
    for r in rows:
        lines.append(f"- **{r['name']}**: " + "; ".join(
            f"{x['board']} {'fits' if x['fits'] else 'does NOT fit'} ("
            + ", ".join(f"{k} {u:,}/{s:,}" for k, (u, s) in x["regions"].items()) + ")"
            for x in r["fit_with_device_arena"]))
    return "\n".join(lines) + "\n"


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", action="append", required=True, help="NAME=EXP:BOARD:DATA")
    args = parser.parse_args()
    # rows of models not measured now stay as they were (each row says what it measured)
    previous = RESULTS / "memory_techniques.json"
    kept = json.loads(previous.read_text())["rows"] if previous.is_file() else []
    rows = []
    for spec in args.model:
        name, rest = spec.split("=", 1)
        exp, board, data = rest.split(":", 2)
        rows.append(measure(name, REPO / exp, board, data))
        log.info("%s: %s", name, json.dumps(rows[-1]["arena"]))
    rows += [r for r in kept if r["name"] not in {row["name"] for row in rows}]
    write_results("memory_techniques", rows, markdown(rows))


if __name__ == "__main__":
    main()
