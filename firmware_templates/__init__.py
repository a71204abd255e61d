"""jinja2 templates of the generated TFLM C++ project (package data only)."""
from pathlib import Path

TEMPLATES_DIR = Path(__file__).resolve().parent
