"""Load test of uploads into cases (`POST /api/v1/cases/{id}/images`), then an audit of the database and files.

Starts `leukodx serve` on 127.0.0.1 over SQLite (one process) or PostgreSQL (`--workers N` processes), with the
fake analyzer by default (it measures the web layer, the store and the database, not the models; `--delay-ms`
makes each fake analysis take that long, like the real models) or the bundled models (`--real-models`). It sends
N single-field uploads (each a different image) into `--cases` cases at a fixed concurrency, then checks in the
database and the image folder that every upload answered 201 is there exactly once with its image: no error, no
lost field, no duplicated field, no field stored for an upload that was refused, every case's summary counting
its fields, every stored file present with its sha256, no request over 30 s. A 503 with Retry-After (the
server's bounded analysis queue is full) is allowed and counted; any other answer >= 400 is an error. The
PostgreSQL database must be a scratch database: its tables are dropped.

    .venv/bin/python benchmarks/web_load_cases.py --db sqlite --n 64 --concurrency 32 --out benchmarks/web_load_cases_sqlite.json
    .venv/bin/python benchmarks/web_load_cases.py --db "$LEUKODX_TEST_POSTGRES_URL" --workers 2 --n 64 \
        --concurrency 32 --out benchmarks/web_load_cases_postgres.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # loadtools: the load test and the audit, shared with the tests

from loadtools import run  # noqa: E402


def markdown(r: dict, command: str) -> str:
    m, lat, a = r["machine"], r["load"]["latency_ms"], r["audit"]
    pg = m.get("postgresql", "")
    return "\n".join([
        "# Uploads into cases under load", "",
        f"{r['what']}. Analyzer: {r['analyzer']}. Database: {r['database']}{f' ({pg})' if pg else ''}; "
        f"images: {r['images']}.", "",
        f"- machine: {m.get('cpu')}, {m.get('cores_logical')} logical cores, load average (1, 5, 15 min) at start "
        f"{[round(x, 2) for x in m.get('load_average_at_start') or []]}, Python {m.get('python')}",
        f"- server processes: {len(r['worker_pids'])}, alive at the end: {r['workers_alive_at_end']}",
        "", "Command:", "", "    " + command, "",
        "| requests | concurrency | 201 | busy (503 + Retry-After) | errors | status codes | p50 ms | p95 ms | p99 ms | "
        "max ms | throughput /s |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
        f"| {r['load']['n']} | {r['load']['concurrency']} | {r['accepted_201']} | "
        f"{r['load']['n_busy_503_with_retry_after']} | {r['load']['n_errors']} | {r['load']['status_counts']} | "
        f"{lat['p50']} | {lat['p95']} | {lat['p99']} | {lat['max']} | {r['load']['throughput_per_s']} |",
        "", "Audit after the load (database and image folder):", "",
        "| fields in database | lost | duplicated | unexpected | refused but stored | cases miscounting | "
        "files missing or damaged | field.add audit entries |",
        "|---|---|---|---|---|---|---|---|",
        f"| {a['fields_in_database']} | {a['lost_fields']} | {a['duplicated_fields']} | {a['unexpected_fields']} | "
        f"{a['refused_but_stored']} | {a['cases_whose_summary_miscounts']} | {a['files_missing_or_damaged']} | "
        f"{a['audit_field_add_entries']} |",
        "", f"Result: **{'PASS' if r['ok'] else 'FAIL'}** (no error but 503 with Retry-After, no request over 30 s, "
        "every 201 field stored once with its image, nothing refused stored).", "",
    ])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--db", default=os.environ.get("LEUKODX_TEST_POSTGRES_URL", "sqlite"),
                    help="'sqlite' (a new file), or a SCRATCH PostgreSQL database URL (its tables are dropped) "
                         "[$LEUKODX_TEST_POSTGRES_URL, else sqlite]")
    ap.add_argument("--workers", type=int, default=1, help="server processes (PostgreSQL only)")
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--cases", type=int, default=10, help="the uploads go to this many cases in turn")
    ap.add_argument("--delay-ms", type=float, default=0.0, help="how long each fake analysis takes")
    ap.add_argument("--real-models", action="store_true", help="the bundled models instead of the fake analyzer")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "web_load_cases.json"))
    args = ap.parse_args()
    if args.db != "sqlite" and not args.db.startswith("postgres"):
        ap.error("--db must be 'sqlite' or a PostgreSQL URL of a scratch database")
    if args.db == "sqlite" and args.workers != 1:
        ap.error("--workers N needs PostgreSQL (SQLite is served by one process)")
    r = run(args.db, args.workers, args.n, args.concurrency, n_cases=args.cases, fake=not args.real_models,
            delay_ms=args.delay_ms)
    if args.db != "sqlite":
        try:
            r["machine"]["postgresql"] = subprocess.run(["psql", "--version"], capture_output=True,
                                                        text=True).stdout.strip()
        except OSError:
            pass
    from sqlalchemy.engine import make_url

    shown = "sqlite" if args.db == "sqlite" else make_url(args.db).render_as_string(hide_password=True)
    command = (f".venv/bin/python benchmarks/web_load_cases.py --db {shown} --workers {args.workers} --n {args.n} "
               f"--concurrency {args.concurrency} --cases {args.cases}"
               f"{f' --delay-ms {args.delay_ms:g}' if args.delay_ms else ''}{' --real-models' if args.real_models else ''}")
    out = Path(args.out)
    out.write_text(json.dumps({**r, "command": command}, indent=2))
    out.with_suffix(".md").write_text(markdown(r, command))
    lat = r["load"]["latency_ms"]
    print(f"{'PASS' if r['ok'] else 'FAIL'}: {r['load']['n']} uploads, 201 {r['accepted_201']}, busy "
          f"{r['load']['n_busy_503_with_retry_after']}, errors {r['load']['n_errors']}, p50 {lat['p50']} ms, "
          f"p95 {lat['p95']} ms, max {lat['max']} ms; audit {r['audit']}; wrote {out} and {out.with_suffix('.md')}")
    sys.exit(0 if r["ok"] else 1)


if __name__ == "__main__":
    main()
