"""Settings from the environment: a real `leukodx serve` child process started with LEUKODX_MAX_FILES and
LEUKODX_MAX_FILE_MB applies them (its flags override them only when given). Bounded: small images, one server
start each, a 60 s start-up limit and 30 s per request."""

from __future__ import annotations

import httpx
import pytest

from leukodx.web.auth import create_token
from leukodx.web.db import open_database
from leukodx.web.settings import MB, Settings, database_url_for
from webtools import ServeProcess, field_bytes


def token_for(db) -> dict:
    engine, sessions = open_database(database_url_for(db))
    with sessions() as s:
        _, token = create_token(s, "settings-test", "clinician")
        s.commit()
    engine.dispose()
    return {"Authorization": f"Bearer {token}"}


def jpgs(n: int) -> list:
    return [("files", (f"f{i}.jpg", field_bytes("Pre", i, size=96), "image/jpeg")) for i in range(n)]


def test_the_labs_time_zone_and_differential_target(monkeypatch):
    from datetime import UTC, datetime

    from pydantic import ValidationError

    monkeypatch.setenv("LEUKODX_TIMEZONE", "Asia/Jakarta")
    monkeypatch.setenv("LEUKODX_DIFFERENTIAL_TARGET", "200")
    s = Settings()
    assert (s.timezone, s.differential_target) == ("Asia/Jakarta", 200)
    assert s.local_time(datetime(2027, 1, 1, 12, 0)).isoformat() == "2027-01-01T19:00:00+07:00"  # stored UTC
    assert s.local_time(datetime(2027, 1, 1, 12, 0, tzinfo=UTC)).hour == 19
    with pytest.raises(ValidationError, match="'Europe/Berln' is not a time zone name; use an IANA name"):
        Settings(timezone="Europe/Berln")
    with pytest.raises(ValidationError):
        Settings(differential_target=0)
    monkeypatch.delenv("LEUKODX_TIMEZONE")
    assert Settings().timezone  # the server's own zone, an IANA name
    from zoneinfo import ZoneInfo

    ZoneInfo(Settings().timezone)


def test_settings_read_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("LEUKODX_MAX_FILES", "3")
    monkeypatch.setenv("LEUKODX_MAX_FILE_MB", "0.5")
    monkeypatch.setenv("LEUKODX_DB", str(tmp_path / "env.db"))
    monkeypatch.setenv("LEUKODX_LAB_NAME", "Lab Uji")
    s = Settings()
    assert (s.max_files, s.max_file_bytes, s.lab_name) == (3, MB // 2, "Lab Uji")
    assert s.database_url == f"sqlite:///{(tmp_path / 'env.db').resolve()}"
    assert Settings.from_env(max_files=7, max_file_mb=None).max_files == 7  # a given flag wins; None is not given
    assert Settings.from_env(max_files=None).max_files == 3


def test_serve_applies_the_limits_in_the_environment(tmp_path):
    db = tmp_path / "env.db"
    auth = token_for(db)
    big = ("files", ("big.png", field_bytes("Pro", 1, size=256, fmt="PNG"), "image/png"))
    assert len(big[1][1]) > 0.05 * MB > max(len(f[1][1]) for f in jpgs(2))
    env = {"LEUKODX_MAX_FILES": "1", "LEUKODX_MAX_FILE_MB": "0.05"}
    with ServeProcess(db, env=env, ready_timeout=60) as url:
        r = httpx.post(url + "/api/v1/analyze", headers=auth, files=jpgs(2), timeout=30)
        assert r.status_code == 413
        assert r.json()["detail"] == [{"file": "", "status": 413, "hint": "Send them in batches of 1 or fewer.",
                                       "problem": "2 files were sent; at most 1 are accepted at once."}]
        assert r.json()["message"] == ("Nothing was stored. 2 files were sent; at most 1 are accepted at once. "
                                       "Send them in batches of 1 or fewer.")
        r = httpx.post(url + "/api/v1/analyze", headers=auth, files=[big], timeout=30)
        assert r.status_code == 413
        assert r.json()["detail"][0]["problem"] == "The file is over the 0.05 MB limit."
        r = httpx.post(url + "/api/v1/analyze", headers=auth, files=jpgs(1), timeout=30)
        assert r.status_code == 200 and len(r.json()["results"]) == 1


def test_a_serve_flag_overrides_the_environment(tmp_path):
    db = tmp_path / "flag.db"
    auth = token_for(db)
    with ServeProcess(db, env={"LEUKODX_MAX_FILES": "1"}, extra=["--max-files", "2"], ready_timeout=60) as url:
        r = httpx.post(url + "/api/v1/analyze", headers=auth, files=jpgs(2), timeout=30)
        assert r.status_code == 200 and len(r.json()["results"]) == 2
        r = httpx.post(url + "/api/v1/analyze", headers=auth, files=jpgs(3), timeout=30)
        assert r.status_code == 413 and "at most 2" in r.json()["detail"][0]["problem"]


def test_a_bad_environment_value_is_one_clear_line(monkeypatch, tmp_path, capsys):
    from leukodx.cli import main

    monkeypatch.setenv("LEUKODX_MAX_FILES", "many")
    with pytest.raises(SystemExit) as exc:
        main(["serve", "--db", str(tmp_path / "bad.db")])
    assert exc.value.code not in (0, None)
    err = " ".join(capsys.readouterr().err.split())
    assert "The setting max_files is not valid" in err and "LEUKODX_MAX_FILES" in err and "Traceback" not in err
