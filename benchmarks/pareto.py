"""Routed vs dense on the device: a family of Fashion-MNIST models, one recipe, int8 on QEMU.

For every model of FAMILY (below: dense widths, and routed variants of examples/configs/
fmnist_routed.json: expert count, expert hidden size, capacity factor (below 1.0 too: dropped
patches ride the residual), top-1/top-2, which transformer layers are routed) this runs the real
pipeline through the `routevit` CLI:

    train --epochs E -> quantize --method qat -> export -> evaluate --host (full test split)
    -> summarize --json -> generate --board mps2-an386 -> build -> emulate --backend qemu --limit L

and appends one row per finished model to benchmarks/results/pareto_rows.jsonl (resumable: a
model whose row is there, or whose stage outputs exist, is not redone). Then it writes
benchmarks/results/pareto.json, pareto.md and pareto_*.png (accuracy vs instructions / flash /
arena, Pareto fronts marked).

    .venv/bin/python benchmarks/pareto.py                    # everything (train + measure + render)
    .venv/bin/python benchmarks/pareto.py --stage train      # train + QAT only (one job at a time)
    .venv/bin/python benchmarks/pareto.py --stage measure --wait   # export..emulate as QRUNs appear
    .venv/bin/python benchmarks/pareto.py --stage eval --wait      # host int8 top-1, full test split
    .venv/bin/python benchmarks/pareto.py --only dense_w0.5  # one model (comma-separated list)
    .venv/bin/python benchmarks/pareto.py --measure-only     # re-measure instructions/flash/arena
                                                             # on the existing exports, keep accuracy
    .venv/bin/python benchmarks/pareto.py --render           # only rewrite json/md/png from the rows

Runs live under runs/pareto/<model>/ (gitignored): config.json, run/, qat/, exp/, proj/, report/.
"""
from __future__ import annotations

import argparse
import copy
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
ROWS = RESULTS / "pareto_rows.jsonl"
RUNS = REPO / "runs" / "pareto"
CONFIGS = REPO / "examples" / "configs"
BOARD = "mps2-an386"
DATA = "fashion-mnist"

# The recipe, the same for every model (the configs' training block, with these epochs).
RECIPE = {
    "epochs": 1,            # train epochs (the configs say 3; the time budget of this run allowed 1)
    "qat_epochs": 1,
    "qat_limit_train": 12800,   # QAT fine-tunes on the first N training images
    "emulate_limit": 24,        # QEMU images for instructions (static per image up to routing)
}

# The family, in the order it is run. Each entry: name, kind, base config, overrides of "model"
# and of "model.moe" (None = dense).
FAMILY = [
    {"name": "dense_w0.25", "kind": "dense", "base": "fmnist_dense.json", "model": {}},
    {"name": "routed_e4_h32_cf1.25", "kind": "routed", "base": "fmnist_routed.json", "model": {}, "moe": {}},
    {"name": "dense_w0.5", "kind": "dense", "base": "fmnist_dense.json", "model": {"width_multiplier": 0.5}},
    {"name": "routed_e4_h64_cf1.0", "kind": "routed", "base": "fmnist_routed.json", "model": {},
     "moe": {"expert_hidden": 64, "capacity_factor": 1.0}},
    {"name": "dense_w0.375", "kind": "dense", "base": "fmnist_dense.json", "model": {"width_multiplier": 0.375}},
    {"name": "routed_e8_h16_cf1.25", "kind": "routed", "base": "fmnist_routed.json", "model": {},
     "moe": {"num_experts": 8, "expert_hidden": 16}},
    {"name": "routed_e4_h64_cf0.75", "kind": "routed", "base": "fmnist_routed.json", "model": {},
     "moe": {"expert_hidden": 64, "capacity_factor": 0.75}},
    {"name": "routed_e4_h32_top2_cf1.0", "kind": "routed", "base": "fmnist_routed.json", "model": {},
     "moe": {"top_k": 2, "capacity_factor": 1.0}},
    {"name": "dense_w0.125", "kind": "dense", "base": "fmnist_dense.json", "model": {"width_multiplier": 0.125}},
    {"name": "routed_l3l4_e4_h64_cf1.0", "kind": "routed", "base": "fmnist_routed.json", "model": {},
     "moe": {"layers": ["layer3.0", "layer3.1", "layer4.0"], "expert_hidden": 64, "capacity_factor": 1.0}},
    {"name": "routed_w0.375_e4_cf1.0", "kind": "routed", "base": "fmnist_routed.json",
     "model": {"width_multiplier": 0.375}, "moe": {"expert_hidden": None, "capacity_factor": 1.0}},
    # 55.7 M MACs, ~8x dense_w0.25 to train: last, run only if the time budget allows.
    {"name": "dense_w0.75", "kind": "dense", "base": "fmnist_dense.json", "model": {"width_multiplier": 0.75}},
]

log = logging.getLogger("routevit")


def family_config(entry: dict) -> dict:
    """The full config JSON of a family entry: its base config with the overrides applied."""
    cfg = json.loads((CONFIGS / entry["base"]).read_text())
    cfg["name"] = entry["name"]
    cfg["description"] = (f"benchmarks/pareto.py: {entry['base']} with model overrides {entry['model']}"
                          + (f" and moe overrides {entry['moe']}" if entry.get("moe") is not None else ""))
    cfg["model"].update(copy.deepcopy(entry["model"]))
    if entry["kind"] == "dense":
        cfg["model"]["moe"] = None
    else:
        cfg["model"]["moe"].update(copy.deepcopy(entry.get("moe") or {}))
    cfg["training"]["epochs"] = RECIPE["epochs"]
    return cfg


def routevit(*args, timeout=4 * 3600) -> subprocess.CompletedProcess:
    """Run one `routevit` subcommand at nice 19 (the machine is shared); stdout captured."""
    argv = ["nice", "-n", "19", sys.executable, "-c",
            "import sys; from toolchain.cli import main; sys.argv[0] = 'routevit'; sys.exit(main())",
            *map(str, args)]
    log.info("running routevit %s", subprocess.list2cmdline(list(map(str, args))))
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    started = time.monotonic()
    result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, cwd=REPO, env=env)
    log.info("  ... %.0f s, exit %d", time.monotonic() - started, result.returncode)
    if result.returncode != 0:
        tail = "\n".join(result.stderr.strip().splitlines()[-12:])
        raise RuntimeError(f"`routevit {args[0]}` failed ({result.returncode}):\n{tail}")
    return result


def json_stdout(result: subprocess.CompletedProcess) -> dict:
    return json.loads(result.stdout.strip().splitlines()[-1])


def paths(name: str) -> dict:
    root = RUNS / name
    return {"root": root, "config": root / "config.json", "run": root / "run", "qat": root / "qat",
            "exp": root / "exp", "proj": root / "proj", "report": root / "report",
            "eval": root / "evaluate_host.json", "summary": root / "summary.json",
            "times": root / "stage_seconds.json"}


def _times(p: dict) -> dict:
    return json.loads(p["times"].read_text()) if p["times"].is_file() else {}


def _note_time(p: dict, stage: str, seconds: float) -> None:
    times = _times(p)
    times[stage] = round(seconds, 1)
    p["times"].write_text(json.dumps(times, indent=1) + "\n")


def train_stage(entry: dict) -> None:
    """train + QAT (the CPU-heavy part; one model at a time)."""
    p = paths(entry["name"])
    p["root"].mkdir(parents=True, exist_ok=True)
    p["config"].write_text(json.dumps(family_config(entry), indent=2) + "\n")
    if not (p["run"] / "metrics.json").is_file():
        t = time.monotonic()
        resume = ["--resume"] if Path(str(p["run"]) + ".partial").is_dir() else []
        routevit("train", "--config", p["config"], "--data", DATA, "--epochs", RECIPE["epochs"],
                 "--out", p["run"], *resume)
        _note_time(p, "train", time.monotonic() - t)
    if not (p["qat"] / "metrics.json").is_file():
        t = time.monotonic()
        routevit("quantize", p["run"], "--method", "qat", "--out", p["qat"],
                 "--epochs", RECIPE["qat_epochs"], "--limit-train", RECIPE["qat_limit_train"])
        _note_time(p, "qat", time.monotonic() - t)


def export_stage(entry: dict) -> None:
    """export + summarize (the full-test-split host evaluation is eval_stage, a stream of its own)."""
    p = paths(entry["name"])
    if not (p["exp"] / "plan.json").is_file():
        t = time.monotonic()
        routevit("export", p["qat"], "--out", p["exp"], "--no-ptq-baseline")
        _note_time(p, "export", time.monotonic() - t)
    if not p["summary"].is_file():
        out = routevit("summarize", "--config", p["config"], "--json")
        p["summary"].write_text(json.dumps(json_stdout(out), indent=1) + "\n")


def eval_stage(entry: dict) -> None:
    """float and QAT int8 top-1 on the full test split: `routevit evaluate EXP --host` (the host
    reference on the tflite-micro wheel, which the firmware matches bit for bit); ~22 ms of CPU
    per image, so it runs beside the device stage instead of holding it up."""
    p = paths(entry["name"])
    if p["eval"].is_file():
        return
    lock = p["root"] / "evaluate_host.lock"   # several eval streams may run: one per model
    try:
        fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        log.info("== %s: another stream evaluates it", entry["name"])
        return
    os.close(fd)
    try:
        t = time.monotonic()
        out = routevit("evaluate", p["exp"], "--host", "--data", DATA, "--json")
        p["eval"].write_text(json.dumps(json_stdout(out), indent=1) + "\n")
        _note_time(p, "evaluate_host", time.monotonic() - t)
    finally:
        lock.unlink()


def accuracy_fields(name: str) -> dict:
    """top1_float / top1_int8 from the host evaluation when it has run, else from the Keras runs
    (float test accuracy of the training run; QAT fake-quant test accuracy) -- marked as such."""
    p = paths(name)
    train = json.loads((p["run"] / "metrics.json").read_text())
    qat = json.loads((p["qat"] / "metrics.json").read_text())
    out = {"top1_float_train_run": train.get("test_accuracy"),
           "top1_qat_fake_quant": qat.get("qat_test_accuracy")}
    if p["eval"].is_file():
        ev = json.loads(p["eval"].read_text())
        int8 = ev.get("qat") or ev["int8"]
        out.update({"top1_float": ev["float"]["top1"], "top1_int8": int8["top1"],
                    "test_examples": ev["examples"], "expert_share": int8.get("expert_share"),
                    "top1_int8_source": "host reference (tflite-micro wheel, bit-exact with the firmware)"})
    else:
        out.update({"top1_float": train.get("test_accuracy"), "top1_int8": qat.get("qat_test_accuracy"),
                    "test_examples": qat.get("qat_test_examples"),
                    "top1_int8_source": "QAT fake-quant Keras model (host int8 evaluation not run)"})
    return out


def device_stage(entry: dict) -> dict:
    """generate -> build (default kernels) -> emulate on QEMU: instructions, flash, arena."""
    p = paths(entry["name"])
    t = time.monotonic()
    gen = json_stdout(routevit("generate", p["exp"], "--board", BOARD, "--out", p["proj"], "--json"))
    build = json_stdout(routevit("build", p["proj"], "--json"))
    _note_time(p, "generate_build", time.monotonic() - t)
    t = time.monotonic()
    if p["report"].exists():
        import shutil
        shutil.rmtree(p["report"])
    emu = json_stdout(routevit("emulate", p["proj"], "--backend", "qemu", "--data", DATA,
                               "--limit", RECIPE["emulate_limit"], "--export", p["exp"],
                               "--out", p["report"], "--no-build", "--json"))
    _note_time(p, "emulate", time.monotonic() - t)
    report = json.loads((p["report"] / "report.json").read_text())
    project = json.loads((p["proj"] / "project.json").read_text())
    memory = json.loads((p["proj"] / "memory_report.json").read_text())
    size = json.loads((p["proj"] / "build" / "size.json").read_text())
    counter = report.get("counter") or {}
    agreement = report.get("agreement_device_vs_host") or {}
    return {
        "instructions_per_image": counter.get("mean"),
        "instructions_min": counter.get("min"), "instructions_max": counter.get("max"),
        "flash_bytes": size.get("flash_bytes", size.get("text", 0) + size.get("data", 0)),
        "ram_bytes": size.get("ram_bytes"),
        "arena_bytes": project.get("arena_bytes"),
        # what the 32-bit target's one shared MicroAllocator really used (device HELLO)
        "arena_used_device_bytes": (report.get("hello") or {}).get("arena_bytes"),
        "arena_measured_on_host_bytes": (report.get("memory") or {}).get("arena_measured_on_host_bytes"),
        "device_images": report.get("images"),
        "top1_device": (report.get("top1") or {}).get("device"),
        "bit_exact_rate": agreement.get("bit_exact_rate"),
        "kernels": build.get("kernels"),
        "memory_report": memory,
        "generate": {k: v for k, v in gen.items() if not isinstance(v, (list, dict))},
        "emulate_wall_seconds": emu.get("wall_seconds"),
    }


def make_row(entry: dict, device: dict) -> dict:
    p = paths(entry["name"])
    summary = json.loads(p["summary"].read_text())
    plan = json.loads((p["exp"] / "plan.json").read_text())
    cfg = json.loads(p["config"].read_text())
    moe = cfg["model"]["moe"]
    row = {
        "name": entry["name"], "kind": entry["kind"],
        "width_multiplier": cfg["model"]["width_multiplier"],
        "moe": moe,
        "capacity": [r["capacity"] for r in plan.get("routed_layers") or []],
        "trainable_params": summary["trainable_params"],
        "active_params_per_patch": summary["active_params_per_patch"],
        "macs": summary["macs"]["total"], "macs_detail": summary["macs"],
        **accuracy_fields(entry["name"]),
        "segment_arena_bytes": [s.get("arena") or s.get("arena_bytes") for s in plan["segments"]],
        "plan_memory": plan.get("memory"),
        "stage_seconds": _times(p),
        "epochs": RECIPE["epochs"],
    }
    row.update(device)
    return row


def read_rows() -> dict:
    rows = {}
    if ROWS.is_file():
        for line in ROWS.read_text().splitlines():
            if line.strip():
                r = json.loads(line)
                rows[r["name"]] = r   # the last line of a name wins (re-measurements)
    for name, r in rows.items():   # the host evaluation may have finished after the row was written
        if (paths(name)["qat"] / "metrics.json").is_file():
            r.update(accuracy_fields(name))
            r["stage_seconds"] = _times(paths(name))
    return rows


def append_row(row: dict) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    with ROWS.open("a") as f:
        f.write(json.dumps(row) + "\n")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stage", choices=("all", "train", "measure", "eval"), default="all")
    parser.add_argument("--only", default=None, help="comma-separated model names")
    parser.add_argument("--measure-only", action="store_true",
                        help="re-run generate/build/emulate on existing exports; keep the accuracy")
    parser.add_argument("--initial-weights", action="store_true",
                        help="with --measure-only: where a model has a row but no export (runs/ is gone), measure "
                             "an export of its config with its initial weights (toolchain.generate.fit."
                             "export_untrained: same ops, shapes and expert buffers, so the same instructions, "
                             "flash and arena); the trained run's accuracy columns are kept")
    parser.add_argument("--wait", action="store_true",
                        help="with --stage measure: wait for QRUNs the train stage has not written yet")
    parser.add_argument("--reverse", action="store_true", help="take the family in reverse order (a second stream)")
    parser.add_argument("--render", action="store_true", help="only write pareto.json/.md/.png from the rows")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    family = FAMILY
    if args.only:
        names = args.only.split(",")
        unknown = set(names) - {e["name"] for e in FAMILY}
        if unknown:
            raise SystemExit(f"--only: unknown model(s) {sorted(unknown)}; known: {[e['name'] for e in FAMILY]}")
        family = [e for e in FAMILY if e["name"] in names]
    if args.reverse:
        family = family[::-1]
    if not args.render:
        if args.measure_only:
            rows = read_rows()
            for entry in family:
                exp = paths(entry["name"])["exp"]
                initial = False
                if entry["name"] in rows and not (exp / "plan.json").is_file() and args.initial_weights:
                    from toolchain.config import config_from_dict
                    from toolchain.generate.fit import export_untrained

                    log.info("== %s: exporting its config with initial weights", entry["name"])
                    export_untrained(config_from_dict(family_config(entry)), exp)
                    initial = True
                if entry["name"] not in rows or not (exp / "plan.json").is_file():
                    log.info("== %s: no row/export yet, skipped", entry["name"])
                    continue
                log.info("== %s: re-measuring on the device", entry["name"])
                row = dict(rows[entry["name"]])
                device = device_stage(entry)
                if initial:  # the device's top-1 of initial weights means nothing: keep the trained run's
                    device.pop("top1_device", None)
                    device["device_costs_from"] = "initial-weights export (export_untrained)"
                row.update(device)
                row["remeasured"] = time.strftime("%Y-%m-%d %H:%M")
                append_row(row)
                render()
        else:
            if args.stage == "eval":
                # any model whose export exists and whose evaluation is missing, until none is left
                todo = [e for e in family if not paths(e["name"])["eval"].is_file()]
                while todo:
                    ready = [e for e in todo if (paths(e["name"])["exp"] / "plan.json").is_file()
                             and not (paths(e["name"])["root"] / "evaluate_host.lock").exists()]
                    for entry in ready[:1]:
                        try:
                            log.info("== %s: host evaluation, full test split", entry["name"])
                            eval_stage(entry)
                            render()
                        except RuntimeError as exc:
                            log.error("== %s failed: %s", entry["name"], exc)
                            todo.remove(entry)
                    todo = [e for e in todo if not paths(e["name"])["eval"].is_file()]
                    if not ready:
                        if not args.wait:
                            break
                        time.sleep(20)
                render()
                return 0
            pending = [e for e in family if e["name"] not in read_rows()]
            for entry in pending:
                name = entry["name"]
                try:
                    if args.stage in ("all", "train"):
                        log.info("== %s: train + QAT", name)
                        train_stage(entry)
                    if args.stage in ("all", "measure"):
                        qat = paths(name)["qat"] / "metrics.json"
                        while args.wait and not qat.is_file():
                            time.sleep(30)
                        if not qat.is_file():
                            log.info("== %s: no QRUN yet, skipped", name)
                            continue
                        log.info("== %s: export, device", name)
                        export_stage(entry)
                        append_row(make_row(entry, device_stage(entry)))
                        if args.stage == "all":
                            eval_stage(entry)
                        render()
                except RuntimeError as exc:
                    log.error("== %s failed: %s", name, exc)
    render()
    return 0


# ---- results: json, markdown, plots ---------------------------------------------------------

def pareto_front(rows: list[dict], cost: str) -> set:
    """Names of the rows no other row beats on both int8 top-1 (higher) and `cost` (lower)."""
    ok = [r for r in rows if r.get(cost) is not None and r.get("top1_int8") is not None]
    front = set()
    for r in ok:
        dominated = any(o[cost] <= r[cost] and o["top1_int8"] >= r["top1_int8"]
                        and (o[cost] < r[cost] or o["top1_int8"] > r["top1_int8"]) for o in ok)
        if not dominated:
            front.add(r["name"])
    return front


def must_show(rows: list[dict]) -> dict:
    """The issue's two criteria, on int8 top-1 (full test split) and instructions per image.

    (a) a routed model R beats by >= 1 point every dense model that runs in no more instructions
        than R (at least one must: R's budget has to buy some dense model);
    (b) R is within 0.3 point of the best dense model with <= 2/3 of its instructions.
    """
    dense = [r for r in rows if r["kind"] == "dense" and r.get("instructions_per_image")]
    routed = [r for r in rows if r["kind"] == "routed" and r.get("instructions_per_image")]
    out = {"criterion_a": [], "criterion_b": [], "routed": []}
    if not dense or not routed:
        return out
    best_dense = max(dense, key=lambda r: r["top1_int8"])
    for r in routed:
        cheaper = [d for d in dense if d["instructions_per_image"] <= r["instructions_per_image"]]
        best_cheaper = max(cheaper, key=lambda d: d["top1_int8"]) if cheaper else None
        margin_a = r["top1_int8"] - best_cheaper["top1_int8"] if best_cheaper else None
        ratio_b = r["instructions_per_image"] / best_dense["instructions_per_image"]
        gap_b = best_dense["top1_int8"] - r["top1_int8"]
        out["routed"].append({
            "name": r["name"], "top1_int8": r["top1_int8"], "instructions_per_image": r["instructions_per_image"],
            "best_dense_within_budget": best_cheaper["name"] if best_cheaper else None,
            "margin_over_best_dense_within_budget_points": None if margin_a is None else round(100 * margin_a, 2),
            "gap_to_best_dense_points": round(100 * gap_b, 2),
            "instructions_vs_best_dense": round(ratio_b, 3)})
        if margin_a is not None and margin_a >= 0.01 - 1e-9:
            out["criterion_a"].append(r["name"])
        if gap_b <= 0.003 + 1e-9 and ratio_b <= 2 / 3:
            out["criterion_b"].append(r["name"])
    out["best_dense"] = best_dense["name"]
    return out


def render() -> None:
    rows = sorted(read_rows().values(), key=lambda r: (r["kind"], r.get("instructions_per_image") or 0))
    if not rows:
        return
    meta = {"generated_by": "benchmarks/pareto.py", "date": time.strftime("%Y-%m-%d %H:%M"),
            "board": BOARD, "data": DATA, "recipe": RECIPE,
            "note": ("one recipe for every model: the config's training block (AdamW, lr 3e-3 cosine, batch 64,"
                     " seed 0) with the epochs above; QAT 1 epoch on the first qat_limit_train training images;"
                     " accuracy on the full 10,000-image test split (host reference = firmware bit for bit);"
                     " instructions = mean over emulate_limit QEMU images with the default (CMSIS-NN) kernels")}
    fronts = {cost: sorted(pareto_front(rows, cost)) for cost in
              ("instructions_per_image", "flash_bytes", "arena_bytes")}
    finding = must_show(rows)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "pareto.json").write_text(json.dumps({**meta, "pareto_fronts": fronts, "must_show": finding,
                                                     "rows": rows}, indent=1) + "\n")
    (RESULTS / "pareto.md").write_text(markdown(rows, meta, fronts, finding))
    try:
        plots(rows, fronts)
    except Exception as exc:  # plots are a view; never lose the tables for them
        log.error("plots failed: %s", exc)


def _num(v):
    return "-" if v is None else f"{int(round(v)):,}"


def _pct(v):
    return "-" if v is None else f"{100 * v:.2f}"


def describe(r: dict) -> str:
    moe = r.get("moe")
    if not moe:
        return f"w={r['width_multiplier']}"
    layers = ",".join(moe["layers"])
    return (f"w={r['width_multiplier']} E={moe['num_experts']} h={moe['expert_hidden'] or 'dense'} "
            f"cf={moe['capacity_factor']} (C={'/'.join(map(str, r.get('capacity') or []))}) "
            f"top-{moe['top_k']} [{layers}]")


def markdown(rows, meta, fronts, finding) -> str:
    lines = [f"<!-- generated by benchmarks/pareto.py on {meta['date']} -->",
             f"# Routed vs dense on {meta['board']}: accuracy against instructions, flash and arena", "",
             f"Recipe: {meta['note']}. Epochs: {meta['recipe']['epochs']} (reduced from the configs' 3 to fit the"
             f" time budget; every model gets the same). Front marks: I = on the instructions Pareto front,"
             f" F = flash, A = arena (int8 top-1 vs cost).", "",
             "| model | kind | config | trainable params | active params/patch | MACs | top-1 float % | "
             "top-1 int8 % | instructions / image | flash B | arena B | arena used on device B | fronts |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        marks = "".join(m for m, c in (("I", "instructions_per_image"), ("F", "flash_bytes"), ("A", "arena_bytes"))
                        if r["name"] in fronts[c])
        lines.append(f"| {r['name']} | {r['kind']} | {describe(r)} | {_num(r['trainable_params'])} | "
                     f"{_num(r['active_params_per_patch'])} | {_num(r['macs'])} | {_pct(r['top1_float'])} | "
                     f"{_pct(r['top1_int8'])}{'' if r.get('top1_int8_source', 'host').startswith('host') else ' *'} | "
                     f"{_num(r.get('instructions_per_image'))} | "
                     f"{_num(r.get('flash_bytes'))} | {_num(r.get('arena_bytes'))} | "
                     f"{_num(r.get('arena_used_device_bytes'))} | {marks} |")
    lines += ["", "int8 top-1: the host reference (tflite-micro wheel, bit-exact with the firmware) on the full"
              " 10,000-image test split; `*` = that evaluation had not finished, the figure is the QAT fake-quant"
              " Keras model's top-1 on the same split (the float column is then the training run's). Arena: the"
              " generated project's static arena (host-measured + 10%); arena used on device: TFLM's"
              " `MicroAllocator::used_bytes()` on the Cortex-M4 after all segments' AllocateTensors (HELLO).",
              ""]
    remeasured = [r for r in rows if r.get("device_costs_from")]
    if remeasured:
        dates = sorted({r.get("remeasured", "?") for r in remeasured})
        lines += [f"Device columns (instructions, flash, arena) of {len(remeasured)} models were re-measured on "
                  f"{dates[0][:10]} with that day's firmware on exports of their configs with initial weights "
                  "(`--measure-only --initial-weights`: the trained exports were gone; ops, shapes and the static "
                  "expert buffers are the same, so are the costs); their accuracy columns are the trained runs'.",
                  ""]
    lines += ["Pareto fronts (int8 top-1 vs cost):"]
    for cost, names in fronts.items():
        lines.append(f"- {cost}: {', '.join(names)}")
    lines += ["", "## The must-show", ""]
    if finding.get("best_dense"):
        lines.append(f"(a) a routed model >= 1 point int8 top-1 above every dense model that needs no more"
                     f" instructions per image: {', '.join(finding['criterion_a']) or 'none'}. (b) within 0.3 point"
                     f" of the best dense model ({finding['best_dense']}) with <= 2/3 of its instructions:"
                     f" {', '.join(finding['criterion_b']) or 'none'}.")
        lines += ["", "| routed model | int8 top-1 % | instructions / image | best dense within its budget | "
                  "margin (points) | gap to best dense (points) | instructions / best dense's |",
                  "|---|---|---|---|---|---|---|"]
        for c in finding["routed"]:
            m = c["margin_over_best_dense_within_budget_points"]
            lines.append(f"| {c['name']} | {_pct(c['top1_int8'])} | {_num(c['instructions_per_image'])} | "
                         f"{c['best_dense_within_budget'] or '- (none that cheap)'} | {'-' if m is None else f'{m:+.2f}'} | "
                         f"{c['gap_to_best_dense_points']:+.2f} | {c['instructions_vs_best_dense']:.3f} |")
    extra = RESULTS / "pareto_notes.md"
    if extra.is_file():
        lines += ["", extra.read_text().rstrip()]
    lines += ["", "Plots: pareto_instructions.png, pareto_flash.png, pareto_arena.png. Rows with every measured"
              " figure: pareto.json (per-stage wall times, memory report, expert shares, segment arenas).", ""]
    return "\n".join(lines)


def plots(rows, fronts) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    for cost, fname, label in (("instructions_per_image", "pareto_instructions.png", "instructions per image (QEMU)"),
                               ("flash_bytes", "pareto_flash.png", "flash (bytes)"),
                               ("arena_bytes", "pareto_arena.png", "tensor arena (bytes)")):
        fig, ax = plt.subplots(figsize=(8, 5.5))
        for kind, color, marker in (("dense", "tab:blue", "s"), ("routed", "tab:orange", "o")):
            pts = [r for r in rows if r["kind"] == kind and r.get(cost)]
            ax.scatter([r[cost] for r in pts], [100 * r["top1_int8"] for r in pts], c=color, marker=marker,
                       label=kind, zorder=3)
            for r in pts:
                ax.annotate(r["name"], (r[cost], 100 * r["top1_int8"]), fontsize=7, xytext=(4, 3),
                            textcoords="offset points")
        front = sorted((r for r in rows if r["name"] in fronts[cost]), key=lambda r: r[cost])
        if front:
            ax.step([r[cost] for r in front], [100 * r["top1_int8"] for r in front], where="post", c="gray",
                    ls="--", label="Pareto front (all models)", zorder=2)
        for kind, color in (("dense", "tab:blue"), ("routed", "tab:orange")):
            sub = [r for r in rows if r["kind"] == kind]
            kfront = sorted((r for r in sub if r["name"] in pareto_front(sub, cost)), key=lambda r: r[cost])
            if len(kfront) > 1:
                ax.plot([r[cost] for r in kfront], [100 * r["top1_int8"] for r in kfront], c=color, lw=0.8,
                        alpha=0.6, label=f"{kind} front")
        ax.set_xlabel(label)
        ax.set_ylabel("int8 top-1 on the test split (%)")
        ax.set_title(f"Fashion-MNIST, {BOARD}: int8 top-1 vs {label}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(RESULTS / fname, dpi=110)
        plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
