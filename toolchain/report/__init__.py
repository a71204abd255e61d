"""Evaluation reports: JSON + markdown + PNG (accuracy, agreement, cost, memory, routing).

Example:
    >>> from toolchain.report import write_report
    >>> report = write_report(record, Path("reports/qemu-an386"))   # record: see writer.py
    >>> report["agreement_device_vs_host"]["bit_exact_rate"]
    1.0
"""
from toolchain.report.writer import build_report, render_markdown, write_report

__all__ = ["build_report", "render_markdown", "write_report"]
