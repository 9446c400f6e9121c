"""Load-test support that tests and the web load benchmarks share (benchmarks/web_load.py, web_load_cases.py):
requests at a fixed concurrency against a running `leukodx serve` (`run_load`), and uploads into cases followed
by an audit of the database and the image folder (`run`)."""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    k = (len(s) - 1) * q / 100
    lo, hi = int(k), min(int(k) + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


async def run_load(url: str, token: str, files: list[tuple[str, bytes]], n: int, concurrency: int,
                   path: str | list[str] = "/api/v1/analyze") -> dict:
    """`n` requests of one field each, `concurrency` at a time (request i sends files[i % len(files)] to
    path[i % len(path)] when `path` is a list). Returns latencies (ms), status counts, the requests answered
    2xx (`accepted`, their indices), and the 503s: with Retry-After they are "busy" (the server's bounded queue
    said try again), without it they count as errors like every other answer >= 400 or lost connection."""
    import httpx

    latencies: list[float] = []
    statuses: dict[int, int] = {}
    errors: list[str] = []
    accepted: list[int] = []
    busy: list[str] = []  # Retry-After values of the 503s that had one
    counter = iter(range(n))
    headers = {"Authorization": f"Bearer {token}"}

    async def worker(client: httpx.AsyncClient):
        for i in counter:
            name, data = files[i % len(files)]
            t0 = time.perf_counter()
            try:
                target = path if isinstance(path, str) else path[i % len(path)]
                r = await client.post(target, headers=headers, files=[("files", (name, data, "image/jpeg"))])
                code = r.status_code
                if code < 300:
                    accepted.append(i)
                elif code == 503 and r.headers.get("retry-after"):
                    busy.append(r.headers["retry-after"])
                else:
                    errors.append(f"{code}: {r.text[:200]}")
            except httpx.HTTPError as exc:
                code = 0
                errors.append(f"{exc.__class__.__name__}: {exc}")
            latencies.append((time.perf_counter() - t0) * 1000)
            statuses[code] = statuses.get(code, 0) + 1

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:
        t0 = time.perf_counter()
        await asyncio.gather(*[worker(client) for _ in range(concurrency)])
        wall = time.perf_counter() - t0
    return {
        "n": n, "concurrency": concurrency, "path": path if isinstance(path, str) else sorted(set(path))[0] + " ...", "wall_s": round(wall, 3),
        "throughput_per_s": round(n / wall, 2),
        "latency_ms": {"p50": round(percentile(latencies, 50), 1), "p95": round(percentile(latencies, 95), 1),
                       "p99": round(percentile(latencies, 99), 1), "max": round(max(latencies), 1),
                       "mean": round(statistics.fmean(latencies), 1)},
        "status_counts": {str(k): v for k, v in sorted(statuses.items())},
        "errors": errors[:10], "n_errors": len(errors),
        "n_busy_503_with_retry_after": len(busy), "retry_after_values": sorted(set(busy)),
        "accepted": sorted(accepted),
    }


def machine() -> dict:
    """The analysis benchmark's machine description, plus the web stack's versions."""
    from leukodx.deploy.bench import machine_info

    info = machine_info(threads=None)
    for mod in ("fastapi", "uvicorn"):
        try:
            info[mod] = __import__(mod).__version__
        except Exception:
            pass
    return info


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
