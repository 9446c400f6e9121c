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
import asyncio
import hashlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

from web_load import machine, run_load  # noqa: E402


def drop_tables(url: str) -> None:
    from sqlalchemy import inspect, text

    from leukodx.web.db import make_engine

    engine = make_engine(url)
    with engine.begin() as conn:
        for name in inspect(conn).get_table_names():
            conn.execute(text(f'DROP TABLE IF EXISTS "{name}" CASCADE'))
        conn.execute(text("DROP FUNCTION IF EXISTS audit_log_append_only() CASCADE"))
    engine.dispose()


def worker_pids(pid: int) -> list[int]:
    """The serve process's children that are uvicorn workers (not multiprocessing's resource tracker)."""
    out = []
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return out
    for c in children:
        try:
            cmd = Path(f"/proc/{c}/cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if "spawn_main" in cmd:
            out.append(int(c))
    return out


def audit(url: str, files_dir: Path, sent: dict[str, bytes], refused: dict[str, bytes], case_ids: list[int]) -> dict:
    """What the database and the image folder hold after the load: `sent` the images answered 201, `refused`
    those answered otherwise (none of them may be stored)."""
    from sqlalchemy import text

    from leukodx.web.db import make_engine

    engine = make_engine(url)
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT case_id, sha256, image_file, overlay_file FROM fields")).all()
        cases = conn.execute(text(
            "SELECT c.id, c.n_fields, (SELECT count(*) FROM fields f WHERE f.case_id = c.id) FROM cases c")).all()
        adds = conn.execute(text("SELECT count(*) FROM audit_log WHERE action = 'field.add'")).scalar()
    engine.dispose()
    shas = [r.sha256 for r in rows]
    want = {hashlib.sha256(d).hexdigest() for d in sent.values()}
    not_wanted = {hashlib.sha256(d).hexdigest() for d in refused.values()}
    files = [n for r in rows for n in (r.image_file, r.overlay_file) if n]
    bad_files = [n for n in files if not (files_dir / n).is_file()
                 or hashlib.sha256((files_dir / n).read_bytes()).hexdigest() != n.split(".")[0]]
    return {
        "fields_in_database": len(rows),
        "distinct_images": len(set(shas)),
        "lost_fields": len(want - set(shas)),
        "duplicated_fields": len(shas) - len(set(shas)),
        "unexpected_fields": len(set(shas) - want - not_wanted),
        "refused_but_stored": len(set(shas) & not_wanted),
        "cases_whose_summary_miscounts": sum(1 for _, n, real in cases if n != real),
        "fields_outside_the_test_cases": sum(1 for r in rows if r.case_id not in case_ids),
        "audit_field_add_entries": adds,
        "files_missing_or_damaged": len(bad_files),
    }


def run(url: str, workers: int = 1, n: int = 200, concurrency: int = 8, n_cases: int = 10, fake: bool = True,
        size: int = 224, delay_ms: float = 0.0, env: dict[str, str] | None = None) -> dict:
    """`url`: a PostgreSQL URL of a scratch database, or "sqlite" for a new SQLite file in a temporary folder."""
    import httpx

    from leukodx.web.auth import create_token
    from leukodx.web.db import describe_url, open_database
    from leukodx.web.settings import database_url_for
    from webtools import TESTS, field_bytes

    tmp = Path(tempfile.mkdtemp(prefix="leukodx-caseload-"))
    if url == "sqlite":
        url = database_url_for(tmp / "load.db")
    else:
        drop_tables(url)
    files_dir = tmp / "files"
    engine, sessions = open_database(url)
    with sessions() as s:
        _, token = create_token(s, "load-test", "clinician")
        s.commit()
    engine.dispose()
    labels = ("Benign", "Early", "Pre", "Pro")
    images = [(f"field-{i:03d}.jpg", field_bytes(labels[i % 4], 1000 + i, size=size)) for i in range(n)]
    assert len({hashlib.sha256(d).digest() for _, d in images}) == n, "the test images must all differ"
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    cmd = [sys.executable, "-m", "leukodx", "serve", "--db", url, "--files-dir",
           str(files_dir), "--port", str(port), "--log-level", "warning"]
    if workers > 1:
        cmd += ["--workers", str(workers)]
    if fake:
        cmd += ["--analyzer", "webtools:FakeAnalyzer"]
    log = open(tmp / "serve.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                            env={**os.environ, "LEUKODX_ADMIN_PASSWORD": "load-test-admin",
                                 "LEUKODX_FAKE_DELAY_S": str(delay_ms / 1000), **(env or {}),
                                 "PYTHONPATH": os.pathsep.join(filter(None, (str(TESTS), os.environ.get("PYTHONPATH"))))})
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 180
        while True:
            if proc.poll() is not None:
                raise RuntimeError("leukodx serve exited: " + (tmp / "serve.log").read_text()[-2000:])
            try:
                if httpx.get(base + "/readyz", timeout=2).status_code == 200 and (
                        workers == 1 or len(worker_pids(proc.pid)) == workers):
                    break
            except httpx.HTTPError:
                pass
            if time.time() > deadline:
                raise RuntimeError("leukodx serve did not become ready")
            time.sleep(0.3)
        pids = worker_pids(proc.pid) if workers > 1 else [proc.pid]
        headers = {"Authorization": f"Bearer {token}"}
        case_ids = [httpx.post(base + "/api/v1/cases", headers=headers, json={"reference": f"CASE-LOAD-{k}"}).json()["id"]
                    for k in range(n_cases)]
        paths = [f"/api/v1/cases/{c}/images" for c in case_ids]
        load = asyncio.run(run_load(base, token, images, n=n, concurrency=concurrency, path=paths))
        still_alive = [p for p in pids if Path(f"/proc/{p}").exists()]
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
    accepted = set(load.pop("accepted"))
    found = audit(url, files_dir, {name: d for i, (name, d) in enumerate(images) if i in accepted},
                  {name: d for i, (name, d) in enumerate(images) if i not in accepted}, case_ids)
    n_ok = len(accepted)
    return {
        "what": f"{n} single-field uploads into {n_cases} case(s) at concurrency {concurrency}, leukodx serve "
                f"{f'--workers {workers} ' if workers > 1 else ''}on {'SQLite' if url.startswith('sqlite') else 'PostgreSQL'}, "
                "then an audit of the database and the image folder",
        "analyzer": (f"FAKE, {delay_ms:g} ms an analysis (web layer, store and database; not the models)" if fake
                     else "bundled models"),
        "database": describe_url(url), "images": f"{n} different synthetic {size}x{size} JPEG fields",
        "machine": machine(), "worker_pids": pids, "workers_alive_at_end": len(still_alive),
        "load": load, "accepted_201": n_ok, "audit": found,
        "ok": load["n_errors"] == 0 and found["lost_fields"] == 0 and found["duplicated_fields"] == 0
        and found["refused_but_stored"] == 0 and found["unexpected_fields"] == 0
        and found["fields_in_database"] == n_ok and found["cases_whose_summary_miscounts"] == 0
        and found["files_missing_or_damaged"] == 0 and found["audit_field_add_entries"] == n_ok
        and load["latency_ms"]["max"] < 30_000 and len(still_alive) == len(pids),
    }


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
