"""Per-stage p50 of `Analysis.analyze`, one field at a time, for comparing two checkouts in one session (run it
alternately from each, e.g. `PYTHONPATH=OLD/src python benchmarks/stage_times.py ...`, so that load from other
processes hits both alike):

    python benchmarks/stage_times.py --list FIELDS.txt [--n 100] [--engine onnx] [--threads 2]
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--list", type=Path, required=True, help="a text file, one field path a line")
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--engine", default="onnx")
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args(argv)
    import leukodx
    from leukodx.inference.pipeline import load_analyzer

    paths = [ln.strip() for ln in a.list.read_text().splitlines() if ln.strip()][:a.n]
    data = [Path(p).read_bytes() for p in paths]
    an = load_analyzer(threads=a.threads, engine=a.engine)
    for d in data[:5]:
        an.analyze(d)
    stages: dict[str, list[float]] = {}
    total = []
    print("leukodx from", Path(leukodx.__file__).parent, "load at start", os.getloadavg())
    for d in data:
        t0 = time.perf_counter()
        r = an.analyze(d)
        total.append((time.perf_counter() - t0) * 1000)
        for k, v in r.timings_ms.items():
            stages.setdefault(k, []).append(v)
    print(f"analysis p50 {np.median(total):.2f} ms", {k: round(float(np.median(v)), 2) for k, v in stages.items()})
    print("load at end", os.getloadavg())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
