"""Small file helpers shared by every layer (no heavy imports)."""

from __future__ import annotations

import json
from pathlib import Path


def write_json(obj, path: str | Path) -> Path:
    """Write `obj` as indented JSON atomically (a temporary file, then a rename); parents are created."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=str))
    tmp.replace(path)
    return path
