"""The paper's claim as a table (issue 10): MobileViTV2-1.0 dense, a routed model with at most 1/4
of its trainable parameters, and a dense model with the routed one's parameter count -- one input
size, one recipe -- so the experts' contribution is separated from the width's.

arXiv 2411.07834 reports a routed MobileViT with ~4x fewer parameters than MobileViTV2-1.0 at ~1
point less accuracy. That alone does not say whether the experts or simply the smaller width
account for it; the third model does:

    experts' contribution = routed - dense with the same parameters   (same budget, experts or not)
    width's contribution  = dense 1.0 - dense with the same parameters (4x the parameters, no experts)

Here on Fashion-MNIST (1 channel, 10 classes, 32 px, strides 2,1,1,2,2,1, transformer depths
2/4/3 as MobileViTV2), CPU only:

  dense_w1.0   examples/configs/fmnist_mobilevitv2_100.json          (MobileViTV2-1.0)
  routed_w0.5  examples/configs/fmnist_mobilevitv2_050_routed.json   (ssw60_routed's experts:
               layer4/layer5 FFNs -> 4 experts of hidden 48, top-1; <= 1/4 of dense_w1.0's params)
  dense_same   fmnist_mobilevitv2_100.json at the width multiplier whose trainable parameter count
               is nearest the routed model's (found with `routevit summarize --json`)

Each: `routevit train` (the config's training block: AdamW, lr 3e-3 cosine with 0.2 warm-up epochs,
batch 64, seed 0, the same --epochs / --limit-train for all; val = the 5,000-image val split picks
the best epoch; float top-1 on the test split) -> optionally `quantize --method ptq` -> `export` ->
`evaluate --host` (int8 top-1 of the tflite-micro host reference, bit-exact with the firmware).
Training runs under `nice -n 10`; its wall-clock and CPU seconds are recorded.

    .venv/bin/python benchmarks/claim_table.py                    # train all three, then int8
    .venv/bin/python benchmarks/claim_table.py --no-int8          # float only
    .venv/bin/python benchmarks/claim_table.py --render           # rewrite json/md from the rows
    .venv/bin/python benchmarks/claim_table.py --deadline 20:50   # start no stage after 20:50 UTC

Resumable: one row per model per phase is appended to benchmarks/results/claim_table_rows.jsonl
(the last row of a model wins); a model whose row is there is not trained again, a stage whose
output folder exists is not rerun, and an interrupted training continues from OUT.partial.
Runs live outside the repository, under --runs (default /work/claim_runs/claim_table).
Results: benchmarks/results/claim_table.json and claim_table.md.
"""
from __future__ import annotations

import argparse
import datetime
import json
import logging
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
from qemu_benchmark import RESULTS, write_results  # noqa: E402

CONFIGS = REPO / "examples" / "configs"
ROWS = RESULTS / "claim_table_rows.jsonl"
DATA = "fashion-mnist"
DENSE_100 = CONFIGS / "fmnist_mobilevitv2_100.json"
ROUTED = CONFIGS / "fmnist_mobilevitv2_050_routed.json"
# Width multipliers tried for the same-parameters dense model (channels are rounded to multiples
# of 8, so the parameter count is a step function of the width; every step in 0.30..0.70 is hit).
WIDTH_GRID = [round(0.30 + 0.005 * i, 3) for i in range(81)]

log = logging.getLogger("routevit")


def routevit(*args, nice: int | None = None, timeout: float = 4 * 3600) -> tuple[subprocess.CompletedProcess, dict]:
    """Run `routevit ARGS` (under `nice -n NICE` if given); return the result and its wall / CPU seconds."""
    exe = str(Path(sys.executable).with_name("routevit"))
    argv = ([] if nice is None else ["nice", "-n", str(nice)]) + [exe, *map(str, args)]
    log.info("running %s", subprocess.list2cmdline(argv))
    env = dict(os.environ, TF_USE_LEGACY_KERAS="1")
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.monotonic()
    result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, cwd=REPO, env=env)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    times = {"wall_s": round(time.monotonic() - start, 1),
             "cpu_s": round(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime, 1)}
    log.info("  ... %.0f s wall, %.0f s CPU, exit %d", times["wall_s"], times["cpu_s"], result.returncode)
    if result.returncode != 0:
        tail = "\n".join(result.stderr.strip().splitlines()[-12:])
        raise RuntimeError(f"`routevit {args[0]}` failed ({result.returncode}):\n{tail}")
    return result, times


def last_json(result: subprocess.CompletedProcess) -> dict:
    return json.loads(result.stdout.strip().splitlines()[-1])


def summarize(config: Path) -> dict:
    return last_json(routevit("summarize", "--config", config, "--json")[0])


def with_width(cfg: dict, width: float) -> dict:
    out = json.loads(json.dumps(cfg))
    out["model"]["width_multiplier"] = width
    out["model"]["moe"] = None
    return out


def same_params_width(runs: Path, dense_cfg: dict, target: int) -> tuple[float, int, list]:
    """The width (of WIDTH_GRID) whose dense trainable parameter count is nearest `target`;
    cached in RUNS/width_search.json. Returns (width, params, [[width, params], ...])."""
    cache = runs / "width_search.json"
    if cache.is_file():
        found = json.loads(cache.read_text())
        if found.get("target") == target:
            return found["width"], found["params"], found["tried"]
    probe = runs / "width_probe.json"
    tried, seen = [], {}
    # coarse bracket first, then every grid point between the neighbours of the target
    for width in WIDTH_GRID[::10] + [WIDTH_GRID[-1]]:
        probe.write_text(json.dumps(with_width(dense_cfg, width)))
        seen[width] = summarize(probe)["trainable_params"]
    below = max((w for w, p in seen.items() if p <= target), default=WIDTH_GRID[0])
    above = min((w for w, p in seen.items() if p >= target), default=WIDTH_GRID[-1])
    for width in WIDTH_GRID:
        if below < width < above and width not in seen:
            probe.write_text(json.dumps(with_width(dense_cfg, width)))
            seen[width] = summarize(probe)["trainable_params"]
    tried = sorted([w, p] for w, p in seen.items())
    width, params = min(seen.items(), key=lambda wp: (abs(wp[1] - target), wp[0]))
    cache.write_text(json.dumps({"target": target, "width": width, "params": params, "tried": tried}, indent=1))
    probe.unlink(missing_ok=True)
    return width, params, tried


def models(runs: Path, extra_seeds=()) -> list[dict]:
    """The three models: name, role, config path (written under RUNS)."""
    runs.mkdir(parents=True, exist_ok=True)
    dense_cfg = json.loads(DENSE_100.read_text())
    routed_cfg = json.loads(ROUTED.read_text())
    routed_params = summarize(ROUTED)["trainable_params"]
    width, params, tried = same_params_width(runs, dense_cfg, routed_params)
    same = with_width(dense_cfg, width)
    same["name"] = f"fmnist_mobilevitv2_dense_w{width}"
    same["description"] = (f"fmnist_mobilevitv2_100.json at width {width}: the dense model whose trainable parameter"
                           f" count ({params:,}) is nearest the routed model's ({routed_params:,}) among widths"
                           f" {WIDTH_GRID[0]}..{WIDTH_GRID[-1]} step 0.005")
    out = []
    for name, role, cfg, source in (
            ("dense_w1.0", "MobileViTV2-1.0 dense", dense_cfg, "examples/configs/fmnist_mobilevitv2_100.json"),
            ("routed_w0.5", "routed, <= 1/4 of the parameters", routed_cfg,
             "examples/configs/fmnist_mobilevitv2_050_routed.json"),
            (f"dense_w{width}", "dense, same parameters as the routed one", same,
             f"examples/configs/fmnist_mobilevitv2_100.json with width_multiplier {width}")):
        root = runs / name
        root.mkdir(parents=True, exist_ok=True)
        config = root / "config.json"
        config.write_text(json.dumps(cfg, indent=2) + "\n")
        out.append({"name": name, "role": role, "config": config, "config_source": source, "root": root,
                    "width_search": tried if name.startswith("dense_w") and name != "dense_w1.0" else None,
                    "seed": None})
    # optional repeats with other seeds: the two small models first (the seed-to-seed spread of the
    # experts' contribution), then dense 1.0 (~2-4x the cost; the spread of the width's)
    for seed, m in [(seed, m) for seed in extra_seeds for m in out[1:3]] + [(seed, out[0]) for seed in extra_seeds]:
        root = runs / f"{m['name']}_seed{seed}"
        root.mkdir(parents=True, exist_ok=True)
        out.append(dict(m, name=f"{m['name']}_seed{seed}", root=root, seed=seed, width_search=None))
    return out


def past(deadline: datetime.datetime | None) -> bool:
    return deadline is not None and datetime.datetime.now(datetime.timezone.utc) >= deadline


def train_row(m: dict, recipe: dict) -> dict:
    """Train (nice 10) unless RUN/metrics.json exists; the row of float figures."""
    run = m["root"] / "run"
    times_file = m["root"] / "train_times.json"
    if not (run / "metrics.json").is_file():
        resume = ["--resume"] if Path(str(run) + ".partial").is_dir() else []
        load_before = os.getloadavg()
        _, times = routevit("train", "--config", m["config"], "--data", DATA, "--epochs", recipe["epochs"],
                            "--limit-train", recipe["limit_train"], "--out", run, *resume,
                            *(["--seed", m["seed"]] if m["seed"] is not None else []), nice=10)
        prior = json.loads(times_file.read_text()) if times_file.is_file() else {"wall_s": 0, "cpu_s": 0, "sessions": 0}
        times = {"wall_s": round(prior["wall_s"] + times["wall_s"], 1),
                 "cpu_s": round(prior["cpu_s"] + times["cpu_s"], 1),
                 "sessions": prior["sessions"] + 1, "loadavg_1_5_15_before": list(load_before),
                 "loadavg_1_5_15_after": list(os.getloadavg())}
        times_file.write_text(json.dumps(times, indent=1) + "\n")
    metrics = json.loads((run / "metrics.json").read_text())
    times = json.loads(times_file.read_text()) if times_file.is_file() else {}
    summary = summarize(m["config"])
    cfg = json.loads(m["config"].read_text())
    history = metrics.get("history") or []
    return {
        "name": m["name"], "role": m["role"], "config": m["config_source"],
        "base_model": m["name"].split("_seed")[0],
        "width_multiplier": cfg["model"]["width_multiplier"], "moe": cfg["model"]["moe"],
        "trainable_params": summary["trainable_params"],
        "trainable_params_keras": metrics.get("trainable_params"),
        "active_params_per_patch": summary["active_params_per_patch"],
        "macs": summary["macs"]["total"],
        "routed_layers": summary.get("routed_layers"),
        "top1_float": metrics["test_accuracy"], "test_examples": metrics["test_examples"],
        "val_accuracy_best": metrics["val_accuracy"], "best_epoch": metrics["best_epoch"],
        "epochs_completed": metrics["epochs_completed"],
        "train_examples": metrics["dataset"]["train_examples"],
        "val_examples": metrics["dataset"]["val_examples"],
        "train_wall_s_trainer": metrics["wall_time_s"],
        "train_wall_s": times.get("wall_s"), "train_cpu_s": times.get("cpu_s"),
        "train_loadavg_before": times.get("loadavg_1_5_15_before"),
        "train_loadavg_after": times.get("loadavg_1_5_15_after"),
        "epoch_seconds": [h.get("seconds") for h in history],
        "train_accuracy_last_epoch": history[-1]["accuracy"] if history else None,
        "test_expert_share": metrics.get("test_expert_share") or None,
        "width_search": m["width_search"],
        "recipe": recipe, "seed": metrics.get("seed"), "batch_size": metrics.get("batch_size"),
    }


def int8_fields(m: dict, recipe: dict) -> dict:
    """PTQ -> export -> evaluate --host on the first int8_limit test images (each stage skipped if done)."""
    root = m["root"]
    q, exp, ev = root / "ptq", root / "exp", root / "evaluate_host.json"
    stage_s = {}
    if not q.exists():
        _, times = routevit("quantize", root / "run", "--method", "ptq", "--out", q, nice=10)
        stage_s["quantize_wall_s"] = times["wall_s"]
    if not exp.exists():
        stage_s["export_wall_s"] = routevit("export", q, "--out", exp, nice=10)[1]["wall_s"]
    if not ev.is_file():
        result, times = routevit("evaluate", exp, "--host", "--data", DATA, "--limit", recipe["int8_limit"],
                                 "--json", nice=10)
        ev.write_text(json.dumps(last_json(result), indent=1) + "\n")
        stage_s["evaluate_wall_s"] = times["wall_s"]
    e = json.loads(ev.read_text())
    int8 = e.get("int8") or e.get("ptq") or {}
    return {"top1_int8": int8.get("top1"), "top1_float_host": (e.get("float") or {}).get("top1"),
            "int8_examples": e.get("examples"), "int8_expert_share": int8.get("expert_share"),
            "int8_stage_seconds": stage_s or None}


def read_rows() -> dict:
    rows = {}
    if ROWS.is_file():
        for line in ROWS.read_text().splitlines():
            if line.strip():
                r = json.loads(line)
                rows[r["name"]] = r
    return rows


def append_row(row: dict) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    with ROWS.open("a") as f:
        f.write(json.dumps(row) + "\n")


# ---- rendering ------------------------------------------------------------------------------

def _n(v):
    return "-" if v is None else f"{int(round(v)):,}"


def _p(v):
    return "-" if v is None else f"{100 * v:.2f}"


def _s(v):
    return "-" if v is None else f"{v:.0f}"


ORDER = ("dense_w1.0", "routed_w0.5")


def ordered(rows: dict) -> list[dict]:
    return sorted(rows.values(), key=lambda r: (ORDER.index(r["name"]) if r["name"] in ORDER else len(ORDER),
                                                r["name"]))


def main_rows(rows: dict) -> dict:
    return {n: r for n, r in rows.items() if "_seed" not in n}


def seed_groups(rows: dict) -> dict:
    """base model name -> {seed: top1_float} over the main run (the config's seed) and the repeats."""
    groups = {}
    for n, r in rows.items():
        base = r.get("base_model") or n.split("_seed")[0]
        groups.setdefault(base, {})[r.get("seed")] = r["top1_float"]
    return groups


def _mean_sd(values):
    m = sum(values) / len(values)
    sd = (sum((v - m) ** 2 for v in values) / (len(values) - 1)) ** 0.5 if len(values) > 1 else None
    return m, sd


def _contribution(rows: dict, a: str, b: str) -> dict:
    """a - b in float top-1 points: seed 0, and over the seeds both have (mean, SD, noise = 2 SE)."""
    groups = seed_groups(rows)
    ra, rb = rows[a], rows[b]
    n = ra["test_examples"]
    se_binomial = 100 * (2 * ra["top1_float"] * (1 - ra["top1_float"]) / n) ** 0.5
    seeds = sorted(set(groups.get(a, {})) & set(groups.get(b, {})))
    paired = [100 * (groups[a][s] - groups[b][s]) for s in seeds]
    out = {"seed0": 100 * (ra["top1_float"] - rb["top1_float"]), "seeds": seeds, "paired": paired}
    if len(paired) > 1:
        m, sd = _mean_sd(paired)
        out.update(value=m, sd=sd, noise=2 * max(sd, se_binomial) / len(paired) ** 0.5,
                   basis=f"mean over seeds {', '.join(map(str, seeds))}: "
                         + ", ".join(f"{d:+.2f}" for d in paired) + f" (SD {sd:.2f})")
    else:
        out.update(value=out["seed0"], sd=None, noise=2 * se_binomial,
                   basis=f"one seed; noise = two binomial standard errors of a difference on {n:,} images")
    return out


def _verdict(c: dict) -> str:
    if abs(c["value"]) <= c["noise"]:
        return f"not distinguishable from zero (|{c['value']:+.2f}| <= {c['noise']:.2f})"
    return f"{'above' if c['value'] > 0 else 'below'} zero by more than the noise ({c['noise']:.2f})"


def findings(rows: dict) -> str:
    main = main_rows(rows)
    big = main.get("dense_w1.0")
    routed = main.get("routed_w0.5")
    same = next((r for n, r in main.items() if n.startswith("dense_w") and n != "dense_w1.0"), None)
    if not (routed and same):
        return "Not all three models have finished; no comparison yet."
    e = _contribution(rows, routed["name"], same["name"])
    text = [f"**Experts' contribution** = routed ({_n(routed['trainable_params'])} params) minus the dense "
            f"{same['name']} ({_n(same['trainable_params'])} params), same recipe: {e['value']:+.2f} points float top-1"
            f" ({e['basis']}; seed 0: {_p(routed['top1_float'])} vs {_p(same['top1_float'])} %"]
    if routed.get("top1_int8") is not None and same.get("top1_int8") is not None:
        text.append(f"; PTQ int8 {_p(routed['top1_int8'])} vs {_p(same['top1_int8'])} % = "
                    f"{100 * (routed['top1_int8'] - same['top1_int8']):+.2f} on {_n(routed['int8_examples'])} images,"
                    f" where the noise is ~±2 points")
    text.append(f") -- {_verdict(e)} -- for {routed['macs'] / same['macs']:.2f}x its MACs and "
                f"{routed['train_cpu_s'] / same['train_cpu_s']:.2f}x its training CPU time "
                f"({routed['train_wall_s'] / same['train_wall_s']:.2f}x wall). ")
    if big:
        w = _contribution(rows, big["name"], same["name"])
        g = _contribution(rows, big["name"], routed["name"])
        text.append(f"**Width's contribution** = dense 1.0 ({_n(big['trainable_params'])} params, "
                    f"{big['trainable_params'] / same['trainable_params']:.1f}x) minus the same dense model: "
                    f"{w['value']:+.2f} points ({w['basis']}) -- {_verdict(w)} -- for "
                    f"{big['macs'] / same['macs']:.1f}x the MACs and {big['train_cpu_s'] / same['train_cpu_s']:.1f}x"
                    f" the training CPU time ({big['train_wall_s'] / same['train_wall_s']:.1f}x wall). "
                    f"The claim itself: the routed model, with "
                    f"{routed['trainable_params'] / big['trainable_params']:.3f}"
                    f" of dense 1.0's parameters, is {g['value']:.2f} points below it ({g['basis']}; the paper: ~1 "
                    f"point below at ~1/4). ")
        if abs(e["value"]) <= e["noise"]:
            text.append(f"So the routed model's result at ~1/4 of the parameters is what the dense model of the same "
                        f"parameter count also gets: its {g['value']:.2f}-point gap to dense 1.0 is the width's "
                        f"{w['value']:+.2f} less an experts' share of {e['value']:+.2f} that is within the noise. On "
                        f"this evidence the experts do not pay for themselves here, and a ~1-point gap at 1/4 of the "
                        f"parameters (the paper's figure) is also what plain narrowing gives on this task. ")
        elif e["value"] > 0:
            text.append("So the experts do recover part of what the width buys, beyond the noise. ")
        else:
            text.append("So the routed model is worse than simply training the dense model of its parameter count. ")
    text.append("Caveats: a short schedule on a subset of Fashion-MNIST (28 px, 10 classes, near its ceiling "
                "quickly), not ImageNet/SSW60 at 256 px for hundreds of epochs; at 32 px layer4/layer5 hold only "
                "N=4 patches, so each routed layer picks experts for 4 tokens (capacity 2 per expert) and some "
                "patches are dropped to the residual (`dropped` in the rows' test_expert_share); training times are "
                "on a shared 2-core CPU where other jobs ran (CPU seconds and load averages are in the json).")
    return "".join(text)


def render(recipe: dict) -> None:
    rows = read_rows()
    if not rows:
        return
    main = main_rows(rows)
    date = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    big_params = (main["dense_w1.0"]["trainable_params"] if "dense_w1.0" in main
                  else summarize(DENSE_100)["trainable_params"])
    lines = [f"<!-- generated by benchmarks/claim_table.py on {date} -->",
             "# The paper's claim as a table: MobileViTV2-1.0, routed at <= 1/4 of its parameters, dense at the "
             "routed one's parameters", "",
             f"Fashion-MNIST, 1 channel, 10 classes, 32 px (28 px padded), strides 2,1,1,2,2,1, transformer depths "
             f"2/4/3. One recipe: the configs' training block (AdamW lr 3e-3, cosine, 0.2 warm-up epochs, weight "
             f"decay 0.01, batch 64, seed 0), {recipe['epochs']} epochs on the first {recipe['limit_train']:,} "
             f"training images; the best val epoch (5,000-image val split) is tested. Float top-1 on the test split "
             f"(images in the column); int8: `quantize --method ptq` (256 calibration images) -> `export` -> "
             f"`evaluate --host` (tflite-micro reference, bit-exact with the firmware) on the first "
             f"{recipe['int8_limit']:,} test images. Training under `nice -n 10` on a shared 2-core CPU (other jobs"
             f" ran beside it, so wall time is an upper bound; CPU s is the process's own).", "",
             "| model | config | trainable params | vs dense 1.0 | active params / patch | MACs | float top-1 % "
             "(test images) | PTQ int8 top-1 % (host float, test images) | training wall s | training CPU s | "
             "s / epoch |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in ordered(main):
        epochs = "/".join(_s(s) for s in r.get("epoch_seconds") or [])
        int8 = (f"{_p(r.get('top1_int8'))} (float {_p(r.get('top1_float_host'))} on the same "
                f"{_n(r.get('int8_examples'))})"
                if r.get("top1_int8") is not None else "-")
        lines.append(f"| {r['name']} ({r['role']}) | {r['config']} | {_n(r['trainable_params'])} | "
                     f"{r['trainable_params'] / big_params:.3f} | "
                     f"{_n(r['active_params_per_patch'])} | {_n(r['macs'])} | {_p(r['top1_float'])} "
                     f"({_n(r['test_examples'])}) | {int8} | {_s(r['train_wall_s'])} | {_s(r['train_cpu_s'])} | "
                     f"{epochs} |")
    same = next((r for r in main.values() if r.get("width_search")), None)
    if same and main.get("routed_w0.5"):
        tried = same["width_search"]
        target = main["routed_w0.5"]["trainable_params"]
        near = sorted(tried, key=lambda wp: abs(wp[1] - target))[:3]
        lines += ["", f"Same-parameters width: {same['width_multiplier']} ({_n(same['trainable_params'])} trainable "
                  f"params, {100 * (same['trainable_params'] / target - 1):+.1f}% of the routed model's "
                  f"{_n(target)}); the nearest widths tried: "
                  + ", ".join(f"{w} -> {_n(p)}" for w, p in near)
                  + " (channels round to multiples of 8, so the count moves in steps). Active params / patch:"
                  " the parameters one patch passes through (one expert per routed FFN instead of all four)."]
    groups = seed_groups(rows)
    if any(len(g) > 1 for g in groups.values()):
        all_seeds = sorted({s for g in groups.values() for s in g}, key=lambda s: -1 if s is None else s)
        lines += ["", "### Seeds (float top-1 %, same recipe, `train --seed S`; seed 0 = the config's, as above)",
                  "", "| model | " + " | ".join(f"seed {s}" for s in all_seeds) + " | mean | SD |"]
        lines.append("|---|" + "---|" * (len(all_seeds) + 2))
        for base in ordered({b: {"name": b} for b in groups}):
            g = groups[base["name"]]
            m, sd = _mean_sd(list(g.values()))
            lines.append(f"| {base['name']} | " + " | ".join(_p(g.get(s)) for s in all_seeds)
                         + f" | {_p(m)} | {'-' if sd is None else f'{100 * sd:.2f}'} |")
    lines += ["", "## What the numbers show", "", findings(rows), ""]
    text = "\n".join(lines)
    meta = {"generated_by": "benchmarks/claim_table.py", "date": date, "data": DATA, "recipe": recipe}
    write_results("claim_table", [dict(r, meta=meta) for r in ordered(rows)], text)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=Path, default=Path("/work/claim_runs/claim_table"))
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--limit-train", type=int, default=12000)
    parser.add_argument("--int8-limit", type=int, default=2000, help="test images for the host int8 evaluation")
    parser.add_argument("--no-int8", action="store_true")
    parser.add_argument("--extra-seeds", default="", help="comma-separated seeds to repeat the three models with"
                        " (float only; after the main three and their int8; dense 1.0's repeats last)")
    parser.add_argument("--only", default=None, help="comma-separated model names")
    parser.add_argument("--deadline", default=None, help="HH:MM UTC today: start no new stage after it")
    parser.add_argument("--render", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    recipe = {"epochs": args.epochs, "limit_train": args.limit_train, "int8_limit": args.int8_limit}
    if args.render:
        render(recipe)
        return 0
    deadline = None
    if args.deadline:
        hh, mm = map(int, args.deadline.split(":"))
        deadline = datetime.datetime.now(datetime.timezone.utc).replace(hour=hh, minute=mm, second=0, microsecond=0)
    extra = [int(x) for x in args.extra_seeds.split(",") if x.strip()]
    family = models(args.runs, extra)
    if args.only:
        family = [m for m in family if m["name"] in args.only.split(",")]
    # cheapest first: the routed-vs-same-dense comparison is there even if dense 1.0 runs out of time
    main3 = sorted((m for m in family if m["seed"] is None), key=lambda m: m["name"] == "dense_w1.0")
    repeats = [m for m in family if m["seed"] is not None]

    def train_all(todo):
        for m in todo:
            if m["name"] in read_rows():
                continue
            if past(deadline):
                log.info("== %s: past the deadline, not started", m["name"])
                continue
            first = read_rows().get(m["name"].split("_seed")[0])
            if deadline is not None and first and first.get("train_wall_s"):
                eta = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(
                    seconds=1.25 * first["train_wall_s"])
                if eta > deadline:
                    log.info("== %s: would end after the deadline (~%.0f s), not started", m["name"],
                             first["train_wall_s"])
                    continue
            try:
                log.info("== %s: train", m["name"])
                append_row(train_row(m, recipe))
                render(recipe)
            except RuntimeError as exc:
                log.error("== %s failed: %s", m["name"], exc)

    train_all(main3)
    if not args.no_int8:
        for m in main3:
            rows = read_rows()
            if m["name"] not in rows or rows[m["name"]].get("top1_int8") is not None:
                continue
            if past(deadline):
                log.info("== %s: past the deadline, int8 not started", m["name"])
                continue
            try:
                log.info("== %s: int8 (PTQ, export, host evaluation)", m["name"])
                append_row(dict(rows[m["name"]], **int8_fields(m, recipe)))
                render(recipe)
            except RuntimeError as exc:
                log.error("== %s int8 failed: %s", m["name"], exc)
    train_all(repeats)
    render(recipe)
    return 0


if __name__ == "__main__":
    sys.exit(main())
