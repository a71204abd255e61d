"""PNG figures of a report (matplotlib, Agg backend: no display needed)."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.colors import ListedColormap  # noqa: E402
from matplotlib.patches import Patch, Rectangle  # noqa: E402

_DPI = 110
# Distinguishable colours for up to 10 experts (tab10); dropped patches are drawn hatched grey.
_EXPERT_COLOURS = plt.get_cmap("tab10").colors


def _save(fig, path: Path) -> str:
    fig.savefig(path, dpi=_DPI, bbox_inches="tight", metadata={"Software": None})
    plt.close(fig)
    return path.name


def accuracy_figure(path: Path, accuracies: dict[str, float | None], instructions: list[int] | None,
                    counter_label: str, clock_hz: float | None) -> str:
    """Top-1 per source (device / host int8 / float) and the per-image counter histogram."""
    has_counts = instructions is not None and len(instructions) > 0
    panels = 2 if has_counts else 1
    fig, axes = plt.subplots(1, panels, figsize=(5.2 * panels, 3.6), squeeze=False)
    ax = axes[0][0]
    names = [k for k, v in accuracies.items() if v is not None]
    values = [100.0 * accuracies[k] for k in names]
    bars = ax.bar(names, values, color=["#4c72b0", "#dd8452", "#55a868", "#8172b3"][:len(names)])
    for bar, value in zip(bars, values):
        ax.text(bar.get_x() + bar.get_width() / 2, value + 1, f"{value:.1f}%", ha="center", fontsize=9)
    ax.set_ylim(0, 110)
    ax.set_ylabel("top-1 accuracy (%)")
    ax.set_title("Top-1 accuracy")
    if has_counts:
        ax = axes[0][1]
        counts = np.asarray(instructions, dtype=np.float64)
        scale, unit = (1e6, "M") if counts.max() >= 1e6 else (1e3, "k")
        if counts.min() == counts.max():
            ax.bar([f"{int(counts[0]):,}"], [len(counts)], width=0.4, color="#4c72b0")
            ax.set_xlabel(f"{counter_label} per inference (identical for every image)")
        else:
            ax.hist(counts, bins=min(30, max(5, len(counts) // 4)), color="#4c72b0")
            ax.ticklabel_format(axis="x", style="plain", useOffset=False)
            ax.xaxis.set_major_formatter(matplotlib.ticker.StrMethodFormatter("{x:,.0f}"))
            ax.tick_params(axis="x", labelrotation=20)
            ax.set_xlabel(f"{counter_label} per inference")
        ax.set_ylabel("images")
        title = f"mean {counts.mean() / scale:.3f} {unit}"
        if clock_hz:
            title += f"  (~{1000.0 * counts.mean() / clock_hz:.1f} ms at {clock_hz / 1e6:g} MHz)"
        ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def confusion_figure(path: Path, matrix: np.ndarray, class_names: list[str], title: str) -> str:
    k = matrix.shape[0]
    size = max(4.5, 0.45 * k + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(matrix, cmap="Blues")
    labels = [n[:14] for n in class_names] if class_names else [str(i) for i in range(k)]
    if k <= 30:
        ax.set_xticks(range(k), labels, rotation=60, ha="right", fontsize=8)
        ax.set_yticks(range(k), labels, fontsize=8)
        threshold = matrix.max() / 2 if matrix.size else 0
        for i in range(k):
            for j in range(k):
                if matrix[i, j]:
                    ax.text(j, i, str(matrix[i, j]), ha="center", va="center", fontsize=7,
                            color="white" if matrix[i, j] > threshold else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    fig.tight_layout()
    return _save(fig, path)


def experts_figure(path: Path, totals: list[list[int]], layer_names: list[str], capacity_totals: list[int],
                   num_images: int) -> str:
    """Patches processed per expert, per routed layer, summed over the images."""
    layers = len(totals)
    fig, axes = plt.subplots(1, layers, figsize=(max(3.6, 3.4 * layers), 3.4), squeeze=False)
    for idx, counts in enumerate(totals):
        ax = axes[0][idx]
        experts = len(counts)
        ax.bar(range(experts), counts, color=[_EXPERT_COLOURS[e % 10] for e in range(experts)])
        if capacity_totals and capacity_totals[idx]:
            ax.axhline(capacity_totals[idx], color="black", ls="--", lw=1, label="capacity")
            ax.legend(fontsize=8, loc="lower right")
        ax.set_xticks(range(experts), [f"e{e}" for e in range(experts)])
        ax.set_title(layer_names[idx] if idx < len(layer_names) else f"routed layer {idx}", fontsize=9)
        ax.set_ylabel(f"patches ({num_images} images)")
    fig.suptitle("Patches per expert", fontsize=11)
    fig.tight_layout()
    return _save(fig, path)


def routing_map_figure(path: Path, maps: list[dict], layer_names: list[str], num_experts: list[int],
                       class_names: list[str]) -> str:
    """For each image: the image, then per routed layer the expert of each patch over it.

    `maps`: [{"image": HxWxC uint8, "label": int, "prediction": int | None,
              "layers": [{"grid": [rows, cols], "assignment": [N] (expert or -1), "source": str}]}]
    """
    rows = len(maps)
    layers = max(len(m["layers"]) for m in maps)
    fig, axes = plt.subplots(rows, layers + 1, figsize=(2.4 * (layers + 1), 3.0 * rows + 0.6),
                             squeeze=False)
    for r, entry in enumerate(maps):
        image = np.asarray(entry["image"])
        shown = image[..., 0] if image.ndim == 3 and image.shape[-1] == 1 else image
        cmap = "gray" if shown.ndim == 2 else None
        h, w = shown.shape[:2]
        ax = axes[r][0]
        ax.imshow(shown, cmap=cmap, extent=(0, w, h, 0))
        title = class_names[entry["label"]] if class_names and entry.get("label") is not None else ""
        if entry.get("prediction") is not None and class_names:
            title += f"\npred: {class_names[entry['prediction']]}"
        ax.set_title(title, fontsize=8)
        ax.axis("off")
        for c in range(layers):
            ax = axes[r][c + 1]
            ax.axis("off")
            if c >= len(entry["layers"]):
                continue
            layer = entry["layers"][c]
            grid_rows, grid_cols = layer["grid"]
            assignment = np.asarray(layer["assignment"], dtype=np.int64).reshape(grid_rows, grid_cols)
            ax.imshow(shown, cmap=cmap, extent=(0, w, h, 0))
            cell_h, cell_w = h / grid_rows, w / grid_cols
            for gy in range(grid_rows):
                for gx in range(grid_cols):
                    expert = assignment[gy, gx]
                    xy = (gx * cell_w, gy * cell_h)
                    if expert < 0:
                        ax.add_patch(Rectangle(xy, cell_w, cell_h, facecolor=(0.2, 0.2, 0.2, 0.55),
                                               hatch="xx", edgecolor="white", lw=0.3))
                    else:
                        ax.add_patch(Rectangle(xy, cell_w, cell_h, facecolor=(*_EXPERT_COLOURS[expert % 10], 0.5),
                                               edgecolor="white", lw=0.3))
                        if grid_rows * grid_cols <= 64:
                            ax.text(xy[0] + cell_w / 2, xy[1] + cell_h / 2, str(expert), ha="center",
                                    va="center", fontsize=6, color="white")
            ax.set_xlim(0, w)
            ax.set_ylim(h, 0)
            if r == 0:
                name = layer_names[c] if c < len(layer_names) else f"routed layer {c}"
                ax.set_title(f"{name}\n{grid_rows}x{grid_cols} patches ({layer.get('source', '')})", fontsize=8)
    experts = max(num_experts) if num_experts else 0
    handles = [Patch(facecolor=_EXPERT_COLOURS[e % 10], alpha=0.6, label=f"expert {e}") for e in range(experts)]
    handles.append(Patch(facecolor=(0.2, 0.2, 0.2, 0.55), hatch="xx", label="dropped (over capacity)"))
    fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 6), fontsize=8, frameon=False)
    fig.suptitle("Routing map: the expert each patch went to", fontsize=11)
    fig.tight_layout(rect=(0, 0.06, 1, 0.97))
    return _save(fig, path)


def profile_figure(path: Path, by_op: list[dict], by_layer: list[dict], counter_label: str,
                   top_layers: int = 20) -> str:
    """Where the instructions go: horizontal bars per op type and per layer (largest first),
    labelled with each bar's share and, for MAC ops, instructions per MAC."""
    layers = by_layer[:top_layers]
    fig, axes = plt.subplots(1, 2, figsize=(13, max(3.5, 0.3 * max(len(by_op), len(layers)) + 1.2)))
    for ax, groups, key, title in ((axes[0], by_op, "op", "per op type"),
                                   (axes[1], layers, "layer", f"per layer (top {len(layers)})")):
        names = [g[key] for g in groups][::-1]
        values = [g["instructions"] for g in groups][::-1]
        colours = ["tab:blue" if g["macs"] else ("tab:gray" if g.get("stage") == "glue" or str(g[key]).startswith("(")
                                                  else "tab:orange") for g in groups][::-1]
        ax.barh(range(len(values)), values, color=colours)
        ax.set_yticks(range(len(values)), names, fontsize=8)
        for y, g in enumerate(groups[::-1]):
            label = f" {100 * (g['share'] or 0):.1f}%"
            if g.get("instructions_per_mac"):
                label += f", {g['instructions_per_mac']:.2f}/MAC"
            ax.text(g["instructions"], y, label, va="center", fontsize=7)
        ax.set_xlabel(counter_label)
        ax.set_title(title, fontsize=10)
        ax.xaxis.set_major_formatter(matplotlib.ticker.EngFormatter())
        ax.margins(x=0.25)
    fig.legend(handles=[Patch(color="tab:blue", label="ops with MACs"), Patch(color="tab:orange", label="other ops"),
                        Patch(color="tab:gray", label="between ops")], loc="lower right", fontsize=8)
    fig.suptitle(f"Where the {counter_label} go (one inference)", fontsize=11)
    fig.tight_layout()
    return _save(fig, path)
