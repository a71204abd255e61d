"""SSW60-shaped routed models on the camera-class boards, end to end, in Renode.

For each config (60 classes, RGB, 96 or 128 px): a short training run on an image folder (SSW60
itself is not on this machine; benchmarks/fmnist60_folder.py makes a 60-class one), PTQ,
export; then the firmware on mps2-an500 (the same Cortex-M7 CMSIS-NN code paths as the STM32
boards) under QEMU for the arena the allocator really uses; `routevit fit --arena-from` across
the whole catalog; and for each target board where it fits, `generate --arena-from` -> build ->
`emulate --backend renode` on IMAGES test images, which must all be bit-exact with the host
reference. Optionally the same config with 1 channel and 10 classes trained briefly on
Fashion-MNIST, for an accuracy figure of scale.
Results: benchmarks/results/camera_boards.json and .md. Every step's output stays in
benchmarks/work/camera-NAME/, and a step whose output exists is not run again.

    .venv/bin/python benchmarks/fmnist60_folder.py /tmp/fmnist60
    .venv/bin/python benchmarks/camera_boards.py --data folder:/tmp/fmnist60 \\
        --config examples/configs/ssw60_f746_96.json --config examples/configs/ssw60_f746_128.json
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
from qemu_benchmark import WORK, routevit, write_results  # noqa: E402

log = logging.getLogger("routevit")
MEASURE_ON = "mps2-an500"
TARGETS = ("stm32f746g-disco", "stm32h743")


def step(out: Path, *args) -> Path:
    """`routevit ARGS` unless `out` exists (each command writes its folder atomically)."""
    if not out.exists():
        routevit(*args)
    return out


def report(folder: Path) -> dict:
    return json.loads((folder / "report.json").read_text())


def measure(config: Path, data: str, epochs: int, images: int, targets, fmnist_epochs: int) -> dict:
    cfg = json.loads(config.read_text())
    name = cfg["name"]
    work = WORK / f"camera-{name}"
    work.mkdir(parents=True, exist_ok=True)
    run = step(work / "run", "train", "--config", config, "--data", data, "--epochs", epochs, "--out", work / "run")
    qrun = step(work / "q", "quantize", run, "--method", "ptq", "--out", work / "q")
    exp = step(work / "exp", "export", qrun, "--out", work / "exp")
    summary = json.loads(routevit("summarize", "--config", config, "--json").stdout)
    step(work / MEASURE_ON, "generate", exp, "--board", MEASURE_ON, "--out", work / MEASURE_ON)
    measured = step(work / f"{MEASURE_ON}.report", "emulate", work / MEASURE_ON, "--data", data, "--limit", 2,
                    "--out", work / f"{MEASURE_ON}.report")
    fit_host = json.loads(routevit("fit", exp, "--json").stdout)["boards"]
    fit_device = json.loads(routevit("fit", exp, "--arena-from", measured, "--json").stdout)["boards"]
    runs = []
    for board in targets:
        row = next(r for r in fit_device if r["board"] == board)
        if not row["fits"]:
            runs.append({"board": board, "fits": False, "overflow": row["overflow"]})
            continue
        project = step(work / board, "generate", exp, "--board", board, "--arena-from", measured, "--out", work / board)
        out = step(work / f"{board}.report", "emulate", project, "--backend", "renode", "--data", data,
                   "--limit", images, "--out", work / f"{board}.report")
        r = report(out)
        linked = r["memory"]["linked"]
        regions = {g["region"]: [g["used"], g["size"]] for g in row["regions"]}
        agreement = r["agreement_device_vs_host"]
        runs.append({
            "board": board, "fits": True, "images": r["images"],
            "bit_exact": f"{agreement['bit_exact_images']}/{r['images']}",
            "instructions_per_image": r["counter"]["mean"], "clock_hz": r["counter"]["clock_hz"],
            "ms_at_board_clock": r["counter"]["ms_at_clock"]["mean"],
            "linked_flash_bytes": linked["flash_bytes"], "linked_ram_bytes": linked["ram_bytes"],
            "budget_regions": regions, "arena_bytes": r["memory"]["arena_bytes"],
            "device_top1": r["top1"]["device"], "host_top1": r["top1"]["host_int8"],
        })
    fmnist = None
    if fmnist_epochs:
        gray = dict(cfg, name=f"{name}_fmnist")
        gray["model"] = dict(cfg["model"], in_channels=1, num_classes=10)
        gray.setdefault("training", {})
        gray["training"] = dict(gray["training"], input_mean=[0.0], input_std=[1.0])
        gray_config = work / "fmnist_config.json"
        gray_config.write_text(json.dumps(gray, indent=2) + "\n")
        fm_run = step(work / "fmnist_run", "train", "--config", gray_config, "--data", "fashion-mnist",
                      "--epochs", fmnist_epochs, "--limit-train", 12000, "--limit-eval", 2000,
                      "--out", work / "fmnist_run")
        metrics = json.loads((fm_run / "metrics.json").read_text())
        fmnist = {"epochs": fmnist_epochs, "train_examples": 12000, "test_examples": metrics["test_examples"],
                  "top1_float": metrics["test_accuracy"]}
    metrics = json.loads((run / "metrics.json").read_text())
    return {
        "name": name, "config": str(config.relative_to(REPO)) if config.is_relative_to(REPO) else str(config),
        "image_size": cfg["model"]["image_size"], "data": data, "epochs": epochs,
        "trainable_params": summary["trainable_params"], "macs": summary["macs"]["total"],
        "float_top1_on_data": metrics["test_accuracy"],
        "measured_on": MEASURE_ON, "device_arena_used_bytes": report(measured)["hello"]["arena_bytes"],
        "fit_host_budget": [{"board": r["board"], "fits": r["fits"],
                             "regions": {g["region"]: [g["used"], g["size"]] for g in r["regions"]}}
                            for r in fit_host],
        "fit_device_arena": [{"board": r["board"], "fits": r["fits"],
                              "regions": {g["region"]: [g["used"], g["size"]] for g in r["regions"]}}
                             for r in fit_device],
        "renode": runs, "fashion_mnist_1_channel": fmnist,
    }


def _fit_cell(row: dict) -> str:
    used = "; ".join(f"{k} {u / 1024:,.1f}/{s / 1024:,.0f} KB" for k, (u, s) in row["regions"].items()
                     if k in ("flash", "ram", "axisram"))
    return f"{'**fits**' if row['fits'] else 'no'} ({used})"


def markdown(rows: list[dict]) -> str:
    lines = ["# SSW60-shaped routed models on camera-class boards",
             "",
             "Generated by `benchmarks/camera_boards.py`. Weights from a short run on a 60-class image "
             "folder (instruction counts and memory do not depend on them); the arena from the firmware's "
             f"allocator on {MEASURE_ON} (same Cortex-M7 CMSIS-NN code paths); the firmware then built for "
             "each board and run in Renode.",
             "",
             "## In Renode",
             "",
             "| model | px | params | MACs | board | bit-exact | instructions / image | ms at board clock | "
             "flash linked | RAM linked |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        for x in r["renode"]:
            if not x["fits"]:
                lines.append(f"| {r['name']} | {r['image_size']} | {r['trainable_params']:,} | {r['macs']:,} | "
                             f"{x['board']} | does not fit: {x['overflow']} | | | | |")
                continue
            ms = f"{x['ms_at_board_clock']:,.1f}" if x["ms_at_board_clock"] else "-"
            ram = ", ".join(f"{k} {u:,}/{s:,}" for k, (u, s) in x["budget_regions"].items() if k != "flash" and u)
            lines.append(f"| {r['name']} | {r['image_size']} | {r['trainable_params']:,} | {r['macs']:,} | "
                         f"{x['board']} | {x['bit_exact']} | {x['instructions_per_image']:,.0f} | {ms} | "
                         f"{x['linked_flash_bytes']:,} B | {x['linked_ram_bytes']:,} B ({ram} budgeted) |")
    lines += ["", "## `routevit fit` across the catalog", "",
              "Host budget (the tflite-micro wheel's arena + 10%) and with `--arena-from` the "
              f"{MEASURE_ON} run.", ""]
    boards = [b["board"] for b in rows[0]["fit_host_budget"]] if rows else []
    lines += ["| model | " + " | ".join(boards) + " |", "|---|" + "---|" * len(boards)]
    for r in rows:
        for label, key in (("host", "fit_host_budget"), ("--arena-from", "fit_device_arena")):
            cells = {b["board"]: _fit_cell(b) for b in r[key]}
            lines.append(f"| {r['name']} ({label}) | " + " | ".join(cells.get(b, "") for b in boards) + " |")
    lines += ["", "## Accuracy for scale", "",
              "| model | float top-1 on the 60-class folder (epochs) | float top-1 on Fashion-MNIST, 1 channel, "
              "10 classes (epochs, train examples) |", "|---|---|---|"]
    for r in rows:
        fm = r["fashion_mnist_1_channel"]
        fm_text = (f"{fm['top1_float']:.1%} ({fm['epochs']}, {fm['train_examples']:,}; {fm['test_examples']:,} "
                   "test images)") if fm else "not run"
        lines.append(f"| {r['name']} | {r['float_top1_on_data']:.1%} ({r['epochs']}) | {fm_text} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", action="append", required=True, type=Path)
    parser.add_argument("--data", required=True, help="folder:PATH with 60 classes (benchmarks/fmnist60_folder.py)")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--images", type=int, default=20)
    parser.add_argument("--board", action="append", dest="boards", help=f"default: {', '.join(TARGETS)}")
    parser.add_argument("--fmnist-epochs", type=int, default=0, help="0: skip the Fashion-MNIST run")
    args = parser.parse_args()
    rows = [measure(c.resolve(), args.data, args.epochs, args.images, args.boards or TARGETS, args.fmnist_epochs)
            for c in args.config]
    write_results("camera_boards", rows, markdown(rows))


if __name__ == "__main__":
    main()
