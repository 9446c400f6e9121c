"""Load test of `leukodx serve --workers N` on PostgreSQL: uploads into cases, then an audit of the database.

Starts `leukodx serve --workers 2 --db URL` (the fake analyzer by default: this measures the web layer, the
store and the database, not the models) on 127.0.0.1, sends N single-field uploads (each a different image)
into 10 cases at a fixed concurrency, then checks in the database and the image folder that every upload is
there exactly once: no error, no lost field, no duplicated field, every case's summary counting its fields,
every stored file present with its sha256. The database must be a scratch database: its tables are dropped.

    .venv/bin/python benchmarks/web_load_postgres.py --db postgresql://postgres@127.0.0.1:55432/leukodx_load \
        --out benchmarks/web_load_postgres.json
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


def audit(url: str, files_dir: Path, sent: dict[str, bytes], case_ids: list[int]) -> dict:
    """What the database and the image folder hold after the load."""
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
    files = [n for r in rows for n in (r.image_file, r.overlay_file) if n]
    bad_files = [n for n in files if not (files_dir / n).is_file()
                 or hashlib.sha256((files_dir / n).read_bytes()).hexdigest() != n.split(".")[0]]
    return {
        "fields_in_database": len(rows),
        "distinct_images": len(set(shas)),
        "lost_fields": len(want - set(shas)),
        "duplicated_fields": len(shas) - len(set(shas)),
        "unexpected_fields": len(set(shas) - want),
        "cases_whose_summary_miscounts": sum(1 for _, n, real in cases if n != real),
        "fields_outside_the_test_cases": sum(1 for r in rows if r.case_id not in case_ids),
        "audit_field_add_entries": adds,
        "files_missing_or_damaged": len(bad_files),
    }


def run(url: str, workers: int = 2, n: int = 200, concurrency: int = 8, n_cases: int = 10, fake: bool = True,
        size: int = 224) -> dict:
    import httpx

    from leukodx.web.auth import create_token
    from leukodx.web.db import describe_url, open_database
    from webtools import TESTS, field_bytes

    drop_tables(url)
    tmp = Path(tempfile.mkdtemp(prefix="leukodx-pgload-"))
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
    cmd = [sys.executable, "-m", "leukodx", "serve", "--workers", str(workers), "--db", url, "--files-dir",
           str(files_dir), "--port", str(port), "--log-level", "warning"]
    if fake:
        cmd += ["--analyzer", "webtools:FakeAnalyzer"]
    log = open(tmp / "serve.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                            env={**os.environ, "LEUKODX_ADMIN_PASSWORD": "load-test-admin",
                                 "PYTHONPATH": os.pathsep.join(filter(None, (str(TESTS), os.environ.get("PYTHONPATH"))))})
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 180
        while True:
            if proc.poll() is not None:
                raise RuntimeError("leukodx serve exited: " + (tmp / "serve.log").read_text()[-2000:])
            try:
                if httpx.get(base + "/readyz", timeout=2).status_code == 200 and len(worker_pids(proc.pid)) == workers:
                    break
            except httpx.HTTPError:
                pass
            if time.time() > deadline:
                raise RuntimeError("leukodx serve did not become ready")
            time.sleep(0.3)
        pids = worker_pids(proc.pid)
        headers = {"Authorization": f"Bearer {token}"}
        case_ids = [httpx.post(base + "/api/v1/cases", headers=headers, json={"reference": f"PG-LOAD-{k}"}).json()["id"]
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
    found = audit(url, files_dir, dict(images), case_ids)
    return {
        "what": f"{n} single-field uploads into {n_cases} cases at concurrency {concurrency}, leukodx serve "
                f"--workers {workers} on PostgreSQL, then an audit of the database and the image folder",
        "analyzer": "FAKE (web layer, store and database; not the models)" if fake else "bundled models",
        "database": describe_url(url), "images": f"{n} different synthetic {size}x{size} JPEG fields",
        "machine": machine(), "worker_pids": pids, "workers_alive_at_end": len(still_alive),
        "load": load, "audit": found,
        "ok": load["n_errors"] == 0 and found["lost_fields"] == 0 and found["duplicated_fields"] == 0
        and found["fields_in_database"] == n and found["cases_whose_summary_miscounts"] == 0
        and found["files_missing_or_damaged"] == 0 and found["audit_field_add_entries"] == n,
    }


def markdown(r: dict, command: str) -> str:
    m, lat, a = r["machine"], r["load"]["latency_ms"], r["audit"]
    pg = m.get("postgresql", "")
    return "\n".join([
        "# Web load on PostgreSQL with 2 server processes", "",
        f"{r['what']}. Analyzer: {r['analyzer']}. Database: {r['database']}{f' ({pg})' if pg else ''}; "
        f"images: {r['images']}.", "",
        f"- machine: {m.get('cpu')}, {m.get('cores_logical')} logical cores, load average (1, 5, 15 min) at start "
        f"{[round(x, 2) for x in m.get('load_average_at_start') or []]} (other engineers' training and tests were "
        f"running), Python {m.get('python')}",
        f"- worker processes: {len(r['worker_pids'])} (pids {r['worker_pids']}), alive at the end: "
        f"{r['workers_alive_at_end']}",
        "", "Command:", "", "    " + command, "",
        "| requests | concurrency | errors | status codes | p50 ms | p95 ms | p99 ms | max ms | throughput /s |",
        "|---|---|---|---|---|---|---|---|---|",
        f"| {r['load']['n']} | {r['load']['concurrency']} | {r['load']['n_errors']} | {r['load']['status_counts']} | "
        f"{lat['p50']} | {lat['p95']} | {lat['p99']} | {lat['max']} | {r['load']['throughput_per_s']} |",
        "", "Audit after the load (database and image folder):", "",
        "| fields in database | lost | duplicated | unexpected | cases miscounting | files missing or damaged | "
        "field.add audit entries |",
        "|---|---|---|---|---|---|---|",
        f"| {a['fields_in_database']} | {a['lost_fields']} | {a['duplicated_fields']} | {a['unexpected_fields']} | "
        f"{a['cases_whose_summary_miscounts']} | {a['files_missing_or_damaged']} | {a['audit_field_add_entries']} |",
        "", f"Result: **{'PASS' if r['ok'] else 'FAIL'}** (0 errors, no lost or duplicated field).", "",
    ])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--db", default=os.environ.get("LEUKODX_TEST_POSTGRES_URL", ""),
                    help="a SCRATCH PostgreSQL database URL (its tables are dropped) [$LEUKODX_TEST_POSTGRES_URL]")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--real-models", action="store_true", help="the bundled models instead of the fake analyzer")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "web_load_postgres.json"))
    args = ap.parse_args()
    if not args.db.startswith("postgres"):
        ap.error("--db must be a PostgreSQL URL of a scratch database")
    r = run(args.db, args.workers, args.n, args.concurrency, fake=not args.real_models)
    try:
        r["machine"]["postgresql"] = subprocess.run(["psql", "--version"], capture_output=True, text=True).stdout.strip()
    except OSError:
        pass
    from sqlalchemy.engine import make_url

    shown = make_url(args.db).render_as_string(hide_password=True)
    command = (f".venv/bin/python benchmarks/web_load_postgres.py --db {shown} --workers {args.workers} --n {args.n} "
               f"--concurrency {args.concurrency}{' --real-models' if args.real_models else ''}")
    out = Path(args.out)
    out.write_text(json.dumps({**r, "command": command}, indent=2))
    out.with_suffix(".md").write_text(markdown(r, command))
    lat = r["load"]["latency_ms"]
    print(f"{'PASS' if r['ok'] else 'FAIL'}: {r['load']['n']} uploads, errors {r['load']['n_errors']}, p50 {lat['p50']} ms, "
          f"p95 {lat['p95']} ms; audit {r['audit']}; wrote {out} and {out.with_suffix('.md')}")
    sys.exit(0 if r["ok"] else 1)


if __name__ == "__main__":
    main()
