"""Load benchmark of the web application: upload-to-result latency on loopback.

Starts `leukodx serve` (bundled models, or the fake analyzer with --fake) in a child process on 127.0.0.1,
then sends N single-field requests at each given concurrency (default 1, 8 and 32) and records p50/p95/p99 latency (from the first
byte sent to the whole answer received), throughput, status codes and the machine into a JSON file.

Scenarios: `analyze` = POST /api/v1/analyze (no storing, no heat map);
           `case-upload` = POST /api/v1/cases/{id}/images (analysis + outline overlay + storing; the heat map is
           computed when first viewed, unless serve runs with --heatmap-on-upload).

    .venv/bin/python benchmarks/web_load.py --out benchmarks/web_load.json            # bundled models
    .venv/bin/python benchmarks/web_load.py --fake --n 200 --out /tmp/fake.json       # the web layer alone
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # webtools, loadtools: the test support (fake analyzer, serve, load)
REAL = ROOT.parent / "shared" / "data" / "all-taleqani" / "Original"

from loadtools import machine, run_load  # noqa: E402


def field_images(n: int = 16) -> tuple[list[tuple[str, bytes]], str]:
    """`n` different fields: real Taleqani fields when ../shared holds them (spread evenly over the four classes'
    sorted file lists), else synthetic 224 px fields. Every request of a run sends a different image when n is
    the run's request count (a case upload of an image already in the case is skipped, not analysed)."""
    if REAL.is_dir():
        per = [sorted((REAL / label).glob("*.jpg")) for label in ("Benign", "Early", "Pre", "Pro")]
        out = []
        for k, paths in enumerate(per):
            m = n // 4 + (1 if k < n % 4 else 0)
            step = max(1, len(paths) // max(1, m))
            out += [(p.name, p.read_bytes()) for p in paths[::step][:m]]
        if len(out) == n:
            return out, f"{n} different all-taleqani Original fields (224x224 JPEG), spread over the 4 classes"
    from webtools import field_bytes

    labels = ("Benign", "Early", "Pre", "Pro")
    return ([(f"synthetic-{i}.jpg", field_bytes(labels[i % 4], i, size=224)) for i in range(n)],
            f"{n} different synthetic 224x224 JPEG fields")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=200, help="requests per scenario")
    ap.add_argument("--concurrency", default="1,8,32", help="comma-separated concurrencies, each a run of --n")
    ap.add_argument("--fake", action="store_true", help="the fake analyzer (measures the web layer only)")
    ap.add_argument("--scenarios", default="analyze,case-upload")
    ap.add_argument("--warmup", type=int, default=8)
    ap.add_argument("--serve-args", default="", help="extra `leukodx serve` flags, e.g. '--workers 1'")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "web_load.json"))
    args = ap.parse_args()

    import httpx

    from leukodx.web.auth import create_token
    from leukodx.web.db import open_database
    from leukodx.web.settings import database_url_for
    from webtools import ServeProcess

    tmp = Path(tempfile.mkdtemp(prefix="leukodx-load-"))
    db = tmp / "load.db"
    _, sessions = open_database(database_url_for(db))
    with sessions() as s:
        _, token = create_token(s, "load-test", "clinician")
        s.commit()
    files, source = field_images(args.n)
    result = {"what": "upload-to-result latency of one field per request, loopback, leukodx serve",
              "analyzer": "FAKE (web layer only)" if args.fake else "bundled models", "images": source,
              "machine": machine(), "serve_args": args.serve_args, "scenarios": {}}
    with ServeProcess(db, fake=args.fake, extra=args.serve_args.split()) as url:
        ready = httpx.get(url + "/readyz").json()
        result["models"] = ready.get("models")
        auth = {"Authorization": f"Bearer {token}"}

        def targets(name: str, tag: str) -> str | list[str]:
            """analyze: one path; case uploads: 10 new cases in turn (so that no image is already in its case)."""
            if name == "analyze":
                return "/api/v1/analyze"
            ids = [httpx.post(url + "/api/v1/cases", headers=auth, json={"reference": f"LOAD-{tag}-{k}"}).json()["id"]
                   for k in range(10)]
            return [f"/api/v1/cases/{c}/images" for c in ids]

        for name in args.scenarios.split(","):
            asyncio.run(run_load(url, token, files, args.warmup, 2, targets(name, "warmup")))  # not recorded
            runs = {}
            for c in [int(x) for x in args.concurrency.split(",")]:
                r = asyncio.run(run_load(url, token, files, args.n, c, targets(name, f"c{c}")))
                r.pop("accepted")
                runs[str(c)] = r
                print(f"{name}: n={r['n']} c={c} p50={r['latency_ms']['p50']} ms p95={r['latency_ms']['p95']} ms "
                      f"p99={r['latency_ms']['p99']} ms errors={r['n_errors']} busy={r['n_busy_503_with_retry_after']} "
                      f"{r['throughput_per_s']}/s", flush=True)
            result["scenarios"][name] = runs
    result["target"] = {"p95_ms_at_or_below": 300, "at_concurrency": 8, "scenario": "analyze", "errors": 0}
    result["command"] = "    .venv/bin/python benchmarks/web_load.py " + " ".join(sys.argv[1:])
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    md = Path(args.out).with_suffix(".md")
    md.write_text(markdown(result, Path(args.out).name))
    print(f"wrote {args.out} and {md}")


def markdown(result: dict, json_name: str) -> str:
    m = result["machine"]
    lines = [
        f"# Web load benchmark ({result['analyzer']})", "",
        f"Upload-to-result latency of ONE field per request on loopback (`leukodx serve`), measured by "
        f"`benchmarks/web_load.py`; raw numbers in `{json_name}`.", "",
        f"- machine: {m.get('cpu')}, {m.get('cores_usable')} usable cores, load average (1, 5, 15 min) at start "
        f"{m.get('load_average_at_start')}, Python {m.get('python')}, "
        f"onnxruntime {m.get('onnxruntime')}",
        f"- images: {result['images']}; serve flags: `{result.get('serve_args') or '(defaults)'}`",
        "- `analyze`: POST /api/v1/analyze (nothing stored, no heat map); `case-upload`: POST "
        "/api/v1/cases/{id}/images (analysis + outline overlay + stored in one transaction; heat maps are made on "
        "first view unless serve has --heatmap-on-upload)", "",
        "| scenario | requests | concurrency | errors | busy (503 + Retry-After) | p50 ms | p95 ms | p99 ms | max ms | "
        "throughput /s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, runs in result["scenarios"].items():
        for c, r in runs.items():
            lat = r["latency_ms"]
            lines.append(f"| {name} | {r['n']} | {c} | {r['n_errors']} | {r.get('n_busy_503_with_retry_after', 0)} | "
                         f"{lat['p50']} | {lat['p95']} | {lat['p99']} | {lat['max']} | {r['throughput_per_s']} |")
    target = result.get("target", {}).get("p95_ms_at_or_below")
    if target:
        lines += ["", f"Target: p95 <= {target} ms for one field under the load test."]
    if result.get("command"):
        lines += ["", "Command:", "", result["command"]]
    if result.get("models"):
        lines += ["", "Models: `" + json.dumps(result["models"])[:600] + "`"]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
