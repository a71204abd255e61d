"""Flash/RAM budget of a generated project against the board's memory regions.

Figures are exact where the generator decides them (weights, arena, staging, routing and
protocol buffers, stack) and estimates where the compiler does (code size: TFLM runtime plus
one kernel per op); the estimate is stated as such in the report. `routevit build` prints the
linker's real figures.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from toolchain.boards import Board

# Code size estimates (bytes, -O2 Thumb-2), calibrated on the linker's figures of 30 builds of
# 18-20-op models with the default CMSIS-NN kernels (M4/M7/M55; 181,600-201,972 B of code and
# read-only data besides the weights): the estimate errs high, by at most ~10% (M55 builds are
# the smallest). It was 48 KB of runtime, which undercounted those builds by 17-27%.
CODE_RUNTIME_BYTES = 92 * 1024
CODE_PER_OP_BYTES = 4 * 1024
# CONV_2D and DEPTHWISE_CONV_2D include routevit's pointwise/3x3 paths (conv1x1_kernel.cc,
# depthwise3x3_kernel.cc, conv_int8.cc: about 1.5 KB each beside TFLM's kernel they wrap).
CODE_LARGE_OPS = {"CONV_2D": 12 * 1024, "DEPTHWISE_CONV_2D": 12 * 1024, "FULLY_CONNECTED": 6 * 1024,
                  "SOFTMAX": 6 * 1024, "BATCH_MATMUL": 8 * 1024}
# startup, UART, counter, protocol, routing, glue, libc pieces, and routevit's own kernels (their
# ADD/MUL/RELU loops and tables added ~2 KB: 14 KB keeps the F746 build, the tightest, covered)
CODE_ROUTEVIT_BYTES = 14 * 1024


@dataclass
class Consumer:
    name: str
    bytes: int
    region: str
    estimate: bool = False


@dataclass
class MemoryBudget:
    board: Board
    consumers: list[Consumer] = field(default_factory=list)

    def add(self, name: str, nbytes: int, region: str, estimate: bool = False) -> None:
        self.consumers.append(Consumer(name, int(nbytes), region, estimate))

    def used(self, region: str) -> int:
        return sum(c.bytes for c in self.consumers if c.region == region)

    def regions(self) -> list[dict]:
        out = []
        for r in self.board.regions:
            used = self.used(r.name)
            items = sorted((c for c in self.consumers if c.region == r.name), key=lambda c: (-c.bytes, c.name))
            out.append({"region": r.name, "what": r.what, "origin": r.origin, "size": r.size, "used": used,
                        "free": r.size - used, "fits": used <= r.size,
                        "consumers": [{"name": c.name, "bytes": c.bytes, "estimate": c.estimate} for c in items]})
        return out

    def overflow_message(self) -> str | None:
        """None if everything fits; else one line naming the numbers and biggest consumers."""
        parts = []
        for r in self.regions():
            if r["fits"]:
                continue
            biggest = ", ".join(f"{c['name']} {c['bytes']:,} B" for c in r["consumers"][:3])
            parts.append(f"{r['region']} needs {r['used']:,} B of {r['size']:,} B "
                         f"({r['used'] - r['size']:,} B over; biggest: {biggest})")
        if not parts:
            return None
        return "; ".join(parts)


def code_estimate(ops: list[str]) -> int:
    return CODE_RUNTIME_BYTES + CODE_ROUTEVIT_BYTES + sum(CODE_LARGE_OPS.get(op, CODE_PER_OP_BYTES) for op in ops)


def report_json(budget: MemoryBudget, header: str, details: dict) -> dict:
    return {"generated_by": header, "board": budget.board.id, "regions": budget.regions(), **details}


def report_markdown(budget: MemoryBudget, header_lines: list[str], details: dict) -> str:
    lines = [f"<!-- {ln} -->" for ln in header_lines]
    lines += ["", f"# Memory report: {budget.board.id}", "",
              f"{budget.board.title}; core {budget.board.core}. Sizes in bytes; `~` marks an estimate "
              "(code size is decided by the compiler: see `routevit build` for the linker's figures).", ""]
    for r in budget.regions():
        pct = 100.0 * r["used"] / r["size"] if r["size"] else 0.0
        status = "fits" if r["fits"] else "DOES NOT FIT"
        lines += [f"## {r['region']} ({r['what']}, origin 0x{r['origin']:08X})", "",
                  f"{r['used']:,} of {r['size']:,} bytes used ({pct:.1f}%), {r['free']:,} free: {status}.", ""]
        if r["consumers"]:
            lines += ["| consumer | bytes |", "|---|---:|"]
            lines += [f"| {c['name']} | {'~' if c['estimate'] else ''}{c['bytes']:,} |" for c in r["consumers"]]
            lines.append("")
    arena = details["arena"]
    lines += ["## Tensor arena", "",
              f"- measured on the host: {arena['measured_bytes']:,} bytes ({arena['basis']})",
              f"- routevit's own kernels (tables, op data): {arena.get('own_kernel_bytes', 0):,} bytes",
              f"- margin: {arena['margin_pct']:g}% -> arena {arena['bytes']:,} bytes",
              f"- residency: {arena.get('residency', 'resident')}"
              + (" (one segment prepared at a time, each prepared again on every inference)"
                 if arena.get("residency") == "swapped" else " (every segment stays prepared)"),
              f"- memory plan: {arena.get('memory_plan', 'tflm')}; each segment's non-persistent head, "
              "TFLM's plan of the exported file -> as embedded: "
              + ", ".join(f"{s['nonpersistent_bytes']:,} -> {s['device_nonpersistent_bytes']:,}"
                          for s in details.get("segments", [])
                          if s.get("nonpersistent_bytes") is not None and s.get("device_nonpersistent_bytes") is not None),
              "- the host measurement runs on a 64-bit host, whose persistent TFLM structures are larger "
              "than on the 32-bit target, so it errs on the safe side", ""]
    if details.get("routed_layers"):
        lines += ["## Routed layers", "", "| layer | N | E | C | k | P | d | expert buffer [C,P,d] |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|"]
        for layer in details["routed_layers"]:
            lines.append(f"| {layer['name']} | {layer['num_patches']} | {layer['num_experts']} | {layer['capacity']} | "
                         f"{layer['top_k']} | {layer['patch_area']} | {layer['dim']} | {layer['expert_buffer_bytes']:,} |")
        lines.append("")
    return "\n".join(lines)
