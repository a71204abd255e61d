"""Reading the JSON manifest each stage leaves in its output folder (metrics.json, quant.json,
plan.json, project.json, tree.json): parsed and of the expected format, or one clear line."""
import json
from pathlib import Path

from toolchain.errors import RoutevitError


def read_manifest(path: Path, redo: str, fmt: str | None = None) -> dict:
    """The JSON object at `path`; `redo` tells the user how to make a good one again."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise RoutevitError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno}); {redo}") from None
    if not isinstance(data, dict):
        raise RoutevitError(f"{path}: not a JSON object; {redo}")
    if fmt is not None and data.get("format") != fmt:
        raise RoutevitError(f"{path}: format {data.get('format')!r} is not {fmt!r}; {redo}")
    return data
