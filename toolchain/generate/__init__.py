"""Firmware project generator: jinja2 templates -> TFLM C++ project + memory report."""
