"""The server killed (SIGKILL) in the middle of uploads: the database stays intact, no case is half-written,
every acknowledged upload survives, and files left without a row are swept at the next start."""

from __future__ import annotations

import asyncio
import random
import sqlite3

import httpx

from leukodx.web.app import create_app
from leukodx.web.auth import create_token
from leukodx.web.db import open_database
from leukodx.web.settings import Settings, database_url_for
from webtools import FakeAnalyzer, ServeProcess, field_bytes


async def upload_until_killed(url: str, token: str, case_ids: list[int], images: list[bytes], stop: asyncio.Event,
                              acknowledged: list[int]) -> None:
    headers = {"Authorization": f"Bearer {token}"}

    async def client_loop(k: int):
        rng = random.Random(k)
        async with httpx.AsyncClient(base_url=url, timeout=10) as client:
            while not stop.is_set():
                files = [("files", (f"f{i}.jpg", images[rng.randrange(len(images))], "image/jpeg"))
                         for i in range(rng.randint(1, 3))]
                try:
                    r = await client.post(f"/api/v1/cases/{rng.choice(case_ids)}/images", headers=headers,
                                          files=files)
                except httpx.HTTPError:
                    return  # the server is gone
                if r.status_code == 201:
                    acknowledged.extend(f["id"] for f in r.json()["added"])

    await asyncio.gather(*[client_loop(k) for k in range(6)])


def check_consistent(db_path, files_dir, acknowledged: list[int]) -> set[str]:
    conn = sqlite3.connect(db_path)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert conn.execute("PRAGMA foreign_key_check").fetchall() == []
        rows = conn.execute("SELECT id, image_file, overlay_file, heatmap_file FROM fields").fetchall()
        ids = {r[0] for r in rows}
        assert set(acknowledged) <= ids, "an upload the server acknowledged is missing"
        referenced = {n for r in rows for n in r[1:] if n}
        for name in referenced:  # rows without files: never
            assert (files_dir / name).is_file(), f"row points at a missing file {name}"
        # no half-written case: the case summary counts exactly its rows, and every row has its audit entry
        for cid, n_fields, n_rows in conn.execute(
            "SELECT c.id, c.n_fields, (SELECT count(*) FROM fields f WHERE f.case_id = c.id) FROM cases c"
        ):
            assert n_fields == n_rows, f"case {cid}: summary says {n_fields} fields, {n_rows} rows exist"
        n_audit = conn.execute("SELECT count(*) FROM audit_log WHERE action = 'field.add'").fetchone()[0]
        assert n_audit == len(rows)
        return referenced
    finally:
        conn.close()


def test_sigkill_during_uploads_leaves_a_consistent_store(tmp_path):
    db = tmp_path / "crash.db"
    files_dir = tmp_path / "crash-files"
    _, sessions = open_database(database_url_for(db))
    from leukodx.web.cases import store as cases

    with sessions() as s:
        _, token = create_token(s, "crash", "clinician")
        s.commit()
        case_ids = [cases.create_case(s, f"CRASH-{i}", "", "test").id for i in range(3)]
    images = [field_bytes(("Benign", "Early", "Pre", "Pro")[i % 4], 100 + i, size=128) for i in range(12)]
    acknowledged: list[int] = []
    for round_ in range(2):  # kill twice, restarting on the same database in between
        server = ServeProcess(db, fake=True)
        url = server.start()
        try:
            async def run(url=url, server=server, round_=round_):
                stop = asyncio.Event()
                task = asyncio.create_task(upload_until_killed(url, token, case_ids, images, stop, acknowledged))
                await asyncio.sleep(1.5 + round_ * 0.37)
                server.kill()  # SIGKILL in the middle of the uploads
                stop.set()
                await task

            asyncio.run(run())
        finally:
            server.kill()
            server.stop()
        check_consistent(db, files_dir, acknowledged)
    assert len(acknowledged) > 5, "the uploads did not get going before the kill"
    # the next start sweeps stored files no row refers to (interrupted uploads)
    app = create_app(Settings(database_url=database_url_for(db)), analyzer=FakeAnalyzer())
    referenced = check_consistent(db, files_dir, acknowledged)
    on_disk = {p.name for p in app.state.ctx.store.root.iterdir()}
    assert on_disk == referenced
